"""attributes.py and generator.py --edit / --sweep: the classifier learns
planted attributes and reports them in its line format; directions recover a
planted linear attribute; edits keep the seeds; one-line errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attributes
import generator
from editing.classifier import (AttributeNet, as_input, auc, balanced_accuracy, balanced_bce, class_weights,
                                load_labels, save_classifier)
from editing.directions import condition, directions_path, edit_scores, fit_direction
from editing.latents import CONCEPT_SEED
from network import Generator, recompute_bn_stats, save_generator_params
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\w+)  balanced accuracy (\d\.\d\d)  AUC (\d\.\d\d)  \(n=(\d+), (\d+) positive\)$")
EDIT = re.compile(r"^(\w+)  edit success (\d\.\d\d)  other attributes moved (\d\.\d\d)$")
GEN_CONFIG = {"size": 32, "nz": 16, "ngf": 4, "ndf": 4, "nc": 3}


def labelled_array(path: Path, n: int, seed: int) -> np.ndarray:
    """Noise faces with two planted attributes, saved as preprocess.py saves
    CelebA: Bright_Top (the top half brighter) and Red (a red cast); the
    first 5 faces have no Red label (0). -> the labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, (n, 32, 32, 3), dtype=np.uint8)
    bright, red = rng.random(n) < 0.5, rng.random(n) < 0.3
    images[bright, :16] += 100
    images[red, :, :, 0] += 120
    labels = np.where(np.stack([bright, red, ~bright], 1), 1, -1).astype(np.int8)
    labels[:5, 1] = 0
    np.save(path, images)
    np.savez(path.with_name(path.stem + ".attrs.npz"), names=np.array(["Bright_Top", "Red", "Dark_Top"]),
             labels=labels, files=np.array([f"{k:06d}.jpg" for k in range(n)]))
    return labels


