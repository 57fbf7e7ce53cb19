"""The chapter notebooks: stored executed, equal to what their generator writes, and runnable top to bottom.

The stored outputs are what GitHub and the documentation site show a learner, so they are checked like
fresh ones: the same-function figure, the shape walk, the initial weights loaded exactly, the training, the
curves, the final line, the cross-framework logits, and no path, user or host of the machine that ran them.
Across the four: one initial weights file (the same SHA-256, the seed's draw) and final test accuracies
within 0.03 of each other. The slow test runs each notebook again with nbclient in a kernel of this
interpreter, with papermill's convention of a cell injected after the ``parameters`` cell that shrinks the
quick setting to two epochs on 256 images.
"""
import ast
import getpass
import hashlib
import importlib.util
import os
import re
import socket

import nbformat
import pytest

from nin_multi import backends
from conftest import ROOT, SELECTED, _ASKED
from test_spec import CHAPTER_NCHW, CHAPTER_NHWC

NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = {"torch": "nin_pytorch.ipynb", "tensorflow": "nin_tensorflow.ipynb", "mxnet": "nin_mxnet.ipynb",
             "jax": "nin_jax.ipynb"}
CELL_TIMEOUT = 600  # seconds; the slowest cell of the shrunk setting takes about a minute on 2 CPU cores
#: What the slow test runs instead of the stored quick setting (the injected cell's source): two epochs,
#: since the fast recipe warms up over one.
SMOKE = 'QUICK_SETTINGS.update(epochs=2, subset=256, test_subset=128)\nRUNS_DIR = "{runs}"'
#: The stored quick setting: the chapter's network, the fast recipe, in fp32, 5 epochs on the whole sample.
QUICK_EPOCHS = 5
#: How far apart the four stored notebooks' final test accuracies may be: they start from one file and
#: differ by dropout masks, rounding and conv algorithms only.
SPREAD = 0.03
INITIAL = re.compile(r"^initial weights \(kaiming-identity init, seed 0\): (\S+), sha256 ([0-9a-f]{64})$", re.MULTILINE)


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


