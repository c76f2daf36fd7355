"""Images -> Inception features -> statistics, and their caches: the input
kinds (a .npy of uint8 images from preprocess.py, an image folder, a .npz of
statistics), generated images rounded as a saved PNG, and the real set's
statistics and features cached beside its data.

    from metrics import features, inception
    model = inception.load_inception(device)
    real = features.real_statistics("data/celeba_64.npy", device, model=model)
    features.generator_fid(generator, nz, real, 10000, device, model=model)

Images take pytorch-fid's path: uint8 -> float in [0, 1] -> the network
(bilinear resize to 299, scale to [-1, 1]). Generated images are first rounded
to uint8 exactly as ``save_image`` rounds before writing a PNG, so a generator
scores what its saved samples would score, without the PNG round-trip.

Real statistics are cached beside the data as ``<data>.fid.npz`` (keys mu,
sigma as pytorch-fid writes them, plus what they were computed from) and
recomputed when the data, the extractor, the image size or the numerics
(device type; Inception runs in full fp32 everywhere, no TF32, deterministic
cuDNN) change: a CPU cache is not reused for a GPU score. With ``knn`` the
real features and their k-NN radii are cached as ``<data>.features.npz``,
under the same key.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import utils
from dataloader import data_fingerprint, load_images
from metrics.fid import activations_to_statistics, float64_device, frechet_distance, warn_if_small_sample
from metrics.inception import FEATURE_DIMS, load_inception
from metrics.precision_recall import knn_radii, manifold_metrics, nearest_neighbours
from preprocessing import celeba, decode
from utils import UserError

KID_REAL_MAX = 5000  # real activations kept in the cache for --kid (float32, ~40 MB)
IMAGE_EXTENSIONS = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}  # as pytorch-fid
STATS_FORMAT = "dcgan-fid-stats/1"
FEATURES_FORMAT = "dcgan-fid-features/1"
K_PR, K_DC = 3, 5  # neighbours for precision/recall (StyleGAN2-ADA's pr50k3) and density/coverage (Naeem et al.)


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
    as preprocess.py makes training data (the CelebA face box for aligned
    photos of CelebA's 178:218 shape at any size, else the centred square), so a generator is scored against
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
    aligned = celeba.celeba_scale(*image_size) is not None
    crop = celeba.CELEBA_CROP if aligned else "square"
    (buffer,) = decode.load_image(str(file.parent), file.name, (size,), crop, aligned)
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
        found = knn_radii(acts.to(float64_device(device)), missing)
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
    dev = float64_device(device)
    real_n, fake_n = len(real["features"]), len(fake_features)
    if real_n <= K_DC or fake_n <= K_PR:
        raise UserError(f"--pr needs more than {K_DC} real and {K_PR} generated images (got {real_n} and {fake_n})")
    return manifold_metrics(real["features"].to(dev), fake_features.to(dev), K_PR, K_DC,
                            real_radii=real.get("radii") or None)


def nearest_neighbour_picture(samples: np.ndarray, sample_features, train: dict, k: int, path, device) -> None:
    """A grid, one row per sample: the sample (uint8 NHWC), then its ``k``
    nearest training images in Inception feature space, written to ``path``."""
    dev = float64_device(device)
    _, index = nearest_neighbours(sample_features.to(dev), train["features"].to(dev), k)
    rows = [np.concatenate([samples[i : i + 1], train["images"][np.asarray(row)]]) for i, row in enumerate(index.cpu().tolist())]
    utils.save_grid(np.concatenate(rows), path, nrow=k + 1)

