"""Named directions in a generator's latent space (InterFaceGAN, Shen et al.,
2020): label sampled faces with the attribute classifier, fit a linear
boundary in z between the most confident faces with and without each
attribute, and keep its unit normal. Moving a latent along it adds the
attribute; conditional directions first remove the normals of attributes to
keep (``--keep Male``: a smile that leaves the gender alone).

    normal = fit_direction(z, logits[:, k])                # unit (nz,)
    vectors = condition(names, normals, keep=["Male"])
    save_directions(directions_path(params), ...)          # <params stem>.directions.npz
    book = load_directions(params, generator)              # refuses other weights than they were made for
    book = load_directions(tuned, g, tuned_from=config["tuned_from"])  # a copy projector.py tuned: its base's
    z_edited = z + book.offset(parse_edit("Smiling=+3,Eyeglasses=+2"))

The file sits beside the params (in an exported folder, its
directions.safetensors: one tensor per name) and records the fingerprint of
the weights it was fitted on, so generator.py finds it without a flag and
never applies directions of another generator.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import utils
from editing.classifier import as_input, read_npz
from export.weights import read_safetensors, save_safetensors
from utils import UserError
from utils.paths import CLASSIFIER, shown

DIRECTIONS_FORMAT = "dcgan-directions/1"
EDIT_EXAMPLE = "Smiling=+3,Eyeglasses=+2"


def directions_path(params) -> Path:
    """assets/celeba_64.params -> assets/celeba_64.directions.npz; an exported
    folder -> DIR/directions.safetensors; g.safetensors -> g.directions.safetensors."""
    params = Path(params)
    if params.is_dir():
        return params / "directions.safetensors"
    return params.with_suffix(".directions.safetensors" if params.suffix == ".safetensors" else ".directions.npz")


def make_command(params, extra: str = "") -> str:
    """The command that writes the directions of ``params``, in backticks."""
    return f"`python attributes.py directions --params {params} --classifier {shown(CLASSIFIER)}{extra}`"


def weights_fingerprint(generator: torch.nn.Module) -> str:
    """A content hash of the generator's weights and BatchNorm statistics: the
    EMA and raw weights of one params file differ, as do two trainings."""
    digest = hashlib.blake2b(digest_size=16)
    for key, value in sorted(generator.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# Fitting
# --------------------------------------------------------------------------- #
@torch.no_grad()
def classify_latents(generator, classifier, size: int, z: torch.Tensor, batch_size: int, device,
                     progress: str | None = None) -> torch.Tensor:
    """The classifier's logits (N, A) for the faces of latents z (N, nz), on the CPU."""
    out = []
    for start in tqdm(range(0, len(z), batch_size), desc=progress, unit="batch", disable=progress is None):
        images = generator(z[start : start + batch_size].to(device))
        out.append(classifier(as_input(images, size)).float().cpu())
    return torch.cat(out)


def fit_direction(z: torch.Tensor, logits: torch.Tensor, tail: float = 0.0, l2: float = 1e-3) -> torch.Tensor:
    """The unit normal of a logistic-regression boundary in z, pointing towards
    the attribute. tail 0: between every latent the classifier calls positive
    (logit > 0) and every other one (split at the median logit where it calls
    all or none positive); tail > 0: between the ``tail`` share of latents with
    the highest logits and the share with the lowest (InterFaceGAN's most
    confident faces). z (N, nz), logits (N,) -> (nz,)."""
    positive = logits > 0
    if tail > 0 or positive.all() or not positive.any():
        k = max(1, int((tail or 0.5) * len(z)))
        order = torch.argsort(logits)
        x = torch.cat([z[order[-k:]], z[order[:k]]]).double()
        y = torch.cat([torch.ones(k), torch.zeros(k)]).double()
    else:
        x, y = z.double(), positive.double()
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = w.detach()
    return (w / w.norm().clamp_min(1e-12)).float()


