"""FID (and optionally KID) of a generator against real images, equal to
``python -m pytorch_fid`` on the same images.

    python evaluate.py --params runs/64px-celeba-.../generator.params        # 50k samples vs data/celeba_64.npy
    python evaluate.py --params generator.params -n 10000 --kid --seed 1
    python evaluate.py --params generator.params -n 10000 --pr --nn 4          # + precision/recall, copies
    python evaluate.py --real data/celeba_64.npy --fake samples/            # folders, .npy, or .npz statistics

The feature extractor is pytorch-fid's FID Inception-v3 (TensorFlow 2015-12-05
weights, 2048-d pool3 features), found and loaded by ``fid_inception.py``.
Images take pytorch-fid's path: uint8 -> float in [0, 1] -> the network
(bilinear resize to 299, scale to [-1, 1]).
Generated images are first rounded to uint8 exactly as ``save_image`` rounds
before writing a PNG, so a generator scores what its saved samples would
score, without the PNG round-trip.

Real statistics are cached beside the data as ``<data>.fid.npz`` (keys mu,
sigma as pytorch-fid writes them, plus what they were computed from) and
recomputed when the data, the extractor, the image size or the numerics
(device type; Inception runs in full fp32 everywhere, no TF32, deterministic
cuDNN) change: a CPU cache is not reused for a GPU score.

``--pr`` adds precision and recall (k = 3) and density and coverage (k = 5)
of the generated features against the real ones (``precision_recall.py``);
the real features themselves and their k-NN radii are cached beside the
statistics as ``<data>.features.npz``, under the same key. ``--nn K`` draws
32 samples beside their K nearest training faces and reports the copy share.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import utils
from dataloader import data_fingerprint, load_images
from fid_inception import FEATURE_DIMS, FID_WEIGHTS_FILE, load_inception
from fid_inception import build_inception  # noqa: F401  (evaluate.build_inception for callers)
from precision_recall import copy_share, knn_radii, manifold_metrics, nearest_neighbours
from utils import UserError

MIN_RELIABLE_N = 2048  # fewer samples than feature dims: singular covariance, biased FID
KID_REAL_MAX = 5000  # real activations kept in the cache for --kid (float32, ~40 MB)
IMAGE_EXTENSIONS = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}  # as pytorch-fid
STATS_FORMAT = "dcgan-fid-stats/1"
FEATURES_FORMAT = "dcgan-fid-features/1"
K_PR, K_DC = 3, 5  # neighbours for precision/recall (StyleGAN2-ADA's pr50k3) and density/coverage (Naeem et al.)
NN_SAMPLES = 32  # generated faces in the --nn picture


class SmallSampleWarning(UserWarning):
    """FID from fewer than 2,048 samples: biased upwards and unstable."""


# --------------------------------------------------------------------------- #
# Pure functions: activations -> statistics -> distance
# --------------------------------------------------------------------------- #
def _float64_device(device) -> torch.device:
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
    dev = _float64_device(acts.device)
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
    dev = _float64_device(device)
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
    dev = _float64_device(device if device is not None else a.device)
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


# --------------------------------------------------------------------------- #
# Images -> features (batched on the device)
# --------------------------------------------------------------------------- #
quantize = utils.quantize  # generated images take the PNG's rounding, without the PNG


def numerics_id(device) -> str:
    """What the features' numbers depend on besides the extractor (a cache key):
    the device type; ``full_fp32`` makes the precision the same on all of them."""
    kind = torch.device(device).type
    return f"{kind}/fp32" + ("-no-tf32-deterministic" if kind == "cuda" else "")


@contextlib.contextmanager
def full_fp32():
    """FID's networks (G, Inception) in true fp32 on CUDA: no TF32 in cuDNN convolutions or matmuls
    (on by default for convs, and 10-bit mantissas move FID), deterministic
    cuDNN algorithms; the previous settings come back afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    new_api = hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision")
    before = ((cudnn.conv.fp32_precision, matmul.fp32_precision) if new_api else
              (cudnn.allow_tf32, matmul.allow_tf32)) + (cudnn.deterministic, cudnn.benchmark)
    if new_api:
        cudnn.conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
    else:
        cudnn.allow_tf32, matmul.allow_tf32 = False, False
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        if new_api:
            cudnn.conv.fp32_precision, matmul.fp32_precision = before[:2]
        else:
            cudnn.allow_tf32, matmul.allow_tf32 = before[:2]
        cudnn.deterministic, cudnn.benchmark = before[2:]


