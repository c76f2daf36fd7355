"""Safe, self-describing weights: the folder and the bare .safetensors that
`generator.py --export` writes load back to bit-identical faces, carry the
directions, refuse a pickle in disguise, and have a card whose numbers are
BENCHMARKS.md's; where huggingface_hub is installed, the hub loads the folder
offline and would upload exactly its files."""
import json
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import generator
from editing.directions import directions_path, load_directions, save_directions, weights_fingerprint
from editing.latents import latents
from export import model_card
from export.weights import CARD_FILE, CONFIG_FILE, MODEL_FILE, read_safetensors
from network import Generator, load_generator, save_generator_params
from utils import UserError, file_kind
from utils.paths import PRETRAINED_PARAMS, ROOT

try:  # optional: the hub round trips (requirements-export.txt)
    import huggingface_hub
except ImportError:
    huggingface_hub = None

needs_hub = pytest.mark.skipif(huggingface_hub is None,
                               reason="needs huggingface_hub (pip install -r requirements-export.txt)")
FOLDER_FILES = {MODEL_FILE, CONFIG_FILE, CARD_FILE, "directions.safetensors"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped generator exported as a folder and as a bare .safetensors."""
    out = tmp_path_factory.mktemp("export")
    for name in ("celeba_64", "celeba_64.safetensors"):
        assert generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(out / name)]) == 0
    return out


def faces(path, seeds=range(8)):
    g, config = load_generator(path)
    with torch.no_grad():
        return g(latents(seeds, config["nz"])), config


def test_folder_and_safetensors_give_bit_identical_faces(exported, one_thread):
    reference, config = faces(PRETRAINED_PARAMS)
    assert sorted(p.name for p in (exported / "celeba_64").iterdir()) == sorted(FOLDER_FILES)
    for path in (exported / "celeba_64", exported / "celeba_64.safetensors"):
        images, loaded = faces(path)
        assert torch.equal(images, reference), path
        assert loaded == config  # size, nz, ngf, the training options, weights "ema"
    assert json.loads((exported / "celeba_64" / CONFIG_FILE).read_text())["weights"] == "ema"


def test_generator_py_samples_and_edits_the_same_pngs_from_the_folder(exported, tmp_path, one_thread):
    for source, out in ((PRETRAINED_PARAMS, "params"), (exported / "celeba_64", "folder")):
        assert generator.main(["-n", "3", "--params", str(source), "--edit", "Smiling=+3", "--out",
                               str(tmp_path / out)]) == 0
    for name in ("000000.png", "000002.png", "grid.png"):
        assert (tmp_path / "params" / name).read_bytes() == (tmp_path / "folder" / name).read_bytes()


class Payload:
    """Unpickling it would create ``marker``: a stand-in for code run by a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_named_safetensors_is_refused_with_one_line_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"main.0.weight": Payload(marker)}))
    torch_zip = tmp_path / "zip.safetensors"
    torch.save(Generator(size=32, ngf=8).state_dict(), torch_zip)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / MODEL_FILE).write_bytes(evil.read_bytes())
    for path in (evil, torch_zip, tmp_path / "folder"):
        with pytest.raises(UserError) as err:
            load_generator(path)
        assert "refusing to load" in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(UserError, match="Python pickle, not a safetensors file"):
        generator.main(["-n", "1", "--params", str(evil), "--out", str(tmp_path / "s")])
    assert not marker.exists()
    truncated = tmp_path / "cut.safetensors"
    generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(tmp_path / "g.safetensors")])
    truncated.write_bytes((tmp_path / "g.safetensors").read_bytes()[:5000])
    with pytest.raises(UserError, match="damaged safetensors file"):
        load_generator(truncated)


def test_safetensors_bytes_load_under_any_name_and_a_foreign_state_dict_is_inferred(tmp_path, one_thread):
    from safetensors.torch import save_file  # core requirement, imported where this test needs it

    g = Generator(size=32, ngf=8).eval()
    save_file(g.state_dict(), str(tmp_path / "theirs.bin"))  # someone else's file: no metadata, another suffix
    loaded, config = load_generator(tmp_path / "theirs.bin")
    assert (config["size"], config["ngf"], config["weights"]) == (32, 8, "raw")
    z = torch.randn(2, 100)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))


