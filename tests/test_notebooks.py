"""The analysis notebooks (notebooks/*.ipynb): stored without outputs, only calib calls, and (slow) each runs top to
bottom on the embedded data, draws a figure and writes nothing into the repository.

Run the executions with ``python -m pytest -m slow tests/test_notebooks.py`` (about 2 minutes for 01 + 02).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat (the [test] extra) is needed to read notebooks")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
#: The notebooks issue #17 names; a missing or an extra one fails test_the_notebook_set.
EXPECTED = ("01_calibration", "02_conformal", "03_routing", "04_deploy_and_monitor")
#: What a notebook may import: calib does the maths, matplotlib lays out axes, IPython displays.
ALLOWED_IMPORTS = frozenset({"calib", "numpy", "matplotlib", "IPython"}) | frozenset(sys.stdlib_module_names)
#: Folders whose content changes when anything runs (bytecode, pytest's cache), not a notebook's output.
_CHURN = {".git", "__pycache__", ".pytest_cache"}


def _notebooks():
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _ids():
    return [p.stem for p in _notebooks()]


def test_the_notebook_set():
    assert tuple(p.stem for p in _notebooks()) == EXPECTED, (
        f"notebooks/ holds {[p.name for p in _notebooks()]}; expected exactly {[n + '.ipynb' for n in EXPECTED]}")


@pytest.mark.parametrize("path", _notebooks(), ids=_ids())
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(nb)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec is not python3"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state stored in the metadata"
    assert nb.cells and nb.cells[0].cell_type == "markdown", f"{path.name}: does not start with a markdown cell"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name}: no code cell"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} is stored with outputs (clear them)"
            assert cell.execution_count is None, f"{path.name}: cell {i} is stored with an execution count"
        assert "widgets" not in cell.get("metadata", {}), f"{path.name}: cell {i} stores widget state"
    assert "%matplotlib inline" in code[0].source, (
        f"{path.name}: the first code cell needs '%matplotlib inline' (figures recorded as image/png outputs)")


def _foreign_imports(source):
    """Modules imported by one code cell that are not calib, numpy, matplotlib, IPython or the stdlib; shell
    escapes and magics other than ``%matplotlib`` count as foreign too."""
    lines, bad = [], []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("!"):
            bad.append(f"shell escape {stripped!r}")
            lines.append("")
        elif stripped.startswith("%"):
            if not stripped.startswith("%matplotlib"):
                bad.append(f"magic {stripped!r}")
            lines.append("")
        else:
            lines.append(line)
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["(relative import)"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("__import__", "import_module")):
            names = ["(dynamic import)"]
        else:
            continue
        bad += [n for n in names if n.split(".")[0] not in ALLOWED_IMPORTS]
    return bad


def test_import_check_catches_foreign_imports():
    """Negative control of the check below: each of these must be caught."""
    assert _foreign_imports("import pandas as pd") == ["pandas"]
    assert _foreign_imports("from sklearn.metrics import log_loss\nimport numpy") == ["sklearn.metrics"]
    assert _foreign_imports("import importlib\nm = importlib.import_module('scipy')") == ["(dynamic import)"]
    assert _foreign_imports("!pip install pandas") == ["shell escape '!pip install pandas'"]
    assert _foreign_imports("%%bash\nls") == ["magic '%%bash'"]
    assert _foreign_imports("%matplotlib inline\nimport os, json\nfrom calib.experiment import fit\n"
                            "import matplotlib.pyplot as plt\nfrom IPython.display import Markdown") == []


@pytest.mark.parametrize("path", _notebooks(), ids=_ids())
def test_only_calib_calls(path):
    nb = nbformat.read(path, as_version=4)
    found = {i: bad for i, c in enumerate(nb.cells) if c.cell_type == "code" and (bad := _foreign_imports(c.source))}
    assert not found, (f"{path.name} imports beyond calib, numpy, matplotlib, IPython and the stdlib (cell: what): "
                       f"{found}; a notebook holds no maths of its own: move it into calib/ with a test")


def _tree():
    """Every file of the checkout (minus .git and caches) -> (size, mtime_ns)."""
    out = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in _CHURN]
        for name in files:
            path = Path(root, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[path.relative_to(REPO).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=_ids())
def test_notebook_runs_and_draws(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="nbclient (the [test] extra) runs the notebooks")
    pytest.importorskip("ipykernel", reason="ipykernel (the [test] extra) is the notebooks' kernel")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("CALIB_NOTEBOOK_OUT", str(out))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend records image/png outputs
    monkeypatch.delenv("CALIB_SWEEP", raising=False)  # the notebook's own small sweep, not a reader's
    nb = nbformat.read(path, as_version=4)
    before = _tree()
    # a failing cell raises nbclient's CellExecutionError, which names the cell and its traceback
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    after = _tree()
    pngs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert pngs, f"{path.name} draws no figure (no code cell has an image/png output)"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"{path.name} wrote into the repository (write under CALIB_NOTEBOOK_OUT instead): "
                         f"{changed[:20]} (another process editing this checkout meanwhile shows here too)")