@torch.no_grad()
def features_of(model, images_uint8: torch.Tensor, device) -> torch.Tensor:
    """uint8 NCHW -> (B, 2048) float32 features on ``device``, through
    pytorch-fid's input path (``ToTensor``: uint8 / 255), in ``full_fp32``."""
    x = images_uint8.to(device, non_blocking=True).float().div(255)
    with full_fp32():
        return model(x)[0].flatten(1)


def array_features(model, images: np.ndarray, device, batch_size: int = 200, desc: str = "real") -> torch.Tensor:
    """uint8 NHWC array (or memmap) -> (n, 2048) float32 features on ``device``."""
    n = len(images)
    out = torch.empty(n, FEATURE_DIMS, dtype=torch.float32, device=device)
    pin = torch.device(device).type == "cuda"
    for start in tqdm(range(0, n, batch_size), desc=f"features ({desc})", unit="batch", leave=False):
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))  # a writable copy
        if pin:
            batch = batch.pin_memory()
        out[start : start + len(batch)] = features_of(model, batch.permute(0, 3, 1, 2), device)
    return out


@torch.no_grad()
def generated_batches(generator, nz: int, n: int, device, batch_size: int = 200, seed: int = 0, progress: bool = True):
    """Yield the ``n`` images of ``generator`` as uint8 NCHW batches, quantised
    as a PNG would be. The noise comes from a local torch.Generator seeded with
    ``seed`` (the global RNG is untouched, the images do not depend on
    ``batch_size``); G runs in ``full_fp32`` as Inception does, in eval mode
    (a generator in train mode is switched back after)."""
    device = torch.device(device)
    rng = torch.Generator(device=device).manual_seed(int(seed))
    noise = torch.randn(n, nz, generator=rng, device=device)
    was_training = generator.training
    generator.eval()
    try:
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc="features (generated)", unit="batch", leave=False, disable=not progress):
            with full_fp32():  # the images a CPU would make, up to rounding: no TF32 in G's convs either
                yield quantize(generator(noise[start : start + batch_size]))
    finally:
        generator.train(was_training)


def generated_features(
    generator, nz: int, n: int, model, device, batch_size: int = 200, seed: int = 0
) -> torch.Tensor:
    """``n`` images of ``generator`` (``generated_batches``) -> (n, 2048) features."""
    out = torch.empty(n, FEATURE_DIMS, dtype=torch.float32, device=device)
    start = 0
    for images in generated_batches(generator, nz, n, device, batch_size, seed):
        out[start : start + len(images)] = features_of(model, images, device)
        start += len(images)
    return out


def first_generated_images(generator, nz: int, n: int, device, count: int, seed: int = 0) -> np.ndarray:
    """The first ``count`` of the ``n`` images ``generated_features`` scores, uint8 NHWC."""
    batches = generated_batches(generator, nz, n, device, count, seed, progress=False)
    try:
        return next(batches).permute(0, 2, 3, 1).cpu().numpy()
    finally:
        batches.close()  # restores G's mode now


# --------------------------------------------------------------------------- #
# Inputs: .npy data, image folders, .npz statistics
# --------------------------------------------------------------------------- #
def load_folder(path, size: int | None = None) -> np.ndarray:
    """Every image in a folder (pytorch-fid's extensions), sorted by name ->
    uint8 (N, H, W, 3), decoded as pytorch-fid does (PIL ``convert("RGB")``).
    With ``size``, images of another size are cropped and resized to it exactly
    as preprocess.py makes training data (the CelebA face box for 178x218
    aligned photos, else the centred square), so a generator is scored against
    faces framed like the ones it learnt."""
    from PIL import Image

    path = Path(path)
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {path}")
    images = None
    for k, file in enumerate(tqdm(files, desc=f"reading {path.name}", unit="img", leave=False)):
        try:
            with Image.open(file) as img:
                if size is not None and img.size != (size, size):
                    array = _preprocessed(file, img.size, size)
                else:
                    array = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise UserError(f"cannot read image {file}: {err}") from None
        if images is None:
            images = np.empty((len(files),) + array.shape, np.uint8)
        elif array.shape != images.shape[1:]:
            raise UserError(f"{file} is {array.shape[1]}x{array.shape[0]}, but {files[0].name} is "
                            f"{images.shape[2]}x{images.shape[1]}; all images in a folder must have one size")
        images[k] = array
    return images


