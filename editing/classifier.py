"""The face-attribute classifier: a small CNN that gives one logit per CelebA
attribute, trained on the labels preprocess.py writes beside an image array
(``<name>_<size>.attrs.npz``), its weights-only file, and its scores.

    names, labels = load_labels("data/celeba_64.npy", DEFAULT_ATTRIBUTES)
    state, config = train_classifier(images, labels, names)
    model, config = load_classifier("assets/celeba_attributes.pt")
    logits = predict(model, images)                   # (N, A); logit > 0: the face has the attribute

Each attribute is its own binary task in one multi-label BCE. Its two classes
are weighted to equal total weight (CelebA has 6 % glasses, 42 % men), so
logit 0 is the balanced decision; a label 0 (no row for that image) adds no
loss. Balanced accuracy (mean of the true positive and true negative rates at
logit 0) and AUC are the scores, since plain accuracy rewards saying "no
glasses" to everyone.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import utils
from dataloader import to_float
from utils import UserError
from utils.paths import CLASSIFIER, shown

CLASSIFIER_FORMAT = "dcgan-attribute-classifier/1"
# Salient attributes CelebA labels reliably; its labels of the other 30 (Attractive, Oval_Face...) are noisy.
DEFAULT_ATTRIBUTES = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair", "Bangs", "Young",
                      "Wearing_Lipstick", "No_Beard", "Wearing_Hat")


class AttributeNet(nn.Module):
    """images (B, 3, S, S) in [-1, 1] -> one logit per attribute (B, A).

    width w, 64 px:
        image                               3    x 64 x 64
        2 x (Conv3+BN+ReLU), MaxPool   -> (w)   x 32 x 32
        2 x (Conv3+BN+ReLU), MaxPool   -> (2w)  x 16 x 16
        2 x (Conv3+BN+ReLU), MaxPool   -> (4w)  x 8 x 8
        2 x (Conv3+BN+ReLU), MaxPool   -> (8w)  x 4 x 4
        mean over space, Dropout, Linear -> A logits
    Any size from 16 px works (the mean pools what is left).
    """

    def __init__(self, num_attributes: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for level in range(4):
            out_ch = width * 2**level
            for ch in (in_ch, out_ch):
                layers += [nn.Conv2d(ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_attributes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean((2, 3)))


# --------------------------------------------------------------------------- #
# Labels
# --------------------------------------------------------------------------- #
def labels_path(data) -> Path:
    """X_64.npy -> X_64.attrs.npz, where preprocess.py writes the labels."""
    data = Path(data)
    return data.with_name(data.stem + ".attrs.npz")


def read_npz(path, missing: str, what: str, fix: str) -> dict:
    """Every array of the .npz at ``path`` (no pickles), or a one-line
    UserError: ``missing`` when there is no file, else that it is not ``what``
    and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing)
    try:
        with np.load(path, allow_pickle=False) as blob:
            return {key: blob[key] for key in blob.files}
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is not {what} ({str(err).splitlines()[0][:120]}); {fix}") from None


def load_labels(data, names=None, count: int | None = None) -> tuple[list[str], np.ndarray]:
    """The labels beside the image array ``data`` -> (names, int8 (N, A)),
    the columns of ``names`` (default: all) in that order; ``count``: the
    array's number of images, which must match."""
    path = labels_path(data)
    blob = read_npz(path, f"no attribute labels beside {data}: {path} not found; preprocess.py writes it when "
                          f"CelebA's list_attr_celeba.txt lies beside the images (or with --attrs PATH)",
                    "a label file from preprocess.py", "re-run preprocess.py")
    if "names" not in blob or "labels" not in blob:
        raise UserError(f"{path} is not a label file from preprocess.py (no names or labels); re-run preprocess.py")
    have, labels = [str(n) for n in blob["names"]], blob["labels"]
    if count is not None and labels.shape[0] != count:
        raise UserError(f"{path} has {labels.shape[0]} rows but {data} holds {count} images; "
                        f"re-run preprocess.py to write both again")
    names = list(have if names is None else names)
    check_names(names, have, f"{path}")
    return names, labels[:, [have.index(n) for n in names]].astype(np.int8)