def test_the_classifier_learns_planted_attributes_and_reports_them(tmp_path, capsys, one_thread):
    labelled_array(tmp_path / "train_32.npy", 192, seed=0)
    labels = labelled_array(tmp_path / "test_32.npy", 120, seed=1)
    clf = tmp_path / "clf" / "attrs.pt"
    attributes.main(["train", "--data", str(tmp_path / "train_32.npy"), "--out", str(clf), "--attributes",
                     "Bright_Top,Red", "--epochs", "4", "--width", "4", "--batch-size", "16", "--lr", "1e-2",
                     "--device", "cpu"])
    blob = torch.load(clf, map_location="cpu", weights_only=True)
    assert blob["config"]["attributes"] == ["Bright_Top", "Red"] and blob["config"]["trained_on"]["rows"] == [0, 192]
    assert all(isinstance(v, torch.Tensor) for v in blob["state"].values())
    capsys.readouterr()

    attributes.main(["evaluate", "--classifier", str(clf), "--data", str(tmp_path / "test_32.npy"), "--device", "cpu"])
    lines = [LINE.match(line) for line in capsys.readouterr().out.splitlines() if "balanced accuracy" in line]
    assert [m.group(1) for m in lines] == ["Bright_Top", "Red"]
    for m, column in zip(lines, labels.T):
        assert int(m.group(4)) == (column != 0).sum() and int(m.group(5)) == (column > 0).sum()
        assert float(m.group(2)) >= 0.9 and float(m.group(3)) >= 0.95, m.group(0)
    row = json.loads((clf.parent / "results.jsonl").read_text().splitlines()[-1])
    assert row["n"] == 120 and [s["attribute"] for s in row["scores"]] == ["Bright_Top", "Red"]
    assert row["scores"][1]["n"] == 115

    # --results elsewhere; rows of the training array itself are flagged as not held out
    attributes.main(["evaluate", "--classifier", str(clf), "--data", str(tmp_path / "train_32.npy"),
                     "--rows=-50:", "--results", str(tmp_path / "r.jsonl"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "warning: 50 of these 50 faces were used in training" in out
    assert json.loads((tmp_path / "r.jsonl").read_text())["rows"] == [142, 192]


def test_scores_and_the_balanced_loss():
    logits, labels = np.array([0.1, 0.4, 0.35, 0.8, 5.0]), np.array([-1, -1, 1, 1, 0])
    assert auc(logits, labels) == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered right
    assert balanced_accuracy(logits, labels) == pytest.approx(0.5)  # every face called positive at logit 0
    assert balanced_accuracy(logits, np.array([1, 1, 1, 1, 0])) is None
    y = torch.tensor([[1.0], [-1.0], [-1.0], [-1.0], [0.0]])
    w_pos, w_neg = class_weights(y)
    assert w_pos.item() == pytest.approx(2.0) and w_neg.item() == pytest.approx(4 / 6)  # each class half the weight
    a = balanced_bce(torch.tensor([[1.0], [0.0], [0.0], [0.0], [-9.0]]), y, (w_pos, w_neg))
    b = balanced_bce(torch.tensor([[1.0], [0.0], [0.0], [0.0], [9.0]]), y, (w_pos, w_neg))
    assert a == b  # an unlabelled face adds no loss


def test_a_fitted_direction_recovers_a_planted_linear_attribute():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 16, generator=gen)
    planted = torch.nn.functional.normalize(torch.randn(2, 16, generator=gen), dim=1)
    planted[1] -= (planted[1] @ planted[0]) * planted[0]  # two independent attributes
    planted[1] /= planted[1].norm()
    logits = 3 * (z @ planted.T - 0.5) + 0.3 * torch.randn(4000, 2, generator=gen)
    normals = torch.stack([fit_direction(z, logits[:, k], tail=0.1) for k in range(2)])
    assert (normals * planted).sum(1).min() > 0.97 and torch.allclose(normals.norm(dim=1), torch.ones(2))

    def probabilities(zs):  # a classifier that reads the planted attributes off the latent
        return torch.sigmoid(4 * (zs @ planted.T - 0.5))

    scores = edit_scores(probabilities, z[:500], ["A", "B"], normals, step=3.0)
    assert all(s["edit_success"] > 0.95 and s["other_moved"] < 0.05 for s in scores), scores
    # conditional: A's direction with B's normal projected out leaves B's boundary alone
    tilted = torch.nn.functional.normalize(normals[0] + normals[1], dim=0)
    kept = condition(["A", "B"], torch.stack([tilted, normals[1]]), keep=["B"])
    assert kept[0] @ normals[1] == pytest.approx(0, abs=1e-6) and kept[0].norm() == pytest.approx(1)
    assert torch.equal(kept[1], normals[1])


def test_the_default_fit_edits_a_rare_attribute_across_its_boundary():
    # glasses-like: 5 % of faces, the classifier's boundary 1.64 out along the planted normal
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 16, generator=gen)
    planted = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    logits = 4 * (z @ planted - 1.64) + torch.randn(20000, generator=gen)
    normal = fit_direction(z, logits)  # every face, split by the classifier's decision
    assert normal @ planted > 0.98 and normal.norm() == pytest.approx(1)

    def probabilities(zs):
        return torch.sigmoid(4 * (zs @ planted - 1.64))[:, None]

    assert edit_scores(probabilities, z[:2000], ["A"], normal[None], 3.0)[0]["edit_success"] > 0.85
    # a classifier that calls every face positive still gives the direction its confidence grows in
    assert fit_direction(z, logits + 100) @ planted > 0.95


def varied_generator() -> Generator:
    """A random tiny generator whose faces differ visibly: its last layer
    scaled up and its BatchNorm statistics estimated."""
    net = Generator(32, nz=16, ngf=4)
    with torch.no_grad():
        net.main[-2].weight.mul_(20)
    return recompute_bn_stats(net, 256)


def centred_classifier(G, names) -> AttributeNet:
    """A random classifier whose logits have median 0 and spread 1 on G's faces."""
    net = AttributeNet(len(names), width=4)
    images = as_input(G(generator.latents(range(200), 16)), 32)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # one forward in train mode: the statistics of these faces
        net.train()(images)
        logits = net.eval()(images)
        net.head[1].weight.div_(logits.std(0)[:, None])
        net.head[1].bias.sub_(logits.median(0).values).div_(logits.std(0))
    return net


@pytest.fixture
def edit_setup(tmp_path, capsys):
    """A tiny generator (distinct raw and EMA weights) with directions for
    Smiling and Male fitted by `attributes.py directions` with a random classifier."""
    torch.manual_seed(0)
    params = tmp_path / "g.params"
    save_generator_params(params, GEN_CONFIG, varied_generator().state_dict(), varied_generator().state_dict())
    G, _ = generator.load_generator(params)
    clf = tmp_path / "clf.pt"
    save_classifier(clf, centred_classifier(G, ["Smiling", "Male"]).state_dict(),
                    {"attributes": ["Smiling", "Male"], "size": 32, "width": 4})
    attributes.main(["directions", "--params", str(params), "--classifier", str(clf), "--n", "200", "--eval-n",
                     "60", "--tail", "0.25", "--keep", "Male", "--device", "cpu"])
    return params, clf, capsys.readouterr().out


def run_generator(params, out, *flags):
    generator.main(["-n", "3", "--params", str(params), "--out", str(out), "--device", "cpu", *flags])
    return [np.asarray(Image.open(out / f"{k:06d}.png")) for k in range(3)]


def test_directions_are_stored_beside_the_params_and_edit_the_same_seeds(edit_setup, tmp_path):
    params, _, out = edit_setup
    assert [EDIT.match(line).group(1) for line in out.splitlines() if " edit success " in line] == ["Smiling", "Male"]
    with np.load(directions_path(params)) as blob:
        assert list(blob["names"]) == ["Smiling", "Male"] and list(blob["keep"]) == ["Male"]
        vectors, normals = torch.from_numpy(blob["vectors"]), torch.from_numpy(blob["normals"])
    assert vectors[0] @ normals[1] == pytest.approx(0, abs=1e-5)  # --keep Male
    assert vectors.norm(dim=1).tolist() == pytest.approx([1, 1])

    plain = run_generator(params, tmp_path / "plain")
    assert all(np.array_equal(a, b) for a, b in zip(plain, run_generator(params, tmp_path / "zero", "--edit",
                                                                           "Smiling=0,Male=-0")))
    edited = run_generator(params, tmp_path / "edit", "--edit", "Smiling=+3")
    G, _ = generator.load_generator(params)
    (expected,) = generator.generate(G, generator.latents(range(3), 16) + 3 * vectors[0], "cpu", 3)
    assert all(np.array_equal(a, b) for a, b in zip(edited, expected))
    assert not any(np.array_equal(a, b) for a, b in zip(edited, plain))


def test_a_sweep_is_one_row_per_sample_from_minus_to_plus(edit_setup, tmp_path):
    params, _, _ = edit_setup
    plain = run_generator(params, tmp_path / "plain")
    generator.main(["-n", "3", "--params", str(params), "--out", str(tmp_path / "s"), "--sweep", "Smiling",
                    "--sweep-steps", "5", "--device", "cpu"])
    sweep = np.asarray(Image.open(tmp_path / "s" / "sweep_Smiling.png"))
    assert sweep.shape == (3 * 34 + 2, 5 * 34 + 2, 3) and not (tmp_path / "s" / "grid.png").exists()
    for row in range(3):  # the middle column is the unedited face
        assert np.array_equal(sweep[2 + row * 34 : 34 + row * 34, 2 + 2 * 34 : 34 + 2 * 34], plain[row])
    assert not np.array_equal(sweep[2:34, 2:34], plain[0])
    generator.main(["-n", "2", "--params", str(params), "--out", str(tmp_path / "two"), "--sweep", "Smiling,Male",
                    "--device", "cpu"])
    both = np.asarray(Image.open(tmp_path / "two" / "sweeps.png"))
    smiling, male = (np.asarray(Image.open(tmp_path / "two" / f"sweep_{n}.png")) for n in ("Smiling", "Male"))
    assert both.shape == (14 + smiling.shape[0] + 14 + male.shape[0], smiling.shape[1], 3)
    assert np.array_equal(both[14 : 14 + smiling.shape[0]], smiling) and np.array_equal(both[-male.shape[0]:], male)
    assert both[:14].any() and not both[:14, -20:].any()  # the name written in the band, the rest black


def test_edit_errors_are_one_line_that_says_what_exists(edit_setup, tmp_path):
    params, clf, _ = edit_setup
    with pytest.raises(UserError, match=r"no direction 'Blond' in .*g\.directions\.npz; it has Smiling, Male "
                                        r"\(make others with `python attributes\.py directions"):
        run_generator(params, tmp_path / "x", "--edit", "Smiling=1,Blond=2")
    with pytest.raises(UserError, match="not NAME=STRENGTH"):
        run_generator(params, tmp_path / "x", "--edit", "Smiling+1")
    with pytest.raises(UserError, match=r"made for other weights \(ema\) than the raw weights of .*g\.params now; "
                                        r"make them again with `python attributes\.py directions .* --no-ema`"):
        run_generator(params, tmp_path / "x", "--sweep", "Smiling", "--no-ema")
    other = tmp_path / "other.params"
    save_generator_params(other, GEN_CONFIG, varied_generator().state_dict())
    with pytest.raises(UserError, match=r"other\.params has no attribute directions \(.*other\.directions\.npz "
                                        r"not found\); make them with `python attributes\.py directions "
                                        r"--params .*other\.params --classifier"):
        run_generator(other, tmp_path / "x", "--edit", "Smiling=1")
    directions_path(params).rename(directions_path(other))  # another generator's directions
    with pytest.raises(UserError, match=r"made for other weights \(ema\) than the raw weights of .*other\.params"):
        run_generator(other, tmp_path / "x", "--edit", "Smiling=1")
    with pytest.raises(UserError, match=r"no attribute 'Blond' in .*clf\.pt; it has Smiling, Male"):
        attributes.main(["directions", "--params", str(params), "--classifier", str(clf), "--attributes", "Blond"])
    with pytest.raises(UserError, match=r"no attribute labels beside .*g\.npy: .*g\.attrs\.npz not found"):
        np.save(tmp_path / "g.npy", np.zeros((2, 32, 32, 3), np.uint8))
        attributes.main(["train", "--data", str(tmp_path / "g.npy")])
    with pytest.raises(UserError, match="--rows '7' is not a slice"):
        attributes.parse_rows("7", 10)
    proc = subprocess.run([sys.executable, str(ROOT / "generator.py"), "--params", str(other), "--sweep", "Nope",
                           "--out", str(tmp_path / "x")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_labels_are_read_in_the_order_asked(tmp_path):
    labels = labelled_array(tmp_path / "a_32.npy", 8, seed=2)
    names, picked = load_labels(tmp_path / "a_32.npy", ["Red", "Bright_Top"], count=8)
    assert names == ["Red", "Bright_Top"] and np.array_equal(picked, labels[:, [1, 0]])
    with pytest.raises(UserError, match="has 8 rows but .* holds 9 images"):
        load_labels(tmp_path / "a_32.npy", count=9)


def test_concept_arithmetic_is_the_generator_at_mean_a_minus_mean_b_plus_mean_c(edit_setup, tmp_path, capsys):
    params, clf, _ = edit_setup
    expression = "Smiling,~Male - ~Smiling,~Male + 5,6"
    generator.main(["--params", str(params), "--out", str(tmp_path / "o"), "--arithmetic", expression,
                    "--classifier", str(clf), "--concept-top", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert re.search(r"^Smiling,~Male: the mean of the 4 faces of 5000 sampled that .*clf\.pt puts most "
                     r"confidently under it \(each at probability 0\.\d{3} or more\)$", out, re.M)
    # independently: label the pool's faces, take each condition's 4 most probable, average their latents
    G, _ = generator.load_generator(params)
    net = AttributeNet(2, width=4)
    net.load_state_dict(torch.load(clf, weights_only=True)["state"])
    z = generator.latents(range(CONCEPT_SEED, CONCEPT_SEED + 5000), 16)
    with torch.no_grad():
        p = torch.sigmoid(net.eval()(as_input(G(z), 32)).double())
    smiling_woman = z[(p[:, 0] * (1 - p[:, 1])).topk(4).indices].mean(0)
    neutral_woman = z[((1 - p[:, 0]) * (1 - p[:, 1])).topk(4).indices].mean(0)
    seeds = generator.latents([5, 6], 16).mean(0)
    want = [smiling_woman, neutral_woman, seeds, smiling_woman - neutral_woman + seeds]
    (expected,) = generator.generate(G, torch.stack(want), "cpu", 4)
    picture = np.asarray(Image.open(tmp_path / "o" / "arithmetic.png"))
    tiles = [picture[2 : 2 + 32, 2 + c * 34 : 2 + c * 34 + 32] for c in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(tiles, expected))
    with pytest.raises(UserError, match=r"no attribute 'Blond' in the attribute classifier; it has Smiling, Male"):
        generator.main(["--params", str(params), "--out", str(tmp_path / "x"), "--arithmetic", "Blond - 3",
                        "--classifier", str(clf)])
    with pytest.raises(UserError, match=r"--classifier .*nope\.pt not found: attribute conditions need"):
        generator.main(["--params", str(params), "--out", str(tmp_path / "x"), "--arithmetic", "Male - 3",
                        "--classifier", str(tmp_path / "nope.pt")])
    assert not (tmp_path / "x").exists()
