"""app.py, the face explorer: its inputs parsed and bounded, every API
endpoint driven with gradio_client on a server on a free port (good inputs
give the generator's faces, bad ones a message and the server goes on), the
command line, and a run of the real script that opens no connection beyond
localhost. The browser test is tests/test_app_browser.py."""
import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app
from explorer.core import Explorer
from explorer.inputs import check_seed, page_seeds, parse_seeds
from explorer.page import Handlers, build_app, serve
from editing.classifier import AttributeNet, save_classifier
from editing.directions import directions_path, save_directions, weights_fingerprint
from editing.latents import latents
from editing import photo_session
from editing.photo_session import EXPIRED, Expiring, PhotoSettings, Projection, Projections
from network import Generator, load_generator, save_generator_params
from preprocessing import align
from utils import UserError

gradio_client = pytest.importorskip("gradio_client")
CONFIG = {"size": 32, "nz": 16, "ngf": 4, "ndf": 4, "nc": 3}
NAMES = ["Smiling", "Male"]
PORTRAIT = Path(__file__).parent / "fixtures" / "portrait_astronaut.jpg"
TINY_PHOTO = PhotoSettings(steps=3, candidates=4, restarts=1, tune_steps=3)  # sizes only: a test's projection
needs_detector = pytest.mark.skipif(align.MTCNN is None, reason="needs facenet-pytorch (requirements-photo.txt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_params(folder, directions: bool = True):
    """A random 32 px generator.params; with its directions file beside it and a tiny attribute classifier."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    params = folder / "generator.params"
    save_generator_params(params, CONFIG, Generator(32, nz=16, ngf=4).state_dict(),
                          Generator(32, nz=16, ngf=4).state_dict())
    if directions:
        generator, _ = load_generator(params)
        vectors = torch.nn.functional.normalize(torch.randn(len(NAMES), 16), dim=1)
        save_directions(directions_path(params), NAMES, vectors, vectors, [], weights_fingerprint(generator),
                        {"weights": "ema"})
    classifier = folder / "attributes.pt"
    save_classifier(classifier, AttributeNet(len(NAMES), width=4).state_dict(),
                    {"attributes": NAMES, "size": 32, "width": 4})
    return params, classifier


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(explorer, client) of a server on a free localhost port: the tiny generator, its two directions, and
    concepts from 64 faces; Gradio's files in a temporary folder."""
    folder = tmp_path_factory.mktemp("explorer")
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")  # read when files are cached, not at import
    params, classifier = tiny_params(folder)
    explorer = Explorer.load(str(params), classifier=str(classifier), pool_size=64, background=False)
    explorer.photo_settings = TINY_PHOTO
    explorer.test_handlers = Handlers(explorer)
    port = free_port()
    demo = serve(build_app(explorer, explorer.test_handlers), port=port, queue_size=8, block=False)
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", download_files=str(folder / "downloads"),
                                  verbose=False)
    yield explorer, client
    client.close()
    demo.close()
    if before is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = before


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_seed_lists_are_parsed_and_bounded():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds(" 3, 7 ,42") == [3, 7, 42]
    assert parse_seeds("0-1, 10") == [0, 1, 10]
    assert page_seeds("0-15", +1) == "16-31" and page_seeds("16-31", -1) == "0-15"
    assert page_seeds("3,4", -1) == "1-2" and page_seeds("0-15", -1) == "0-15"
    for text, match in [("", "no seeds"), ("0-", "not a seed"), ("a", "not a seed"), ("-3", "not a seed"),
                        ("5-2", "backwards"), ("0-64", "more than 64"), (f"{2**31}", "too large"),
                        ("1" * 500, "characters"), ("1.5", "not a seed"), ("٣", "not a seed")]:
        with pytest.raises(UserError, match=match):
            parse_seeds(text)
    for value in (-1, float("nan"), float("inf"), 2**31, "x", None):
        with pytest.raises(UserError):
            check_seed(value)


def test_faces_are_the_generators_faces_by_seed_with_their_grid(served):
    explorer, client = served
    items, grid = client.predict("5,0-2", api_name="/faces")
    assert [item["caption"] for item in items] == ["seed 5", "seed 0", "seed 1", "seed 2"]
    want = explorer.render(latents([5, 0, 1, 2], 16))
    got = np.stack([read(item["image"]) for item in items])
    assert got.shape == (4, 32, 32, 3) and np.array_equal(got, want)  # PNG: lossless, what the generator made
    assert got.std() > 0 and not np.array_equal(got[0], got[1])
    assert grid.endswith("faces.png") and read(grid).shape == (2 + 2 * 34, 2 + 2 * 34, 3)