def check_names(names, have, where: str) -> None:
    """UserError naming the unknown ones among ``names`` and listing ``have``."""
    unknown = [n for n in names if n not in have]
    if unknown:
        raise UserError(f"no attribute {', '.join(map(repr, unknown))} in {where}; it has {', '.join(have)}")


# --------------------------------------------------------------------------- #
# Scores
# --------------------------------------------------------------------------- #
def balanced_accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean of the true positive and true negative rates at logit 0, over the
    faces labelled 1 or -1; None when either class is absent."""
    pos, neg = labels > 0, labels < 0
    if not pos.any() or not neg.any():
        return None
    return float(((logits[pos] > 0).mean() + (logits[neg] <= 0).mean()) / 2)


def auc(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half) over the
    faces labelled 1 or -1; None when either class is absent."""
    known = labels != 0
    pos = labels[known] > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return None
    from scipy.stats import rankdata  # 0.5 s to import: only attributes.py evaluate needs it

    ranks = rankdata(logits[known])
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def attribute_scores(logits: np.ndarray, labels: np.ndarray, names) -> list[dict]:
    """One dict per attribute: name, balanced_accuracy, auc, n (labelled faces), positive."""
    return [{"attribute": name, "balanced_accuracy": balanced_accuracy(logits[:, k], labels[:, k]),
             "auc": auc(logits[:, k], labels[:, k]), "n": int((labels[:, k] != 0).sum()),
             "positive": int((labels[:, k] > 0).sum())} for k, name in enumerate(names)]


def score_line(s: dict) -> str:
    """`Smiling  balanced accuracy 0.91  AUC 0.97  (n=1965, 944 positive)`."""
    def num(x):
        return "n/a" if x is None else f"{x:.2f}"

    return (f"{s['attribute']}  balanced accuracy {num(s['balanced_accuracy'])}  AUC {num(s['auc'])}  "
            f"(n={s['n']}, {s['positive']} positive)")


# --------------------------------------------------------------------------- #
# Inference
# --------------------------------------------------------------------------- #
def as_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC, or float NCHW in [-1, 1] from a generator (rounded as its
    saved PNGs would be) -> float NCHW in [-1, 1] at ``size`` px."""
    if images.dtype == torch.uint8:
        x = to_float(images)
    else:
        x = utils.quantize(images).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


@torch.no_grad()
def predict(model: AttributeNet, images, size: int, batch_size: int = 256, device="cpu",
            progress: str | None = None) -> np.ndarray:
    """Logits (N, A) of uint8 NHWC images (numpy or torch), batch_size at a time."""
    model.eval()
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=progress, unit="batch", disable=progress is None):
        batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        out.append(model(as_input(batch, size)).float().cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def class_weights(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per attribute, the loss weight of a positive and of a negative face, so
    that each class carries half of the attribute's total weight."""
    known = (labels != 0).float().sum(0).clamp_min(1)
    pos = (labels > 0).float().sum(0).clamp_min(1)
    neg = (labels < 0).float().sum(0).clamp_min(1)
    return known / (2 * pos), known / (2 * neg)


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor, weights) -> torch.Tensor:
    """Class-balanced BCE over the faces labelled 1 or -1 (labels 0 add nothing)."""
    w_pos, w_neg = weights
    weight = torch.where(labels > 0, w_pos, w_neg) * (labels != 0)
    loss = F.binary_cross_entropy_with_logits(logits, (labels > 0).float(), weight=weight, reduction="sum")
    return loss / (labels != 0).sum().clamp_min(1)


