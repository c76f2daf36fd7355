"""The DCGAN generator and discriminator (Radford et al., 2016), built by one
function that loops over resolution, plus the ``generator.params`` format;
``load_generator`` also reads an export (a folder or .safetensors, export/weights.py).

At 64 px with ngf = ndf = 64 the layers, their order and their parameter
counts are those of the PyTorch DCGAN tutorial, so a generator state_dict
saved by that code (``main.0.weight`` ...) loads here unchanged. The
discriminator returns logits (train with BCEWithLogits); ``sigmoid(logit)``
is the tutorial's D(x).

    from network import Generator, Discriminator
    G = Generator(size=64)            # z (B, 100) -> (B, 3, 64, 64) in [-1, 1]
    D = Discriminator(size=128)       # (B, 3, 128, 128) -> (B,) logits
"""
from __future__ import annotations

import math

import torch
from torch import nn

from export.weights import is_exported, read_weights
from utils import UserError, torch_load, torch_save

PARAMS_FORMAT = "dcgan-generator-params/1"
SIZES = (32, 64, 128, 256)
DEFAULT_CONFIG = {"size": 64, "nz": 100, "ngf": 64, "ndf": 64, "nc": 3}


def num_levels(size: int) -> int:
    """Feature-map resolutions between 4x4 and size/2: 64 -> 4 (4, 8, 16, 32)."""
    levels = int(math.log2(size)) - 2
    if size not in SIZES or 2 ** (levels + 2) != size:
        raise UserError(f"unsupported image size {size}; choose one of {', '.join(map(str, SIZES))}")
    return levels


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, nz) or (B, nz, 1, 1) -> images (B, nc, size, size) in [-1, 1].

    size 64, ngf 64 (the classic net):
        z                    nz x 1 x 1
        ConvT+BN+ReLU   -> (ngf*8) x 4 x 4
        ConvT+BN+ReLU   -> (ngf*4) x 8 x 8
        ConvT+BN+ReLU   -> (ngf*2) x 16 x 16
        ConvT+BN+ReLU   -> (ngf)   x 32 x 32
        ConvT+Tanh      -> (nc)    x 64 x 64
    size 128 adds one block: (ngf*16) x 4 x 4 first, same tail.
    """

    def __init__(self, size: int = 64, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        self.size, self.nz = size, nz
        levels = num_levels(size)
        widths = [ngf * 2 ** (levels - 1 - i) for i in range(levels)]  # 4x4 ... size/2
        layers: list[nn.Module] = []
        in_ch = nz
        for i, out_ch in enumerate(widths):
            # 1x1 -> 4x4 on the first block, then doubling: (out_ch) x 4*2^i x 4*2^i
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, 4, stride, pad, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(True),
            ]
            in_ch = out_ch
        layers += [nn.ConvTranspose2d(in_ch, nc, 4, 2, 1, bias=False), nn.Tanh()]  # nc x size x size
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    """images (B, nc, size, size) -> logits (B,).

    size 64, ndf 64 (the classic net, without its final Sigmoid):
        image                (nc)    x 64 x 64
        Conv+LReLU      -> (ndf)   x 32 x 32     (no BatchNorm on the input layer)
        Conv+BN+LReLU   -> (ndf*2) x 16 x 16
        Conv+BN+LReLU   -> (ndf*4) x 8 x 8
        Conv+BN+LReLU   -> (ndf*8) x 4 x 4
        Conv            -> 1 x 1 x 1 logit
    size 128 adds one block, ending at (ndf*16) x 4 x 4.

    ``sn=True`` (train.py --sn): spectral normalisation on every conv and NO
    BatchNorm, as in SNGAN's discriminator. BN after an SN conv divides by the
    batch's standard deviation and so undoes the Lipschitz bound SN sets; it
    also couples the images of a batch, which R1's per-image gradient and
    augmented/fake batches do not want. Each conv then gets a bias (BN's shift
    is gone). Same widths and shapes: Conv+LReLU at every level.
    """

    def __init__(self, size: int = 64, ndf: int = 64, nc: int = 3, sn: bool = False):
        super().__init__()
        self.size, self.sn = size, sn
        levels = num_levels(size)
        widths = [ndf * 2**i for i in range(levels)]  # size/2 ... 4x4

        def conv(in_ch, out_ch, stride, pad):
            return nn.Conv2d(in_ch, out_ch, 4, stride, pad, bias=sn)

        layers: list[nn.Module] = [conv(nc, widths[0], 2, 1), nn.LeakyReLU(0.2, True)]
        for in_ch, out_ch in zip(widths[:-1], widths[1:]):
            # (in_ch) x r x r -> (out_ch) x r/2 x r/2
            norm = [] if sn else [nn.BatchNorm2d(out_ch)]
            layers += [conv(in_ch, out_ch, 2, 1), *norm, nn.LeakyReLU(0.2, True)]
        layers += [conv(widths[-1], 1, 1, 0)]  # 1 x 1 x 1
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)
        if sn:  # after init: SN rescales the N(0, 0.02) weights to spectral norm 1
            from torch.nn.utils.parametrizations import spectral_norm

            for module in self.main:
                if isinstance(module, nn.Conv2d):
                    nn.init.zeros_(module.bias)
                    spectral_norm(module)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images).view(-1)


def build_generator(config: dict) -> Generator:
    """Generator from a config dict (keys size, nz, ngf, nc; others ignored)."""
    c = {**DEFAULT_CONFIG, **config}
    return Generator(size=c["size"], nz=c["nz"], ngf=c["ngf"], nc=c["nc"])


def build_discriminator(config: dict) -> Discriminator:
    """Discriminator from a config dict (keys size, ndf, nc, sn; others ignored)."""
    c = {**DEFAULT_CONFIG, **config}
    return Discriminator(size=c["size"], ndf=c["ndf"], nc=c["nc"], sn=bool(c.get("sn", False)))


@torch.no_grad()
def recompute_bn_stats(generator: nn.Module, n: int = 512, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Re-estimate ``generator``'s BatchNorm running statistics in place: reset
    them, run it in train mode on ``n`` latents in batches of ``batch_size``
    with momentum None (the plain average of the batch statistics), then
    return it in eval mode. The latents come from a private torch.Generator
    seeded with ``seed``: the global RNG is not touched, and the result is a
    function of the weights alone. For an EMA of G, whose lerped running stats
    do not belong to the averaged weights."""
    device = next(generator.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator.train()
    for start in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - start), generator.nz, device=device, generator=rng)
        generator(z)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return generator.eval()


