"""Scratch: assets/projection_examples.png from projector.py's folders: photo | aligned | projection | edits."""
import sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, "/work/main")
import utils
from network import load_generator
from editing.directions import load_directions

EDITS = [("Smiling", 3.0), ("Male", 3.0), ("Eyeglasses", 3.0)]
SCALE = 2
rows = []
for folder, photo in [(Path(a), Path(b)) for a, b in zip(sys.argv[1::2], sys.argv[2::2])]:
    params = folder / "generator.params"
    G, cfg = load_generator(params)
    book = load_directions(params, G, tuned_from=cfg["tuned_from"])
    z = torch.from_numpy(np.load(folder / "z.npy"))[None]
    tiles = []
    im = Image.open(photo).convert("RGB")
    im.thumbnail((64 * SCALE * 2, 64 * SCALE))
    pad = Image.new("RGB", (64 * SCALE * 2 // 1, 64 * SCALE), (0, 0, 0))
    pad.paste(im, ((pad.width - im.width) // 2, (pad.height - im.height) // 2))
    tiles.append(np.asarray(pad))
    tiles.append(np.asarray(Image.open(folder / "target.png").resize((64 * SCALE,) * 2, Image.LANCZOS)))
    tiles.append(np.asarray(Image.open(folder / "projected.png").resize((64 * SCALE,) * 2, Image.LANCZOS)))
    for name, s in EDITS:
        d = book.vector(name)
        s = -s if float(z[0] @ d) > 0 else s
        with torch.no_grad():
            img = utils.to_uint8(G(z + s * d))[0]
        tiles.append(np.asarray(Image.fromarray(img).resize((64 * SCALE,) * 2, Image.LANCZOS)))
    gap = np.zeros((64 * SCALE, 4, 3), np.uint8)
    row = np.concatenate(sum([[t, gap] for t in tiles], [])[:-1], axis=1)
    rows.append(row)
width = max(r.shape[1] for r in rows)
grid = np.concatenate(sum([[np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))), np.zeros((4, width, 3), np.uint8)] for r in rows], [])[:-1])
title = "photo | aligned (64 px) | projection | Smiling | Male | Eyeglasses (each turned on, or off where present; strength 3)"
utils.save_png(utils.titled_blocks([(title, grid)]), sys.argv[0].replace("figure.py", "projection_examples.png"))
print("ok", grid.shape)