def test_directions_travel_with_the_weights_they_were_made_for(exported, tmp_path):
    shipped = np.load(directions_path(PRETRAINED_PARAMS))
    for path in (exported / "celeba_64", exported / "celeba_64.safetensors"):
        g, config = load_generator(path)
        book = load_directions(path, g, config["weights"])  # the fingerprint check passes: the same weights
        assert book.names == [str(n) for n in shipped["names"]]
        assert torch.equal(book.vectors, torch.from_numpy(shipped["vectors"]))
    tensors, meta = read_safetensors(exported / "celeba_64" / "directions.safetensors")
    assert torch.equal(tensors["Smiling"], book.vector("Smiling"))  # what the card's snippet reads, by name
    assert meta["fingerprint"] == str(shipped["fingerprint"])

    # Directions made for the raw weights stay behind when the EMA weights are exported, and a stale file goes
    raw, ema = Generator(size=32, ngf=8), Generator(size=32, ngf=8)
    params = tmp_path / "run" / "generator.params"
    save_generator_params(params, {"size": 32, "ngf": 8}, raw.state_dict(), ema.state_dict())
    save_directions(directions_path(params), ["Smiling"], torch.ones(1, 100) / 10, torch.ones(1, 100) / 10, [],
                    weights_fingerprint(raw.eval()), {"weights": "raw"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "directions.safetensors").write_bytes(b"stale")
    assert generator.main(["--params", str(params), "--export", str(out)]) == 0
    assert not (out / "directions.safetensors").exists()
    assert "Smiling" not in (out / CARD_FILE).read_text()
    assert generator.main(["--params", str(params), "--no-ema", "--export", str(tmp_path / "raw")]) == 0
    g, config = load_generator(tmp_path / "raw", use_ema=False)
    assert config["weights"] == "raw" and load_directions(tmp_path / "raw", g, "raw").names == ["Smiling"]
    with pytest.raises(UserError, match="EMA weights alone"):
        load_generator(out, use_ema=False)


def test_export_names_what_it_writes_by_suffix(tmp_path):
    with pytest.raises(UserError, match="name a folder"):
        generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(tmp_path / "g.pt")])
    (tmp_path / "notes").write_text("x")  # a file without a suffix is not a folder to write into
    with pytest.raises(UserError, match="exists and is not a folder"):
        generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(tmp_path / "notes")])


def benchmarks_numbers() -> dict:
    """BENCHMARKS.md's numbers of the shipped generator: its row of the report-set
    table, the floor row, and the copy shares of the memorisation paragraph."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text.split("## The pretrained generator", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ")]
    header = next(row for row in rows if row[:2] == ["what", "FID"])
    shipped = next(row for row in rows if row[0].startswith("shipped"))
    floor = next(row for row in rows if "floor" in row[0])
    numbers = {name: float(value) for name, value in zip(header[1:], shipped[1:])}
    copies = re.search(r"copy share against the\s+[\d,]+ training faces \*\*([\d.]+)\*\*", section)
    real = re.search(r"report set's real faces score ([\d.]+)", section)
    numbers["copy share"] = float(copies.group(1))
    return {"metrics": numbers, "floor": float(floor[1]), "real copy share": float(real.group(1))}


def test_the_card_numbers_are_the_ones_in_benchmarks(exported):
    facts = json.loads((ROOT / "assets" / "celeba_64.card.json").read_text())
    bench = benchmarks_numbers()
    assert facts["metrics"] == bench["metrics"]
    assert list(facts["reference"].values()) == [bench["floor"], bench["real copy share"]]
    card = (exported / "celeba_64" / CARD_FILE).read_text()
    table = "| " + " | ".join(model_card.number(v) for v in bench["metrics"].values()) + " |"
    assert table in card and "non-commercial" in card and facts["protocol"] in card
    assert model_card.facts_for(weights_fingerprint(load_generator(PRETRAINED_PARAMS)[0])) == facts


def test_other_weights_get_a_card_that_says_they_were_not_measured(tmp_path):
    g = Generator(size=32, ngf=8)
    params = tmp_path / "generator.params"
    save_generator_params(params, {"size": 32, "ngf": 8, "recipe": "classic", "step": 10}, g.state_dict())
    assert generator.main(["--params", str(params), "--export", str(tmp_path / "mine")]) == 0
    card = (tmp_path / "mine" / CARD_FILE).read_text()
    assert "Not measured for these weights" in card and "44.6" not in card and "recipe classic" in card


def card_block(card: str, after: str) -> str:
    return card.split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_the_cards_snippets_make_the_repositorys_faces(exported, tmp_path, monkeypatch, one_thread):
    card = (exported / "celeba_64" / CARD_FILE).read_text()
    reference, _ = faces(PRETRAINED_PARAMS, range(16))
    # outside the repository: python -I in a folder of its own (no repo on sys.path), torch and safetensors only
    (tmp_path / "celeba_64").symlink_to(exported / "celeba_64")
    code = card_block(card, "**Without this repository**")
    code += card_block(card, "Named edit directions")
    code += "import numpy\nnumpy.save('faces.npy', faces.numpy())\nnumpy.save('edited.npy', edited.numpy())\n"
    (tmp_path / "outside.py").write_text(code)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", "outside.py"], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outside = torch.from_numpy(np.load(tmp_path / "faces.npy"))
    assert torch.allclose(outside, reference, atol=1e-6, rtol=0)
    g, config = load_generator(PRETRAINED_PARAMS)
    smiling = load_directions(PRETRAINED_PARAMS, g).vector("Smiling")
    with torch.no_grad():
        edited = g(latents(range(16), config["nz"]) + 3 * smiling)
    assert torch.allclose(torch.from_numpy(np.load(tmp_path / "edited.npy")), edited, atol=1e-6, rtol=0)
    # inside the repository: the four lines, from the folder's parent
    monkeypatch.chdir(tmp_path)
    scope = {}
    with torch.no_grad():
        exec(card_block(card, "**In this repository**"), scope)
    assert torch.equal(scope["faces"], reference)


def hub_cache(folder, cache, repo_id="someone/dcgan-faces", commit="0" * 40):
    """``cache`` laid out as the hub's own download cache holding ``folder`` as
    ``repo_id`` at ``commit``: blobs by hash, snapshot links, refs/main."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (repo / "blobs" / digest).write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(repo / "blobs" / digest, snapshot))
    return repo_id


