"""generator.py: per-seed determinism, both params formats, EMA choice,
interpolation, and one-line errors."""
import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generator
from editing.latents import ConceptPool
from network import Generator, save_generator_params
from utils import UserError
from utils.paths import CLASSIFIER, PRETRAINED_PARAMS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"size": 32, "nz": 16, "ngf": 4, "ndf": 4, "nc": 3}


def pngs(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("[0-9]*.png"))}


@pytest.fixture
def params(tmp_path):
    """generator.params with distinct raw and EMA weights."""
    torch.manual_seed(0)
    raw, ema = Generator(32, nz=16, ngf=4), Generator(32, nz=16, ngf=4)
    path = tmp_path / "generator.params"
    save_generator_params(path, CONFIG, raw.state_dict(), ema.state_dict())
    return path


def test_image_k_is_identical_whatever_the_batch_size(params, tmp_path):
    generator.main(["-n", "5", "--params", str(params), "--out", str(tmp_path / "a"), "--batch-size", "1",
                    "--device", "cpu"])
    generator.main(["-n", "5", "--params", str(params), "--out", str(tmp_path / "b"), "--batch-size", "4",
                    "--device", "cpu"])
    a, b = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert list(a) == [f"{k:06d}.png" for k in range(5)]
    assert all(a[k].shape == (32, 32, 3) and np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "grid.png").is_file()
    # image k is seed + k: seed 2 image 0 is seed 0 image 2, and images differ from each other
    generator.main(["-n", "1", "--params", str(params), "--out", str(tmp_path / "c"), "--seed", "2",
                    "--device", "cpu"])
    assert np.array_equal(pngs(tmp_path / "c")["000000.png"], a["000002.png"])
    assert not np.array_equal(a["000000.png"], a["000001.png"])


def test_bare_classic_state_dict_loads_and_matches_the_network(tmp_path):
    torch.manual_seed(1)
    net = Generator(64, nz=100, ngf=4).eval()
    torch.save(net.state_dict(), tmp_path / "generator.params")  # the classic course code's format
    generator.main(["-n", "2", "--params", str(tmp_path / "generator.params"), "--out", str(tmp_path / "s"),
                    "--device", "cpu"])
    images = pngs(tmp_path / "s")
    assert images["000000.png"].shape == (64, 64, 3)
    with torch.no_grad():
        expected = net(generator.latents([0, 1], 100))
    assert np.array_equal(images["000001.png"], generator.utils.to_uint8(expected)[1])


def test_ema_weights_by_default_raw_with_no_ema(params, tmp_path):
    blob = torch.load(params, weights_only=True)
    nets = {}
    for key in ("generator", "generator_ema"):
        nets[key] = Generator(32, nz=16, ngf=4)
        nets[key].load_state_dict(blob[key])
        nets[key].eval()
    generator.main(["-n", "1", "--params", str(params), "--out", str(tmp_path / "ema"), "--device", "cpu"])
    generator.main(["-n", "1", "--params", str(params), "--out", str(tmp_path / "raw"), "--no-ema",
                    "--device", "cpu"])
    z = generator.latents([0], 16)
    with torch.no_grad():
        want = {k: generator.utils.to_uint8(net(z))[0] for k, net in nets.items()}
    assert not np.array_equal(want["generator"], want["generator_ema"])
    assert np.array_equal(pngs(tmp_path / "ema")["000000.png"], want["generator_ema"])
    assert np.array_equal(pngs(tmp_path / "raw")["000000.png"], want["generator"])


def test_export_keeps_the_ema_weights_alone_and_samples_the_same_faces(params, tmp_path):
    exported = tmp_path / "shared" / "faces.params"
    assert generator.main(["--params", str(params), "--export", str(exported)]) == 0
    blob = torch.load(exported, weights_only=True)
    assert blob["generator"] is None and blob["config"]["weights"] == "ema"
    assert exported.stat().st_size < 0.7 * params.stat().st_size
    for source, out in ((params, "from_run"), (exported, "from_export")):
        generator.main(["-n", "3", "--params", str(source), "--out", str(tmp_path / out), "--device", "cpu"])
    a, b = pngs(tmp_path / "from_run"), pngs(tmp_path / "from_export")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match=r"EMA weights alone.*\(--no-ema\)"):
        generator.main(["-n", "1", "--params", str(exported), "--no-ema", "--out", str(tmp_path / "r")])
    raw_only = tmp_path / "raw.params"
    save_generator_params(raw_only, CONFIG, Generator(32, nz=16, ngf=4).state_dict())
    with pytest.raises(UserError, match="no EMA weights to export"):
        generator.main(["--params", str(raw_only), "--export", str(tmp_path / "x.params")])
    assert not (tmp_path / "x.params").exists()