def _preprocessed(file: Path, image_size: tuple[int, int], size: int) -> np.ndarray:
    """One image file cropped and resized as ``preprocess.py`` does -> uint8 (size, size, 3)."""
    import preprocess

    crop = preprocess.CELEBA_CROP if image_size == preprocess.CELEBA_IMAGE_SIZE else "square"
    (buffer,) = preprocess.load_image(str(file.parent), file.name, (size,), crop)
    return np.frombuffer(buffer, np.uint8).reshape(size, size, 3)


def _load_npz(path, what: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npz {what} file ({err})") from None


def _key_of(data: dict) -> dict:
    """What a cache .npz was computed from: n, size, fingerprint, extractor, numerics, format."""
    key = {"n": int(data["n"]) if "n" in data else None}
    for name in ("fingerprint", "extractor", "numerics", "format"):
        if name in data:
            key[name] = str(data[name])
    if "size" in data:
        key["size"] = int(data["size"])
    return key


def _write_npz(stats: dict, path, file_format: str, **arrays) -> None:
    """Atomically write ``arrays`` plus the key fields of ``stats`` as .npz."""
    arrays["format"] = np.array(file_format)
    for name in ("n", "size"):
        if stats.get(name) is not None:
            arrays[name] = np.array(stats[name])
    for name in ("fingerprint", "extractor", "numerics"):
        if stats.get(name) is not None:
            arrays[name] = np.array(str(stats[name]))
    with utils.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def read_statistics(path) -> dict:
    """A statistics .npz (ours, or pytorch-fid's with keys mu and sigma)."""
    path = Path(path)
    data = _load_npz(path, "statistics")
    if "mu" not in data or "sigma" not in data:
        raise UserError(f"{path} has no 'mu' and 'sigma' arrays (keys: {', '.join(data) or 'none'})")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.shape != (FEATURE_DIMS,) or sigma.shape != (FEATURE_DIMS, FEATURE_DIMS):
        raise UserError(f"{path} holds statistics of shape {mu.shape} / {sigma.shape}, not 2048-d pool3 ones")
    stats = {"mu": mu, "sigma": sigma, **_key_of(data)}
    if "kid_features" in data:
        stats["kid_features"] = data["kid_features"]
    return stats


def write_statistics(stats: dict, path) -> None:
    """Atomically write statistics as .npz (pytorch-fid reads mu and sigma)."""
    arrays = {"mu": stats["mu"], "sigma": stats["sigma"]}
    if stats.get("kid_features") is not None:
        arrays["kid_features"] = np.asarray(stats["kid_features"], np.float32)
    _write_npz(stats, path, STATS_FORMAT, **arrays)


def read_features(path) -> dict:
    """A features .npz (``write_features``) -> {features (n, 2048) float32, radii {k: (n,)}, key fields}."""
    data = _load_npz(path, "features")
    features = data.get("features")
    if features is None or features.ndim != 2 or features.shape[1] != FEATURE_DIMS:
        raise UserError(f"{path} holds no (n, {FEATURE_DIMS}) pool3 features")
    radii = {int(name[len("radii_"):]): data[name] for name in data if name.startswith("radii_")}
    return {**_key_of(data), "features": features, "radii": radii}


def write_features(stats: dict, path) -> None:
    """Atomically write real features (float32) and their k-NN radii ({k: (n,)}) as .npz."""
    radii = {f"radii_{k}": torch.as_tensor(r).cpu().numpy() for k, r in stats["radii"].items()}
    _write_npz(stats, path, FEATURES_FORMAT, features=torch.as_tensor(stats["features"]).float().cpu().numpy(),
               **radii)


def statistics_from_features(acts: torch.Tensor, seed: int = 0, **info) -> dict:
    """Features -> {mu, sigma, n, kid_features (a random subset for --kid), **info}."""
    mu, sigma = activations_to_statistics(acts)
    n = acts.shape[0]
    keep = np.sort(np.random.default_rng(seed).choice(n, min(n, KID_REAL_MAX), replace=False))
    kid = acts[torch.from_numpy(keep).to(acts.device)].float().cpu().numpy()
    return {"mu": mu, "sigma": sigma, "n": n, "kid_features": kid, **info}


def cache_path_for(data_path) -> Path:
    """data/celeba_64.npy -> data/celeba_64.fid.npz"""
    return Path(data_path).with_suffix(".fid.npz")


def features_path_for(data_path) -> Path:
    """data/celeba_64.npy -> data/celeba_64.features.npz"""
    return Path(data_path).with_suffix(".features.npz")


def _read_cache(path: Path, reader, key: dict, n: int) -> dict | None:
    """The cache at ``path`` when it was computed from ``key`` and ``n`` images, else None."""
    if not path.is_file():
        return None
    try:
        cached = reader(path)
    except UserError as err:
        warnings.warn(f"ignoring unreadable cache: {err}", stacklevel=3)
        return None
    return cached if all(cached.get(k) == v for k, v in key.items()) and cached.get("n") == n else None


def _write_cache(writer, stats: dict, path: Path) -> None:
    """Write a cache; a read-only data folder just means no cache."""
    try:
        writer(stats, path)
    except UserError as err:
        warnings.warn(f"not cached: {err}", stacklevel=3)


def real_statistics(
    data_path, device="cpu", batch_size: int = 200, weights_path=None, model=None, size=None, cache: bool = True,
    knn: tuple[int, ...] | None = None,
) -> dict:
    """Statistics of a preprocessed .npy dataset, read from ``<data>.fid.npz``
    when that was computed from the same data (fingerprint), extractor, image
    size and numerics (``numerics_id``: a CPU cache is not a GPU one), else
    computed and cached there (a read-only data folder just means no cache).
    Returns {mu, sigma, n, size, fingerprint, extractor, numerics, kid_features, cached}. Pass ``model`` (``load_inception``) to reuse one.

    With ``knn`` (a tuple of k, may be empty) also ``features`` ((n, 2048)
    float32 tensor) and ``radii`` ({k: (n,)} distances to the k-th nearest
    other real), read from or written to ``<data>.features.npz`` under the same
    key, and ``features_cached``."""
    images = load_images(data_path, size)
    key = {"fingerprint": data_fingerprint(data_path), "size": int(images.shape[1]), "numerics": numerics_id(device)}
    model = model if model is not None else load_inception(device, weights_path)
    key["extractor"] = model.extractor_id
    n = len(images)
    stats = _read_cache(cache_path_for(data_path), read_statistics, key, n) if cache else None
    cached = _read_cache(features_path_for(data_path), read_features, key, n) if cache and knn is not None else None
    if stats is not None and knn is None:
        return {**stats, "cached": True}
    if cached is not None:
        acts = torch.from_numpy(cached["features"])
    else:
        acts = array_features(model, images, device, batch_size, desc=Path(data_path).name)
    stats_cached = stats is not None
    if stats is None:
        stats = statistics_from_features(acts, **key)
        if cache:
            _write_cache(write_statistics, stats, cache_path_for(data_path))
    if knn is None:
        return {**stats, "cached": False}
    radii = {k: torch.from_numpy(r) for k, r in cached["radii"].items()} if cached is not None else {}
    missing = tuple(k for k in knn if k not in radii)
    if missing:
        if max(missing) >= n:
            raise UserError(f"{data_path} has {n} images; k = {max(missing)} nearest neighbours need more")
        found = knn_radii(acts.to(_float64_device(device)), missing)
        radii.update((k, r.cpu()) for k, r in found.items())
    if cache and (missing or cached is None):
        _write_cache(write_features, {**key, "n": n, "features": acts, "radii": radii}, features_path_for(data_path))
    return {**stats, "cached": stats_cached, "features": acts, "radii": {k: radii[k] for k in knn},
            "features_cached": cached is not None and not missing}


def generator_fid(
    generator, nz: int, real_stats: dict, n: int, device, batch_size: int = 200, seed: int = 0,
    weights_path=None, model=None,
) -> float:
    """FID of ``n`` samples of ``generator`` against ``real_stats`` (from
    ``real_statistics``). Works on a generator in train mode (switched to eval
    and back) and leaves the global RNG state untouched."""
    model = model if model is not None else load_inception(device, weights_path)
    acts = generated_features(generator, nz, n, model, device, batch_size, seed)
    mu, sigma = activations_to_statistics(acts)
    warn_if_small_sample(n, real_stats.get("n"))
    return frechet_distance(mu, sigma, real_stats["mu"], real_stats["sigma"], device=device)


def path_statistics(path, model, device, batch_size: int = 200, size=None, knn: tuple[int, ...] | None = None) -> dict:
    """Statistics of an image folder, a .npy of uint8 images (cached beside it),
    or a .npz of statistics. With ``knn`` (see ``real_statistics``) also the
    ``features``, their ``radii`` (a folder: none, computed where used) and
    the ``images``; a .npz of statistics has none of them."""
    path = Path(path)
    if path.is_dir():
        images = load_folder(path, size)
        acts = array_features(model, images, device, batch_size, desc=path.name)
        stats = statistics_from_features(acts, size=images.shape[1] if images.shape[1] == images.shape[2] else None)
        return stats if knn is None else {**stats, "features": acts, "radii": {}, "images": images}
    if path.suffix == ".npz":
        if knn is not None:
            raise UserError(f"{path} holds statistics only; --pr and --nn need the images (a folder or a .npy)")
        stats = read_statistics(path)
        if size is not None and stats.get("size") not in (None, size):
            raise UserError(f"{path} holds statistics of {stats['size']} px images, not {size} px")
        return stats
    if path.suffix == ".npy":
        stats = real_statistics(path, device, batch_size, model=model, size=size, knn=knn)
        return stats if knn is None else {**stats, "images": load_images(path, size)}
    if not path.exists():
        raise UserError(f"not found: {path}")
    raise UserError(f"{path} is not an image folder, a .npy of images, or a .npz of statistics")


def manifold_scores(real: dict, fake_features, device) -> dict:
    """Precision, recall (k = 3), density, coverage (k = 5) of ``fake_features``
    against ``real`` (``path_statistics(..., knn=(K_PR, K_DC))``), reusing the
    reals' cached radii; float64 distances on ``device`` (CPU for MPS)."""
    dev = _float64_device(device)
    real_n, fake_n = len(real["features"]), len(fake_features)
    if real_n <= K_DC or fake_n <= K_PR:
        raise UserError(f"--pr needs more than {K_DC} real and {K_PR} generated images (got {real_n} and {fake_n})")
    return manifold_metrics(real["features"].to(dev), fake_features.to(dev), K_PR, K_DC,
                            real_radii=real.get("radii") or None)


def nearest_neighbour_picture(samples: np.ndarray, sample_features, train: dict, k: int, path, device) -> None:
    """A grid, one row per sample: the sample (uint8 NHWC), then its ``k``
    nearest training images in Inception feature space, written to ``path``."""
    dev = _float64_device(device)
    _, index = nearest_neighbours(sample_features.to(dev), train["features"].to(dev), k)
    rows = [np.concatenate([samples[i : i + 1], train["images"][np.asarray(row)]]) for i, row in enumerate(index.cpu().tolist())]
    utils.save_grid(np.concatenate(rows), path, nrow=k + 1)


def _pr_text(scores: dict, real_name, fake_name=None) -> str:
    fake = f"fake: {fake_name}, {scores['fake_n']}" if fake_name else f"generated: {scores['fake_n']}"
    return (f"  precision {scores['precision']:.3f} recall {scores['recall']:.3f} density {scores['density']:.3f} "
            f"coverage {scores['coverage']:.3f} (real: {real_name}, {scores['real_n']}; {fake})")


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="FID (and KID) of a generator or of two image sets, equal to pytorch-fid's.",
        formatter_class=utils.HelpFormatter,
    )
    parser.add_argument("--params", default="generator.params", help="generator.params to evaluate")
    parser.add_argument("--data", default="data/celeba_{size}.npy",
                        help="real images (.npy from preprocess.py, a folder, or a statistics .npz); "
                             "{size} is the generator's size")
    parser.add_argument("-n", "--num-samples", type=int, default=50000, help="generated images")
    parser.add_argument("--batch-size", type=int, default=200, help="images per generator + Inception forward pass")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the generated images")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--kid", action="store_true", help="also report the Kernel Inception Distance")
    parser.add_argument("--inception-weights", default=None,
                        help=f"FID Inception weights file ({FID_WEIGHTS_FILE}) for offline machines; "
                             f"default: the torch hub cache, downloaded on first use")
    parser.add_argument("--save-stats", default=None,
                        help="write the generated (or --fake) statistics here as .npz; with --real "
                             "alone, write the statistics of --real and stop")
    parser.add_argument("--real", default=None,
                        help="the real set: with --fake, compare two image sets; alone, score --params against it "
                             "(as --data; a folder of other-size photos is cropped and resized as preprocess.py does)")
    parser.add_argument("--fake", default=None, help="the set to score against --real")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw generator, not its EMA weights")
    parser.add_argument("--pr", action="store_true",
                        help=f"also precision and recall (k = {K_PR}), density and coverage (k = {K_DC}) "
                             f"against the real set; its features are cached beside a .npy")
    parser.add_argument("--nn", type=int, default=0, metavar="K",
                        help=f"memorisation check (with --params): {NN_SAMPLES} samples beside their K nearest "
                             f"--data faces in Inception features, and the copy share; 0: off")
    parser.add_argument("--nn-out", default=None,
                        help="the --nn picture; default: nearest_neighbours.png beside --params")
    return parser


