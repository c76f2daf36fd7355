"""Synthetic cartoon faces: an offline stand-in for CelebA, drawn with PIL.

Each face (skin, hair style, eyes with gaze, brows, nose, mouth, glasses, a
small pose jitter) is a function of ``numpy.random.default_rng([seed, index])``
alone, drawn at ``synthetic_canvas(size)`` px and reduced to each size.
``synthetic_task`` is preprocess.py's worker for them: ``preprocess.py --synthetic N``
writes them with ``preprocessing.writer``, as it writes photos:

    python preprocess.py --synthetic 2000                   # -> data/synthetic_{64,128}.npy
    python preprocess.py --synthetic 64 --sizes 32 --seed 1 --out /tmp/faces
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SKIN = [(255, 224, 196), (241, 194, 158), (224, 172, 128), (198, 134, 94), (160, 102, 66), (112, 70, 45),
        (84, 52, 36), (250, 210, 180)]
HAIR = [(25, 20, 18), (60, 38, 24), (101, 67, 33), (150, 100, 50), (214, 176, 104), (240, 220, 150),
        (165, 55, 25), (190, 190, 190), (235, 235, 235), (80, 40, 110), (40, 90, 160), (200, 60, 120)]
HAIR_WEIGHTS = np.array([6, 6, 5, 3, 3, 2, 2, 2, 1, 0.5, 0.5, 0.5])
IRIS = [(80, 50, 25), (120, 80, 40), (60, 110, 170), (70, 130, 90), (110, 120, 130), (40, 30, 25)]


def _shade(color, factor: float):
    return tuple(int(max(0, min(255, c * factor))) for c in color)


def _mix(a, b, t: float):
    return tuple(int(x + (y - x) * t) for x, y in zip(a, b))


def draw_face(rng: np.random.Generator, canvas: int = 256) -> Image.Image:
    """One cartoon face, drawn at ``canvas`` px (downscale for antialiasing).
    Everything is a function of ``rng``."""
    D = canvas
    u = lambda v: v * D  # noqa: E731  (unit coordinates -> pixels)
    r = rng.uniform

    # background: a vertical two-colour gradient
    hue = rng.integers(0, 256, 3) * r(0.4, 0.85) + r(40, 110)  # softened towards grey
    top, bottom = np.clip(hue, 0, 255), np.clip(hue * r(0.5, 1.1) + r(-40, 40, 3), 0, 255)
    t = np.linspace(0, 1, D, dtype=np.float32)[:, None, None]
    bg = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(bg, (D, D, 3)).copy())

    layer = Image.new("RGBA", (D, D), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    skin = _mix(SKIN[rng.integers(len(SKIN))], tuple(int(c) for c in rng.integers(150, 256, 3)), r(0, 0.12))
    hair = HAIR[rng.choice(len(HAIR), p=HAIR_WEIGHTS / HAIR_WEIGHTS.sum())]
    hair = _shade(hair, r(0.85, 1.15))
    shirt = tuple(int(c) for c in rng.integers(20, 240, 3))
    cx, cy = 0.5, 0.5
    fw, fh = r(0.2, 0.26), r(0.26, 0.32)  # half width / half height of the face
    style = rng.choice(["short", "long", "bob", "bald", "curly", "bun", "spiky"],
                       p=[0.24, 0.22, 0.16, 0.06, 0.12, 0.08, 0.12])
    line = max(1, int(D / 128))

    # shoulders and neck
    d.ellipse([u(cx - 0.42), u(cy + fh + 0.08), u(cx + 0.42), u(cy + fh + 0.6)], fill=shirt)
    d.rectangle([u(cx - fw * 0.45), u(cy + fh * 0.5), u(cx + fw * 0.45), u(cy + fh + 0.13)], fill=_shade(skin, 0.85))
    # long hair behind the head
    if style in ("long", "bob"):
        length = r(0.28, 0.45) if style == "long" else r(0.05, 0.14)
        d.rounded_rectangle([u(cx - fw - 0.055), u(cy - fh - 0.05), u(cx + fw + 0.055), u(cy + length)],
                            radius=u(0.12), fill=hair)
    if style == "bun":
        d.ellipse([u(cx - 0.08), u(cy - fh - 0.13), u(cx + 0.08), u(cy - fh + 0.02)], fill=hair)
    # ears
    ear_y = cy + r(-0.02, 0.03)
    for side in (-1, 1):
        ex = cx + side * fw
        d.ellipse([u(ex - 0.035), u(ear_y - 0.05), u(ex + 0.035), u(ear_y + 0.05)], fill=_shade(skin, 0.93))
    # face: an ellipse, sometimes with a squarer or pointier jaw
    box = [u(cx - fw), u(cy - fh), u(cx + fw), u(cy + fh)]
    d.ellipse(box, fill=skin)
    jaw = rng.choice(["oval", "square", "pointed"], p=[0.5, 0.25, 0.25])
    if jaw == "square":
        d.rounded_rectangle([u(cx - fw * 0.92), u(cy), u(cx + fw * 0.92), u(cy + fh * 0.92)],
                            radius=u(fw * 0.45), fill=skin)
    elif jaw == "pointed":
        d.polygon([(u(cx - fw * 0.97), u(cy + 0.02)), (u(cx + fw * 0.97), u(cy + 0.02)),
                   (u(cx + fw * 0.25), u(cy + fh * 1.05)), (u(cx - fw * 0.25), u(cy + fh * 1.05))], fill=skin)
    # hair on top of the head
    hx0, hx1 = u(cx - fw - 0.02), u(cx + fw + 0.02)
    hy0 = u(cy - fh - r(0.025, 0.06))
    fringe = cy - fh * r(0.35, 0.6)
    if style in ("short", "long", "bob", "bun"):
        d.chord([hx0, hy0, hx1, u(cy + fh * 0.35)], start=180, end=360, fill=hair)
        part = rng.choice(["straight", "left", "right", "fringe"])
        if part == "fringe":
            d.rectangle([hx0 + u(0.02), u(cy - fh * 0.8), hx1 - u(0.02), u(fringe)], fill=hair)
        elif part != "straight":
            sgn = -1 if part == "left" else 1
            d.polygon([(u(cx + sgn * fw * 0.3), u(cy - fh)), (u(cx - sgn * (fw + 0.02)), u(fringe + 0.01)),
                       (u(cx - sgn * (fw + 0.02)), u(cy - fh * 0.6))], fill=hair)
        if style in ("long", "bob"):  # strands framing the face
            for side in (-1, 1):
                x_out = cx + side * (fw + 0.045)
                x_in = cx + side * (fw - 0.03)
                d.polygon([(u(x_out), u(cy - fh * 0.6)), (u(x_in), u(cy - fh * 0.6)),
                           (u(cx + side * (fw + 0.005)), u(cy + (0.1 if style == "bob" else 0.22))),
                           (u(x_out), u(cy + (0.1 if style == "bob" else 0.25)))], fill=hair)
    elif style == "curly":
        for _ in range(22):
            a = r(math.pi * 0.95, math.pi * 2.05)
            rad = r(0.045, 0.07)
            px, py = cx + (fw + 0.01) * math.cos(a), cy - 0.04 + (fh + 0.0) * math.sin(a)
            d.ellipse([u(px - rad), u(py - rad), u(px + rad), u(py + rad)], fill=hair)
        d.chord([hx0, hy0, hx1, u(cy + fh * 0.2)], start=180, end=360, fill=hair)
    elif style == "spiky":
        d.chord([hx0, u(cy - fh - 0.01), hx1, u(cy + fh * 0.3)], start=180, end=360, fill=hair)
        n = int(rng.integers(5, 9))
        for k in range(n):
            x = cx - fw + (2 * fw) * (k + 0.5) / n
            d.polygon([(u(x - 0.035), u(cy - fh * 0.75)), (u(x + r(-0.02, 0.02)), u(cy - fh - r(0.06, 0.11))),
                       (u(x + 0.035), u(cy - fh * 0.75))], fill=hair)
    elif style == "bald" and rng.random() < 0.5:  # a little hair at the sides
        for side in (-1, 1):
            d.chord([u(cx + side * fw - 0.04), u(cy - fh * 0.55), u(cx + side * fw + 0.04), u(cy + 0.02)],
                    start=90 if side > 0 else 270, end=270 if side > 0 else 90, fill=hair)

    # eyes, with gaze
    eye_y = cy + r(-0.035, 0.01)
    eye_dx = fw * r(0.38, 0.5)
    ew, eh = r(0.04, 0.055), r(0.025, 0.04)
    gx, gy = r(-0.45, 0.45), r(-0.3, 0.3)
    iris = IRIS[rng.integers(len(IRIS))]
    closed = rng.random() < 0.06
    dark = _shade(hair, 0.6) if sum(hair) < 450 else (70, 55, 45)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        if closed:
            d.arc([u(ex - ew), u(eye_y - eh), u(ex + ew), u(eye_y + eh)], 10, 170, fill=(40, 30, 30), width=2 * line)
        else:
            d.ellipse([u(ex - ew), u(eye_y - eh), u(ex + ew), u(eye_y + eh)], fill=(250, 250, 250),
                      outline=(60, 45, 40), width=line)
            ir = eh * 0.85
            ix, iy = ex + gx * (ew - ir), eye_y + gy * (eh - ir)
            d.ellipse([u(ix - ir), u(iy - ir), u(ix + ir), u(iy + ir)], fill=iris)
            d.ellipse([u(ix - ir * 0.5), u(iy - ir * 0.5), u(ix + ir * 0.5), u(iy + ir * 0.5)], fill=(15, 10, 10))
            d.ellipse([u(ix - ir * 0.55), u(iy - ir * 0.6), u(ix - ir * 0.15), u(iy - ir * 0.2)],
                      fill=(255, 255, 255))
        # brow: tilt from worried to angry
        tilt = r(-0.025, 0.025)
        by = eye_y - eh - r(0.02, 0.04)
        bw = max(2, int(u(r(0.009, 0.018))))
        d.line([(u(ex - side * ew * 1.1), u(by + tilt)), (u(ex + side * ew * 1.1), u(by - tilt))],
               fill=_shade(hair, 0.8) if style != "bald" else dark, width=bw)
    # nose
    ny = cy + r(0.05, 0.09)
    nose_col = _shade(skin, 0.78)
    if rng.random() < 0.5:
        d.line([(u(cx + r(-0.005, 0.005)), u(eye_y + 0.01)), (u(cx - 0.018), u(ny)), (u(cx + 0.012), u(ny + 0.005))],
               fill=nose_col, width=2 * line, joint="curve")
    else:
        d.ellipse([u(cx - 0.03), u(ny - 0.022), u(cx + 0.03), u(ny + 0.018)], fill=_shade(skin, 0.9))
        for side in (-1, 1):
            d.ellipse([u(cx + side * 0.014 - 0.006), u(ny), u(cx + side * 0.014 + 0.006), u(ny + 0.01)], fill=nose_col)
    # mouth: a parabola from smile (curve > 0) to frown (curve < 0), sometimes open
    my = cy + fh * r(0.5, 0.62)
    mw = fw * r(0.35, 0.55)
    curve = r(-0.025, 0.045)
    lips = _mix(_shade(skin, 0.7), (170, 40, 50), r(0.3, 0.8))
    xs = np.linspace(-1, 1, 12)
    pts = [(u(cx + x * mw), u(my + curve * (1 - x * x))) for x in xs]
    if curve > 0.02 and rng.random() < 0.5:  # open smile with teeth
        d.polygon(pts + [(u(cx), u(my - 0.005))], fill=(110, 20, 30))
        d.polygon([(u(cx - mw * 0.8), u(my + curve * 0.2)), (u(cx + mw * 0.8), u(my + curve * 0.2)),
                   (u(cx + mw * 0.5), u(my + curve * 0.55)), (u(cx - mw * 0.5), u(my + curve * 0.55))],
                  fill=(245, 245, 240))
    else:
        d.line(pts, fill=lips, width=max(2, int(u(r(0.011, 0.02)))), joint="curve")
    # blush, moustache/beard sometimes
    if rng.random() < 0.2:
        for side in (-1, 1):
            bx = cx + side * fw * 0.6
            d.ellipse([u(bx - 0.04), u(ny - 0.015), u(bx + 0.04), u(ny + 0.03)], fill=(235, 120, 120, 90))
    if rng.random() < 0.1:
        d.chord([u(cx - fw * 0.9), u(cy + fh * 0.05), u(cx + fw * 0.9), u(cy + fh * 1.02)], 15, 165,
                fill=_shade(hair, 0.75) + (235,))
        d.line(pts, fill=lips, width=max(2, int(u(0.015))), joint="curve")
    elif rng.random() < 0.1:
        d.line([(u(cx - mw * 0.9), u(my - 0.02)), (u(cx), u(my - 0.035)), (u(cx + mw * 0.9), u(my - 0.02))],
               fill=hair, width=max(3, int(u(0.02))), joint="curve")
    # glasses
    if rng.random() < 0.25:
        frame = tuple(int(c) for c in rng.integers(0, 120, 3))
        sun = rng.random() < 0.3
        gr = ew * r(1.35, 1.6)
        for side in (-1, 1):
            ex = cx + side * eye_dx
            shape = d.ellipse if rng.random() < 0.5 else d.rectangle
            shape([u(ex - gr), u(eye_y - gr * 0.8), u(ex + gr), u(eye_y + gr * 0.8)],
                  outline=frame, width=max(2, int(u(0.011))), fill=(20, 20, 30, 235) if sun else None)
            d.line([(u(ex + side * gr), u(eye_y - 0.01)), (u(cx + side * fw), u(eye_y - 0.02))], fill=frame,
                   width=max(2, int(u(0.008))))
        d.line([(u(cx - eye_dx + gr), u(eye_y)), (u(cx + eye_dx - gr), u(eye_y))], fill=frame,
               width=max(2, int(u(0.01))))

    # pose jitter: small rotation, scale and shift of the whole figure, one affine resampling pass
    angle, scale = math.radians(r(-9, 9)), r(0.92, 1.08)
    tx, ty = r(-0.035, 0.035, 2) * D
    c, s = math.cos(angle) / scale, math.sin(angle) / scale  # output -> input: q = M (p - centre - t) + centre
    h = D / 2
    matrix = (c, s, h - c * (h + tx) - s * (h + ty), -s, c, h + s * (h + tx) - c * (h + ty))
    layer = layer.transform((D, D), Image.AFFINE, matrix, resample=Image.BILINEAR)
    img.paste(layer, (0, 0), layer)
    return img


def synthetic_canvas(size: int) -> int:
    """Drawing resolution for one output size: 256 px, or twice the size above
    128 (so each size's faces do not depend on the other sizes requested)."""
    return max(256, 2 * size)


FACES_VERSION = 2  # part of the outputs' signature: a new drawing makes old arrays out of date


def synthetic_task(task):
    """(index, seed, sizes) -> (index, [RGB bytes of each size], None): one face at every size."""
    index, seed, sizes = task
    out = {}
    for canvas in sorted({synthetic_canvas(s) for s in sizes}):
        img = draw_face(np.random.default_rng([seed, index]), canvas)
        for s in sizes:
            if synthetic_canvas(s) == canvas:  # box average when s divides the canvas, an exact antialiased reduction
                out[s] = (img.reduce(canvas // s) if canvas % s == 0 else img.resize((s, s), Image.LANCZOS)).tobytes()
    return index, [out[s] for s in sizes], None