def test_interpolation_grid_walks_between_the_sample_latents(params, tmp_path):
    generator.main(["-n", "2", "--params", str(params), "--out", str(tmp_path), "--interpolate", "3",
                    "--interp-steps", "5", "--device", "cpu"])
    grid = np.asarray(Image.open(tmp_path / "interpolation.png"))
    pad = 2
    assert grid.shape == (3 * (32 + pad) + pad, 5 * (32 + pad) + pad, 3)
    tile = lambda r, c: grid[pad + r * 34 : pad + r * 34 + 32, pad + c * 34 : pad + c * 34 + 32]
    samples = pngs(tmp_path)
    assert np.array_equal(tile(0, 0), samples["000000.png"])  # walk 0 starts at image 0 ...
    assert np.array_equal(tile(0, 4), samples["000001.png"])  # ... and ends at image 1
    assert not np.array_equal(tile(0, 2), tile(0, 0)) and not np.array_equal(tile(1, 0), tile(0, 0))


def test_interpolation_gif_loops_through_the_frames_of_the_walk(params, tmp_path):
    from PIL import ImageSequence

    generator.main(["-n", "1", "--params", str(params), "--out", str(tmp_path), "--interpolate", "4",
                    "--interp-steps", "6", "--gif", "--device", "cpu"])
    grid = np.asarray(Image.open(tmp_path / "interpolation.png"))
    tile = lambda image, r, c: image[2 + r * 34 : 2 + r * 34 + 32, 2 + c * 34 : 2 + c * 34 + 32].astype(int)
    with Image.open(tmp_path / "interpolation.gif") as gif:
        assert gif.info["loop"] == 0  # loops forever
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 6 and frames[0].shape == (2 * 34 + 2, 2 * 34 + 2, 3)  # 4 walks in a 2x2 grid
    for t, frame in enumerate(frames):  # frame t shows every walk at step t (up to the GIF's 256 colours)
        for walk in range(4):
            error = [np.abs(tile(frame, *divmod(walk, 2)) - tile(grid, walk, u)).mean() for u in range(6)]
            assert int(np.argmin(error)) == t and error[t] < 1


def test_gif_without_interpolate_is_refused(params, tmp_path):
    with pytest.raises(UserError, match="--gif animates the latent walks: add --interpolate K"):
        generator.main(["--params", str(params), "--out", str(tmp_path / "o"), "--gif"])
    assert not (tmp_path / "o").exists()


def test_arithmetic_parses_seed_lists_and_attribute_conditions_joined_by_plus_and_minus():
    seeds = lambda terms: [(t.sign, t.seeds) for t in terms]
    assert seeds(generator.parse_arithmetic("3,17,42 - 5,8,9 + 11,23,31")) == [(1, [3, 17, 42]), (-1, [5, 8, 9]),
                                                                                (1, [11, 23, 31])]
    assert seeds(generator.parse_arithmetic(" 1 ,2+3-4 ")) == [(1, [1, 2]), (1, [3]), (-1, [4])]
    terms = generator.parse_arithmetic("Smiling, ~Male - ~ Smiling,~Male + 7")
    assert [(t.sign, t.seeds, t.condition) for t in terms] == [
        (1, None, (("Smiling", True), ("Male", False))), (-1, None, (("Smiling", False), ("Male", False))),
        (1, [7], None)]
    assert [t.text() for t in terms] == ["Smiling,~Male", "~Smiling,~Male", "7"]


@pytest.mark.parametrize("text, why", [("3,17 -", "missing after a sign"), ("- 3 + 4", "missing before the first"),
                                       ("3", "at least two"), ("3,,4 + 5", "'3,,4' is neither"),
                                       ("a b - c", "'a b' is neither"), ("3 * 4", "'3 \\* 4' is neither"),
                                       ("", "no term"), ("1.5 + 2", "'1.5' is neither"),
                                       ("Smiling,3 - Male", "'Smiling,3' is neither"), ("~~Male - Male", "is neither")])
def test_malformed_arithmetic_is_one_line_naming_the_fault(text, why):
    with pytest.raises(UserError, match=why) as err:
        generator.parse_arithmetic(text)
    assert "\n" not in str(err.value) and "e.g. \"3,17,42 - 5,8,9 + 11,23,31\"" in str(err.value)


