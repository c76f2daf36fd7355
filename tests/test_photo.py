"""preprocessing.photo reads an upload as hostile: every refusal is one line
that says why, limits are checked before decoding, and what is accepted comes
back as an upright, fully loaded RGB image. No torch, no detector."""
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from preprocessing import photo
from preprocessing.photo import MAX_BYTES, read_photo, read_photo_file
from utils import UserError

PORTRAIT = ROOT / "tests" / "fixtures" / "portrait_astronaut.jpg"


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed): a bomb's header, 70 bytes."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature(8) + length(4) + type(4)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def refused(data, *words, name="up.jpg"):
    with pytest.raises(UserError) as err:
        read_photo(data, name)
    message = str(err.value)
    assert "\n" not in message and message.startswith(name), message
    for word in words:
        assert word in message, message
    return message


def two_frames():
    return [Image.new("RGB", (96, 96), colour) for colour in ("red", "blue")]


def test_the_portrait_is_read_whole_and_detached():
    img = read_photo(PORTRAIT.read_bytes(), "portrait.jpg")
    assert img.size == (512, 512) and img.mode == "RGB"
    assert getattr(img, "fp", None) is None  # decoded, nothing left pointing at the bytes
    assert read_photo_file(PORTRAIT).tobytes() == img.tobytes()


def test_the_format_is_sniffed_not_taken_from_the_name():
    png = encode(Image.new("RGB", (80, 80), (10, 200, 30)), "PNG")
    assert read_photo(png, "holiday.jpg").getpixel((5, 5)) == (10, 200, 30)
    webp = encode(Image.new("RGB", (80, 80), (10, 200, 30)), "WEBP", lossless=True)
    assert read_photo(webp, "x.png").getpixel((5, 5)) == (10, 200, 30)
    refused(b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"/>', "SVG", "JPEG, PNG and WebP",
            name="face.png")


@pytest.mark.parametrize("data,words", [
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', ("SVG",)),
    (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", ("HTML",)),
    (b"just some text, not a picture\n", ("not an image",)),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), ("not an image",)),
    (encode(Image.new("RGB", (96, 96)), "GIF"), ("GIF",)),
    (encode(Image.new("RGB", (96, 96)), "BMP"), ("BMP",)),
    (b"", ("empty",)),
])
def test_anything_but_jpeg_png_webp_is_refused(data, words):
    refused(data, *words)


def test_a_truncated_jpeg_and_png_are_refused():
    whole = PORTRAIT.read_bytes()
    refused(whole[: len(whole) // 2], "truncated")
    png = encode(Image.open(PORTRAIT), "PNG")
    refused(png[: len(png) // 2], "truncated")


def test_decompression_bombs_are_refused_from_the_header():
    bomb = png_claiming(30000, 30000)  # 900 megapixels; Pillow's own guard fires while opening
    assert len(bomb) < 100
    refused(bomb, "bomb", "25 megapixels")
    start = time.perf_counter()
    # 36 megapixels: below Pillow's limits, above ours; refused before a pixel is decoded (the IDAT holds 1 px)
    refused(png_claiming(6000, 6000), "6000x6000", "36 megapixels", "at most 25")
    assert time.perf_counter() - start < 1.0
    big = encode(Image.new("1", (5200, 5000)), "PNG")  # a real 26-megapixel image, a few kB compressed
    assert len(big) < 20_000
    refused(big, "5200x5000", "at most 25")


def test_animations_are_refused_and_a_phone_s_mpo_jpeg_is_its_first_picture():
    frames = two_frames()
    refused(encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), "animated PNG", "2 frames")
    refused(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "animated WEBP")
    still = encode(frames[0], "PNG", save_all=True, append_images=[])  # a one-frame APNG is a still
    assert read_photo(still).getpixel((0, 0)) == (255, 0, 0)
    mpo = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert read_photo(mpo).getpixel((48, 48))[0] > 200


def test_sizes_bytes_and_shapes_out_of_bounds_are_refused(tmp_path):
    refused(encode(Image.new("RGB", (40, 200)), "PNG"), "40x200", "at least 64 px")
    refused(encode(Image.new("RGB", (1000, 100)), "PNG"), "1000x100", "elongated")
    refused(b"\xff\xd8\xff" + bytes(MAX_BYTES), "10.0 MB", "at most 10 MB")
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # a sparse 2 GB file: refused by its size, never read
        handle.truncate(2**31)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"huge.jpg: 2048.0 MB; at most 10 MB"):
        read_photo_file(huge)
    assert time.perf_counter() - start < 0.5
    with pytest.raises(UserError, match="cannot read"):
        read_photo_file(tmp_path / "missing.jpg")
    with pytest.raises(UserError, match="not an image"):
        read_photo("not bytes")


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 80), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 60, 80))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left side ends up on top
    upright = read_photo(encode(img, "JPEG", quality=95, exif=exif))
    assert upright.size == (80, 120)
    assert upright.getpixel((40, 20))[0] > 200 and upright.getpixel((40, 100))[2] > 200


def test_every_mode_becomes_rgb_and_transparency_goes_on_white():
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    rgba.paste((200, 10, 10, 255), (0, 0, 40, 80))
    out = read_photo(encode(rgba, "PNG"))
    assert out.getpixel((10, 10)) == (200, 10, 10) and out.getpixel((70, 10)) == (255, 255, 255)
    assert read_photo(encode(Image.new("LA", (80, 80), (0, 0)), "PNG")).getpixel((1, 1)) == (255, 255, 255)
    palette = Image.new("P", (80, 80), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10])
    palette.paste(1, (0, 0, 40, 80))
    out = read_photo(encode(palette, "PNG", transparency=0))  # index 0 transparent
    assert out.getpixel((10, 10)) == (200, 10, 10) and out.getpixel((70, 10)) == (255, 255, 255)
    cmyk = read_photo(encode(Image.new("CMYK", (80, 80), (0, 255, 255, 0)), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and cmyk.getpixel((1, 1))[0] > 200 and cmyk.getpixel((1, 1))[1] < 60
    sixteen = Image.fromarray(np.full((80, 80), 65535 // 2, dtype=np.uint16))
    assert abs(read_photo(encode(sixteen, "PNG")).getpixel((1, 1))[0] - 127) <= 1
    assert read_photo(encode(Image.new("1", (80, 80), 1), "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_truncation_cannot_be_hidden_by_a_global_pillow_setting(monkeypatch):
    monkeypatch.setattr(photo.ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    refused(PORTRAIT.read_bytes(), "LOAD_TRUNCATED_IMAGES")