def condition(names, normals: torch.Tensor, keep=()) -> torch.Tensor:
    """Each normal (A, nz) with the normals of the ``keep`` attributes (other
    than itself) projected out, renormalised: moving along it leaves those
    attributes' boundaries where they are (InterFaceGAN's conditional edit)."""
    out = normals.clone()
    for k, name in enumerate(names):
        kept = [normals[names.index(other)] for other in keep if other != name]
        if kept:
            basis, _ = torch.linalg.qr(torch.stack(kept).double().T)  # orthonormal (nz, K)
            d = normals[k].double()
            d = d - basis @ (basis.T @ d)
            out[k] = (d / d.norm().clamp_min(1e-12)).float()
    return out


def edit_scores(probabilities, z: torch.Tensor, names, vectors: torch.Tensor, step: float = 3.0) -> list[dict]:
    """How well each direction edits, measured with ``probabilities`` (a
    function z (N, nz) -> (N, A) classifier probabilities, columns as
    ``names``): edit_success, the share of faces the classifier calls
    negative that it calls positive after a move of ``step`` along the
    direction; other_moved, the mean absolute change of the other attributes'
    probabilities on those faces; n, how many faces."""
    before = probabilities(z)
    rows = []
    for k, name in enumerate(names):
        negative = before[:, k] < 0.5
        others = [j for j in range(len(names)) if j != k]
        if not negative.any():
            rows.append({"attribute": name, "edit_success": None, "other_moved": None, "n": 0})
            continue
        after = probabilities(z[negative] + step * vectors[k])
        moved = (after[:, others] - before[negative][:, others]).abs().mean().item() if others else 0.0
        rows.append({"attribute": name, "edit_success": (after[:, k] > 0.5).float().mean().item(),
                     "other_moved": moved, "n": int(negative.sum())})
    return rows


def edit_line(s: dict) -> str:
    """`Smiling  edit success 0.93  other attributes moved 0.05`."""
    if s["edit_success"] is None:
        return f"{s['attribute']}  edit success n/a  (no face without it)"
    return f"{s['attribute']}  edit success {s['edit_success']:.2f}  other attributes moved {s['other_moved']:.2f}"


# --------------------------------------------------------------------------- #
# The file beside the params
# --------------------------------------------------------------------------- #
def save_directions(path, names, vectors: torch.Tensor, normals: torch.Tensor, keep, fingerprint: str,
                    meta: dict) -> None:
    """Write ``<params stem>.directions.npz`` atomically: names, vectors (the
    directions to apply), normals (before conditioning), keep, fingerprint,
    and ``meta`` (plain values: how they were made and scored, as JSON). A
    path ending .safetensors holds one vector per name (``load_file(path)["Smiling"]``
    without this repository), the normals as one (A, nz) tensor, the rest as metadata."""
    if Path(path).suffix == ".safetensors":
        tensors = {**{name: vectors[k] for k, name in enumerate(names)}, "normals": normals}
        save_safetensors(tensors, path, {"format": DIRECTIONS_FORMAT, "names": json.dumps(list(names)),
                                         "keep": json.dumps(list(keep)), "fingerprint": fingerprint,
                                         "meta": json.dumps(meta)})
        return
    with utils.atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, format=np.array(DIRECTIONS_FORMAT), names=np.array(list(names)),
                 vectors=vectors.numpy().astype(np.float32), normals=normals.numpy().astype(np.float32),
                 keep=np.array(list(keep), dtype=str), fingerprint=np.array(fingerprint),
                 meta=np.array(json.dumps(meta)))