# --------------------------------------------------------------------------- #
# generator.params: {"format", "config", "generator", "generator_ema"}
# --------------------------------------------------------------------------- #
def save_generator_params(path, config: dict, generator_state: dict | None, ema_state: dict | None = None) -> None:
    """Write the small export generator.py / evaluate.py read, atomically
    (``generator_state`` None: the EMA weights alone, see ``export_ema``)."""
    torch_save(
        {
            "format": PARAMS_FORMAT,
            "config": dict(config),
            "generator": None if generator_state is None else {k: v.detach().cpu() for k, v in generator_state.items()},
            "generator_ema": None if ema_state is None else {k: v.detach().cpu() for k, v in ema_state.items()},
        },
        path,
    )


def infer_config(state: dict) -> dict:
    """Rebuild (size, nz, ngf, nc) from a bare Generator state_dict's shapes."""
    convs = [k for k, v in state.items() if k.endswith(".weight") and getattr(v, "ndim", 0) == 4]
    if not convs:
        raise UserError("the params file holds no generator conv weights")
    first, last = state[convs[0]], state[convs[-1]]
    levels = len(convs) - 1
    return {
        "size": 2 ** (levels + 2),
        "nz": int(first.shape[0]),
        "ngf": int(first.shape[1]) // 2 ** (levels - 1),
        "nc": int(last.shape[1]),
    }


def export_ema(src, dst) -> dict:
    """``src`` generator.params -> ``dst`` holding its EMA weights alone (the
    raw generator dropped: half the file), the file to share; -> its config."""
    blob = torch_load(src, what="generator.params file")
    if not (isinstance(blob, dict) and blob.get("format") == PARAMS_FORMAT and blob.get("generator_ema") is not None):
        raise UserError(f"{src} has no EMA weights to export (train with --ema, e.g. --recipe best)")
    config = {**blob["config"], "weights": "ema"}
    save_generator_params(dst, config, None, blob["generator_ema"])
    return config


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def strip_prefixes(state: dict) -> dict:
    """Remove DDP ('module.') and torch.compile ('_orig_mod.') key prefixes in
    any order and nesting: ``torch.compile(DDP(m))`` saves '_orig_mod.module.'."""
    out = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def ema_alone(path) -> UserError:
    return UserError(f"{path} holds the EMA weights alone (an export); the raw weights (--no-ema) are in the run's "
                     f"own generator.params")


def read_params(path, use_ema: bool = True) -> tuple[dict, dict]:
    """generator.params (ours, or a bare state_dict as the classic DCGAN code
    saves it) -> (state_dict, config)."""
    blob = torch_load(path, what="generator.params file",
                      hint="pass --params generator.params (written by train.py, e.g. runs/<run>/generator.params)")
    if isinstance(blob, dict) and blob.get("format") == PARAMS_FORMAT:
        config = {**DEFAULT_CONFIG, **blob["config"]}
        if blob.get("generator") is None and not use_ema:
            raise ema_alone(path)
        ema = use_ema and blob.get("generator_ema") is not None
        config["weights"] = "ema" if ema else "raw"
        return blob["generator_ema"] if ema else blob["generator"], config
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        state = strip_prefixes(blob)
        return state, {**DEFAULT_CONFIG, **infer_config(state), "weights": "raw"}
    raise UserError(f"{path} is not a generator.params file nor a generator state_dict")


def read_exported(path, use_ema: bool = True) -> tuple[dict, dict]:
    """An exported folder or .safetensors (export/weights.py: one set of
    weights, its config beside or inside) -> (state_dict, config)."""
    state, config = read_weights(path)
    weights = config.get("weights", "raw")
    config = {**DEFAULT_CONFIG, **(config or infer_config(strip_prefixes(state))), "weights": weights}
    if config["weights"] == "ema" and not use_ema:
        raise ema_alone(path)
    return state, config


def load_generator(path, device="cpu", use_ema: bool = True) -> tuple[Generator, dict]:
    """Load a generator -> (Generator in eval mode on ``device``, config):
    generator.params (ours, or a bare state_dict as the classic DCGAN code
    saves it), or an export: a folder from ``generator.py --export DIR`` or a
    .safetensors. config["weights"] says which weights were loaded: "ema"
    (the default when the file has them) or "raw"."""
    state, config = read_exported(path, use_ema) if is_exported(path) else read_params(path, use_ema)
    generator = build_generator(config)
    try:
        generator.load_state_dict(strip_prefixes(state))
    except RuntimeError as err:
        raise UserError(
            f"{path} does not match a {config['size']} px generator (ngf {config['ngf']}, nz {config['nz']}): "
            f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}"
        ) from None
    return generator.to(device).eval(), config
