"""Make the pictures the README and the documentation embed, from real runs of the command line.

Every picture under docs/img/ comes from one of the commands below, run on the Fashion-MNIST sample; the
command and its printed output are stored beside the picture (``<name>.txt``), so a page can quote what
the run really printed. Run from the repository root:

    python docs/make_pictures.py --data-dir ../shared/data/fashion-mnist-sample            # every picture
    python docs/make_pictures.py --data-dir ../shared/data/fashion-mnist-sample first-run  # one of them

The runs go to a temporary directory; only the pictures and the text files are kept.
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

#: The README's first run: a narrow NiN (the ``mini`` variant) on unresized 28x28 images, He init.
FIRST_RUN = ["train", "--backend", "tensorflow", "--variant", "mini", "--resize", "28", "--init", "kaiming",
             "--lr", "0.05", "--batch-size", "32", "--epochs", "5"]
#: Three frameworks from one start, no dropout: the fp32 and fp64 drift of every step's loss (64 steps).
REPRODUCE = ["reproduce", "--no-dropout", "--variant", "mini", "--resize", "28", "--init", "kaiming",
             "--lr", "0.05", "--batch-size", "32", "--epochs", "2", "--subset", "1024", "--test-subset", "250",
             "--backends", "torch,tensorflow,mxnet"]
#: Five seeds with dropout: do the frameworks' results differ by more than seed-to-seed noise?
SEEDS = ["reproduce", "--seeds", "0,1,2,3,4", "--variant", "mini", "--resize", "28", "--init", "kaiming",
         "--lr", "0.05", "--batch-size", "32", "--epochs", "1", "--subset", "1024", "--test-subset", "250",
         "--backends", "torch,tensorflow,mxnet"]

#: picture name -> (command, the file of its run directory that becomes the picture)
PICTURES = {
    "first-run": (FIRST_RUN, "curves.png"),
    "drift-fp32": (REPRODUCE, "drift.png"),
    "drift-fp64": (REPRODUCE + ["--precision", "fp64"], "drift.png"),
    "seeds": (SEEDS, "seeds.png"),
}


def make(name: str, data_dir: str, work: Path) -> None:
    command, picture = PICTURES[name]
    out = work / name
    args = [*command, "--data-dir", "DATA_DIR", "--out", f"runs/{name}", "--no-progress"]
    shown = "python -m nin_multi " + " ".join(args).replace("DATA_DIR", "../shared/data/fashion-mnist-sample")
    real = [sys.executable, "-m", "nin_multi", *[data_dir if a == "DATA_DIR" else a for a in args]]
    real[real.index(f"runs/{name}")] = str(out)
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(real, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"{name}: {shown} failed with status {done.returncode}:\n{done.stderr[-3000:]}")
    printed = done.stdout.replace(str(out), f"runs/{name}").replace(data_dir, "../shared/data/fashion-mnist-sample")
    IMG.mkdir(exist_ok=True)
    shutil.copyfile(out / picture, IMG / f"{name}.png")
    (IMG / f"{name}.txt").write_text(f"$ {shown}\n{printed}\n# {seconds:.0f} s wall-clock, {cpu:.0f} CPU-seconds, "
                                     f"{os.cpu_count()} CPUs\n", encoding="utf-8")
    print(f"{name}: {seconds:.0f} s, {cpu:.0f} CPU-s -> docs/img/{name}.png")


def _children_cpu() -> float:
    """CPU seconds of finished child processes: on a shared machine, wall-clock time says little."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the four Fashion-MNIST files (the sample)")
    parser.add_argument("names", nargs="*", help=f"pictures to make: {', '.join(PICTURES)} (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in PICTURES]
    if unknown:
        parser.error(f"unknown picture(s) {', '.join(unknown)}; choose from {', '.join(PICTURES)}")
    data_dir = str(Path(args.data_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="nin-pictures-") as work:
        for name in args.names or PICTURES:
            make(name, data_dir, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
