"""Differentiable augmentation for GAN training (DiffAugment, Zhao et al., 2020).

D never sees an un-augmented image: the same random transform family is
applied to every real and every fake batch D scores, in D's step and in G's
step, so D cannot tell reals from fakes by the augmentation, and G gets its
gradient back through the transform (every op here is differentiable w.r.t.
the images). On a small data set this stops D from memorising the reals.

    from training.augment import AugmentPipe, diff_augment
    logits = D(diff_augment(real, "color,translation"))
    pipe = AugmentPipe("color,translation")  # the Trainer's: built once, called on every batch D sees
    logits = D(pipe(real))

The default policy is ``color,translation``; Zhao et al. add ``cutout`` for
very small sets (``--augment color,translation,cutout``). BENCHMARKS.md has
the measurements behind the default.

Random parameters are drawn per image from the torch RNG on the images'
device (one call per op for the whole batch, no per-image Python), so the
checkpoint's RNG state makes a resumed run repeat them exactly.

With ``train.py --ada TARGET`` (ADA, Karras et al., 2020) each op is applied
to each image with a probability p that AdaptiveAugment tunes during training
from D's outputs on the reals: little augmentation while D is not memorising
them, more when it starts to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import UserError

DEFAULT_POLICY = "color,translation"  # --recipe best's and bare --augment's policy (BENCHMARKS.md)
ZHAO_POLICY = "color,translation,cutout"  # Zhao et al.'s policy for small data sets


def _rand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) on x's device, float32 (promotes bf16 images, like autocast would)."""
    return torch.rand(*shape, device=x.device)


