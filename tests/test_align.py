"""preprocessing.align puts a photo's face where CelebA has it, then cuts the
project's face box exactly as preprocess.py does; every refusal is one line.
Tests that detect faces skip without facenet-pytorch (requirements-photo.txt)."""
import io

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from preprocessing import align, decode
from utils import UserError

PORTRAIT = ROOT / "tests" / "fixtures" / "portrait_astronaut.jpg"  # NASA, public domain (tests/fixtures/README.md)
needs_detector = pytest.mark.skipif(align.MTCNN is None, reason="needs facenet-pytorch: "
                                    "pip install --no-deps -r requirements-photo.txt")


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """MTCNN's small convs run faster on one thread of a busy 2-core machine."""
    yield


@pytest.fixture(scope="module")
def portrait():
    return align.open_image(PORTRAIT.read_bytes())


@pytest.fixture(scope="module")
def aligned_portrait(portrait):
    if align.MTCNN is None:
        pytest.skip("needs facenet-pytorch: pip install --no-deps -r requirements-photo.txt")
    return align.align_face(portrait)


def grey64(aligned):
    return np.asarray(align.crop_face(aligned, 64).convert("L"), dtype=np.float64)


def png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def one_line_error(*args, match, **kwargs):
    with pytest.raises(UserError, match=match) as err:
        align.align_face(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


@needs_detector
def test_the_portrait_s_eyes_and_mouth_land_on_celeba_s_template(aligned_portrait):
    out, info = aligned_portrait
    assert out.size == (178, 218) and out.mode == "RGB"
    assert info["faces"] == 1 and info["face"] == 1 and not info["aligned_input"] and info["score"] > 0.99
    assert 38 < info["eye_distance"] < 48  # her eyes are ~43 px apart in the 512 px photo
    lm = np.array(info["landmarks"])
    points = np.array([lm[0], lm[1], (lm[3] + lm[4]) / 2])
    placed = align.apply(np.array(info["transform"]), points)
    assert np.abs(placed - align.TEMPLATE).max() < 2.0  # three points, four parameters: a small residual


@needs_detector
@pytest.mark.parametrize("degrees,scale,shift", [(15, 1.3, (150, 90)), (-12, 0.7, (60, 200))])
def test_alignment_undoes_a_known_similarity(portrait, aligned_portrait, degrees, scale, shift):
    """The portrait moved by a known rotation, scale and shift into a larger photo comes back to the same
    aligned face: the transform found for the moved photo, composed with the move, is the one found for
    the original. Measured (2026-12-07): landmarks mapped within 0.7 / 1.4 px, the linear part within
    0.009 / 0.024, the 64 px crops 5.1 / 11.0 grey levels apart (2 px off is ~12, no alignment ~60)."""
    first, info = aligned_portrait
    theta = np.radians(degrees)
    move = np.c_[scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]), shift]
    side = int(align.apply(move, [[0, 0], [512, 0], [0, 512], [512, 512]]).max()) + 50
    moved = align.warp(portrait, move, (side, side))
    again, info2 = align.align_face(moved)
    composed = align.compose(np.array(info2["transform"]), move)
    original = np.array(info["transform"])
    lm = np.array(info["landmarks"])
    assert np.abs(align.apply(composed, lm) - align.apply(original, lm)).max() < 3.0
    assert np.abs(composed[:, :2] - original[:, :2]).max() < 0.05
    assert np.abs(info2["eye_distance"] - scale * info["eye_distance"]) < 2.0
    assert np.abs(grey64(again) - grey64(first)).mean() < 15.0


def test_the_face_crop_is_preprocess_py_s_bit_for_bit(tmp_path, portrait):
    """An aligned photo (here the portrait squeezed to 178x218, saved as PNG) gives exactly the array
    preprocess.py's decoder makes from the same file, at 64 and 128 px, and at half size."""
    canvas = portrait.resize((178, 218), Image.LANCZOS)
    (tmp_path / "a.png").write_bytes(png(canvas))
    out, info = align.align_face((tmp_path / "a.png").read_bytes())
    assert info["aligned_input"] and out.tobytes() == canvas.tobytes()
    for size, buffer in zip((64, 128), decode.load_image(str(tmp_path), "a.png", (64, 128), 140, aligned=True)):
        assert align.crop_face(out, size).tobytes() == buffer
    half = canvas.resize((89, 109), Image.LANCZOS)
    (tmp_path / "h.png").write_bytes(png(half))
    (buffer,) = decode.load_image(str(tmp_path), "h.png", (64,), 140, aligned=True)
    assert align.crop_face(half, 64).tobytes() == buffer  # the box scaled with the image: (9.5, 19.5, 79.5, 89.5)
    with pytest.raises(UserError, match="CelebA-aligned"):
        align.crop_face(portrait, 64)


def test_an_aligned_photo_skips_detection_and_needs_no_detector(monkeypatch, portrait):
    monkeypatch.setattr(align, "MTCNN", None)  # as without facenet-pytorch
    monkeypatch.setattr(align, "_DETECTOR", None)
    for size in ((178, 218), (89, 109)):
        out, info = align.align_face(png(portrait.resize(size)))
        assert out.size == (178, 218) and info["aligned_input"] and info["faces"] == 1
        assert info["eye_distance"] == pytest.approx(align.TEMPLATE_EYE_DISTANCE * size[0] / 178, abs=0.01)
    one_line_error(png(portrait.resize((178, 218))), face=2, match="face 2 asked for, but an aligned")
    message = one_line_error(PORTRAIT.read_bytes(), match="needs facenet-pytorch")
    assert "pip install --no-deps facenet-pytorch==2.6.0" in message


@needs_detector
def test_no_face_and_a_too_small_face_are_one_line_answers(portrait):
    one_line_error(Image.new("RGB", (640, 480), (128, 128, 128)), match=r"no face found in the 640x480 photo")
    small = Image.new("RGB", (400, 300), (120, 130, 140))
    small.paste(portrait.resize((154, 154), Image.LANCZOS), (120, 70))  # eyes ~13 px apart
    message = one_line_error(small, match=r"the face is too small: 1[0-5] px between the eyes, at least 16 px")
    assert "closer or larger photo" in message


@needs_detector
def test_several_faces_take_the_largest_and_face_k_picks_another(portrait):
    group = Image.new("RGB", (600, 380), (120, 130, 140))
    group.paste(portrait.resize((360, 360), Image.LANCZOS), (0, 0))
    group.paste(portrait.resize((220, 220), Image.LANCZOS), (380, 150))
    _, first = align.align_face(group)
    _, second = align.align_face(group, face=2)
    assert first["faces"] == second["faces"] == 2 and (first["face"], second["face"]) == (1, 2)
    assert first["box"][0] < 360 <= second["box"][0]  # the large face is the left one
    assert second["eye_distance"] == pytest.approx(first["eye_distance"] * 220 / 360, rel=0.1)
    one_line_error(group, face=3, match="face 3 asked for, but the photo has 2 faces")
    one_line_error(group, face=0, match="face must be 1")


def test_not_an_image_is_one_line(tmp_path):
    one_line_error(b"\x00\x01binary junk" * 50, match="not an image")
    text = tmp_path / "notes.jpg"
    text.write_text("a text file named like a photo\n")
    one_line_error(text, match="notes.jpg: not an image")
    one_line_error(12345, match="not an image")
    whole = PORTRAIT.read_bytes()
    one_line_error(whole[: len(whole) // 2], match="truncated")