def check_outputs(nb, framework) -> float:
    """The chapter as a learner must see it; returns the same-function figure (largest logit difference)."""
    errors = [c.id for c in nb.cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert not errors, f"cells with errors: {errors}"

    same = _text(_tagged(nb, "same-function"))
    m = re.search(r"typed-out model vs the spec's rendering: (\S+) \(largest logit (\S+)\); "
                  r"same predicted classes: True", same)
    assert m, same
    difference, scale = float(m[1]), float(m[2])
    assert difference <= 1e-5 * max(1.0, scale), same

    walk = _text(_tagged(nb, "shape-walk"))
    expected = CHAPTER_NHWC if framework in ("tensorflow", "jax") else CHAPTER_NCHW
    positions = [walk.find(f"output shape: {shape}") for shape in expected]
    assert -1 not in positions, f"shapes missing from the walk:\n{walk}"
    assert positions == sorted(positions), f"shapes out of order:\n{walk}"

    assert INITIAL.search(_text(_tagged(nb, "initial-weights"))), _text(_tagged(nb, "initial-weights"))
    loaded = _text(_tagged(nb, "loaded"))
    assert f"{framework}'s model holds the file's weights exactly: True" in loaded, loaded
    training = _text(_tagged(nb, "training"))
    assert "\r" not in training and re.search(r"^\w+: 100%\|.*\| (\d+)/\1 \[", training, re.MULTILINE), \
        f"no finished text progress bar:\n{training}"

    by_hand = _text(_tagged(nb, "sgd-by-hand"))
    losses = [float(v) for v in re.findall(r"^step \d: loss (\d+\.\d+)$", by_hand, re.MULTILINE)]
    assert len(losses) == 5, by_hand  # five SGD steps written in the framework, each printing a finite loss

    curves = _tagged(nb, "curves")
    assert any("image/png" in o.get("data", {}) for o in curves.outputs), "no training curves displayed"
    assert re.search(r"loss \d\.\d+, train acc 0\.\d+, test acc 0\.\d+\n[\d.]+ examples/sec on \w+",
                     _text(_tagged(nb, "final-line"))), _text(_tagged(nb, "final-line"))

    parity = _text(_tagged(nb, "parity"))
    for other in backends.ORDER:
        if other == framework:
            continue
        if f"{other}: not installed, skipped" in parity:
            continue
        m = re.search(rf"^{other}: largest \|logit difference\| vs {framework}: (\S+); same predictions: True$",
                      parity, re.MULTILINE)
        assert m, f"no agreeing comparison with {other}:\n{parity}"
        assert float(m[1]) < 1e-4, parity
    return difference


@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_stored_notebook_is_the_generators_executed(framework):
    """Its cells are what make_notebooks.py writes, executed top to bottom, every checked cell with its output."""
    assert _generator().problems(framework) == []


@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_stored_outputs_show_the_chapter(framework):
    nb = _read(NOTEBOOKS[framework])
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for tag in ("parameters", "same-function", "shape-walk", "sgd-by-hand", "curves", "final-line", "parity"):
        _tagged(nb, tag)
    printed = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    quick = re.search(r"^quick setting: (\{.*\})$", printed, re.MULTILINE)  # the label the stored run carries
    assert quick, printed[:2000]
    settings = ast.literal_eval(quick[1])
    assert {k: settings[k] for k in ("variant", "resize", "init", "precision", "epochs", "recipe", "subset",
                                     "test_subset", "nesterov", "schedule")} == {
        "variant": "chapter", "resize": 67, "init": "kaiming-identity", "precision": "fp32", "epochs": QUICK_EPOCHS,
        "recipe": "fast", "subset": 3443, "test_subset": 500, "nesterov": True, "schedule": "linear"}
    assert "chapter NiN (1,992,166 parameters)" in _text(_tagged(nb, "training"))
    check_outputs(nb, framework)


def test_stored_notebooks_start_from_one_file_and_end_close():
    """One initial weights file for the four (its SHA-256 that of the seed's draw, so a learner who runs them
    gets the same bytes), five epochs each, and final test accuracies no further apart than SPREAD."""
    import safetensors.numpy

    from nin_multi.spec import chapter_spec
    from nin_multi.weights import initial_weights

    starts = {fw: INITIAL.search(_text(_tagged(_read(name), "initial-weights"))) for fw, name in NOTEBOOKS.items()}
    assert all(starts.values()), starts
    assert {m[1] for m in starts.values()} == {"runs/initial-chapter-kaiming-identity-seed0.safetensors"}
    draw = hashlib.sha256(safetensors.numpy.save(initial_weights(chapter_spec(), "kaiming-identity", 0))).hexdigest()
    assert {fw: m[2] for fw, m in starts.items()} == {fw: draw for fw in NOTEBOOKS}

    make = _generator()
    runs = make.stored_runs()
    assert {title: [r["epoch"] for r in rows] for title, rows in runs.items()} == {
        title: list(range(1, QUICK_EPOCHS + 1)) for title in runs}
    finals = {title: rows[-1]["test_acc"] for title, rows in runs.items()}
    assert max(finals.values()) - min(finals.values()) <= SPREAD, finals
    assert min(finals.values()) >= 0.75, finals  # the chapter's network learned (chance is 0.10)
    # The docs' table and picture are made from these stored runs, and are up to date with them.
    assert make.FINAL_TXT.read_text(encoding="utf-8") == make.final_table(runs)
    assert make.CURVES_PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("framework", list(NOTEBOOKS))
def test_stored_outputs_name_no_machine(framework):
    """Outputs are read by everyone: no absolute path, user name or host name of the machine that ran them."""
    nb = _read(NOTEBOOKS[framework])
    printed = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"(?<![\w.])/(home|root|Users|tmp|work|opt|usr|var)/", printed), \
        re.search(r".*/(home|root|Users|tmp|work|opt|usr|var)/.*", printed)[0]
    for word in {socket.gethostname(), getpass.getuser(), str(ROOT)} - {"root", ""}:
        assert word not in printed, word


def test_the_scrubber_removes_paths():
    make = _generator()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text=f"{ROOT}/notebooks/x.py: warn")]
    make.scrub(nb, {str(ROOT): "<repo>"})
    assert nb.cells[0].outputs[0].text == "<repo>/notebooks/x.py: warn"


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
def test_notebook_runs(framework, sample_dir, kernel_path, tmp_path, monkeypatch):
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
    monkeypatch.setenv("NIN_MULTI_DATA_DIR", str(sample_dir))
    # The kernel imports this checkout's package, not another one an editable install may point at.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = _generator().build(framework)
    at = nb.cells.index(_tagged(nb, "parameters")) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell(SMOKE.format(runs=tmp_path / "runs")))
    # Raises CellExecutionError, with the cell and its traceback, at the first cell that fails.
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, coalesce_streams=True,  # as the generator
                   resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()

    printed = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "'epochs': 2," in printed and "'subset': 256, 'test_subset': 128}" in printed
    check_outputs(nb, framework)
    run = tmp_path / "runs" / f"{framework}-quick"
    assert (run / "curves.png").is_file() and (run / "weights.safetensors").is_file()