def test_arithmetic_result_is_the_generator_at_the_signed_sum_of_mean_latents(params, tmp_path):
    generator.main(["--params", str(params), "--out", str(tmp_path), "--arithmetic", "3,17,42 - 5,8,9 + 11,23,31",
                    "--device", "cpu"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arithmetic.png", "generator.params"]
    picture = np.asarray(Image.open(tmp_path / "arithmetic.png"))
    assert picture.shape == (2 * 34 + 2, 8 * 34 + 2, 3)  # mean faces + result; 8 noisy results
    tile = lambda r, c: picture[2 + r * 34 : 2 + r * 34 + 32, 2 + c * 34 : 2 + c * 34 + 32]
    net = Generator(32, nz=16, ngf=4)
    net.load_state_dict(torch.load(params, weights_only=True)["generator_ema"])
    mean = lambda seeds: generator.latents(seeds, 16).mean(0)
    z = torch.stack([mean([3, 17, 42]), mean([5, 8, 9]), mean([11, 23, 31]),
                     mean([3, 17, 42]) - mean([5, 8, 9]) + mean([11, 23, 31])])
    with torch.no_grad():
        want = generator.utils.to_uint8(net.eval()(z))
    for col in range(4):  # the three mean faces, then the result
        assert np.array_equal(tile(0, col), want[col])
    noisy = [tile(1, col) for col in range(8)]
    assert all(not np.array_equal(face, want[3]) for face in noisy) and not np.array_equal(noisy[0], noisy[1])
    assert not tile(0, 4).any()  # the first row's unused cells stay black


def test_malformed_arithmetic_exits_2_with_one_line(params, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "generator.py"), "--params", str(params), "--arithmetic", "3,17 - ",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --arithmetic '3,17 - ': a term is missing after a sign")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="--arith-noise must be 0 or more"):
        generator.main(["--params", str(params), "--arithmetic", "1 - 2", "--arith-noise", "-1",
                        "--out", str(tmp_path / "out")])


def test_slerp_keeps_endpoints_and_norms():
    z0, z1 = torch.randn(4, 100), torch.randn(4, 100)
    path = generator.slerp(z0, z1, torch.linspace(0, 1, 7))
    assert torch.allclose(path[:, 0], z0, atol=1e-5) and torch.allclose(path[:, -1], z1, atol=1e-5)
    middle = path[:, 3].norm(dim=1)  # lerp would shrink to ~0.71 of the norm here
    assert (middle > 0.9 * torch.minimum(z0.norm(dim=1), z1.norm(dim=1))).all()


def test_n_below_one_is_an_error_before_anything_is_written(params, tmp_path):
    with pytest.raises(UserError, match="-n must be at least 1"):
        generator.main(["-n", "0", "--params", str(params), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_missing_params_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "generator.py"), "-n", "4", "--params", str(tmp_path / "nope.params"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.params" in lines[0] and "Traceback" not in result.stderr
    assert "python train.py" in lines[0] and "--params" in lines[0]  # says how to get one
    assert not (tmp_path / "out").exists()


def test_default_params_missing_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone: no generator.params yet
    with pytest.raises(UserError, match=r"params file not found: generator\.params\. Sample the pretrained CelebA "
                                        rf"faces with --params {re.escape(str(PRETRAINED_PARAMS))}, or train a "
                                        r"generator first "
                                        r"\(`python train.py \.\.\.` writes generator\.params.*--params PATH"):
        generator.main(["-n", "1"])
    assert not (tmp_path / "samples").exists()


def test_arithmetic_by_attribute_finds_the_shipped_classifier_from_another_folder(params, tmp_path, monkeypatch,
                                                                                   capsys):
    if not CLASSIFIER.is_file():
        pytest.skip(f"the shipped classifier {CLASSIFIER} is absent")
    monkeypatch.chdir(tmp_path)  # not the repository: a relative assets/... default would not be found
    assert Path(generator.build_parser().parse_args([]).classifier).resolve() == CLASSIFIER.resolve()
    monkeypatch.setattr(generator, "ConceptPool", functools.partial(ConceptPool, n=64))  # 5,000 faces: minutes on CPU
    assert generator.main(["--params", str(params), "--out", "out", "--device", "cpu",
                           "--arithmetic", "Smiling,~Male - ~Smiling,~Male + ~Smiling,Male"]) == 0
    assert (tmp_path / "out" / "arithmetic.png").is_file()
    assert f"the mean of the 3 faces of 64 sampled that {CLASSIFIER} puts most" in capsys.readouterr().out


def test_unreadable_params_is_a_user_error(tmp_path):
    (tmp_path / "bad.params").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="bad.params"):
        generator.main(["-n", "1", "--params", str(tmp_path / "bad.params"), "--out", str(tmp_path / "o")])