def test_edit_walks_a_continuous_seed_and_moves_along_directions(served):
    explorer, client = served
    (seed_2,), _ = client.predict("2", api_name="/faces")
    plain = read(client.predict(2, "", api_name="/edit"))
    assert np.array_equal(plain, read(seed_2["image"]))  # seed 2.0 is seed 2's face
    between = read(client.predict(2.5, "", api_name="/edit"))
    assert not np.array_equal(between, plain)
    assert np.array_equal(between, explorer.face(2.5))
    edited = read(client.predict(2, "Smiling=+3, Male=-1.5", api_name="/edit"))
    assert not np.array_equal(edited, plain)
    assert np.array_equal(edited, explorer.face(2, [("Smiling", 3), ("Male", -1.5)]))
    far = read(client.predict(123456.75, "", api_name="/edit"))  # any seed, not only the page slider's range
    assert np.array_equal(far, explorer.face(123456.75))


def test_interpolate_gives_the_walk_as_a_png_row_and_a_looping_gif(served):
    explorer, client = served
    strip, gif = client.predict(0, 1, 5, api_name="/interpolate")
    row = read(strip)
    assert row.shape == (36, 2 + 5 * 34, 3)
    first, last = row[2:34, 2:34], row[2:34, 2 + 4 * 34 : 34 + 4 * 34]
    assert np.array_equal(first, explorer.face(0)) and np.array_equal(last, explorer.face(1))
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 8  # there and back: 5 + 3


def test_arithmetic_by_seeds_and_by_concepts(served):
    explorer, client = served
    items = client.predict("0,1 - 2 + 3", api_name="/arithmetic")
    assert [item["caption"] for item in items] == ["0,1", "- 2", "+ 3", "= result"]
    z = latents([0, 1, 2, 3], 16)
    want = explorer.render((z[:2].mean(0) - z[2] + z[3])[None])[0]
    assert np.array_equal(read(items[-1]["image"]), want)
    items = client.predict("Smiling,~Male - ~Smiling + 4", api_name="/arithmetic")
    assert [item["caption"] for item in items] == ["Smiling,~Male", "- ~Smiling", "+ 4", "= result"]


@pytest.mark.parametrize("endpoint, args, message", [
    ("/faces", ("0-",), "not a seed or a range"),
    ("/faces", ("0-999",), "at most 64"),
    ("/faces", ("x" * 1000,), "characters"),
    ("/edit", (-1, ""), "out of range"),
    ("/edit", (1, "Nope=+1"), "no direction 'Nope'"),
    ("/edit", (1, "Smiling=+50"), "from -5 to \\+5"),
    ("/edit", (1, "Smiling"), "not NAME=STRENGTH"),
    ("/interpolate", (0, 1, 1000), "greater than maximum value 32"),  # the slider's own bounds
    ("/interpolate", (-3, 1, 8), "less than minimum value 0"),
    ("/arithmetic", ("1 - x",), "no attribute 'x'"),
    ("/arithmetic", ("1 +",), "a term is missing"),
    ("/arithmetic", (" + ".join(map(str, range(9))),), "at most 8"),
])
def test_a_bad_input_is_a_message_and_the_server_goes_on(served, endpoint, args, message):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError, match=message) as caught:
        client.predict(*args, api_name=endpoint)
    assert "Traceback" not in str(caught.value)
    items, _ = client.predict("7", api_name="/faces")
    assert [item["caption"] for item in items] == ["seed 7"]


def test_every_action_is_a_named_endpoint_and_the_page_takes_no_path(served):
    explorer, client = served
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/faces", "/edit", "/interpolate", "/arithmetic", "/project",
                                           "/edit_photo"}
    for name, endpoint in api["named_endpoints"].items():
        for parameter in endpoint["parameters"]:  # only the photo is a file, and no endpoint takes a path
            assert ("file" in str(parameter["python_type"]).lower()) == (name == "/project"), parameter
    config = str(build_app(explorer).config)
    assert "Smiling" in config and "Male" in config  # a slider per direction
    import httpx

    upload = httpx.post(client.src.rstrip("/") + "/gradio_api/upload",
                        files={"files": ("x.jpg", b"0" * (10 * 2**20 + 1))})
    assert upload.status_code == 413  # nothing over a photo's 10 MB is taken


