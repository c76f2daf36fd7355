"""The model card (README.md) of an exported folder: what the generator is,
how it was trained and on what, its measured quality with the protocol, the
data's licence, and how to use it with and without this repository.

    card = render(config, "celeba_64", facts_for(fingerprint), directions=["Smiling", ...], parameters=1_000_000)

The numbers come from one file per measured generator, ``assets/<name>.card.json``,
found by the fingerprint of the weights it describes (the shipped generator's:
``assets/celeba_64.card.json``, the numbers of BENCHMARKS.md, a test compares
them). Weights no such file describes get a card that says they were not
measured and how to measure them.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.paths import ASSETS

CARD_FORMAT = "dcgan-model-card/1"
CELEBA = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
FRONT_MATTER = f"""---
license: other
license_name: celeba-non-commercial-research
license_link: {CELEBA}
library_name: pytorch
pipeline_tag: unconditional-image-generation
tags:
- dcgan
- gan
- faces
- celeba
- safetensors
---
"""


def facts_for(fingerprint: str, folder: Path = ASSETS) -> dict | None:
    """The ``*.card.json`` in ``folder`` that describes the weights with this
    fingerprint (editing.directions.weights_fingerprint), or None."""
    for path in sorted(Path(folder).glob("*.card.json")):
        facts = json.loads(path.read_text())
        if facts.get("format") == CARD_FORMAT and facts.get("fingerprint") == fingerprint:
            return facts
    return None


def number(value: float) -> str:
    """44.6 -> '44.6', 0.0219 -> '0.0219', 20.0 -> '20.0': as BENCHMARKS.md prints them."""
    return str(value)


def quality_section(facts: dict | None, name: str) -> str:
    if facts is None:
        return ("Not measured for these weights. Measure them on held-out faces with\n"
                f"`python evaluate.py --params {name} --data FACES.npy -n 1000 --kid --pr --attrs --nn 4`\n"
                "(see the repository's BENCHMARKS.md for the protocol) and write the numbers here.\n")
    metrics = facts["metrics"]
    rows = ["| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics),
            "| " + " | ".join(number(v) for v in metrics.values()) + " |"]
    reference = "; ".join(f"{what}: {number(v)}" for what, v in facts.get("reference", {}).items())
    return "\n".join(rows) + f"\n\nFor comparison, {reference}.\n\n**Protocol.** {facts['protocol']}\n\n" \
        f"```\n{facts['command']}\n```\n"


def training_section(config: dict, facts: dict | None) -> str:
    if facts is not None:
        return facts["training"] + "\n"
    keys = ("recipe", "ngf", "ndf", "batch_size", "step", "data", "seed")
    told = ", ".join(f"{key} {config[key]}" for key in keys if config.get(key) is not None)
    return (f"This repository's `train.py` ({told or 'no training record in config.json'}); config.json "
            f"holds every training option.\n")


def licence_section(config: dict, facts: dict | None) -> str:
    data = facts["data"] if facts else f"`{config.get('data', 'unknown data')}`"
    return (f"Trained on {data}. These weights carry the terms of their training data; CelebA's allow "
            f"**non-commercial research use only** ({CELEBA}), so the same holds for these weights and the faces "
            f"they make. The faces show no real person but can resemble training faces (see the copy share).\n")


def usage_section(config: dict, name: str, directions: list[str]) -> str:
    example = "Smiling" if "Smiling" in directions else (directions or [""])[0]
    edit = f" --edit {example}=+3" if directions else ""
    inside = f"""```python
from network import load_generator
from editing.latents import latents
G, config = load_generator("{name}")  # this folder{', its directions beside it' if directions else ''}
faces = G(latents(range(16), config["nz"]))  # (16, {config['nc']}, {config['size']}, {config['size']}) in [-1, 1]
```
or `python generator.py --params {name} -n 16{edit}`."""
    outside = f"""```python
import json, torch
from torch import nn
from safetensors.torch import load_file

c = json.load(open("{name}/config.json"))  # size, nz, ngf, nc: the network's shape
blocks, width, layers = c["size"].bit_length() - 3, c["nz"], []
for i in range(blocks):  # ConvT + BN + ReLU: (ngf * 2^(blocks-1-i)) x 4*2^i x 4*2^i
    out = c["ngf"] * 2 ** (blocks - 1 - i)
    conv = nn.ConvTranspose2d(width, out, 4, 2 if i else 1, 1 if i else 0, bias=False)
    layers += [conv, nn.BatchNorm2d(out), nn.ReLU()]
    width = out
G = nn.Sequential(*layers, nn.ConvTranspose2d(width, c["nc"], 4, 2, 1, bias=False), nn.Tanh()).eval()
G.load_state_dict({{k.removeprefix("main."): v for k, v in load_file("{name}/model.safetensors").items()}})
z = torch.stack([torch.randn(c["nz"], generator=torch.Generator().manual_seed(s)) for s in range(16)])
faces = G(z[:, :, None, None]).detach()  # (16, {config['nc']}, {config['size']}, {config['size']}) in [-1, 1]
```"""
    moved = ""
    if directions:
        moved = f"""
