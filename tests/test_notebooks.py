"""The chapter notebooks: stored clean, equal to what their generator writes, and runnable top to bottom.

Each notebook is executed in quick mode (NIN_NOTEBOOK_QUICK=1: one epoch on 256 sample images at 67x67)
with nbclient, in a kernel started from this interpreter, with the notebooks directory as working directory
and training output under the test's temporary directory.
"""
import importlib.util
import os
import re

import nbformat
import pytest

from nin_multi import backends
from conftest import ROOT, SELECTED, _ASKED
from test_spec import CHAPTER_NCHW, CHAPTER_NHWC

NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = {"torch": "nin_pytorch.ipynb", "tensorflow": "nin_tensorflow.ipynb", "mxnet": "nin_mxnet.ipynb",
             "jax": "nin_jax.ipynb"}
CELL_TIMEOUT = 600  # seconds; a quick-mode notebook takes about 30 s on 2 CPU cores


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(name):
    return nbformat.read(NOTEBOOKS_DIR / name, as_version=4)


def _text(cell) -> str:
    """Everything a cell printed: streams, and the plain-text form of results and displays."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_notebook_is_stored_clean(framework):
    nb = _read(NOTEBOOKS[framework])
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id} is stored with outputs"
            assert cell.execution_count is None, f"cell {cell.id} is stored with an execution count"
    for tag in ("parameters", "shape-walk", "curves", "parity"):
        _tagged(nb, tag)


@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_notebook_equals_its_generator(framework):
    stored = (NOTEBOOKS_DIR / NOTEBOOKS[framework]).read_text(encoding="utf-8")
    assert stored == _generator().render(framework), (
        f"{NOTEBOOKS[framework]} differs from what notebooks/make_notebooks.py writes: edit the generator, "
        f"then run python notebooks/make_notebooks.py")


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory):
    """A "python3" kernelspec whose command is this interpreter, first on JUPYTER_PATH: a user-level
    python3 kernelspec pointing at another Python cannot take the notebooks' kernel elsewhere."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="python3", prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.mark.slow
@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(framework, sample_dir, kernel_path, tmp_path, monkeypatch):
    if framework not in SELECTED:
        pytest.skip(f"{framework} not selected by NIN_MULTI_BACKENDS={os.environ.get('NIN_MULTI_BACKENDS')}")
    if not backends.is_installed(framework):
        message = f"{framework} is not installed: pip install 'nin-multi[{framework}]'"
        if framework in _ASKED:
            pytest.fail(f"{framework} was asked for (NIN_MULTI_BACKENDS) but {message}")
        pytest.skip(message)
    from nbclient import NotebookClient

    paths = [str(kernel_path), os.environ.get("JUPYTER_PATH")]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("NIN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("NIN_MULTI_DATA_DIR", str(sample_dir))
    monkeypatch.setenv("NIN_NOTEBOOK_RUNS_DIR", str(tmp_path / "runs"))
    nb = _read(NOTEBOOKS[framework])
    # Raises CellExecutionError, with the cell and its traceback, at the first cell that fails.
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()

    errors = [c.id for c in nb.cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert not errors, f"cells with errors: {errors}"
    printed = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "d2l-1st-edition, quick mode: 1 epoch(s), batch 64, 67x67, lr 0.1, xavier init" in printed

    walk = _text(_tagged(nb, "shape-walk"))
    expected = CHAPTER_NHWC if framework in ("tensorflow", "jax") else CHAPTER_NCHW
    positions = [walk.find(str(shape)) for shape in expected]
    assert -1 not in positions, f"shapes missing from the walk:\n{walk}"
    assert positions == sorted(positions), f"shapes out of order:\n{walk}"

    curves = _tagged(nb, "curves")
    assert any("image/png" in o.get("data", {}) for o in curves.outputs), "no training curves displayed"
    assert (tmp_path / "runs" / f"notebook-{framework}-quick" / "curves.png").is_file()

    parity = _text(_tagged(nb, "parity"))
    for other in NOTEBOOKS:
        if other == framework:
            continue
        if not backends.is_installed(other):
            assert f"{other}: not installed, skipped" in parity
            continue
        m = re.search(rf"^{other}: max \|logit difference\| vs {framework}: (\S+) .*same predictions: True$",
                      parity, re.MULTILINE)
        assert m, f"no agreeing comparison with {other}:\n{parity}"
        assert float(m[1]) < 1e-4, parity
