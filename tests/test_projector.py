"""projector.py and editing/projection.py: a generated face comes back, an
edit of strength 0 is the projection bit for bit, --steps 0 writes the
target alone, results.jsonl's fields, the tuned copy takes its base's
directions (and no other generator's), and generator.py --latents renders
what the projector wrote. Photos here are CelebA-aligned canvases (178x218),
so no face detector is needed."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import generator
import projector
from editing.directions import directions_path, load_directions, read_directions, save_directions
from editing.latents import latents
from editing.projection import locality_latents, project_z, psnr, ssim, to_sphere, tune_generator
from network import load_generator, read_params, save_generator_params
from utils import UserError
from utils.paths import PRETRAINED_PARAMS

FACE_BOX = (19, 39, 159, 179)  # the project's CelebA face box on the 178x218 canvas


def png(path):
    return np.asarray(Image.open(path))


def pasted_photo(face: np.ndarray, path):
    """A 178x218 CelebA-aligned 'photo' whose face box holds ``face`` (64x64 uint8), enlarged."""
    canvas = Image.new("RGB", (178, 218), (90, 80, 70))
    canvas.paste(Image.fromarray(face).resize((140, 140), Image.LANCZOS), FACE_BOX[:2])
    canvas.save(path)
    return path


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return load_generator(PRETRAINED_PARAMS)


@pytest.fixture(scope="module")
def projected(shipped, tmp_path_factory):
    """One projector run on a generated face pasted into a photo: (out folder, its face folder, G(z*))."""
    tmp = tmp_path_factory.mktemp("proj")
    G, _ = shipped
    with torch.no_grad():
        face = G(to_sphere(latents([7], 100)))
    truth = (face.add(1).mul(127.5).round().clamp(0, 255).byte())[0].permute(1, 2, 0).numpy()
    photo = pasted_photo(truth, tmp / "someone.png")
    out = tmp / "projections"
    projector.main([str(photo), "--out", str(out), "--steps", "30", "--tune-steps", "80", "--restarts", "2",
                    "--candidates", "64", "--edit", "Smiling=+0", "--sweep", "Male", "--sweep-steps", "3"])
    return out, out / "someone", truth


def test_project_z_and_tuning_recover_a_generated_face(shipped):
    G, _ = shipped
    z_true = to_sphere(latents([11], 100))
    with torch.no_grad():
        target = G(z_true)
        start = G(to_sphere(latents([12], 100)))
    z = project_z(G, target, steps=40, restarts=2, candidates=64)
    assert z.shape == (1, 100) and torch.allclose(z.norm(dim=1), torch.tensor([10.0]))
    with torch.no_grad():
        found = psnr(G(z), target).item()
    assert found > psnr(start, target).item() + 5  # far closer than another face (19.6 vs 12.9 dB measured)
    before = [p.clone() for p in G.parameters()]
    tuned = tune_generator(G, z[0], target[0], steps=60)
    assert all(torch.equal(a, b) for a, b in zip(before, G.parameters()))  # the base generator is untouched
    with torch.no_grad():
        assert psnr(tuned(z), target).item() >= 30 > found
        assert ssim(tuned(z), target).item() > 0.95


def test_tuning_holds_the_original_where_a_named_edit_lands(shipped):
    """With named directions, the locality term also holds pivot +- radius x one of them, so the tuned
    copy's face there stays nearer the original generator's: edits keep working on a tuned projection."""
    G, _ = shipped
    z, d = to_sphere(latents([3], 100)), torch.nn.functional.normalize(latents([4], 100), dim=1)
    held = locality_latents(z, 3.0, 2, d, torch.Generator().manual_seed(0))
    assert held.shape == (3, 100) and torch.allclose((held - z).norm(dim=1), torch.full((3,), 3.0))
    assert torch.allclose((held[-1] - z).abs(), 3 * d[0].abs(), atol=1e-5)  # the last one: along +-d
    with torch.no_grad():
        target, original_edit = G(to_sphere(latents([5], 100)))[0], G(z + 3 * d)
    away = {}
    for named in (None, d):
        tuned = tune_generator(G, z[0], target, steps=40, locality=1.0, directions=named)
        with torch.no_grad():
            away[named is None] = (tuned(z + 3 * d) - original_edit).pow(2).mean().item()
    assert away[False] < 0.75 * away[True]  # 0.035 vs 0.060 measured


def test_ssim_is_one_for_equal_images_and_falls_with_noise():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = [ssim(x, (x + s * torch.randn_like(x)).clamp(-1, 1)) for s in (0.05, 0.3, 1.0)]
    assert (noisy[0] > noisy[1]).all() and (noisy[1] > noisy[2]).all() and (noisy[2] < 0.5).all()
    assert (ssim(x, -x) < 0).all()  # inverted structure
    assert torch.allclose(psnr(x, x + 0.02), torch.full((2,), 40.0), atol=1e-3)  # 0.01 on [0, 1]: 40 dB


def test_the_pasted_generated_face_comes_back(projected):
    out, folder, truth = projected
    row = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert row["psnr"] >= 30 and row["ssim"] >= 0.9
    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1

    # the generated face itself, through the paste's enlarging and the crop's shrinking
    assert psnr(tensor(png(folder / "projected.png")), tensor(truth)).item() >= 28


def test_results_row_and_files(projected):
    out, folder, _ = projected
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["target.png", "projected.png", "compare.png", "z.npy", "generator.params", "generator.directions.npz",
         "edited.png", "sweep_Male.png"])
    row = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    for key in ("psnr", "ssim", "psnr_z", "ssim_z", "seconds", "seconds_align", "box", "eye_distance", "settings"):
        assert key in row, key
    assert row["psnr"] > row["psnr_z"]  # tuning helped
    assert row["box"] == [0, 0, 178, 218] and row["aligned_input"] is True
    assert row["settings"]["steps"] == 30 and row["settings"]["tune_steps"] == 80
    assert png(folder / "target.png").shape == (64, 64, 3)
    assert np.load(folder / "z.npy", allow_pickle=False).shape == (100,)
    assert png(folder / "compare.png").shape[1] > 5 * 64  # photo | projection | the edit | three named edits


def test_an_edit_of_strength_zero_is_the_projection_bit_for_bit(projected):
    _, folder, _ = projected
    assert np.array_equal(png(folder / "edited.png"), png(folder / "projected.png"))


def test_generator_latents_renders_the_projection_and_its_edits(projected, tmp_path):
    _, folder, _ = projected
    params, z = str(folder / "generator.params"), str(folder / "z.npy")
    generator.main(["--params", params, "--latents", z, "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert np.array_equal(png(tmp_path / "a" / "000000.png"), png(folder / "projected.png"))
    generator.main(["--params", params, "--latents", z, "--out", str(tmp_path / "b"), "--edit", "Smiling=+3",
                    "--device", "cpu"])
    assert not np.array_equal(png(tmp_path / "b" / "000000.png"), png(folder / "projected.png"))
    # a stack of latents: one image each
    np.save(tmp_path / "stack.npy", np.stack([np.load(z)] * 3))
    generator.main(["--params", params, "--latents", str(tmp_path / "stack.npy"), "--out", str(tmp_path / "c"),
                    "--device", "cpu"])
    assert sorted(p.name for p in (tmp_path / "c").glob("0*.png")) == ["000000.png", "000001.png", "000002.png"]
    np.save(tmp_path / "bad.npy", np.zeros((2, 7), np.float32))
    with pytest.raises(UserError, match=r"\(100,\) or \(N, 100\)"):
        generator.main(["--params", params, "--latents", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "d")])


def test_the_tuned_copy_takes_its_bases_directions_and_no_others(projected, tmp_path):
    _, folder, _ = projected
    state, config = read_params(folder / "generator.params")
    base, _ = load_generator(PRETRAINED_PARAMS)
    tuned, _ = load_generator(folder / "generator.params")
    assert config["weights"] == "ema" and config["tuned_for"] == "someone.png"
    book = load_directions(folder / "generator.params", tuned, tuned_from=config["tuned_from"])
    assert "Smiling" in book.names
    # the same weights without the record of their base: refused, as any other weights are
    bare = tmp_path / "bare.params"
    save_generator_params(bare, {k: v for k, v in config.items() if k != "tuned_from"}, None, state)
    shutil.copy(directions_path(folder / "generator.params"), directions_path(bare))
    with pytest.raises(UserError, match="made for other weights"):
        generator.main(["--params", str(bare), "--latents", str(folder / "z.npy"), "--edit", "Smiling=+3",
                        "--out", str(tmp_path / "x")])
    # directions of another generator beside the tuned copy: refused too
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "generator.params", other / "generator.params")
    blob = read_directions(directions_path(PRETRAINED_PARAMS), PRETRAINED_PARAMS)
    save_directions(directions_path(other / "generator.params"), blob["names"], blob["vectors"], blob["normals"],
                    blob["keep"], "0" * 32, blob["meta"])
    with pytest.raises(UserError, match="made for other weights"):
        generator.main(["--params", str(other / "generator.params"), "--latents", str(folder / "z.npy"),
                        "--edit", "Smiling=+3", "--out", str(tmp_path / "y")])
    assert base is not None


def test_steps_zero_writes_the_aligned_target_alone(shipped, tmp_path):
    photo = pasted_photo(np.full((64, 64, 3), 128, np.uint8), tmp_path / "grey.jpg")
    projector.main([str(photo), "--out", str(tmp_path / "p"), "--steps", "0"])
    assert [p.name for p in (tmp_path / "p").rglob("*") if p.is_file()] == ["target.png"]
    assert png(tmp_path / "p" / "grey" / "target.png").shape == (64, 64, 3)


def test_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(UserError, match="not found"):
        projector.main([str(tmp_path / "missing.jpg")])
    with pytest.raises(UserError):
        projector.main([str(tmp_path / "notes.txt"), "--out", str(tmp_path / "p")])
    with pytest.raises(UserError, match="--restarts"):
        projector.main([str(tmp_path / "notes.txt"), "--restarts", "0"])
    with pytest.raises(UserError, match="no direction 'Smile'"):
        projector.main([str(tmp_path / "notes.txt"), "--edit", "Smile=+3", "--out", str(tmp_path / "p")])