def files_holding(folder, data: bytes) -> list[str]:
    return [str(f) for f in Path(folder).rglob("*") if f.is_file() and f.read_bytes() == data]


def pngs_showing(folder, face: np.ndarray) -> list[str]:
    return [str(f) for f in Path(folder).rglob("*.png") if read(f).shape == face.shape and np.array_equal(read(f), face)]


@needs_detector
def test_project_gives_the_aligned_face_its_projection_and_an_id_that_edit_photo_moves(served):
    """A real photo through gradio_client: the aligned face and the projection
    at the generator's size, an id; edit_photo by that id draws the projection
    (bit for bit with no edit) and a different face with one; the upload's
    bytes are gone from the server's disk once answered, and the pictures
    sent for it once they expire."""
    explorer, client = served
    aligned_path, projection_path, photo_id = client.predict(gradio_client.handle_file(str(PORTRAIT)),
                                                             api_name="/project")
    aligned, projection = read(aligned_path), read(projection_path)
    assert aligned.shape == projection.shape == (32, 32, 3) and aligned.std() > 20
    target, _ = align.align_face(PORTRAIT.read_bytes())
    assert np.array_equal(aligned, np.asarray(align.crop_face(target, 32)))  # the photo as CelebA's crop
    assert len(photo_id) == 22 and photo_id in explorer.photos
    assert np.array_equal(read(client.predict(photo_id, "", api_name="/edit_photo")), projection)
    smiling = read(client.predict(photo_id, "Smiling=+3", api_name="/edit_photo"))
    assert not np.array_equal(smiling, projection)  # (a random tiny generator: its faces are near grey)
    assert np.array_equal(smiling, explorer.face(0, [("Smiling", 3.0)], photo_id))
    with pytest.raises(gradio_client.exceptions.AppError, match="upload one"):
        client.predict("photo - 1 + 2", api_name="/arithmetic")  # a script has no page: its photo is by id
    temp = os.environ["GRADIO_TEMP_DIR"]
    assert files_holding(temp, PORTRAIT.read_bytes()) == []
    assert pngs_showing(temp, aligned) != [] and explorer.test_handlers.expiring.sweep(everything=True) >= 3
    assert pngs_showing(temp, aligned) == [] and pngs_showing(temp, projection) == []


