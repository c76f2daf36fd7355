"""Scratch: which linear fit gives the shipped generator's directions the best +3 edit success on random
latents (seeds 1,000,000+; never projections). `python dirs.py tails 60000`: logistic regression on all
faces or InterFaceGAN's tails, fitted on 20,000 and 60,000 latents; `python dirs.py fits`: logistic
regression, class-balanced logistic regression, the mean difference, least squares on the logit (20,000)."""
import sys, time, torch, json
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
prob = lambda zs: torch.sigmoid(logits_of(zs))
ze = latents(range(10**6, 10**6 + 2000), 100)
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
def lstsq_logit(z, lg):
    x = torch.cat([z, torch.ones(len(z), 1)], 1).double(); w = torch.linalg.lstsq(x, lg.double()[:, None]).solution[:-1, 0]
    return (w / w.norm()).float()
def score(tag, normals):
    s = edit_scores(prob, ze, names, normals, 3.0)
    print(json.dumps({**tag, **{r["attribute"]: round(r["edit_success"], 3) for r in s}}), flush=True)
N = int(sys.argv[2]) if sys.argv[1] == "tails" else 20000
z = latents(range(0, N), 100); t = time.time(); L = logits_of(z); print("labelled", N, time.time() - t, flush=True)
if sys.argv[1] == "tails":
    for n_fit in sorted({20000, N}):
        for tail in (0.0, 0.02, 0.05, 0.1, 0.25):
            score({"n": n_fit, "tail": tail}, torch.stack([fit_direction(z[:n_fit], L[:n_fit, k], tail) for k in range(len(names))]))
else:
    fits = {"lr": lambda k: fit_direction(z, L[:, k]), "balanced": lambda k: balanced(z, L[:, k]),
            "meandiff": lambda k: meandiff(z, L[:, k]), "lstsq_logit": lambda k: lstsq_logit(z, L[:, k])}
    for name, fit in fits.items():
        score({"fit": name}, torch.stack([fit(k) for k in range(len(names))]))
