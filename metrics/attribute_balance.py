"""Attribute balance: how often each attribute appears among generated faces
against real ones, read by one attribute classifier on both sets, so the
classifier's own errors fall alike on both sides. FID is one number for
everything; a generator that has lost older faces or glasses shows it here.

    shares_fake, shares_real = attribute_shares(logits_fake), attribute_shares(logits_real)
    attribute_balance(shares_fake, shares_real)    # mean |difference|: 0 = the same mix
"""
from __future__ import annotations

import numpy as np


def attribute_shares(logits: np.ndarray) -> np.ndarray:
    """The share of faces the classifier calls positive (logit > 0), per attribute: (N, A) -> (A,)."""
    return (np.asarray(logits) > 0).mean(axis=0)


def attribute_balance(shares: np.ndarray, reference: np.ndarray) -> float:
    """The mean absolute difference of two sets' attribute shares (0 = the same mix, 1 = opposite)."""
    return float(np.abs(np.asarray(shares) - np.asarray(reference)).mean())


def balance_lines(names, shares: np.ndarray, reference: np.ndarray) -> list[str]:
    """One line per attribute, the largest difference first."""
    order = np.argsort(-np.abs(shares - reference), kind="stable")
    width = max(map(len, names))
    return [f"  {names[k]:<{width}}  generated {shares[k]:.3f}  real {reference[k]:.3f}  "
            f"difference {shares[k] - reference[k]:+.3f}" for k in order]
