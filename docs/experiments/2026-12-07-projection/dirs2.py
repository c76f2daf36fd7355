"""Scratch: alternative direction fits (balanced logistic regression, mean difference) vs the shipped fit, +3 edit success on random seeds."""
import sys, time, torch, json, os
import torch.nn.functional as F
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
N = 20000
z = latents(range(0, N), 100)
if os.path.exists("/tmp/s2/L20k.pt"): L = torch.load("/tmp/s2/L20k.pt")
else: L = logits_of(z); torch.save(L, "/tmp/s2/L20k.pt")
ze = latents(range(10**6, 10**6 + 2000), 100)
prob = lambda zs: torch.sigmoid(logits_of(zs))
def balanced(z, lg, l2=1e-3):
    y = (lg > 0).double(); x = z.double(); pw = (1 - y.mean()) / y.mean()
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True); b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    def closure():
        opt.zero_grad(); loss = F.binary_cross_entropy_with_logits(x @ w + b, y, pos_weight=pw) + l2 * (w * w).sum(); loss.backward(); return loss
    with torch.enable_grad(): opt.step(closure)
    w = w.detach(); return (w / w.norm()).float()
def meandiff(z, lg):
    p = lg > 0; d = z[p].mean(0) - z[~p].mean(0); return d / d.norm()
def soft(z, lg):  # regression of the logit on z (least squares): the direction the logit grows fastest, linearly
    x = torch.cat([z, torch.ones(len(z), 1)], 1).double(); w = torch.linalg.lstsq(x, lg.double()[:, None]).solution[:-1, 0]
    return (w / w.norm()).float()
fits = {"lr": lambda k: fit_direction(z, L[:, k]), "balanced": lambda k: balanced(z, L[:, k]),
        "meandiff": lambda k: meandiff(z, L[:, k]), "lstsq_logit": lambda k: soft(z, L[:, k])}
for name, fit in fits.items():
    normals = torch.stack([fit(k) for k in range(len(names))])
    torch.save(normals, f"/tmp/s2/normals_{name}.pt")
    s = edit_scores(prob, ze, names, normals, 3.0)
    print(json.dumps({"fit": name, **{r["attribute"]: round(r["edit_success"], 3) for r in s},
                      "mean": round(sum(r["edit_success"] for r in s) / len(s), 3),
                      "other_moved": round(sum(r["other_moved"] for r in s) / len(s), 3)}), flush=True)
