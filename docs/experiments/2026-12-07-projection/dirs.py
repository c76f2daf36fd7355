"""Scratch: which direction fit gives Eyeglasses (and the rest) the best +3 edit success on random seeds (not projections)."""
import sys, time, torch, json
sys.path.insert(0, "/work/main")
torch.set_num_threads(1)
from network import load_generator
from editing.classifier import load_classifier
from editing.directions import classify_latents, fit_direction, edit_scores
from editing.latents import latents
from utils.paths import PRETRAINED_PARAMS, CLASSIFIER
G, gc = load_generator(PRETRAINED_PARAMS); C, cc = load_classifier(CLASSIFIER)
names = ["Male","Smiling","Eyeglasses","Blond_Hair","Black_Hair","Bangs","Young","Wearing_Lipstick","No_Beard","Wearing_Hat"]
cols = [cc["attributes"].index(n) for n in names]
def logits_of(z): return classify_latents(G, C, cc["size"], z, 500, "cpu")[:, cols]
N = int(sys.argv[1]); t=time.time()
z = latents(range(0, N), 100); L = logits_of(z); print("labelled", N, time.time()-t, flush=True)
ze = latents(range(10**6, 10**6 + 2000), 100)
prob = lambda zs: torch.sigmoid(logits_of(zs))
for n_fit in sorted({20000, N}):
  for tail in (0.0, 0.02, 0.05, 0.1, 0.25):
    normals = torch.stack([fit_direction(z[:n_fit], L[:n_fit, k], tail) for k in range(len(names))])
    s = edit_scores(prob, ze, names, normals, 3.0)
    print(json.dumps({"n": n_fit, "tail": tail, **{r["attribute"]: round(r["edit_success"], 3) for r in s}}), flush=True)
