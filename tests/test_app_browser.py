"""The face explorer in a real browser: Debian's chromium, driven by
Playwright, opens the page served with the shipped generator, waits for the
grid, reads the faces' pixels as the browser drew them (real faces: not
blank, not alike, the generator's own), picks a face, moves an edit slider,
walks and adds faces, and saves a screenshot (to tmp_path; to the path in
EXPLORER_SCREENSHOT when set, e.g. assets/explorer.png for the README). Every
request the page makes goes to the explorer itself: nothing from the web."""
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.core import Explorer
from explorer.page import build_app, serve
from utils.paths import CLASSIFIER, PRETRAINED_PARAMS
from editing.latents import latents
from editing.photo_session import PhotoSettings
from preprocessing import align

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -r requirements.txt)")
CHROMIUM = next(filter(None, (shutil.which(name) for name in ("chromium", "chromium-browser"))), None)
ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "tests" / "fixtures" / "portrait_astronaut.jpg"

PIXELS = """els => els.map(img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
})"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pixels(locator) -> np.ndarray:
    """The RGB pixels (N, H, W, 3) of the 64 px images the locator finds, as the browser decoded them."""
    flat = np.array(locator.evaluate_all(PIXELS), dtype=np.uint8)
    return flat.reshape(len(flat), 64, 64, 4)[..., :3]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
def slide_smiling(page) -> np.ndarray:
    """Move the picked face's Smiling slider to +3, wait for the new face -> its pixels."""
    before = page.locator("#face img").get_attribute("src")
    page.locator("#edit-Smiling input[type=range]").fill("3")
    page.wait_for_function("src => { const i = document.querySelector('#face img');"
                           " return i.getAttribute('src') != src && i.complete && i.naturalWidth == 64 }",
                           arg=before)
    return pixels(page.locator("#face img"))[0]


def test_the_page_shows_real_faces_and_a_picked_face_follows_its_slider(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.chdir(ROOT)
    readme = os.environ.get("EXPLORER_SCREENSHOT")  # the README's picture: the page as `python app.py` serves it
    explorer = Explorer.load(PRETRAINED_PARAMS, classifier=CLASSIFIER if readme else None, background=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = serve(build_app(explorer), port=port, block=False)
    requests = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url + "/")
            page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#faces img')];"
                                   " return imgs.length == 16 && imgs.every(i => i.complete && i.naturalWidth == 64) }",
                                   timeout=60_000)
            faces = pixels(page.locator("#faces img"))
            want = explorer.render(latents(range(16), explorer.nz))
            assert np.abs(faces.astype(int) - want).mean() < 1  # the generator's faces, as drawn
            assert all(face.std() > 20 for face in faces)  # pictures, not blank squares
            apart = [np.abs(faces[i].astype(int) - faces[j]).mean() for i in range(16) for j in range(i)]
            assert min(apart) > 10  # sixteen different faces, not one face sixteen times

            page.locator("#faces button.thumbnail-item").nth(5).click()
            page.wait_for_function("() => document.querySelector('#picked input').value == '5'")
            page.wait_for_function("() => { const i = document.querySelector('#face img');"
                                   " return i && i.complete && i.naturalWidth == 64 }")
            picked = pixels(page.locator("#face img"))[0]
            assert np.abs(picked.astype(int) - want[5]).mean() < 1
            smiling = slide_smiling(page)
            assert np.abs(smiling.astype(int) - explorer.face(5, [("Smiling", 3.0)])).mean() < 1
            assert np.abs(smiling.astype(int) - picked).mean() > 2

            page.locator("#walk-button").click()
            page.locator("#add").click()
            page.wait_for_selector("#strip img")
            page.wait_for_function("() => document.querySelectorAll('#arithmetic img').length == 4")
            page.wait_for_timeout(500)  # let the last images paint before the picture is taken
            shot = Path(readme or tmp_path / "explorer.png")
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert shot.stat().st_size > 10_000
    if readme:  # 256 colours: a third of the bytes, no visible change
        Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(shot, optimize=True)
    outside = [u for u in requests if not u.startswith((url + "/", "data:", "blob:"))]
    assert requests and outside == []


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
@pytest.mark.skipif(align.MTCNN is None, reason="needs facenet-pytorch (requirements-photo.txt)")
def test_an_uploaded_photo_is_aligned_projected_and_edited_by_its_slider(tmp_path, monkeypatch):
    """The shipped generator, a real photo uploaded through the page's file
    field: the aligned face and the projection appear, the projection becomes
    the picked face, and the Smiling slider moves it. The projection runs with
    tiny settings (sizes only), so the test takes seconds."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.chdir(ROOT)
    explorer = Explorer.load(PRETRAINED_PARAMS, classifier=None, background=False)
    explorer.photo_settings = PhotoSettings(steps=10, candidates=16, restarts=1, tune_steps=5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    demo = serve(build_app(explorer), port=port, block=False)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url + "/")
            page.wait_for_function("() => { const i = document.querySelector('#face img');"
                                   " return i && i.complete && i.naturalWidth == 64 }", timeout=60_000)
            before = page.locator("#face img").get_attribute("src")
            page.locator("#photo-upload input[type=file]").set_input_files(str(PORTRAIT))
            for elem in ("#photo-aligned", "#photo-projection"):
                page.wait_for_function(f"() => {{ const i = document.querySelector('{elem} img');"
                                       " return i && i.complete && i.naturalWidth == 64 }", timeout=60_000)
            page.wait_for_function("() => document.querySelector('#photo-id textarea, #photo-id input').value"
                                   ".length == 22", timeout=30_000)
            photo_id = page.locator("#photo-id textarea, #photo-id input").first.input_value()
            aligned = pixels(page.locator("#photo-aligned img"))[0]
            target, _ = align.align_face(PORTRAIT.read_bytes())
            assert np.abs(aligned.astype(int) - np.asarray(align.crop_face(target, 64))).mean() < 1
            page.wait_for_function("src => { const i = document.querySelector('#face img');"
                                   " return i.getAttribute('src') != src && i.complete && i.naturalWidth == 64 }",
                                   arg=before)
            picked = pixels(page.locator("#face img"))[0]
            assert np.abs(picked.astype(int) - explorer.face(0, [], photo_id)).mean() < 1  # the projection
            assert np.abs(picked.astype(int) - pixels(page.locator("#photo-projection img"))[0]).mean() < 1
            smiling = slide_smiling(page)
            assert np.abs(smiling.astype(int) - explorer.face(0, [("Smiling", 3.0)], photo_id)).mean() < 1
            assert np.abs(smiling.astype(int) - picked).mean() > 2
            page.screenshot(path=str(tmp_path / "photo.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert not any(f.read_bytes() == PORTRAIT.read_bytes() for f in (tmp_path / "gradio").rglob("*") if f.is_file())
