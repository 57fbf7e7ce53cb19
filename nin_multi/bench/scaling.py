"""``bench --workers N``: the data-parallel speed-up of each framework's own engine on this machine, from
the real command, ``nin-multi train --workers K``, run at K = 1 and K = N with the same settings.

The command, not a model of it: the launcher, the engine's start-up and its gradient exchange are what a
user of ``train --workers`` waits for. Each run trains the ``fast`` recipe's optimizer for two epochs on a
subset of the real data in a temporary run directory; the second epoch's examples/sec (the first pays
start-up and compilation) is the steady rate. The cores are shared out the same way for every framework,
``--threads`` and ``OMP_NUM_THREADS`` set to the usable cores // K for each of the K processes, so the
comparison is one process with every core against N workers that share them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from ..errors import NinMultiError
from ..interpreters import describe_exit, worker_env
from ..recipes import get_recipe
from ..run import read_metrics
from .runner import machine_environment
from . import load

RECIPE = "fast"
EPOCHS = 2  # the second is timed: the first pays the start-up and the compilation
TEST_SUBSET = 256  # the test passes only lengthen the wall time; their accuracy is no figure here
TIMEOUT_S = 1800.0  # one run; a hung engine becomes its row's error

HEADER = ("data-parallel speed-up at {workers} workers (train --workers K, the {recipe} recipe, {precision}, "
          "{epochs} epochs of {subset} images at {resize}x{resize}, global batch {batch_size}; the rate is "
          "epoch {epochs}'s)")
COLUMNS = "{:<11} {:>7} {:>14} {:>12} {:>9} {:>11} {:>9} {:>8} {:>11}".format(
    "backend", "workers", "threads/worker", "examples/s", "speed-up", "train loss", "test acc", "wall s", "others' CPU")
ROW = ("{backend:<11} {workers:>7} {threads:>14} {rate:>12} {speedup:>9} {loss:>11} {acc:>9} {wall:>8} "
       "{others:>11}")
LEGEND = ("threads/worker: the {cores} cores shared out (--threads and OMP_NUM_THREADS = cores // workers); "
          "speed-up: the N-worker rate over the one-process rate; wall s: the whole command, start-up "
          "included; train loss, test acc: epoch {epochs}'s, where N workers should match one process within float32 "
          "noise; others' CPU: the machine's CPU time other processes used meanwhile (above a few "
          "percent the figures are disturbed)")


def command(python: str, s: dict, backend: str, workers: int, threads: int, out: str) -> list[str]:
    """The ``train`` command of one run, as a user would type it."""
    return [python, "-m", "nin_multi", "train", "--backend", backend, "--workers", str(workers), "--recipe", RECIPE,
            "--epochs", str(EPOCHS), "--subset", str(s["subset"]), "--test-subset", str(TEST_SUBSET),
            "--precision", s["precision"], "--threads", str(threads), "--data-dir", s["data_dir"], "--out", out,
            "--no-progress"]


def run_scaling(s: dict, log=None) -> dict:
    """Every backend at one process, then at ``s["workers"]``, one run at a time (two at once would share
    the cores). A run that fails is its row's error."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    environment = machine_environment()
    rows = []
    for name in s["backends"]:
        pair = [_run(name, s, k, log) for k in (1, s["workers"])]
        one, many = pair
        if one["examples_per_sec"] and many["examples_per_sec"]:
            one["speedup"] = 1.0
            many["speedup"] = many["examples_per_sec"] / one["examples_per_sec"]
        rows += pair
    return {"settings": s, "environment": environment, "scaling": rows}


def threads_per_worker(cores: int, workers: int) -> int:
    return max(1, cores // workers)


def _run(name: str, s: dict, workers: int, log) -> dict:
    from nin_multi import backends

    threads = threads_per_worker(s["cores"], workers)
    row = {"backend": name, "workers": workers, "threads_per_worker": threads, "examples_per_sec": None,
           "speedup": None, "wall_seconds": None, "epoch_seconds": None, "train_loss": None, "test_acc": None,
           "others_cpu_share": None, "error": None}
    what = f"{name}, {workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    try:
        python = backends.check_interpreter(name)
    except NinMultiError as e:
        row["error"] = str(e)[:300]
        log(f"bench: {what}: {row['error']}")
        return row
    log(f"bench: {what}: started")
    with tempfile.TemporaryDirectory(prefix="nin-multi-bench-workers-") as tmp:
        out = str(Path(tmp) / "run")
        env = {**worker_env(unbind=(name,)), "OMP_NUM_THREADS": str(threads)}
        before = load.cpu_counters()
        rc, err, wall = _call(command(python, s, name, workers, threads, out), env)
        row["others_cpu_share"] = load.others_share(before, load.cpu_counters())
        row["wall_seconds"] = wall
        if rc != 0:
            how = describe_exit(rc) if rc is not None else "timed out"
            row["error"] = f"train --workers {workers} {how}: {err}"[:300]
        else:
            try:
                history = {r["epoch"]: r for r in read_metrics(out)}
            except NinMultiError as e:
                history, row["error"] = {}, str(e)[:300]
            timed = history.get(EPOCHS)
            if timed is None and not row["error"]:
                row["error"] = f"the run wrote no epoch {EPOCHS} to its metrics.jsonl"
            elif timed is not None:
                row.update(examples_per_sec=timed["examples_per_sec"], epoch_seconds=timed["seconds"],
                           train_loss=timed.get("train_loss"), test_acc=timed["test_acc"])
    done = (f"{row['examples_per_sec']:.1f} examples/sec in epoch {EPOCHS}, {row['wall_seconds']:.1f} s"
            if not row["error"] else f"error: {row['error']}")
    log(f"bench: {what}: {done}")
    return row


def _call(cmd: list[str], env: dict) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, the last line of stderr, wall seconds). The run is a session of its
    own, so a timeout ends its launcher's workers with it."""
    start = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            rc, err = None, f"after {TIMEOUT_S:.0f} s"
    tail: deque[str] = deque((ln.strip() for ln in err.splitlines() if ln.strip()), maxlen=1)
    return rc, (tail[0] if tail else "no output").removeprefix("nin-multi: error: "), time.perf_counter() - start


def _num(v, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def row_line(r: dict) -> str:
    left = {"backend": r["backend"], "workers": r["workers"], "threads": r["threads_per_worker"]}
    if r["error"]:
        return "{backend:<11} {workers:>7} {threads:>14} ".format(**left) + f"error: {r['error']}"
    return ROW.format(**left, rate=_num(r["examples_per_sec"], "{:.1f}"), speedup=_num(r["speedup"], "{:.2f}x"),
                      loss=_num(r.get("train_loss"), "{:.4f}"), acc=_num(r.get("test_acc"), "{:.3f}"),
                      wall=_num(r["wall_seconds"], "{:.1f}"), others=_num(r["others_cpu_share"], "{:.0%}"))


def format_scaling(report: dict) -> str:
    """The table: what was run, the machine, one line per run, the legend."""
    from .report import machine_lines

    s, recipe = report["settings"], get_recipe(RECIPE).settings
    lines = [HEADER.format(epochs=EPOCHS, recipe=RECIPE, resize=recipe["resize"], batch_size=recipe["batch_size"],
                           **{k: s[k] for k in ("workers", "precision", "subset")})]
    lines += machine_lines(report)[:1] + ["", COLUMNS, "-" * len(COLUMNS)]  # the CPU; no GEMM is measured here
    lines += [row_line(r) for r in report["scaling"]]
    lines.append(LEGEND.format(cores=s["cores"], epochs=EPOCHS))
    return "\n".join(lines)