@needs_hub
def test_the_hub_loads_the_folder_offline(exported, tmp_path, one_thread):
    repo_id = hub_cache(exported / "celeba_64", tmp_path / "cache")
    reference, _ = faces(PRETRAINED_PARAMS)
    local = huggingface_hub.snapshot_download(repo_id, cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(faces(local)[0], reference)
    g, config = load_generator(local)
    assert load_directions(local, g, config["weights"]).names[1] == "Smiling"
    model = huggingface_hub.hf_hub_download(repo_id, MODEL_FILE, cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(faces(model)[0], reference)  # the bare file: its config is in its metadata

    class HubGenerator(Generator, huggingface_hub.PyTorchModelHubMixin):
        """What a user of the hub's mixin writes: our network, the mixin's loading."""

    for source in (exported / "celeba_64", repo_id):
        hub_g = HubGenerator.from_pretrained(source, cache_dir=tmp_path / "cache", local_files_only=True,
                                             strict=True)
        with torch.no_grad():
            assert torch.equal(hub_g(latents(range(8), 100)), reference)


@needs_hub
def test_the_folder_is_what_upload_folder_sends(exported, tmp_path):
    """Uploading needs the hub (not reachable in tests): checked here is what
    ``HfApi().upload_folder`` / ``hf upload`` would send (its file filter on
    the folder, a .git of a cloned model repository left out), that none of it
    is a pickle, and that the hub's card parser reads the card's metadata."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = tmp_path / "clone"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(folder)]) == 0
    files = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    sent = set(filter_repo_objects(files, ignore_patterns=DEFAULT_IGNORE_PATTERNS))
    assert sent == FOLDER_FILES and (folder / ".git" / "HEAD").exists()
    assert not [name for name in sent if file_kind(folder / name)[0] in ("pickle", "torch", "zip")]
    card = huggingface_hub.ModelCard.load(folder / CARD_FILE)
    assert card.data.license == "other" and card.data.pipeline_tag == "unconditional-image-generation"


def test_export_onnx_hands_the_onnx_module_the_weights_and_directions(tmp_path, monkeypatch):
    """The dispatch only (tests/test_onnx.py runs the real exporter, 14 s)."""
    calls = []
    monkeypatch.setattr(generator, "export_onnx", lambda *args: calls.append(args) or args[3])
    assert generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(tmp_path / "faces.onnx")]) == 0
    (g, config, directions, path), = calls
    shipped = np.load(directions_path(PRETRAINED_PARAMS))
    assert path == tmp_path / "faces.onnx" and config["weights"] == "ema" and not g.training
    assert list(directions) == [str(n) for n in shipped["names"]]
    assert np.array_equal(directions["Smiling"].numpy(), shipped["vectors"][1])
    assert weights_fingerprint(g) == str(shipped["fingerprint"])


def test_export_onnx_without_the_module_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(generator, "export_onnx", None)
    monkeypatch.setattr(generator, "ONNX_MISSING", "the onnx module", raising=False)
    with pytest.raises(UserError, match="pip install -r requirements-export.txt"):
        generator.main(["--params", str(PRETRAINED_PARAMS), "--export", str(tmp_path / "faces.onnx")])
    assert not (tmp_path / "faces.onnx").exists()
