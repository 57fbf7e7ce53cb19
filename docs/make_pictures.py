"""Make the pictures the README and the documentation embed, from real runs of the command line.

Every picture under docs/img/ comes from one of the commands below, run on the Fashion-MNIST sample; the
command and its printed output are stored beside the picture (``<name>.txt``), so a page can quote what
the run really printed. Run from the repository root:

    python docs/make_pictures.py --data-dir ../shared/data/fashion-mnist-sample            # every picture
    python docs/make_pictures.py --data-dir ../shared/data/fashion-mnist-sample first-run  # one of them

The runs go to a temporary directory, or to ``--runs DIR`` to keep them; only the pictures and the text
files are kept in docs/img/. The gallery and the confusion matrix (``trained``) score the first run's
weights: made alone, they train the first run again (and store it), unless ``--runs`` already holds it.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMG = Path(__file__).resolve().parent / "img"
ROOT = Path(__file__).resolve().parents[1]
#: Stands for the data directory in a command; the stored text shows the sample's path beside the repository.
DATA = "DATA_DIR"
SHOWN_DATA = "../shared/data/fashion-mnist-sample"

#: The README's first run: the chapter's network with the fast recipe, shortened to 6 epochs.
FIRST_RUN = ["train", "--recipe", "fast", "--backend", "torch", "--epochs", "6",
             "--data-dir", DATA, "--out", "runs/first-run", "--no-progress"]
#: What the first run's weights get right and wrong: a gallery of test images and the confusion matrix.
TRAINED = ["evaluate", "--backend", "torch", "--weights", "runs/first-run/weights.safetensors", "--data-dir", DATA,
           "--no-progress", "--gallery", "runs/trained/gallery.png", "--confusion", "runs/trained/confusion.png"]
#: The chapter's network drawn from its spec, beside the shape walk it prints.
NETWORK = ["summary", "--backend", "torch", "--diagram", "runs/network/network.png"]
_MINI = ["--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05", "--batch-size", "32"]
#: Three frameworks from one start, no dropout: the fp32 and fp64 drift of every step's loss (64 steps).
REPRODUCE = ["reproduce", "--no-dropout", *_MINI, "--epochs", "2", "--subset", "1024", "--test-subset", "250",
             "--backends", "torch,tensorflow,mxnet"]
#: Five seeds with dropout: do the frameworks' results differ by more than seed-to-seed noise?
SEEDS = ["reproduce", "--seeds", "0,1,2,3,4", *_MINI, "--epochs", "1", "--subset", "1024", "--test-subset", "250",
         "--backends", "torch,tensorflow,mxnet"]
#: The data-parallel speed-up at 2 workers per framework, a table only (docs/speed.md quotes it).
WORKERS = ["bench", "--workers", "2", "--data-dir", DATA, "--json", "runs/workers-speedup/bench.json"]


def _reproduce(command: list[str], name: str) -> list[str]:
    return [*command, "--data-dir", DATA, "--out", f"runs/{name}", "--no-progress"]


#: picture name -> (command, {file the command writes: the picture it becomes in docs/img/})
PICTURES = {
    "first-run": (FIRST_RUN, {"runs/first-run/curves.png": "first-run.png"}),
    "trained": (TRAINED, {"runs/trained/gallery.png": "gallery.png", "runs/trained/confusion.png": "confusion.png"}),
    "network": (NETWORK, {"runs/network/network.png": "network.png"}),
    "drift-fp32": (_reproduce(REPRODUCE, "drift-fp32"), {"runs/drift-fp32/drift.png": "drift-fp32.png"}),
    "drift-fp64": (_reproduce(REPRODUCE + ["--precision", "fp64"], "drift-fp64"),
                   {"runs/drift-fp64/drift.png": "drift-fp64.png"}),
    "seeds": (_reproduce(SEEDS, "seeds"), {"runs/seeds/seeds.png": "seeds.png"}),
    "workers-speedup": (WORKERS, {}),
}
#: A picture made from another's run: that run is made first where the run directories do not hold it.
NEEDS = {"trained": ("first-run", "runs/first-run/weights.safetensors")}


def make(name: str, data_dir: str, work: Path, done: set) -> None:
    need = NEEDS.get(name)
    if need and need[0] not in done and not (work / need[1].removeprefix("runs/")).exists():
        make(need[0], data_dir, work, done)
    command, pictures = PICTURES[name]
    shown = "python -m nin_multi " + " ".join(command).replace(DATA, SHOWN_DATA)
    real = [sys.executable, "-m", "nin_multi"]
    for i, arg in enumerate(command):
        if arg.startswith("runs/"):
            arg = str(work / arg.removeprefix("runs/"))
            if command[i - 1] != "--out":  # train and reproduce make their own --out; a picture's folder must exist
                Path(arg).parent.mkdir(parents=True, exist_ok=True)
        real.append(data_dir if arg == DATA else arg)
    start, cpu = time.perf_counter(), _children_cpu()
    result = subprocess.run(real, capture_output=True, text=True, cwd=ROOT)
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if result.returncode != 0:
        sys.exit(f"{name}: {shown} failed with status {result.returncode}:\n{result.stderr[-3000:]}")
    printed = result.stdout.replace(str(work), "runs").replace(data_dir, SHOWN_DATA)
    IMG.mkdir(exist_ok=True)
    for made, picture in pictures.items():
        shutil.copyfile(work / made.removeprefix("runs/"), IMG / picture)
    (IMG / f"{name}.txt").write_text(f"$ {shown}\n{printed}\n# {seconds:.0f} s wall-clock, {cpu:.0f} CPU-seconds, "
                                     f"{os.cpu_count()} CPUs\n", encoding="utf-8")
    done.add(name)
    made = [f"docs/img/{p}" for p in pictures.values()] + [f"docs/img/{name}.txt"]
    print(f"{name}: {seconds:.0f} s, {cpu:.0f} CPU-s -> " + ", ".join(made))


def _children_cpu() -> float:
    """CPU seconds of finished child processes: on a shared machine, wall-clock time says little."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the four Fashion-MNIST files (the sample)")
    parser.add_argument("--runs", default=None, metavar="DIR",
                        help="keep the runs in DIR (and reuse the first run found there) instead of a temporary one")
    parser.add_argument("names", nargs="*", help=f"pictures to make: {', '.join(PICTURES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in PICTURES]
    if unknown:
        parser.error(f"unknown picture(s) {', '.join(unknown)}; choose from {', '.join(PICTURES)}")
    data_dir = str(Path(args.data_dir).resolve())
    done: set = set()
    if args.runs:
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        for name in args.names or PICTURES:
            make(name, data_dir, Path(args.runs).resolve(), done)
        return 0
    with tempfile.TemporaryDirectory(prefix="nin-pictures-") as work:
        for name in args.names or PICTURES:
            make(name, data_dir, Path(work), done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
