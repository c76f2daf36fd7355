"""Where the repository's shipped files are, found from this file, not from the
working directory: ``python /abs/repo/generator.py --arithmetic ...`` run from
another folder finds the classifier as it does from the repository.

    from utils.paths import PRETRAINED_PARAMS, CLASSIFIER
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: the folder holding the commands
ASSETS = ROOT / "assets"
PRETRAINED_PARAMS = ASSETS / "celeba_64.params"  # the README's generator: 64 px CelebA, --recipe best, EMA weights
CLASSIFIER = ASSETS / "celeba_attributes.pt"  # the face-attribute classifier attributes.py trained
SHARED_DATA = ROOT.parent / "shared" / "data"  # the developers' real data beside a checkout (absent in a user's clone)


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it, for help texts and messages."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
