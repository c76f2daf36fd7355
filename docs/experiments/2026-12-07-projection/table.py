import json, sys, numpy as np
ATTRS = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair", "Bangs", "Young", "Wearing_Lipstick", "No_Beard", "Wearing_Hat")
rows=[json.loads(l) for l in open(sys.argv[1])]
print("n", len(rows))
for st in ("z","t"):
    ps=np.array([r[f"psnr_{st}"] for r in rows]); ss=np.array([r[f"ssim_{st}"] for r in rows])
    print(st, f"PSNR {ps.mean():.2f} sd {ps.std():.2f} min {ps.min():.1f} p10 {np.percentile(ps,10):.1f} median {np.median(ps):.1f} max {ps.max():.1f} | SSIM {ss.mean():.3f} sd {ss.std():.3f} min {ss.min():.3f}")
for clf in ("shipped","second"):
    print("| classifier | stage | " + " | ".join(ATTRS) + " | mean |")
    for st,key in (("z alone","proj_z"),("tuned","proj_t")):
        ag=[np.mean([(r["photo"][clf][k]>.5)==(r[key][clf][k]>.5) for r in rows]) for k in range(10)]
        print(f"| {clf} | {st} | " + " | ".join(f"{a:.2f}" for a in ag) + f" | {np.mean(ag):.3f} |")
    lab=[np.mean([(r["photo"][clf][k]>.5)==(r["labels"][a]>0) for r in rows]) for k,a in enumerate(ATTRS)]
    print(f"| {clf} | photo vs CelebA label | " + " | ".join(f"{a:.2f}" for a in lab) + f" | {np.mean(lab):.3f} |")
    for st,proj,ed in (("z alone","proj_z","edit_z"),("tuned","proj_t","edit_t")):
        out=[]
        for e in ("Smiling","Male","Eyeglasses"):
            k=ATTRS.index(e); neg=[r for r in rows if r[proj][clf][k]<.5]
            out.append(f"{e} {np.mean([r[ed][e][clf][k]>.5 for r in neg]):.2f} (n={len(neg)})")
        print(clf, st, "edit +3:", ", ".join(out))
print("tune seconds mean", np.mean([r["tune_seconds"] for r in rows]))
