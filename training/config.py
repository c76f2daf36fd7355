"""The training configuration: the named recipes, and how the typed options,
a recipe and a checkpoint's config resolve into ``training_loop``'s arguments.

    config = resolve_config(typed_options(args))      # args: train.py's parsed command line
    config = resolve_config({"recipe": "best", "data": "data/flowers_64.npy"})
    validate(config)                                  # one UserError line for the first bad value
    training_loop(**config)

The order, lowest first: DEFAULTS (training_loop's signature) < --recipe <
the checkpoint's config on --resume < typed options (a recipe typed on
--resume counts as typing its options).
"""
from __future__ import annotations

import argparse
import math

from training import augment
from training.training_loop import ARCH_KEYS, DEFAULTS, RECIPE_KEYS, RUN_KEYS
from utils import UserError

# What --recipe sets (its RECIPE_KEYS options, unless the same option is typed).
# classic: every one at its DEFAULTS value, the DCGAN paper's recipe; best:
# measured best on the held-out CelebA faces (BENCHMARKS.md).
RECIPES = {
    "classic": {},
    "best":    {"augment": augment.DEFAULT_POLICY, "ema": 0.999, "ema_bn_recompute": True},
}


def recipe_options(name: str) -> dict:
    """Every RECIPE_KEYS option's value under recipe ``name``."""
    return {**{k: DEFAULTS[k] for k in RECIPE_KEYS}, **RECIPES[name]}


class FlagAdder:
    """``add_argument`` with default None ("not typed") and a help that says
    where the value comes from when the flag is left out: the default (from
    DEFAULTS), the recipe's, on --resume the checkpoint's."""

    def __init__(self, group):
        self.group = group

    def __call__(self, name: str, help: str, **kwargs) -> None:
        key = name[2:].replace("-", "_")
        if "default:" not in help:
            value = DEFAULTS[key]
            shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
            source = [f"default: {shown}"]
            if key in RECIPE_KEYS and recipe_options("best")[key] != value:
                source.append(f"{recipe_options('best')[key]} with --recipe best")
            if key not in RUN_KEYS:
                source.append("on --resume the checkpoint's")
            help = f"{help} ({'; '.join(source)})"
        self.group.add_argument(name, default=None, help=help, **kwargs)


def typed_options(args: argparse.Namespace) -> dict:
    """The options given on the command line (argparse left the others None)."""
    typed = {k: v for k, v in vars(args).items() if v is not None and k != "dry_run"}
    if "channels_last" in typed:
        typed["channels_last"] = {"auto": None, "on": True, "off": False}[typed["channels_last"]]
    return typed


def resolve_config(typed: dict, checkpoint_config: dict | None = None, checkpoint_path=None) -> dict:
    """The training_loop arguments: DEFAULTS < the recipe < the checkpoint's
    config (on --resume) < ``typed``. On --resume the recipe applies only when
    typed again, and then its options count as typed. Architecture changes on
    --resume are refused. lr_g / lr_d left unset follow lr."""
    typed = dict(typed)
    if checkpoint_config is None or "recipe" in typed:
        typed.setdefault("recipe", DEFAULTS["recipe"])
        for key, value in recipe_options(typed["recipe"]).items():
            typed.setdefault(key, value)
    config = dict(DEFAULTS)
    if checkpoint_config is not None:
        old = {k: v for k, v in checkpoint_config.items() if k in DEFAULTS and k not in RUN_KEYS}
        for key in ("lr_g", "lr_d"):  # a rate that followed --lr keeps following a new --lr
            if old.get(key) == old.get("lr"):
                old[key] = None
        for key in ARCH_KEYS:
            was = old.get(key, DEFAULTS[key])
            if key in typed and typed[key] != was:
                shown = {True: f"--{key}", False: f"--no-{key}"}.get(typed[key], f"--{key} {typed[key]}")
                raise UserError(
                    f"{shown} does not match the checkpoint {checkpoint_path} ({key} {was}); "
                    f"drop it{' (and --recipe)' if 'recipe' in typed else ''} or start a new run with another --out"
                )
        config.update(old)
    config.update(typed)
    config["data"] = config["data"] or f"data/celeba_{config['size']}.npy"
    config["lr_g"], config["lr_d"] = config["lr_g"] or config["lr"], config["lr_d"] or config["lr"]
    return config


def validate(c: dict) -> None:
    """One line for the first bad value, before any work."""
    positive = lambda x: x > 0 and math.isfinite(x)  # noqa: E731
    checks = [
        (c["epochs"] is None or c["epochs"] >= 1, f"--epochs must be at least 1, got {c['epochs']}"),
        (c["max_steps"] is None or c["max_steps"] >= 1, f"--max-steps must be at least 1, got {c['max_steps']}"),
        (c["batch_size"] >= 1, f"--batch-size must be at least 1, got {c['batch_size']}"),
        (positive(c["lr"]), f"--lr must be a positive number, got {c['lr']}"),
        (0 <= c["beta1"] < 1 and 0 <= c["beta2"] < 1, f"--beta1/--beta2 must be in [0, 1), got {c['beta1']}, {c['beta2']}"),
        (c["nz"] >= 1 and c["ngf"] >= 1 and c["ndf"] >= 1, "--nz, --ngf and --ndf must be at least 1"),
        (0 <= c["ema"] < 1, f"--ema must be in [0, 1) (e.g. 0.999; 0 = off), got {c['ema']}"),
        (min(c["log_every"], c["sample_every"], c["checkpoint_every"]) >= 1,
         "--log-every, --sample-every and --checkpoint-every must be at least 1"),
        (c["num_samples"] >= 1, f"--num-samples must be at least 1, got {c['num_samples']}"),
        (c["fid_every"] >= 0 and c["fid_n"] >= 2, "--fid-every must be >= 0 and --fid-n >= 2"),
        (positive(c["lr_g"]) and positive(c["lr_d"]), f"--lr-g/--lr-d must be positive numbers, got {c['lr_g']}, {c['lr_d']}"),
        (c["r1"] >= 0 and math.isfinite(c["r1"]), f"--r1 must be >= 0 (0 = off), got {c['r1']}"),
        (c["r1_every"] >= 1, f"--r1-every must be at least 1, got {c['r1_every']}"),
        (0 <= c["ada"] < 1, f"--ada must be in [0, 1) (e.g. 0.6; 0 = off), got {c['ada']}"),
        (positive(c["ada_kimg"]), f"--ada-kimg must be a positive number, got {c['ada_kimg']}"),
        (c["lecam"] >= 0 and math.isfinite(c["lecam"]), f"--lecam must be >= 0 (e.g. 0.3; 0 = off), got {c['lecam']}"),
        (0 <= c["topk"] <= 1, f"--topk must be in [0, 1] (e.g. 0.5; 0 = off), got {c['topk']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if c["ada"] and not augment.parse_policy(c["augment"]):  # also: unknown op names, one line
        raise UserError(f"--ada {c['ada']} adapts the augmentation's strength: it needs --augment (or --recipe best)")
