"""Latents by seed, walks between them and the DCGAN paper's face arithmetic,
shared by generator.py and the explorer (app.py).

    z = latents([3, 17, 42], nz=100)                        # seed s -> its own N(0, I) latent
    walk = slerp(z[:1], z[1:2], torch.linspace(0, 1, 8))    # (1, 8, nz)
    terms = parse_arithmetic("Smiling,~Male - ~Smiling,~Male + ~Smiling,Male")
    pool = ConceptPool(generator, classifier, size=64)      # sampled faces labelled by the classifier
    means, result = arithmetic_latents(terms, nz=100, pool=pool)

A term is a seed list ("3,17,42": the mean of those seeds' latents, seeds
picked by eye as in the paper) or an attribute condition ("Smiling,~Male": the
mean latent of the ``top`` sampled faces the classifier puts most confidently
under it, ``~`` meaning without).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch
import torch.nn.functional as F

from editing.classifier import check_names
from editing.directions import classify_latents
from utils import UserError

ARITH_EXAMPLE = "3,17,42 - 5,8,9 + 11,23,31"
CONCEPT_EXAMPLE = "Smiling,~Male - ~Smiling,~Male + ~Smiling,Male"
CONCEPT_POOL = 5000  # sampled faces a concept is chosen from
CONCEPT_TOP = 3  # the most confident faces a concept averages (three, as the DCGAN paper)
CONCEPT_SEED = 1_000_000  # the pool's latents are seeds CONCEPT_SEED.., apart from the sampled faces 0..


class Term(NamedTuple):
    """One concept of an arithmetic expression, with its sign (+1 or -1): a
    seed list, or a condition ((attribute, wanted), ...)."""
    sign: int
    seeds: list[int] | None = None
    condition: tuple[tuple[str, bool], ...] | None = None

    def text(self) -> str:
        if self.seeds is not None:
            return ",".join(map(str, self.seeds))
        return ",".join(("" if wanted else "~") + name for name, wanted in self.condition)


def latents(seeds, nz: int) -> torch.Tensor:
    """One standard-normal latent per seed, each drawn from its own CPU
    generator, so a latent depends only on its seed. -> (len(seeds), nz)."""
    out = torch.empty(len(seeds), nz)
    for row, seed in enumerate(seeds):
        out[row] = torch.randn(nz, generator=torch.Generator().manual_seed(int(seed)))
    return out


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of z0 and z1 (B, nz) at fractions
    t (T,) -> (B, T, nz). Gaussian latents live near a sphere, so slerp keeps
    the walk at typical norms where lerp would pass through low-norm latents;
    falls back to lerp for (near-)parallel endpoints."""
    a, b = z0.double(), z1.double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))[:, None]  # (B, 1)
    t = t.double()[None, :]  # (1, T)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / safe)
    w1 = torch.where(parallel, t, torch.sin(t * omega) / safe)
    return (w0[..., None] * a[:, None] + w1[..., None] * b[:, None]).to(z0.dtype)


SEEDS = re.compile(r"\d+(\s*,\s*\d+)*")
CONDITION = re.compile(r"~?\s*[A-Za-z][A-Za-z0-9_]*(\s*,\s*~?\s*[A-Za-z][A-Za-z0-9_]*)*")


def parse_arithmetic(text: str) -> list[Term]:
    """ "3,17,42 - Smiling,~Male + 11" -> [Term(1, [3, 17, 42]), Term(-1, condition=(("Smiling", True),
    ("Male", False))), Term(1, [11])]: at least two seed lists or attribute
    conditions joined by + and -; anything else is a UserError."""
    parts = re.split(r"\s*([+-])\s*", text.strip())
    texts, signs = parts[0::2], [1] + [1 if op == "+" else -1 for op in parts[1::2]]
    bad = next((k for k, t in enumerate(texts) if not (SEEDS.fullmatch(t) or CONDITION.fullmatch(t))), None)
    if bad is not None or len(texts) < 2:
        why = ("at least two terms are needed" if bad is None else
               f"{texts[bad]!r} is neither a list of seeds nor of attributes" if texts[bad] else
               "no term" if len(texts) == 1 else
               "a term is missing " + ("before the first sign" if bad == 0 else "after a sign"))
        raise UserError(f"--arithmetic {text!r}: {why}; write seed lists or attribute conditions (~ = without) "
                        f"joined by + and -, e.g. \"{ARITH_EXAMPLE}\" or \"{CONCEPT_EXAMPLE}\"")
    terms = []
    for sign, t in zip(signs, texts):
        items = [item.strip() for item in t.split(",")]
        if SEEDS.fullmatch(t):
            terms.append(Term(sign, seeds=[int(s) for s in items]))
        else:
            terms.append(Term(sign, condition=tuple((i.lstrip("~").strip(), not i.startswith("~")) for i in items)))
    return terms


def condition_names(terms: list[Term]) -> list[str]:
    """The attribute names the terms' conditions use, each once."""
    return list(dict.fromkeys(name for term in terms if term.condition for name, _ in term.condition))


class ConceptPool:
    """``n`` sampled latents (seeds ``seed``..``seed + n - 1``) and the
    classifier's log-probabilities of their faces, so that each condition's
    most confident faces are found without generating again."""

    def __init__(self, generator, classifier, size: int, attributes, n: int = CONCEPT_POOL,
                 seed: int = CONCEPT_SEED, batch_size: int = 256, device="cpu", progress: str | None = None):
        self.z = latents(range(seed, seed + n), generator.nz)
        self.attributes = list(attributes)
        logits = classify_latents(generator, classifier, size, self.z, batch_size, device, progress)
        self.log_yes, self.log_no = F.logsigmoid(logits), F.logsigmoid(-logits)  # (n, A)

    def confidence(self, condition) -> torch.Tensor:
        """log P(condition) of each pooled face, the attributes taken as independent -> (n,)."""
        check_names([name for name, _ in condition], self.attributes, "the attribute classifier")
        total = torch.zeros(len(self.z))
        for name, wanted in condition:
            column = self.attributes.index(name)
            total += (self.log_yes if wanted else self.log_no)[:, column]
        return total

    def mean_latent(self, condition, top: int = CONCEPT_TOP) -> tuple[torch.Tensor, float]:
        """The mean latent of the ``top`` faces most confidently under ``condition``,
        and the lowest probability among them."""
        best = self.confidence(condition).topk(min(top, len(self.z)))
        return self.z[best.indices].mean(0), float(best.values.min().exp())


def arithmetic_latents(terms: list[Term], nz: int, pool: ConceptPool | None = None,
                       top: int = CONCEPT_TOP) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (each term's mean latent (T, nz), the signed sum of those means (nz,)).
    Attribute conditions need ``pool``."""
    if pool is None and any(term.condition for term in terms):
        raise UserError("attribute conditions need the attribute classifier (--classifier)")
    means = torch.stack([latents(term.seeds, nz).mean(0) if term.seeds is not None
                         else pool.mean_latent(term.condition, top)[0] for term in terms])
    result = means[0] * terms[0].sign
    for term, mean in zip(terms[1:], means[1:]):
        result = result + mean if term.sign > 0 else result - mean
    return means, result
