"""Scratch: measure projection candidates on CelebA-half faces (selection or report split).
First round: the rows of sel.jsonl.gz and report*.jsonl.gz (without the edit-PSNR fields and --dirs).
Second round (2026-12-07): --dirs passes the named directions to tune_generator's locality term.
The "changes" rows (--hold changes) ran with an option since removed from tune_generator, whose
anchor was the person changed as the original changes its own face at the pivot:
    anchor = (target + original(z_r) - original(pivot)).clamp(-1, 1)
"""
import argparse, json, sys, time, os
from pathlib import Path
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, "/work/main")
try:
    from preprocessing.align import align_face, crop_face
except ImportError:
    sys.path.insert(0, "/tmp/align")
    from align import align_face, crop_face
from network import load_generator
from editing.classifier import load_classifier, as_input
from editing.directions import load_directions
from editing.projection import project_z, tune_generator, psnr, ssim
from utils.paths import PRETRAINED_PARAMS, CLASSIFIER

DATA = Path("/work/shared/data/celeba_half")
ATTRS = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair", "Bangs", "Young", "Wearing_Lipstick", "No_Beard", "Wearing_Hat")
EDITS = ("Smiling", "Male", "Eyeglasses")

p = argparse.ArgumentParser()
p.add_argument("--split", default="selection")
p.add_argument("--n", type=int, default=40)
p.add_argument("--zsteps", type=int, default=300)
p.add_argument("--restarts", type=int, default=4)
p.add_argument("--cands", type=int, default=256)
p.add_argument("--ssim", type=float, default=0.0)
p.add_argument("--tsteps", type=int, default=0)
p.add_argument("--tlr", type=float, default=3e-4)
p.add_argument("--locality", type=float, default=0.0)
p.add_argument("--radius", type=float, default=3.0)
p.add_argument("--samples", type=int, default=4)
p.add_argument("--tssim", type=float, default=None)
p.add_argument("--tag", required=True)
p.add_argument("--dirs", action="store_true")
p.add_argument("--hold", default="faces")
p.add_argument("--zfrom", default=None)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default="/tmp/proj/rows.jsonl")
p.add_argument("--part", default="0/1")
a = p.parse_args()
torch.set_num_threads(a.threads)
names = sorted(os.listdir(DATA / "img_align_celeba"))
lo, hi = (6600, 7217) if a.split == "selection" else (7217, 7817)
pick = names[lo:hi][: a.n]

# labels
lines = (DATA / "list_attr_celeba.txt").read_text().splitlines()
header = lines[1].split()
labels = {l.split()[0]: [int(v) for v in l.split()[1:]] for l in lines[2:]}

targets = []
for n in pick:
    aligned, info = align_face(Image.open(DATA / "img_align_celeba" / n))
    targets.append(np.asarray(crop_face(aligned, 64)))
targets_u8 = torch.from_numpy(np.stack(targets))
T = targets_u8.permute(0, 3, 1, 2).float() / 127.5 - 1

G, cfg = load_generator(PRETRAINED_PARAMS)
book = load_directions(PRETRAINED_PARAMS, G)
clfs = {"shipped": load_classifier(CLASSIFIER)}
if Path("/tmp/proj/second_classifier.pt").exists():
    clfs["second"] = load_classifier("/tmp/proj/second_classifier.pt")


def probs(images):
    out = {}
    for k, (m, c) in clfs.items():
        with torch.no_grad():
            lg = m(as_input(images, c["size"]))
        idx = [c["attributes"].index(x) for x in ATTRS]
        out[k] = torch.sigmoid(lg[:, idx]).tolist()
    return out


zkey = a.zfrom or f"/tmp/proj/z_{a.split}_{a.n}_{a.zsteps}_{a.restarts}_{a.cands}_{a.ssim}.pt"
t0 = time.time()
if Path(zkey).exists():
    Z = torch.load(zkey)
    zsec = None
else:
    Z = project_z(G, T, steps=a.zsteps, restarts=a.restarts, candidates=a.cands, ssim_weight=a.ssim, progress="z")
    zsec = (time.time() - t0) / len(T)
    torch.save(Z, zkey)
with torch.no_grad():
    P = G(Z)
    photo_p = probs(targets_u8)
    proj_p = probs(P)
    base_edit = {e: probs(G(Z + 3 * book.vector(e))) for e in EDITS}
tssim = a.ssim if a.tssim is None else a.tssim
rows = []
with open(a.out, "a") as f:
    k_part, m_part = map(int, a.part.split("/"))
    for i, n in enumerate(pick):
        if i % m_part != k_part:
            continue
        row = {"tag": a.tag, "split": a.split, "name": n, "cfg": vars(a), "z_seconds": zsec,
               "labels": {x: labels[n][header.index(x)] for x in ATTRS},
               "psnr_z": psnr(torch.from_numpy(np.asarray(0)) if False else (P[i:i+1].add(1).mul(127.5).round().div(127.5).sub(1)), T[i:i+1]).item(),
               "ssim_z": ssim(P[i:i+1].add(1).mul(127.5).round().div(127.5).sub(1), T[i:i+1]).item(),
               "photo": {k: v[i] for k, v in photo_p.items()}, "proj_z": {k: v[i] for k, v in proj_p.items()},
               "edit_z": {e: {k: v[i] for k, v in base_edit[e].items()} for e in EDITS}}
        if a.tsteps:
            t1 = time.time()
            Gt = tune_generator(G, Z[i], T[i], steps=a.tsteps, lr=a.tlr, ssim_weight=tssim, locality=a.locality,
                                radius=a.radius, samples=a.samples, seed=i,
                                directions=book.vectors if a.dirs else None)
            row["tune_seconds"] = time.time() - t1
            with torch.no_grad():
                Pt = Gt(Z[i:i+1])
                q = Pt.add(1).mul(127.5).round().div(127.5).sub(1)
                row["psnr_t"], row["ssim_t"] = psnr(q, T[i:i+1]).item(), ssim(q, T[i:i+1]).item()
                row["proj_t"] = {k: v[0] for k, v in probs(Pt).items()}
                Et = {e: Gt(Z[i:i+1] + 3 * book.vector(e)) for e in EDITS}
                row["edit_t"] = {e: {k: v[0] for k, v in probs(Et[e]).items()} for e in EDITS}
                row["psnr_edit_t"] = {e: psnr(Et[e], T[i:i+1]).item() for e in EDITS}
            row["psnr_edit_z"] = {e: psnr(G(Z[i:i+1] + 3 * book.vector(e)), T[i:i+1]).item() for e in EDITS}
        f.write(json.dumps(row) + "\n"); f.flush()
        rows.append(row)
print(a.tag, "z s/face", zsec, "psnr_z", np.mean([r["psnr_z"] for r in rows]),
      "psnr_t", np.mean([r.get("psnr_t", 0) for r in rows]), "tune s", np.mean([r.get("tune_seconds", 0) for r in rows]))
