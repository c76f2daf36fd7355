"""The FID and KID maths on Inception features, as pure functions (pytorch-fid's
``fid_score.py`` without the network): activations -> (mu, sigma) -> the
Frechet distance; the Kernel Inception Distance on the activations themselves.

    mu1, sigma1 = activations_to_statistics(real_features)    # (n, 2048) numpy or torch
    mu2, sigma2 = activations_to_statistics(fake_features)
    frechet_distance(mu1, sigma1, mu2, sigma2)                # float, pytorch-fid's value within 1e-3
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from utils import UserError

MIN_RELIABLE_N = 2048  # fewer samples than feature dims: singular covariance, biased FID


class SmallSampleWarning(UserWarning):
    """FID from fewer than 2,048 samples: biased upwards and unstable."""


def float64_device(device) -> torch.device:
    """Where float64 linear algebra runs: ``device``, CPU when none or MPS (no float64)."""
    device = torch.device("cpu" if device is None else device)
    return torch.device("cpu") if device.type == "mps" else device


def activations_to_statistics(acts, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) activations (numpy or torch, any device) -> (mu (d,), sigma (d, d))
    in float64, sigma unbiased as ``np.cov(acts, rowvar=False)``. Two passes in
    float64 chunks on the activations' device (CPU for MPS, which lacks float64)."""
    acts = torch.as_tensor(acts)
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise ValueError(f"need (n >= 2, d) activations, got shape {tuple(acts.shape)}")
    n, d = acts.shape
    dev = float64_device(acts.device)
    mu = torch.zeros(d, dtype=torch.float64, device=dev)
    for start in range(0, n, chunk):
        mu += acts[start : start + chunk].to(dev, torch.float64).sum(0)
    mu /= n
    sigma = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for start in range(0, n, chunk):
        x = acts[start : start + chunk].to(dev, torch.float64) - mu
        sigma.addmm_(x.T, x)
    sigma /= n - 1
    sigma = (sigma + sigma.T) / 2
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy.linalg.sqrtm without ``disp=`` (deprecated in SciPy 1.16, gone in 1.18)."""
    from scipy import linalg

    with warnings.catch_warnings():  # singular products are handled by the caller
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        result = linalg.sqrtm(matrix)
    return result[0] if isinstance(result, tuple) else result


def warn_if_small_sample(*counts) -> None:
    """Warn (SmallSampleWarning) when an FID is computed from a set of fewer
    than 2,048 images. Called where an FID is computed, never where statistics
    are only saved: small statistics are fine to store, the FID from them is
    what is biased. Unknown counts (None) are ignored."""
    known = [int(n) for n in counts if n is not None]
    if known and min(known) < MIN_RELIABLE_N:
        warnings.warn(
            f"FID from only {min(known)} samples (< {MIN_RELIABLE_N}) is biased upwards and unstable; "
            f"use 10,000-50,000 to compare runs or papers",
            SmallSampleWarning,
            stacklevel=2,
        )


def _trace_sqrt_eigh(sigma1: np.ndarray, sigma2: np.ndarray, device) -> float | None:
    """tr sqrt(sigma1 sigma2) in float64 on ``device``: with sigma1 = V diag(w) V^T
    (eigh, tiny negative w clipped to 0), sigma1 sigma2 has the eigenvalues of the
    symmetric PSD diag(sqrt w) V^T sigma2 V diag(sqrt w), so the trace is the sum of
    their square roots. None when eigh fails or the result is not finite."""
    dev = float64_device(device)
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64, device=dev) for s in (sigma1, sigma2))
    try:
        w, v = torch.linalg.eigh((s1 + s1.T) / 2)
        root = w.clamp(min=0).sqrt()
        m = (v.T @ s2 @ v) * root[:, None] * root[None, :]
        tr = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum().item()
    except RuntimeError:  # torch.linalg.LinAlgError (no convergence), or the device ran out
        return None
    return tr if np.isfinite(tr) else None


def _trace_sqrt_scipy(sigma1: np.ndarray, sigma2: np.ndarray) -> float | None:
    """tr sqrtm(sigma1 sigma2) as pytorch-fid takes it (scipy, CPU): None when the
    root is not finite or has a large imaginary part; small ones are dropped."""
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        return None
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            return None
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, device=None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))``.

    Equal to pytorch-fid's ``calculate_frechet_distance`` (Dougal Sutherland's
    stable version) within 1e-3, in a fraction of its time: the trace of the
    square root comes from float64 eigenvalues on ``device`` (CPU when None),
    with scipy's ``sqrtm`` of the product as the fallback when they fail. When
    neither gives a finite real root, ``eps * I`` is added to both covariances
    and it is taken again, as pytorch-fid does. Never returns NaN or a complex
    number: a result that stays bad raises UserError."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UserError(
            f"statistics do not match: mean {mu1.shape} / {mu2.shape}, covariance {sigma1.shape} / {sigma2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise UserError("the statistics contain NaN or inf (the features or a .npz file are broken)")
    diff = mu1 - mu2

    def trace_sqrt(s1, s2):
        tr = _trace_sqrt_eigh(s1, s2, device)
        return tr if tr is not None else _trace_sqrt_scipy(s1, s2)

    tr_covmean = trace_sqrt(sigma1, sigma2)
    if tr_covmean is None:  # singular or nearly so: as pytorch-fid, regularise and retry
        offset = np.eye(sigma1.shape[0]) * eps
        tr_covmean = trace_sqrt(sigma1 + offset, sigma2 + offset)
    if tr_covmean is None:
        raise UserError(
            "the Frechet distance is numerically undefined for these statistics (the covariance "
            "product has no real square root even with eps * I added); use more samples"
        )
    fid = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
    if not np.isfinite(fid):
        raise UserError("the Frechet distance came out non-finite; the statistics are broken")
    return max(fid, 0.0)  # a squared distance: tiny negatives are rounding


def kernel_inception_distance(
    acts1, acts2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0, device=None
) -> tuple[float, float]:
    """Unbiased KID (Binkowski et al., 2018): MMD^2 with the cubic polynomial
    kernel k(x, y) = (x.y / d + 1)^3, averaged over ``num_subsets`` random
    subsets of ``min(subset_size, n1, n2)`` from each set -> (mean, std).
    Float64; subsets drawn from a local RNG seeded with ``seed``."""
    a, b = torch.as_tensor(acts1), torch.as_tensor(acts2)
    dev = float64_device(device if device is not None else a.device)
    a, b = a.to(dev, torch.float64), b.to(dev, torch.float64)
    if a.ndim != 2 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"activations do not match: {tuple(a.shape)} vs {tuple(b.shape)}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    off_diag = m * (m - 1)
    values = []
    for _ in range(num_subsets):
        x = a[torch.from_numpy(rng.choice(a.shape[0], m, replace=False)).to(dev)]
        y = b[torch.from_numpy(rng.choice(b.shape[0], m, replace=False)).to(dev)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (kxx.sum() - kxx.diagonal().sum()) / off_diag + (kyy.sum() - kyy.diagonal().sum()) / off_diag
        values.append(mmd - 2 * kxy.mean())
    values = torch.stack(values).cpu().numpy()
    return float(values.mean()), float(values.std())