def read_directions(path, params) -> dict:
    """The directions file ``path`` (.npz or .safetensors) -> {"names",
    "vectors" (A, nz) float32 tensor, "normals", "keep", "fingerprint",
    "meta" (dict)}, or a one-line UserError that says how to remake it."""
    path = Path(path)
    fix = f"make it again with {make_command(params)}"
    if not path.is_file():
        raise UserError(f"{params} has no attribute directions ({path} not found); make them with "
                        f"{make_command(params)}")
    if path.suffix == ".safetensors":
        tensors, blob = read_safetensors(path)
    else:
        blob = read_npz(path, "", "a directions file from attributes.py", fix)
    if str(blob.get("format")) != DIRECTIONS_FORMAT:
        raise UserError(f"{path} is not a directions file from attributes.py (format {blob.get('format')}); {fix}")
    try:
        if path.suffix == ".safetensors":
            names = json.loads(blob["names"])
            vectors, normals = torch.stack([tensors[n] for n in names]).float(), tensors["normals"].float()
            keep, meta = json.loads(blob["keep"]), json.loads(blob["meta"])
        else:
            names = [str(n) for n in blob["names"]]
            vectors, normals = torch.from_numpy(blob["vectors"]), torch.from_numpy(blob["normals"])
            keep, meta = [str(k) for k in blob["keep"]], json.loads(str(blob["meta"]))
    except (KeyError, ValueError, RuntimeError, TypeError):
        raise UserError(f"{path} is an incomplete directions file; {fix}") from None
    return {"names": names, "vectors": vectors, "normals": normals, "keep": keep,
            "fingerprint": str(blob["fingerprint"]), "meta": meta}


@dataclass
class Directions:
    """The named directions of one generator."""

    names: list[str]
    vectors: torch.Tensor  # (A, nz), unit rows
    path: Path
    params: str

    def vector(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise UserError(f"no direction {name!r} in {self.path}; it has {', '.join(self.names)} (make others "
                            f"with {make_command(self.params, ' --attributes ' + name)}; the classifier's "
                            f"attributes are CelebA's names)")
        return self.vectors[self.names.index(name)]

    def offset(self, edits) -> torch.Tensor:
        """The latent offset of [(name, strength), ...]: the sum of strength x direction."""
        total = torch.zeros(self.vectors.shape[1])
        for name, strength in edits:
            total = total + strength * self.vector(name)
        return total


def load_directions(params, generator: torch.nn.Module, weights: str = "ema",
                    tuned_from: str | None = None) -> Directions:
    """The directions beside ``params``, made for exactly these weights
    (``weights``: "ema" or "raw", for the message), or for the weights they
    were tuned from (``tuned_from``: that fingerprint, which projector.py
    records in a tuned copy's config), or a one-line UserError."""
    path = directions_path(params)
    blob = read_directions(path, params)
    names, vectors = blob["names"], blob["vectors"]
    if blob["fingerprint"] not in (weights_fingerprint(generator), tuned_from):
        raise UserError(f"{path} was made for other weights ({blob['meta'].get('weights') or 'unknown'}) than the "
                        f"{weights} weights of {params} now; make them again with "
                        f"{make_command(params, ' --no-ema' if weights == 'raw' else '')}")
    if vectors.shape[1] != generator.nz:
        raise UserError(f"{path} holds {vectors.shape[1]}-d directions but the generator's latents have {generator.nz}")
    return Directions(names, vectors, path, str(params))


def directions_for(params, generator: torch.nn.Module) -> dict | None:
    """The directions record (``read_directions``) beside ``params`` when
    there is one made for exactly ``generator``'s weights, else None."""
    path = directions_path(params)
    blob = read_directions(path, params) if path.is_file() else None
    return blob if blob is not None and blob["fingerprint"] == weights_fingerprint(generator) else None


def carry_directions(blob: dict | None, export) -> Path | None:
    """Write a directions record beside (or into) the export ``export`` in
    its form; None: remove a stale file there. -> the path written."""
    target = directions_path(export)
    if blob is None:
        target.unlink(missing_ok=True)
        return None
    save_directions(target, blob["names"], blob["vectors"], blob["normals"], blob["keep"], blob["fingerprint"],
                    blob["meta"])
    return target


def parse_edit(text: str) -> list[tuple[str, float]]:
    """ "Smiling=+3,Eyeglasses=+2" -> [("Smiling", 3.0), ("Eyeglasses", 2.0)], or a UserError."""
    edits = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*=\s*([+-]?(\d+(\.\d*)?|\.\d+))\s*", part)
        if not match:
            raise UserError(f"--edit {text!r}: {part.strip()!r} is not NAME=STRENGTH; write e.g. \"{EDIT_EXAMPLE}\"")
        edits.append((match.group(1), float(match.group(2))))
    return edits
