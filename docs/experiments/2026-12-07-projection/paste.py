"""Scratch: generated faces pasted into REPORT photos' face boxes (a 178x218 aligned canvas, and the same
canvas placed rotated/scaled inside a larger photo so the detector must find it) come back through
alignment + projection at default settings. PSNR vs the aligned target and vs the generated face itself."""
import json, sys, time, os
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, "/work/main")
from preprocessing.align import align_face, crop_face
from network import load_generator
from editing.projection import project_z, tune_generator, psnr, ssim, to_sphere
from editing.latents import latents
from utils.paths import PRETRAINED_PARAMS
from editing.directions import load_directions

torch.set_num_threads(1)
n = int(sys.argv[1]); mode = sys.argv[2]  # aligned | detect
D = "/work/shared/data/celeba_half/img_align_celeba"
names = sorted(os.listdir(D))[7217:7817]
G, _ = load_generator(PRETRAINED_PARAMS)
NAMED = load_directions(PRETRAINED_PARAMS, G).vectors  # the default since the second round (first round: None)
out = open(f"/tmp/proj/paste_{mode}.jsonl", "a")


def t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


for k in range(n):
    with torch.no_grad():
        g = G(to_sphere(latents([50_000 + k], 100)))
    gu8 = g.add(1).mul(127.5).round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()
    canvas = Image.open(os.path.join(D, names[k * 3])).resize((178, 218), Image.LANCZOS)
    canvas.paste(Image.fromarray(gu8).resize((140, 140), Image.LANCZOS), (19, 39))
    photo = canvas
    if mode == "detect":  # into a larger photo, rotated 10 degrees and enlarged 1.8x
        big = Image.new("RGB", (480, 520), (120, 110, 100))
        c2 = canvas.resize((320, 392), Image.BICUBIC).rotate(10, resample=Image.BICUBIC, expand=False, fillcolor=(120, 110, 100))
        big.paste(c2, (80, 60))
        photo = big
    t0 = time.time()
    try:
        aligned, info = align_face(photo)
    except Exception as e:
        out.write(json.dumps({"k": k, "error": str(e)}) + "\n"); continue
    target = t(crop_face(aligned, 64))
    z = project_z(G, target)
    Gt = tune_generator(G, z[0], target[0], directions=NAMED)
    with torch.no_grad():
        p = Gt(z).add(1).mul(127.5).round().div(127.5).sub(1)
    row = {"k": k, "mode": mode, "psnr_target": psnr(p, target).item(), "psnr_generated": psnr(p, t(gu8)).item(),
           "psnr_target_vs_generated": psnr(target, t(gu8)).item(), "ssim_target": ssim(p, target).item(),
           "seconds": time.time() - t0}
    out.write(json.dumps(row) + "\n"); out.flush()
    print(row)