# Each op takes the images and its U[0, 1) draws (drawn here when not given);
# draw() makes them for a whole policy, apply() uses them, so the random part
# can run eagerly and the arithmetic compiled (AugmentPipe under --compile).
def brightness(x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
    """Add U(-0.5, 0.5) to each image; r (B, 1, 1, 1)."""
    r = _rand(x, x.shape[0], 1, 1, 1) if r is None else r
    return x + (r - 0.5)


def saturation(x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each pixel's distance from its grey value by U(0, 2); r (B, 1, 1, 1)."""
    r = _rand(x, x.shape[0], 1, 1, 1) if r is None else r
    grey = x.mean(dim=1, keepdim=True)
    return (x - grey) * (r * 2) + grey


def contrast(x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each image's distance from its mean by U(0.5, 1.5); r (B, 1, 1, 1)."""
    r = _rand(x, x.shape[0], 1, 1, 1) if r is None else r
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r + 0.5) + mean


def translation(x: torch.Tensor, ry: torch.Tensor | None = None, rx: torch.Tensor | None = None,
                ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y (integer
    pixels, zero fill): one gather from the zero-padded batch; ry, rx (B, 1)."""
    b, _, h, w = x.shape
    ry = _rand(x, b, 1) if ry is None else ry
    rx = _rand(x, b, 1) if rx is None else rx
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # per-image shifts in [-sh, sh] x [-sw, sw]
    dy = (ry * (2 * sh + 1)).long() - sh                                    # (B, 1)
    dx = (rx * (2 * sw + 1)).long() - sw                                    # (B, 1)
    padded = F.pad(x, [sw, sw, sh, sh])                                     # (B, C, H+2sh, W+2sw)
    rows = torch.arange(h, device=x.device) + sh - dy                       # (B, H) source rows
    cols = torch.arange(w, device=x.device) + sw - dx                       # (B, W) source cols
    batch = torch.arange(b, device=x.device)[:, None, None]                 # (B, 1, 1)
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]               # (B, H, W, C)
    return out.permute(0, 3, 1, 2)                                          # (B, C, H, W), channels_last strides


def cutout(x: torch.Tensor, ry: torch.Tensor | None = None, rx: torch.Tensor | None = None,
           ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of side ``ratio`` * size per image, centred anywhere in
    the image (it may be clipped by the border); ry, rx (B, 1, 1)."""
    b, _, h, w = x.shape
    ry = _rand(x, b, 1, 1) if ry is None else ry
    rx = _rand(x, b, 1, 1) if rx is None else rx
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = (ry * h).long()                                                    # (B, 1, 1) centre row
    cx = (rx * w).long()
    ys = torch.arange(h, device=x.device)[None, :, None]                    # (1, H, 1)
    xs = torch.arange(w, device=x.device)[None, None, :]                    # (1, 1, W)
    inside = ((ys - cy + ch // 2) >= 0) & ((ys - cy + ch // 2) < ch) \
        & ((xs - cx + cw // 2) >= 0) & ((xs - cx + cw // 2) < cw)          # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)                           # (B, 1, H, W) mask


OPS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}
# each op's U[0, 1) draws, in the order it makes them: their shapes after the batch dimension
DRAWS = {brightness: ((1, 1, 1),), saturation: ((1, 1, 1),), contrast: ((1, 1, 1),),
         translation: ((1,), (1,)), cutout: ((1, 1), (1, 1))}
KEEP_DRAW = (1, 1, 1)  # with a probability p: one draw per op before its own, (B, 1, 1, 1) >= p keeps an image


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' / 'none' -> (). Unknown names: UserError."""
    if not policy or policy == "none":
        return ()
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise UserError(f"unknown --augment op {unknown[0]!r} (use a comma list of {', '.join(OPS)}, or none)")
    return names


def draw(x: torch.Tensor, names: tuple[str, ...], with_p: bool) -> list[torch.Tensor]:
    """Every U[0, 1) draw ``apply(x, names, ...)`` needs, in the order the ops
    would make them themselves (``with_p``: each op's keep draw first), so
    draw + apply gives the images and RNG state of augmenting op by op."""
    b = x.shape[0]
    shapes = [shape for name in names for op in OPS[name] for shape in ((KEEP_DRAW,) if with_p else ()) + DRAWS[op]]
    return [_rand(x, b, *shape) for shape in shapes]


def apply(x: torch.Tensor, names: tuple[str, ...], draws: list[torch.Tensor],
          p: torch.Tensor | float | None = None) -> torch.Tensor:
    """The policy's ops on ``x`` with the given ``draws`` (from ``draw``, with_p
    = p is not None): no randomness of its own, so torch.compile can take it
    whole and still give eager's images. Same shape and memory format out."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    it = iter(draws)
    for name in names:
        for op in OPS[name]:
            if p is None:
                x = op(x, *(next(it) for _ in DRAWS[op]))
            else:
                keep = next(it) >= p                                          # (B, 1, 1, 1) images left as they are
                x = torch.where(keep, x, op(x, *(next(it) for _ in DRAWS[op])))
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def diff_augment(x: torch.Tensor, policy: str = DEFAULT_POLICY, p: torch.Tensor | float | None = None) -> torch.Tensor:
    """Images (B, C, H, W) -> the same batch augmented, each image with its own
    random parameters; differentiable w.r.t. ``x``, same shape and memory format.
    ``p`` None: every op on every image (DiffAugment). ``p`` a probability
    (a 0-dim device tensor from AdaptiveAugment, so no host sync): each op of
    the policy is applied to each image with probability p (ADA's way), the
    others pass through unchanged."""
    names = parse_policy(policy)
    if not names:
        return x
    return apply(x, names, draw(x, names, p is not None), p)


class AdaptiveAugment:
    """ADA's controller (Karras et al., 2020, "Training generative adversarial
    networks with limited data"): the augmentation probability ``p`` starts at
    0 and every ``interval`` steps moves by +-(images seen) / (kimg * 1000)
    towards keeping r = E[sign(D(augmented real))] at ``target``: a D that is
    sure of the reals (r above the target, it is memorising them) gets more
    augmentation, one that is not gets less. So a short run, or a data set D
    does not overfit, trains (almost) as the classic recipe; a long run on a
    few thousand faces gets DiffAugment's protection when it needs it.

    Everything stays on the device (no host sync): ``p`` is a 0-dim tensor.
    Under DDP the ranks' r are averaged, so every rank holds the same p.
    ``state_dict`` / ``load_state_dict`` make a resumed run repeat it exactly."""

    def __init__(self, target: float, kimg: float, device, interval: int = 4, world_size: int = 1):
        self.target, self.kimg = float(target), float(kimg)
        self.interval, self.world_size = int(interval), int(world_size)
        self.p = torch.zeros((), device=device)
        self.sign_sum = torch.zeros((), device=device)
        self.seen = self.images = 0  # D steps and (per-rank) real images observed since the last adjustment

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        """D's logits on this step's augmented reals; adjusts p every ``interval`` calls."""
        self.sign_sum += torch.sign(real_logits.float()).mean()
        self.seen += 1
        self.images += real_logits.shape[0]
        if self.seen < self.interval:
            return
        r = self.sign_sum / self.seen
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(r)
            r /= self.world_size
        step_size = self.images * self.world_size / (self.kimg * 1000)
        self.p = (self.p + torch.sign(r - self.target) * step_size).clamp_(0.0, 1.0)
        self.sign_sum.zero_()
        self.seen = self.images = 0

    def state_dict(self) -> dict:
        return {"p": self.p.detach().cpu(), "sign_sum": self.sign_sum.detach().cpu(), "seen": self.seen,
                "images": self.images}

    def load_state_dict(self, state: dict) -> None:
        self.p = state["p"].to(self.p.device, torch.float32).reshape(())
        self.sign_sum = state["sign_sum"].to(self.sign_sum.device, torch.float32).reshape(())
        self.seen, self.images = int(state["seen"]), int(state["images"])


class AugmentPipe:
    """The augmentation every image D sees goes through, built once from the
    policy, the ADA controller (None: every op on every image) and compile.
    ``pipe(images)`` draws the random parameters eagerly and applies them,
    with ADA's current p; under compile the arithmetic runs as one compiled
    function (p a tensor input: no recompile as it moves), giving eager's
    images and RNG stream. ``pipe.eager`` is the same pipe (policy, ADA
    state) with eager arithmetic, for R1's double backward, which compiled
    graphs do not support. An empty policy passes images through unchanged.

        pipe = AugmentPipe("color,translation", AdaptiveAugment(0.6, 100, "cuda"), compile=True)
        out_real = D(pipe(real)); pipe.ada.observe(out_real)
    """

    def __init__(self, policy: str | None, ada: AdaptiveAugment | None = None, compile: bool = False):
        self.names = parse_policy(policy)
        self.ada = ada if self.names else None  # nothing to adapt without a policy
        compiled = compile and bool(self.names)
        self._apply = torch.compile(apply) if compiled else apply
        self.eager = AugmentPipe(policy, self.ada) if compiled else self

    @property
    def p(self) -> torch.Tensor | None:
        """ADA's probability (a 0-dim device tensor), None without ADA."""
        return None if self.ada is None else self.ada.p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.names:
            return images
        p = self.p
        return self._apply(images, self.names, draw(images, self.names, with_p=p is not None), p)

    def state_dict(self) -> dict | None:
        return None if self.ada is None else self.ada.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        """ADA's state; None (or no ADA here: --ada typed on --resume) leaves p where it is."""
        if self.ada is not None and state is not None:
            self.ada.load_state_dict(state)