Named edit directions ({', '.join(directions)}), one unit vector per name in `directions.safetensors`:

```python
d = load_file("{name}/directions.safetensors")
edited = G((z + 3 * d["{example}"])[:, :, None, None]).detach()  # the same faces, +3 {example}
```
"""
    return f"""**In this repository** (four lines; the same faces as `generator.py --seed 0`):

{inside}

**Without this repository**, with torch and safetensors alone: not five lines, because the network
is rebuilt here from config.json (the layers of the repository's `network.py`); it gives the same faces
(the repository's tests run this block outside it and compare).

{outside}
{moved}
**Without PyTorch**: `python generator.py --params {name} --export faces.onnx` in the repository writes
faces.onnx (and faces.json: nz, size, the directions) for onnxruntime:

```python
import numpy as np, onnxruntime
session = onnxruntime.InferenceSession("faces.onnx")
z = np.random.default_rng(0).standard_normal((16, {config['nz']}), dtype=np.float32)
faces = session.run(None, {{"z": z}})[0]  # (16, {config['nc']}, {config['size']}, {config['size']}) in [-1, 1]
```
"""


def render(config: dict, name: str, facts: dict | None = None, directions: list[str] | None = None,
           parameters: int | None = None) -> str:
    """The README.md of the folder ``name``: ``config`` as in its config.json,
    ``facts`` from ``facts_for`` (None: not measured), ``directions`` the
    names in its directions.safetensors, ``parameters`` the weight count."""
    directions = list(directions or [])
    title = facts["title"] if facts else f"DCGAN generator, {config['size']} px"
    weights = "EMA (exponential moving average) weights" if config.get("weights") == "ema" else "raw weights"
    count = f", {parameters:,} parameters" if parameters else ""
    rgb = "RGB " if config.get("nc") == 3 else ""
    files = ["`model.safetensors`: the weights (safetensors: loading them runs no code)",
             "`config.json`: the network's shape (size, nz, ngf, nc) and every training option"]
    if directions:
        files.append("`directions.safetensors`: one latent direction per attribute name (add a multiple to z)")
    return FRONT_MATTER + f"""
# {title}

A DCGAN generator (Radford et al., 2016): a latent z of {config['nz']} standard-normal numbers becomes a
{config['size']}x{config['size']} {rgb}face with values in [-1, 1]. Its {weights}{count},
exported by `generator.py --export` of the repository "DCGAN faces in PyTorch". This folder holds:

""" + "".join(f"- {line}\n" for line in files) + f"""
## Training

{training_section(config, facts)}
## Quality

{quality_section(facts, name)}
## Licence

{licence_section(config, facts)}
## Use

{usage_section(config, name, directions)}"""