def _validate(args) -> None:
    if args.num_samples < 2:
        raise UserError(f"-n must be at least 2 (got {args.num_samples})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive (got {args.batch_size})")
    if args.inception_weights is not None and not Path(args.inception_weights).is_file():
        raise UserError(f"Inception weights file not found: {args.inception_weights}")
    if args.fake is not None and args.real is None:
        raise UserError("--fake needs --real (the set to compare it with)")
    if args.real is None and args.save_stats is None and not Path(args.params).is_file():
        raise UserError(f"params file not found: {args.params} (pass --params, or --real/--fake)")
    for path in (args.real, args.fake):
        if path is not None and not Path(path).exists():
            raise UserError(f"not found: {path}")
    if args.save_stats is not None and Path(args.save_stats).is_dir():
        raise UserError(f"--save-stats {args.save_stats} is a folder; give a file name ending in .npz")
    if args.nn < 0:
        raise UserError(f"--nn must be 0 (off) or a number of neighbours (got {args.nn})")
    if args.nn and args.real is not None:
        raise UserError("--nn needs --params (generated samples to check against --data), not --real/--fake")
    if args.pr or args.nn:
        for path in (args.real, args.fake) if args.real is not None else (args.data,):
            if path is not None and Path(path).suffix == ".npz":
                raise UserError(f"{path} holds statistics only; --pr and --nn need the images (a folder or a .npy)")


