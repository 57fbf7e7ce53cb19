"""Write the chapter notebooks (PyTorch, TensorFlow/Keras, MXNet Gluon, JAX/Flax) from one list of cells.

Most of a notebook is the same in every framework (the spec, training through the shared driver, the
curves, the exercises); the network typed out in the framework's own layers comes from ``frameworks.py``.
Writing the cells once keeps the four notebooks from drifting apart. Edit the cells here, then run

    python notebooks/make_notebooks.py            # rewrite the .ipynb files (outputs kept if no code changed)
    python notebooks/make_notebooks.py --execute  # ... and run them in the quick setting, storing outputs
    python notebooks/make_notebooks.py --check    # exit 1 if a stored notebook's cells differ or lack outputs

The repository stores them executed (GitHub and the documentation site show every output); execute with
the sample as ``NIN_MULTI_DATA_DIR``. Every cell has a fixed id, so an unchanged cell changes no byte.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chapter import cells  # noqa: E402
from frameworks import FRAMEWORKS  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CELL_TIMEOUT = 1800  # seconds; the quick setting's slowest cell takes about a minute on 2 CPU cores


def build(fw: str) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    for i, (kind, source, tags) in enumerate(cells(fw)):
        make = new_code_cell if kind == "code" else new_markdown_cell
        cell = make(source, id=f"{fw}-{i:02d}")  # fixed ids: regenerating changes nothing
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def skeleton(nb) -> list[tuple]:
    """What the generator decides about a notebook: every cell's id, type, source and tags (not outputs)."""
    return [(c.id, c.cell_type, c.source, tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def problems(fw: str) -> list[str]:
    """Why the stored notebook is not what the generator writes, executed: [] when it is."""
    path = HERE / FRAMEWORKS[fw]["file"]
    if not path.exists():
        return [f"{path.name} is missing"]
    stored = nbformat.read(path, as_version=4)
    if skeleton(stored) != skeleton(build(fw)):
        return [f"{path.name}: its cells differ from what make_notebooks.py writes"]
    code = [c for c in stored.cells if c.cell_type == "code"]
    if [c.execution_count for c in code] != list(range(1, len(code) + 1)):
        return [f"{path.name} is not stored executed top to bottom in one run (execution counts "
                f"{[c.execution_count for c in code]})"]
    return [f"{path.name}: cell {c.id} ({', '.join(c.metadata.tags)}) has no stored output" for c in code
            if set(c.metadata.get("tags", ())) - {"parameters"} and not c.outputs]


def keep_outputs(stored, nb) -> bool:
    """Carry the stored outputs over when only prose changed: every code cell is the same as before."""
    def code(n):
        return [c for c in skeleton(n) if c[1] == "code"]
    if code(stored) != code(nb):
        return False
    outputs = {c.id: c for c in stored.cells if c.cell_type == "code"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = outputs[cell.id].outputs, outputs[cell.id].execution_count
    return True


def scrub(nb, replacements: dict[str, str]) -> None:
    """No output may name this machine's paths, user or host: a stored notebook is read by everybody."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out.text = _replace(out.text, replacements)
            for key, value in out.get("data", {}).items():
                if key.startswith("text/"):
                    out.data[key] = _replace(value, replacements)
        if cell.cell_type == "code":
            cell.metadata.pop("execution", None)


def _replace(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def execute(nb, fw: str) -> float:
    """Run every cell in a kernel of this interpreter, in notebooks/, as a reader would; seconds taken."""
    from nbclient import NotebookClient

    # The kernel imports this checkout's package, not another one an editable install may point at.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    home = str(Path.home())
    scrub(nb, {str(ROOT): "<repo>", sys.prefix: "<venv>", home: "~", os.uname().nodename: "<host>"})
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="only report notebooks that differ or lack outputs")
    group.add_argument("--execute", action="store_true", help="also run them (quick setting) and store outputs")
    parser.add_argument("frameworks", nargs="*", help=f"some of {', '.join(FRAMEWORKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    chosen = args.frameworks or list(FRAMEWORKS)
    if args.check:
        found = [p for fw in chosen for p in problems(fw)]
        for p in found:
            print(p, file=sys.stderr)
        if found:
            print(f"run python {Path(__file__).name} --execute", file=sys.stderr)
        return 1 if found else 0
    for fw in chosen:
        nb = build(fw)
        path = HERE / FRAMEWORKS[fw]["file"]
        if args.execute:
            print(f"{path.name}: {execute(nb, fw):.0f} s", flush=True)
        elif path.exists():
            keep_outputs(nbformat.read(path, as_version=4), nb)
        nbformat.write(nb, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