def bomb_png() -> bytes:
    """A PNG whose header claims 6000x5000 pixels (30 MP) in a few hundred bytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 6000, 5000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


BAD_UPLOADS = {  # name -> (bytes, the message's words)
    "noise.jpg": (np.random.default_rng(0).bytes(5000), "not an image"),
    "face.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect/></svg>', "SVG"),
    "cut.jpg": (PORTRAIT.read_bytes()[:3000], "truncated or damaged"),
    "huge.png": (bomb_png(), "megapixels"),
}


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_a_bad_upload_is_one_line_and_the_server_goes_on(served, tmp_path, name):
    _, client = served
    data, message = BAD_UPLOADS[name]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(gradio_client.exceptions.AppError, match=message) as caught:
        client.predict(gradio_client.handle_file(str(tmp_path / name)), api_name="/project")
    assert "Traceback" not in str(caught.value) and "\n" not in str(caught.value).strip()
    assert files_holding(os.environ["GRADIO_TEMP_DIR"], data) == []  # refused uploads are deleted too
    with pytest.raises(gradio_client.exceptions.AppError, match="not a photo id"):
        client.predict("../../etc/passwd", "", api_name="/edit_photo")
    items, _ = client.predict("7", api_name="/faces")
    assert [item["caption"] for item in items] == ["seed 7"]


def test_the_server_keeps_the_last_projections_and_says_when_one_expired(tmp_path):
    """The LRU of projections, without Gradio: the oldest beyond capacity is
    dropped (a use makes one the newest), and a face, walk or arithmetic of a
    dropped one answers in one line that it expired."""
    store = Projections(capacity=2)
    made = [store.add(Projection(torch.zeros(16), None, np.zeros((32, 32, 3), np.uint8))) for _ in range(2)]
    store.get(made[0])  # now the newest: the next add drops made[1]
    made.append(store.add(Projection(torch.zeros(16), None, np.zeros((32, 32, 3), np.uint8))))
    assert len(store) == 2 and made[0] in store and made[1] not in store and len(set(made)) == 3
    with pytest.raises(UserError, match=EXPIRED):
        store.get(made[1])
    with pytest.raises(UserError, match="not a photo id"):
        store.get("x")
    params, _ = tiny_params(tmp_path)
    explorer = Explorer.load(str(params), classifier=None, photo_slots=1)
    generator = explorer.base
    ids = [explorer.photos.add(Projection(explorer.latent_at(k), generator, None)) for k in (3, 4)]
    assert np.array_equal(explorer.face(0, [], ids[1]), explorer.face(4))
    assert np.array_equal(explorer.interpolate(0, 9, 2, ids[1], None)[1][0], explorer.face(4))
    assert np.array_equal(explorer.arithmetic("photo - 1 + 2", ids[1])[-1][0],
                          explorer.render((latents([4], 16)[0] - latents([1], 16)[0] + latents([2], 16)[0])[None])[0])
    for action in (lambda: explorer.face(0, [], ids[0]), lambda: explorer.interpolate(0, 1, 2, ids[0]),
                   lambda: explorer.arithmetic("photo + 1", ids[0])):
        with pytest.raises(UserError, match=EXPIRED):
            action()



def test_a_photo_picture_sent_twice_lives_a_minute_from_the_second_time(tmp_path, monkeypatch):
    """Gradio names a picture's folder by its content: the same edit of the
    same photo asked twice shares one folder, which must not be deleted a
    minute after the first request while the second is being answered
    (the 2,000-request soak lost one edit_photo answer so)."""
    clock = [100.0]
    monkeypatch.setattr(photo_session.time, "monotonic", lambda: clock[0])
    expiring, folder = Expiring(seconds=60, every=3600), tmp_path / "same-content-hash"
    folder.mkdir()
    assert expiring.keep(lambda: str(folder / "image.png")) == str(folder / "image.png")
    clock[0] += 50
    expiring.add(folder)  # the second request, 50 s later
    clock[0] += 20  # the first request's minute is over
    assert expiring.sweep() == 0 and folder.exists()
    clock[0] += 45
    assert expiring.sweep() == 1 and not folder.exists()


def test_params_without_directions_say_how_to_make_them(tmp_path):
    params, _ = tiny_params(tmp_path, directions=False)
    explorer = Explorer.load(str(params), classifier=None)
    assert explorer.names == [] and "attributes.py directions --params" in explorer.directions_note
    config = str(build_app(explorer).config)
    assert "no named directions" in config and "attributes.py directions" in config
    assert explorer.face(1).shape == (32, 32, 3)  # walking still works
    with pytest.raises(UserError, match="attributes.py directions"):
        explorer.face(1, [("Smiling", 1.0)])
    with pytest.raises(UserError, match="need the attribute classifier"):
        explorer.arithmetic("Smiling - 1")


def test_concepts_answer_that_they_are_coming_while_the_pool_is_made(tmp_path):
    params, _ = tiny_params(tmp_path)
    explorer = Explorer.load(str(params), classifier=None)
    release = __import__("threading").Event()
    explorer.use_pool(lambda: release.wait(30) and None, NAMES, 10, background=True)
    with pytest.raises(UserError, match="still being classified"):
        explorer.arithmetic("Smiling - 1")
    assert explorer.arithmetic("0 - 1")[-1][1] == "= result"  # seed lists need no pool
    release.set()


def test_the_command_line_rejects_bad_values_in_one_line(tmp_path, monkeypatch, capsys):
    params, _ = tiny_params(tmp_path)
    for argv, match in [(["--params", str(tmp_path / "nope.params")], "params file not found"),
                        (["--params", str(params), "--port", "0"], "--port"),
                        (["--params", str(params), "--queue-size", "0"], "--queue-size"),
                        (["--params", str(params), "--classifier", str(tmp_path / "no.pt")], "classifier not found")]:
        with pytest.raises(UserError, match=match):
            app.main(argv)
    assert app.host_warning("127.0.0.1") is None and app.host_warning("localhost") is None
    served_on = {}

    class Demo:  # stands in for the server: main() warns, serves and stops without binding anything
        def block_thread(self):
            raise KeyboardInterrupt

        def close(self):
            served_on["closed"] = True

    monkeypatch.setattr(app, "serve", lambda demo, host, port, *a, **k: served_on.update(host=host) or Demo())
    with pytest.raises(KeyboardInterrupt):
        app.main(["--params", str(params), "--classifier", "none", "--host", "0.0.0.0"])
    assert served_on == {"host": "0.0.0.0", "closed": True}
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0: anyone who can reach this machine" in err


AUDIT = '''
import os, sys
LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "", None}
def hook(event, args):
    try:
        if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
            host = args[1][0]
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else args[0]
            if host in LOCAL:
                return
        else:
            return
        with open(os.environ["NET_AUDIT_LOG"], "a") as log:
            log.write(f"{event} {host!r}\\n")
    except Exception:
        pass
sys.addaudithook(hook)
'''


def test_the_script_under_load_answers_or_refuses_and_reaches_nothing_beyond_localhost(tmp_path, monkeypatch):
    """python app.py itself, flooded by the load test (python bench.py
    --explorer, small), with an audit hook that logs every connection or name
    lookup beyond localhost: every request is answered or refused by the
    queue, none fails, the server still answers, and the log stays empty."""
    from benchmarks import speed

    params, _ = tiny_params(tmp_path)
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "sitecustomize.py").write_text(AUDIT)
    log = tmp_path / "net.log"
    env = {"PYTHONPATH": str(tmp_path / "audit"), "NET_AUDIT_LOG": str(log), "GRADIO_TEMP_DIR": str(tmp_path / "g"),
           "OMP_NUM_THREADS": "1"}
    planted = "import socket, contextlib\nwith contextlib.suppress(OSError): socket.getaddrinfo('example.invalid', 80)"
    subprocess.run([sys.executable, "-c", planted], env={**os.environ, **env}, check=True, timeout=60)
    assert "example.invalid" in log.read_text()  # the hook sees a lookup
    log.unlink()
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the server the load test starts inherits them
    out = tmp_path / "load.json"
    speed.main(["--explorer", "--explorer-params", str(params), "--explorer-requests", "6", "--explorer-repeats", "2",
                "--explorer-queue-size", "2", "--out-json", str(out)])
    result = json.loads(out.read_text())
    flood = result["flood"]
    assert flood["answered"] >= 1 and flood["answered"] + flood["refused"] == 6 and flood["failed"] == 0, flood
    assert result["alive_after"] is True
    assert result["memory_after"]["rss_mb"] > 50
    assert {kind: row["n"] for kind, row in result["latency"].items()} == {"one face": 2, "one edit": 2,
                                                                          "16-face grid": 2}
    assert not log.exists(), log.read_text()
    with pytest.raises(UserError, match="--explorer-requests"):
        speed.main(["--explorer", "--explorer-requests", "0"])


@needs_detector
def test_a_small_soak_answers_or_refuses_every_request_and_the_server_lives(tmp_path, monkeypatch):
    """python app.py under the soak (python -m benchmarks.explorer_load
    --soak, 40 requests after a warm-up of 10: faces, edits, walks, arithmetic, projections of the
    portrait, edits by id, bad uploads): none fails, bad uploads are refused
    with their message, and the server still answers."""
    from benchmarks import explorer_load

    params, _ = tiny_params(tmp_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "g"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = explorer_load.run_soak(["--soak", "40", "--warmup", "10", "--params", str(params), "--photo-slots", "1",
                                 "--runtime", "torch", "--time-limit", "300", "--out-json", str(tmp_path / "soak.json")])
    assert result["complete"] and result["alive_after"] and result["failures"] == []
    counts = result["counts"]
    assert sum(c["failed"] for c in counts.values()) == 0
    assert counts["bad upload"]["answered"] == 0 and counts["bad upload"]["refused"] >= 1
    assert [row["requests"] for row in result["rss"]] == [0, 40]
    assert not any(f.is_file() and f.read_bytes() == PORTRAIT.read_bytes() for f in (tmp_path / "g").rglob("*"))
    with pytest.raises(UserError, match="--soak"):
        explorer_load.run_soak(["--soak", "0"])
