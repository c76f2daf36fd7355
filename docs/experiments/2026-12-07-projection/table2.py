"""Markdown rows for docs/projection.md from exp2.py rows: per tag, PSNR mean +- sd, SSIM, agreement (shipped), +3 edit success (shipped / second), edit PSNR, tune seconds."""
import json, sys, gzip, numpy as np
from collections import defaultdict
ATTRS = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair", "Bangs", "Young", "Wearing_Lipstick", "No_Beard", "Wearing_Hat")
EDITS = ("Smiling", "Male", "Eyeglasses")
rows = [json.loads(l) for f in sys.argv[1:] for l in (gzip.open(f) if f.endswith("gz") else open(f))]
by = defaultdict(list)
for r in rows: by[r["tag"]].append(r)
for tag, rs in by.items():
    k = "t" if "psnr_t" in rs[0] else "z"
    ps = np.array([r["psnr_" + k] for r in rs]); ss = np.array([r["ssim_" + k] for r in rs])
    agree = np.mean([[(r["photo"]["shipped"][j] > .5) == (r["proj_" + k]["shipped"][j] > .5) for j in range(10)] for r in rs], 0)
    cells = [tag, str(len(rs)), f"{ps.mean():.2f} ± {ps.std():.2f}", f"{ss.mean():.3f}", f"{agree[0]:.2f}", f"{agree[1]:.2f}", f"{agree.mean():.3f}"]
    for e in EDITS:
        out = []
        for clf in ("shipped", "second"):
            j = ATTRS.index(e); neg = [r for r in rs if r["proj_" + k][clf][j] < .5]
            out.append(f"{np.mean([r['edit_' + k][e][clf][j] > .5 for r in neg]):.2f}")
        cells.append(" / ".join(out))
    if k == "t":
        cells.append(" ".join(f"{np.mean([r['psnr_edit_t'][e] for r in rs]):.1f}" for e in EDITS) + " (z alone " + " ".join(f"{np.mean([r['psnr_edit_z'][e] for r in rs]):.1f}" for e in EDITS) + ")")
        cells.append(f"{np.mean([r['tune_seconds'] for r in rs]):.1f}")
    print("| " + " | ".join(cells) + " |")
