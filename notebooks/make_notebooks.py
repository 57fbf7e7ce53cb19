"""Write the chapter notebooks (PyTorch, TensorFlow/Keras, MXNet Gluon, JAX/Flax) from one list of cells.

Most of a notebook is the same in every framework (the spec, training through the shared driver, the
curves, the exercises); the network typed out in the framework's own layers comes from ``frameworks.py``.
Writing the cells once keeps the four notebooks from drifting apart. Edit the cells here, then run

    python notebooks/make_notebooks.py            # rewrite the .ipynb files (outputs kept if no code changed)
    python notebooks/make_notebooks.py --execute  # ... and run them in the quick setting, storing outputs
    python notebooks/make_notebooks.py --check    # exit 1 if a stored notebook's cells differ or lack outputs
    python notebooks/make_notebooks.py --figures  # the four stored runs on one picture, and their final accuracies

The repository stores them executed (GitHub and the documentation site show every output); execute with
the sample as ``NIN_MULTI_DATA_DIR``. Every cell has a fixed id, so an unchanged cell changes no byte.
"""
from __future__ import annotations

import argparse
import os
import re
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
CELL_TIMEOUT = 3600  # seconds; the quick setting's training cell takes minutes on 2 CPU cores
CURVES_PNG, FINAL_TXT = ROOT / "docs" / "img" / "notebooks-curves.png", ROOT / "docs" / "img" / "notebooks-final.txt"
FIGURES_COMMAND = "python notebooks/make_notebooks.py --figures"
#: A line the training cell prints after every epoch; the figures are read back from the stored notebooks.
EPOCH_LINE = re.compile(r"^epoch (\d+): train loss (\S+), train acc (\S+), test loss (\S+), test acc (\S+),",
                        re.MULTILINE)


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
    if os.environ.get("NIN_MULTI_DATA_DIR"):  # a relative one names a folder from here, not from notebooks/
        os.environ["NIN_MULTI_DATA_DIR"] = os.path.abspath(os.environ["NIN_MULTI_DATA_DIR"])
    start = time.perf_counter()
    # coalesce_streams keeps what a terminal would show of a progress bar's carriage-return frames: its
    # last state, stored as text that GitHub and the documentation site show as it is.
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, coalesce_streams=True,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    home = str(Path.home())
    scrub(nb, {str(ROOT): "<repo>", sys.prefix: "<venv>", home: "~", os.uname().nodename: "<host>"})
    return seconds


def stored_runs() -> dict[str, list[dict]]:
    """Each stored notebook's epochs (framework title -> rows), read from what its training cell printed:
    the stored notebooks are the record, the run directories they wrote are not kept."""
    runs = {}
    for fw, f in FRAMEWORKS.items():
        nb = nbformat.read(HERE / f["file"], as_version=4)
        cells = [c for c in nb.cells if "training" in c.metadata.get("tags", ())]
        text = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []) if o.output_type == "stream")
        runs[f["title"]] = [{"epoch": int(m[1]), "train_loss": float(m[2]), "train_acc": float(m[3]),
                             "test_loss": float(m[4]), "test_acc": float(m[5])} for m in EPOCH_LINE.finditer(text)]
    return runs


def final_table(runs: dict[str, list[dict]]) -> str:
    """The text of docs/img/notebooks-final.txt: each framework's last epoch and the spread of their accuracies."""
    lines = [f"# {FIGURES_COMMAND}",
             "# the four stored notebooks, trained from one file of initial weights: each one's last epoch",
             f"{'framework':<17} {'epochs':>6} {'train loss':>10} {'test loss':>9} {'test acc':>8}"]
    for title, rows in runs.items():
        last = rows[-1]
        lines.append(f"{title:<17} {last['epoch']:>6} {last['train_loss']:>10.4f} {last['test_loss']:>9.4f} "
                     f"{last['test_acc']:>8.3f}")
    finals = [rows[-1]["test_acc"] for rows in runs.values()]
    lines.append(f"spread of the final test accuracies (largest - smallest): {max(finals) - min(finals):.3f}")
    return "\n".join(lines) + "\n"


def figures() -> None:
    """docs/img/notebooks-curves.png and notebooks-final.txt from the stored notebooks' printed epochs."""
    from nin_multi.fileio import write_text
    from nin_multi.plotting import figure

    runs = stored_runs()
    empty = [title for title, rows in runs.items() if not rows]
    if empty:
        raise SystemExit(f"no training epochs stored in the {', '.join(empty)} notebook(s): "
                         f"run python {Path(__file__).name} --execute first")
    with figure(CURVES_PNG, "The four notebooks: the chapter's network trained from one file of initial weights",
                ncols=2,
                figsize=(10, 4)) as (_, (acc, loss)):
        for title, rows in runs.items():
            epochs = [r["epoch"] for r in rows]
            acc.plot(epochs, [r["test_acc"] for r in rows], marker="o", label=title)
            loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label=title)
        for ax, what in ((acc, "test accuracy"), (loss, "training loss (smoothed labels)")):
            ax.set_xticks(sorted({r["epoch"] for rows in runs.values() for r in rows}))
            ax.set_xlabel("epoch")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend()
    write_text(FINAL_TXT, final_table(runs))
    print(f"wrote {CURVES_PNG.relative_to(ROOT)} and {FINAL_TXT.relative_to(ROOT)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="only report notebooks that differ or lack outputs")
    group.add_argument("--execute", action="store_true", help="also run them (quick setting) and store outputs; "
                       "with all four, also remake the figures")
    group.add_argument("--figures", action="store_true", help=f"only remake {CURVES_PNG.name} and {FINAL_TXT.name} "
                       "from the stored notebooks")
    parser.add_argument("frameworks", nargs="*", help=f"some of {', '.join(FRAMEWORKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    chosen = args.frameworks or list(FRAMEWORKS)
    if args.figures:
        figures()
        return 0
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
    if args.execute and set(chosen) == set(FRAMEWORKS):
        figures()
    return 0


if __name__ == "__main__":
    sys.exit(main())