def augment(batch: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image with probability 1/2 and move it by up to ``shift``
    pixels each way (edges repeated): float NCHW -> the same shape."""
    flip = torch.rand(batch.shape[0], generator=gen) < 0.5
    batch = torch.where(flip[:, None, None, None].to(batch.device), batch.flip(3), batch)
    if not shift:
        return batch
    size = batch.shape[-1]
    padded = F.pad(batch, (shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * shift + 1, (2, batch.shape[0]), generator=gen).tolist()
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (x, y) in enumerate(zip(dx, dy))])


def train_classifier(
    images,                     # uint8 (N, S, S, 3) faces
    labels,                     # int8 (N, A): 1, -1, or 0 (no label: no loss)
    names,                      # the A attribute names
    epochs: int = 15,           # passes over the training part
    batch_size: int = 64,       # faces per step
    lr: float = 2e-3,           # AdamW peak learning rate (one-cycle schedule)
    weight_decay: float = 5e-4, # AdamW weight decay
    width: int = 16,            # channels of the first level (AttributeNet)
    val_fraction: float = 0.1,  # the last share of the faces: validation, never trained on
    shift: int = 4,             # random translation in pixels, besides mirroring
    seed: int = 0,              # initialisation, order and augmentation
    device="cpu",               # torch device
) -> tuple[dict, dict]:
    """Train on the first 1 - val_fraction of the faces and keep the epoch
    with the best mean balanced accuracy on the rest. -> (state_dict, a
    config dict: the settings, the chosen epoch and its validation scores)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_val = int(round(len(images) * val_fraction))
    n_train = len(images) - n_val
    x = torch.from_numpy(np.array(images[:n_train]))  # a copy: the array may be a read-only memory map
    y = torch.as_tensor(np.asarray(labels[:n_train])).float()
    size = x.shape[1]
    model = AttributeNet(len(names), width).to(device)
    weights = tuple(w.to(device) for w in class_weights(y))
    steps = math.ceil(n_train / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.2)
    best = {"score": -1.0}
    for epoch in range(1, epochs + 1):
        # ---- one pass over the training faces ----
        model.train()
        order = torch.randperm(n_train, generator=gen)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", unit="step", leave=False)
        total = 0.0
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            batch = augment(to_float(x[idx]), shift, gen).to(device)
            loss = balanced_bce(model(batch), y[idx].to(device), weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        bar.close()
        # ---- validation: keep the best epoch ----
        line = f"epoch {epoch}/{epochs}  loss {total / steps:.3f}"
        if n_val:
            scores = attribute_scores(predict(model, images[n_train:], size, device=device),
                                      np.asarray(labels[n_train:]), names)
            accs = [s["balanced_accuracy"] for s in scores if s["balanced_accuracy"] is not None]
            mean = float(np.mean(accs)) if accs else 0.0
            line += f"  validation balanced accuracy {mean:.3f} (mean of {len(accs)})"
            if mean > best["score"]:
                best = {"score": mean, "epoch": epoch, "scores": scores, "state": copy.deepcopy(model.state_dict())}
        print(line, flush=True)
    if not n_val:
        best = {"score": None, "epoch": epochs, "scores": [], "state": model.state_dict()}
    config = {"attributes": list(names), "size": int(size), "width": width, "epochs": epochs,
              "best_epoch": best["epoch"], "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "shift": shift, "seed": seed, "train_n": n_train, "val_n": n_val,
              "val_balanced_accuracy": best["score"], "validation": best["scores"]}
    return {k: v.detach().cpu() for k, v in best["state"].items()}, config


# --------------------------------------------------------------------------- #
# The file: {"format", "config", "state"}, weights only
# --------------------------------------------------------------------------- #
def save_classifier(path, state: dict, config: dict) -> None:
    """Write the classifier atomically: plain tensors and a config of plain values."""
    utils.torch_save({"format": CLASSIFIER_FORMAT, "config": config, "state": state}, path)


def load_classifier(path, device="cpu") -> tuple[AttributeNet, dict]:
    """-> (AttributeNet in eval mode on ``device``, its config), or a one-line UserError."""
    hint = f"pass --classifier PATH to one from `python attributes.py train` (e.g. {shown(CLASSIFIER)})"
    blob = utils.torch_load(path, what="attribute classifier", hint=hint)
    if not (isinstance(blob, dict) and blob.get("format") == CLASSIFIER_FORMAT):
        raise UserError(f"{path} is not an attribute classifier; {hint}")
    config = blob["config"]
    model = AttributeNet(len(config["attributes"]), config["width"])
    model.load_state_dict(blob["state"])
    return model.to(device).eval(), config
