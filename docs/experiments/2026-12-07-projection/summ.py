"""Summarise rows.jsonl per tag."""
import json, sys
import numpy as np
from collections import defaultdict
ATTRS = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair", "Bangs", "Young", "Wearing_Lipstick", "No_Beard", "Wearing_Hat")
EDITS = ("Smiling", "Male", "Eyeglasses")
path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/proj/rows.jsonl"
by = defaultdict(list)
for l in open(path):
    r = json.loads(l); by[r["tag"]].append(r)


def agree(rows, key, clf):
    out = {}
    for k, a in enumerate(ATTRS):
        out[a] = np.mean([(r["photo"][clf][k] > .5) == (r[key][clf][k] > .5) for r in rows])
    return out


def edit(rows, proj, ed, clf):
    out = {}
    for e in EDITS:
        k = ATTRS.index(e)
        neg = [r for r in rows if r[proj][clf][k] < .5]
        out[e] = (np.mean([r[ed][e][clf][k] > .5 for r in neg]) if neg else float("nan"), len(neg))
    return out


for tag, rows in by.items():
    stages = [("z", "proj_z", "edit_z")] + ([("t", "proj_t", "edit_t")] if "psnr_t" in rows[0] else [])
    for st, proj, ed in stages:
        ps = np.array([r[f"psnr_{st}"] for r in rows]); ss = np.array([r[f"ssim_{st}"] for r in rows])
        line = f"{tag:28s} {st} n={len(rows)} PSNR {ps.mean():.2f}±{ps.std():.2f} (p10 {np.percentile(ps,10):.1f}) SSIM {ss.mean():.3f}"
        for clf in rows[0]["photo"]:
            ag = agree(rows, proj, clf); es = edit(rows, proj, ed, clf)
            line += f" | {clf[:4]} M {ag['Male']:.2f} S {ag['Smiling']:.2f} E {ag['Eyeglasses']:.2f} mean {np.mean(list(ag.values())):.3f} edit " + " ".join(f"{e[:3]} {v[0]:.2f}/{v[1]}" for e, v in es.items())
        if st == "t":
            line += f" | tune {np.mean([r['tune_seconds'] for r in rows]):.1f}s"
        elif rows[0]["z_seconds"]:
            line += f" | z {rows[0]['z_seconds']:.2f}s/face"
        print(line)
