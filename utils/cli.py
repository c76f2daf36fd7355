"""What every command line shares: one-line user errors, ``--help`` defaults,
the ``run_cli`` wrapper every script ends with, and ``--device`` resolution.

    if __name__ == "__main__":
        utils.run_cli(main)   # UserError -> one stderr line + exit 2; Ctrl-C -> exit 130
"""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each default once: options whose help already says
    what the default is (a computed one, left as None) get no "(default: None)"."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def run_cli(main, argv=None) -> None:
    """Run ``main(argv)``; turn UserError into one stderr line + exit 2."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)


def resolve_device(name: str = "auto"):
    """'auto' -> cuda if available, else mps, else cpu. Asking for a device
    that is not there is a UserError."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for, but MPS is not available (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
