"""Fidelity and diversity of generated images apart, and a memorisation check,
on Inception pool features (the ones FID uses), as small pure functions.

    precision  share of fakes inside the real manifold: within the k-th nearest-neighbour
               radius of some real (Kynkaenniemi et al. 2019, k = 3 as StyleGAN2-ADA's pr50k3)
    recall     share of reals inside the fake manifold (the same test, roles swapped)
    density    how many real k-NN balls (k = 5) hold each fake, / k, averaged (Naeem et al. 2020)
    coverage   share of reals whose k-NN ball (k = 5) holds at least one fake
    copy share share of fakes closer to their nearest training image than that image
               is to its own nearest other training image (a copy indicator)

Which set is real matters: swapping them swaps precision and recall. Every
distance is computed in row blocks of at most ``max_elements`` entries, on the
features' device, so 50,000 x 2,048 features need memory for one block, not
for the 50,000 x 50,000 matrix.

    from metrics.precision_recall import manifold_metrics
    manifold_metrics(real_features, fake_features)   # {"precision": ..., "recall": ..., ...}
"""
from __future__ import annotations

import torch

MAX_ELEMENTS = 1 << 24  # distances per block: 128 MiB in float64


def _as_tensor(features, device=None) -> torch.Tensor:
    x = torch.as_tensor(features)
    return x.to(device or x.device, torch.float64)


def distance_blocks(x: torch.Tensor, y: torch.Tensor, max_elements: int = MAX_ELEMENTS):
    """Euclidean distances of every row of ``x`` to every row of ``y``, yielded
    as (first row, (rows, len(y)) block); float64, ||a||^2 + ||b||^2 - 2ab."""
    rows = max(1, max_elements // max(1, y.shape[0]))
    y_sq = y.square().sum(dim=1)
    for start in range(0, x.shape[0], rows):
        block = x[start:start + rows]
        d2 = block.square().sum(dim=1, keepdim=True) + y_sq[None, :] - 2.0 * block @ y.T
        yield start, d2.clamp_(min=0).sqrt_()


def knn_radii(features, k: int | tuple[int, ...], max_elements: int = MAX_ELEMENTS):
    """Distance of each row to its k-th nearest OTHER row -> (N,); for a tuple
    of k, {k: (N,)} from one pass over the distances."""
    x = _as_tensor(features)
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not 1 <= min(ks) <= max(ks) < x.shape[0]:
        raise ValueError(f"k = {max(ks)} needs more than k samples, got {x.shape[0]}")
    radii = {kk: torch.empty(x.shape[0], dtype=x.dtype, device=x.device) for kk in ks}
    for start, block in distance_blocks(x, x, max_elements):
        # the k + 1 smallest include the row itself (distance 0)
        smallest = block.topk(max(ks) + 1, dim=1, largest=False).values
        for kk in ks:
            radii[kk][start:start + block.shape[0]] = smallest[:, kk]
    return radii[k] if isinstance(k, int) else radii


def manifold_metrics(real, fake, k_pr: int = 3, k_dc: int = 5, max_elements: int = MAX_ELEMENTS,
                     real_radii: dict | None = None) -> dict:
    """Precision, recall (k_pr) and density, coverage (k_dc) of ``fake`` against
    ``real`` (N, D) features. ``real_radii`` ({k: radii}) reuses cached k-NN radii of the reals."""
    real, fake = _as_tensor(real), _as_tensor(fake, real.device)
    cached = real_radii or {}
    if k_pr not in cached or k_dc not in cached:
        cached = knn_radii(real, (k_pr, k_dc), max_elements)
    r_pr, r_dc = cached[k_pr].to(real), cached[k_dc].to(real)
    fake_radii = knn_radii(fake, k_pr, max_elements)
    fake_in_real = torch.zeros(fake.shape[0], dtype=torch.bool, device=real.device)
    balls_per_fake = torch.zeros(fake.shape[0], dtype=torch.float64, device=real.device)
    real_in_fake = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for start, block in distance_blocks(real, fake, max_elements):  # (reals in this block, fakes)
        rows = slice(start, start + block.shape[0])
        fake_in_real |= (block < r_pr[rows, None]).any(dim=0)
        balls_per_fake += (block < r_dc[rows, None]).sum(dim=0)
        real_in_fake[rows] = (block < fake_radii[None, :]).any(dim=1)
        covered[rows] = block.min(dim=1).values < r_dc[rows]
    return {
        "precision": fake_in_real.double().mean().item(),
        "recall": real_in_fake.double().mean().item(),
        "density": (balls_per_fake / k_dc).mean().item(),
        "coverage": covered.double().mean().item(),
        "k_pr": k_pr, "k_dc": k_dc, "real_n": int(real.shape[0]), "fake_n": int(fake.shape[0]),
    }


def nearest_neighbours(query, reference, k: int = 1, max_elements: int = MAX_ELEMENTS):
    """The k nearest rows of ``reference`` for each row of ``query`` -> (distances, indices), (Q, k) each."""
    q, ref = _as_tensor(query), _as_tensor(reference)
    q = q.to(ref.device)
    dists, idx = [], []
    for _, block in distance_blocks(q, ref, max_elements):
        found = block.topk(k, dim=1, largest=False)
        dists.append(found.values)
        idx.append(found.indices)
    return torch.cat(dists), torch.cat(idx)


def copy_share(generated, training, max_elements: int = MAX_ELEMENTS) -> tuple[float, torch.Tensor]:
    """-> (share of generated rows closer to their nearest training row than that
    row is to its own nearest other training row, (G,) bool flags)."""
    distance, index = nearest_neighbours(generated, training, 1, max_elements)
    own = knn_radii(training, 1, max_elements)
    flags = distance[:, 0] < own[index[:, 0]]
    return flags.double().mean().item(), flags