def _kid_features(stats: dict, what: str):
    if stats.get("kid_features") is None:
        raise UserError(f"--kid needs activations, but {what} is a statistics file with only mu and sigma")
    return stats["kid_features"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.real is not None and args.fake is None and args.save_stats is None:
        if not Path(args.params).is_file():
            raise UserError(f"--real {args.real} alone scores --params against it, but {args.params} was not found; "
                            f"to compare two image sets add --fake B")
        args.data, args.real = args.real, None  # --params P --real FOLDER: FOLDER is the real set
    _validate(args)
    with warnings.catch_warnings(record=True) as caught:  # each shown once, as one line (no source line)
        warnings.simplefilter("always", SmallSampleWarning)
        try:
            return _run(args)
        finally:
            for message in dict.fromkeys(str(warning.message) for warning in caught):
                print(f"warning: {message}", file=sys.stderr)


def _run(args) -> int:
    start = time.time()
    device = utils.resolve_device(args.device)
    if args.real is not None:
        return _compare_sets(args, device, start)

    from network import load_generator

    if args.save_stats is not None and not Path(args.params).is_file():  # --data + --save-stats: real stats only
        return _save_real(args, device, start)
    generator, config = load_generator(args.params, device, use_ema=not args.no_ema)
    size = int(config["size"])
    data = Path(args.data.format(size=size))
    if not data.exists():
        raise UserError(f"real data not found: {data} (make it with `python preprocess.py --sizes {size}`)")
    model = load_inception(device, args.inception_weights)
    knn = ((K_PR, K_DC) if args.pr else ()) if args.pr or args.nn else None
    real = path_statistics(data, model, device, args.batch_size, size=size, knn=knn)
    if args.nn and args.nn >= real["n"]:
        raise UserError(f"--nn {args.nn} needs more than {args.nn} training images in {data} (got {real['n']})")
    nz = int(config["nz"])
    acts = generated_features(generator, nz, args.num_samples, model, device, args.batch_size, args.seed)
    fake = statistics_from_features(acts, seed=args.seed, size=size, extractor=model.extractor_id)
    warn_if_small_sample(args.num_samples, real.get("n"))
    fid = frechet_distance(fake["mu"], fake["sigma"], real["mu"], real["sigma"], device=device)
    kid = None
    if args.kid:
        kid = kernel_inception_distance(acts, _kid_features(real, str(data)), seed=args.seed, device=device)
    scores = manifold_scores(real, acts, device) if args.pr else {}
    if args.nn:
        shown = min(NN_SAMPLES, args.num_samples)
        picture = Path(args.nn_out or Path(args.params).parent / "nearest_neighbours.png")
        samples = first_generated_images(generator, nz, args.num_samples, device, shown, args.seed)
        nearest_neighbour_picture(samples, acts[:shown], real, args.nn, picture, device)
        dev = _float64_device(device)
        share, flags = copy_share(acts.to(dev), real["features"].to(dev))
        scores.update(copy_share=share, nn_k=args.nn, nn_picture=str(picture))
        print(f"copy share {share:.4f}: {int(flags.sum())} of {args.num_samples} generated faces are closer to a "
              f"training face than it is to its nearest other one; {shown} beside their {args.nn} nearest "
              f"in {data}: {picture}")
    if args.save_stats:
        write_statistics(fake, args.save_stats)
    seconds = time.time() - start
    real_n = real.get("n")
    print(_result_line(fid, kid, model, f"n={args.num_samples} generated vs {real_n or '?'} real, {size} px, "
                                        f"seed {args.seed}, {seconds:.0f} s",
                       _pr_text(scores, data) if args.pr else ""))
    record = {
        "fid": fid, "kid_mean": kid and kid[0], "kid_std": kid and kid[1], "n": args.num_samples, "seed": args.seed,
        "real_n": real_n, "size": size, "params": str(Path(args.params)), "weights": config["weights"],
        "data": str(data), "data_fingerprint": real.get("fingerprint"), "extractor": model.extractor_id,
        "inception_weights": model.weights_label, "real_inception_weights": model.real_weights, "device": str(device), "seconds": round(seconds, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **{k: v for k, v in scores.items() if k != "real_n"},
    }
    utils.append_jsonl(record, Path(args.params).parent / "results.jsonl")
    return 0


def _result_line(fid, kid, model, details: str, extra: str = "") -> str:
    """One line: the scores, then what they were computed from, the Inception weights last."""
    kid_text = f"  KID {kid[0]:.5f} ± {kid[1]:.5f}" if kid is not None else ""
    return f"FID {fid:.2f}{kid_text}{extra}  ({details}; {model.weights_label})"


def _save_real(args, device, start) -> int:
    data = Path(args.data)
    if "{size}" in args.data:
        raise UserError("--save-stats without --params needs an explicit --data (or --real) file")
    model = load_inception(device, args.inception_weights)
    stats = path_statistics(data, model, device, args.batch_size)
    write_statistics(stats, args.save_stats)
    print(f"saved statistics of {stats['n']} images of {data} to {args.save_stats} ({time.time() - start:.0f} s)")
    return 0


def _compare_sets(args, device, start) -> int:
    model = load_inception(device, args.inception_weights)
    knn = (K_PR, K_DC) if args.pr else None
    real = path_statistics(args.real, model, device, args.batch_size, knn=knn)
    if args.fake is None:
        if args.save_stats is None:
            raise UserError("--real needs --fake (or --save-stats to write its statistics)")
        write_statistics(real, args.save_stats)
        print(f"saved statistics of {real['n']} images of {args.real} to {args.save_stats}")
        return 0
    fake = path_statistics(args.fake, model, device, args.batch_size, knn=() if args.pr else None)
    warn_if_small_sample(fake.get("n"), real.get("n"))
    fid = frechet_distance(fake["mu"], fake["sigma"], real["mu"], real["sigma"], device=device)
    kid = None
    if args.kid:
        kid = kernel_inception_distance(_kid_features(fake, args.fake), _kid_features(real, args.real),
                                        seed=args.seed, device=device)
    if args.save_stats:
        write_statistics(fake, args.save_stats)
    pr_text = _pr_text(manifold_scores(real, fake["features"], device), args.real, args.fake) if args.pr else ""
    print(_result_line(fid, kid, model, f"{fake.get('n') or '?'} in {args.fake} vs {real.get('n') or '?'} in "
                                        f"{args.real}, {time.time() - start:.0f} s", pr_text))
    return 0


if __name__ == "__main__":
    utils.run_cli(main)
