"""``nin-multi bench``: training and inference throughput of each backend, against what a user of each
framework would run without this project, and against this machine's own limit.

For every backend three kinds of code path run on the same random batch, in the same run:

* ``chapter``: what a reader of the book runs (Dive into Deep Learning 2, section 8.3), fp32: PyTorch eager
  with contiguous NCHW tensors; Keras ``model.compile(SGD, SparseCategoricalCrossentropy(from_logits=True))``
  and ``fit`` (here ``train_on_batch``, the same compiled train function one batch at a time), as the
  book's TensorFlow ``train_ch6`` does; Gluon imperative (not hybridized); JAX's jitted loss with an eager
  optax update;
* ``fast``: the framework's standard one-switch fast path on that same code, fp32: ``torch.compile``,
  Keras ``compile(jit_compile=True)`` (XLA), Gluon ``hybridize()`` (plain, without static_alloc). JAX's
  fast path, ``jax.jit`` of the whole step, is the JAX backend's default path itself, so it has no
  row of its own;
* ``default``: the backend's ``Trainer`` as ``nin-multi train`` uses it, at each ``--precision``.

Each speed-up is the ratio of two paths measured in the same worker, their steps interleaved (one step
of each path per round), so a machine whose load changes during the run slows every path alike:
``train x`` against the chapter path, ``vs peer`` against the faster of the chapter and fast paths
(the best a user could get without this project). The peer paths are written here, a few lines each,
rather than as options of the backends' Trainers: they exist only to be compared against, and keeping
them out of ``backends`` keeps the Trainers the one code path that trains.

The machine (``nin_multi.machine``): the CPU model and its instruction sets, and the rate of large square
matrix products (GEMM) through every installed framework in fp32 and bf16; each path's GFLOP/s (from
the spec's multiply-adds) is shown as a fraction of the best GEMM rate at its precision.

End to end: for each default path, ``nin_multi.train.train_epoch`` over a small synthetic training set
(the real pipeline: uint8 28x28 images resized into batches in a background thread, the progress
bookkeeping, a short last batch) with a fresh Trainer, twice: the first epoch pays the first step's
tracing or compilation, the second is what every later epoch of ``nin-multi train`` costs. Their
throughput is compared with the steady step rate, and the gap is split into its parts.

Each backend runs in a worker process of its own (``python -m nin_multi.bench --worker``): its peak
memory is its own, its thread settings (MXNet's are fixed at import) take effect, MXNet's AMP (which
patches operators process-wide) cannot leak into another path, and a backend that crashes or hangs
becomes an error string in the table instead of ending the run. Results stream back as JSON lines, so
the paths that finished before a failure are kept.

Also measured: the data pipeline (``nin_multi.data.batches``: uint8 28x28 images to resized float32
batches) per layout and its share of a training step, and the peak and current RSS after each of
several chunks of training steps, to show memory that grows step after step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from . import machine
from .config import PRECISIONS, param_dtype
from .errors import BackendUnavailableError, ConfigError, NinMultiError
from .fileio import write_text
from .spec import VARIANTS, make_spec

_TAG = "@@nin-multi-bench "  # prefix of the worker's result lines on stdout; anything else there is noise
LR = 0.1  # the chapter's learning rate; speed does not depend on it
LAYOUTS = {"torch": "NCHW", "tensorflow": "NHWC", "mxnet": "NCHW", "jax": "NHWC"}
#: what each path runs, for the table and the JSON
DESCRIPTIONS = {
    ("torch", "chapter"): "eager, contiguous NCHW",
    ("torch", "fast"): "torch.compile, NCHW",
    ("torch", "default"): "Trainer: channels-last",
    ("tensorflow", "chapter"): "Keras compile + fit",
    ("tensorflow", "fast"): "Keras fit, jit_compile XLA",
    ("tensorflow", "default"): "Trainer: tf.function",
    ("mxnet", "chapter"): "imperative Gluon",
    ("mxnet", "fast"): "Gluon hybridize()",
    ("mxnet", "default"): "Trainer: hybridized static",
    ("jax", "chapter"): "jit loss, eager update",
    ("jax", "default"): "Trainer: jax.jit step (fast)",
}
#: Backends whose default path is the framework's one-switch fast path itself (no "fast" row): JAX's
#: ``jax.jit`` of the whole step. Its default fp32 row counts among its peers.
FAST_IS_DEFAULT = frozenset({"jax"})
TARGET_PIPELINE = 0.05   # data pipeline time per batch / training step time
TARGET_MEMORY = 0.05     # growth allowed from the first chunk to the last
TARGET_PEER = 1.0        # default fp32 training vs the best peer of its own framework
TARGET_SPREAD = 1.25     # slowest default path vs the fastest backend at the same precision
TARGET_GEMM = 0.70       # the fastest training path's GFLOP/s vs the machine's GEMM rate (fp32, bf16)
TARGET_EPOCH = 0.90      # an epoch's throughput (warm: every epoch after the first) vs the step rate


# -- command line ---------------------------------------------------------------------------------------
def register(sub) -> None:
    from .cli import add_backends_arg, add_recipe_preset_arg

    p = sub.add_parser("bench", help="training and inference throughput of each backend vs the chapter's code",
                       description="Images per second of each backend's training and inference step, its "
                                   "default path against the chapter's plain code, plus the data pipeline's "
                                   "share of a step and memory growth. Prints a table and writes JSON.")
    add_backends_arg(p)
    p.add_argument("--resize", type=int, default=224, help="input image size (default: 224, the chapter's)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--precision", default="fp32",
                   help="comma-separated precisions of the default path: fp32, bf16, fp16, fp64 (default: fp32); "
                        "the chapter path is always fp32")
    p.add_argument("--steps", type=int, default=5, help="timed steps per path (default: 5; the median counts)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, per path (default: 2)")
    p.add_argument("--chunks", type=int, default=3,
                   help="chunks of --steps training steps of the first precision's default path, RSS after "
                        "each, for memory growth (default: 3; 0 skips)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per framework (default: every core)")
    p.add_argument("--variant", default="chapter", choices=list(VARIANTS), help="network variant (default: chapter)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each framework's one-switch fast path (torch.compile, Keras XLA, Gluon "
                        "hybridize); --no-fast skips them and their compile time (default: on)")
    p.add_argument("--gemm-size", type=int, default=2048,
                   help="n of the n x n x n matrix products that measure the machine (default: 2048; 0 skips)")
    p.add_argument("--gemm-repeats", type=int, default=3, help="timed products per framework and precision, "
                                                               "the fastest counts (default: 3)")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="images of the end-to-end epochs timed per default path (default: 4.5 batches, so the "
                        "last batch is short; 0 skips)")
    p.add_argument("--max-step-seconds", type=float, default=300.0,
                   help="a path whose warm-up step takes longer is reported as too slow (default: 300)")
    p.add_argument("--json", default="bench.json",
                   help="where to write the results as JSON; a directory gets bench.json (default: ./bench.json)")
    add_recipe_preset_arg(p)  # after the options it covers: with no --recipe, BENCH_DEFAULTS fill them
    p.set_defaults(func=cmd_bench)


def _positive(name: str, v, zero_ok: bool = False) -> None:
    if v is None or (v < 0 if zero_ok else v <= 0):
        raise ConfigError(f"--{name} must be a {'non-negative' if zero_ok else 'positive'} integer, got {v!r}")


#: What bench measures when neither a flag nor --recipe says otherwise (a batch of 64 keeps steps short).
BENCH_DEFAULTS = {"resize": 224, "batch_size": 64, "precision": "fp32", "variant": "chapter", "in_channels": 1}


def _settings(a) -> dict:
    from .cli import apply_recipe

    apply_recipe(a, fallback=BENCH_DEFAULTS)
    _positive("resize", a.resize)
    _positive("batch-size", a.batch_size)
    _positive("steps", a.steps)
    _positive("warmup", a.warmup, zero_ok=True)
    _positive("chunks", a.chunks, zero_ok=True)
    _positive("gemm-size", a.gemm_size, zero_ok=True)
    _positive("gemm-repeats", a.gemm_repeats)
    if a.epoch_images is None:
        a.epoch_images = 4 * a.batch_size + max(1, a.batch_size // 2)
    _positive("epoch-images", a.epoch_images, zero_ok=True)
    if a.threads is not None:
        _positive("threads", a.threads)
    if not a.max_step_seconds > 0:
        raise ConfigError(f"--max-step-seconds must be positive, got {a.max_step_seconds!r}")
    precisions = []
    for p in (s.strip().lower() for s in a.precision.split(",")):
        if p not in PRECISIONS:
            raise ConfigError(f"--precision takes a comma-separated list of {', '.join(PRECISIONS)}; got {p!r}")
        if p not in precisions:
            precisions.append(p)
    # fp32 first: MXNet's AMP, once on, changes every later graph in the process (see the worker)
    precisions.sort(key=lambda p: p != "fp32")
    from nin_multi import backends

    names = backends.select(a.backends, trains=True)
    if not names:
        raise BackendUnavailableError("no backend to benchmark: install torch, tensorflow-cpu, mxnet or jax")
    make_spec(a.variant, a.in_channels, image_size=a.resize).walk(a.resize)  # refuse an image it cannot take
    return {"backends": names, "resize": a.resize, "batch_size": a.batch_size, "precisions": precisions,
            "steps": a.steps, "warmup": a.warmup, "chunks": a.chunks, "threads": a.threads,
            "variant": a.variant, "in_channels": a.in_channels, "recipe": a.recipe,
            "max_step_seconds": a.max_step_seconds, "gemm_size": a.gemm_size, "gemm_repeats": a.gemm_repeats,
            "epoch_images": a.epoch_images, "fast": a.fast}


def cmd_bench(a) -> int:
    s = _settings(a)
    out = Path(a.json)
    if out.is_dir():
        out = out / "bench.json"
    report = run_bench(s)
    print(format_report(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


# -- the run --------------------------------------------------------------------------------------------
def run_bench(s: dict, log=None) -> dict:
    """Every backend in a worker of its own, one after the other (never two at once: they would share
    the cores), then the data pipeline in this process, then the figures derived from them and the targets."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results, memory, gemm, epochs = [], [], [], []
    environment = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                   "numpy": np.__version__, "cpu": machine.cpu_info()}
    for name in s["backends"]:
        before = _cpu_counters()
        events = _run_worker(name, s, log)
        environment.setdefault("others_cpu_share", {})[name] = _others_share(before, _cpu_counters())
        for e in events:
            kind = e.pop("event")
            if kind == "result":
                results.append(e)
            elif kind == "memory":
                memory.append(e)
            elif kind == "gemm":
                gemm.append(e)
            elif kind == "epoch":
                epochs.append(e)
            elif kind == "environment":
                environment.update(e)
        _fill_missing(name, s, results, events)
    order = {(b, path, p): i for i, (b, (path, p)) in
             enumerate((b, planned) for b in s["backends"] for planned in _planned(b, s))}
    results.sort(key=lambda r: order.get((r["backend"], r["path"], r["precision"]), len(order)))
    best = machine.best_gemm(gemm)
    spec = make_spec(s["variant"], s.get("in_channels", 1), image_size=s["resize"])
    flops = {kind: machine.step_flops(spec, s["resize"], s["batch_size"], kind) for kind in ("train", "infer")}
    for r in results:
        _derive(r, results, flops, best)
    for e in epochs:
        step = next((r for r in results if (r["backend"], r["path"], r["precision"]) ==
                     (e["backend"], "default", e["precision"]) and not r.get("error")), None)
        e["step_img_s"] = step["train_img_s"] if step else None
        for ep in e.get("epochs", []):
            ep["ratio_to_step"] = ep["img_s"] / e["step_img_s"] if e["step_img_s"] else None
            # a steady step inside the epoch against one timed alone (interleaved with the peers)
            ep["step_slowdown"] = ep["steady_step_s"] / step["train_step_s"] if step else None
    log("bench: data pipeline")
    pipeline = measure_pipeline(s, results)
    report = {"settings": s, "environment": environment, "results": results, "pipeline": pipeline,
              "memory": memory, "machine": {"cpu": environment["cpu"], "gemm": gemm, "gemm_best": best,
                                            "flops_per_step": flops,
                                            "flops_formula": "train: 3 x 2 x forward multiply-adds x batch; "
                                                             "infer: 2 x forward multiply-adds x batch"},
              "epochs": epochs}
    report["targets"] = evaluate_targets(report)
    return report


def _peers(backend: str, results: list) -> list[dict]:
    """The paths a user of this framework could run without this project (measured without error)."""
    return [c for c in results if c["backend"] == backend and not c.get("error") and
            (c["path"] in ("chapter", "fast") or
             (backend in FAST_IS_DEFAULT and c["path"] == "default" and c["precision"] == "fp32"))]


def _derive(r: dict, results: list, flops: dict, best_gemm: dict) -> None:
    """The ratios and rates of one row, from the rows measured beside it and the machine's GEMM rate."""
    for key in ("ratio_train", "ratio_infer", "ratio_train_range", "ratio_infer_range", "best_peer",
                "ratio_best_peer_train", "ratio_best_peer_infer", "train_gflops", "infer_gflops",
                "gemm_gflops", "gemm_fraction_train", "gemm_fraction_infer"):
        r[key] = None
    if r.get("error"):
        return
    ref = next((c for c in results if c["backend"] == r["backend"] and c["path"] == "chapter"
                and not c.get("error")), None)
    if ref:
        r["ratio_train"] = r["train_img_s"] / ref["train_img_s"]
        r["ratio_infer"] = r["infer_img_s"] / ref["infer_img_s"]
        r["ratio_train_range"] = _round_ratios(ref["train_steps_s"], r["train_steps_s"])
        r["ratio_infer_range"] = _round_ratios(ref["infer_steps_s"], r["infer_steps_s"])
    peers = _peers(r["backend"], results)
    if peers:
        top = max(peers, key=lambda c: c["train_img_s"])
        r["best_peer"] = f"{top['path']} {top['precision']}"
        r["ratio_best_peer_train"] = r["train_img_s"] / top["train_img_s"]
        r["ratio_best_peer_infer"] = r["infer_img_s"] / max(c["infer_img_s"] for c in peers)
    r["train_gflops"] = flops["train"] / r["train_step_s"] / 1e9
    r["infer_gflops"] = flops["infer"] / r["infer_step_s"] / 1e9
    rate = best_gemm.get(r["precision"], {}).get("gflops")
    if rate:
        r["gemm_gflops"] = rate
        r["gemm_fraction_train"] = r["train_gflops"] / rate
        r["gemm_fraction_infer"] = r["infer_gflops"] / rate


def _round_ratios(reference: list, times: list) -> list | None:
    """[lowest, highest] speed-up over the timed rounds, each round's step against the chapter path's
    step of the same round. A ratio of medians hides how far the machine moved during the run; on a
    shared machine this spread can be wider than the distance to a target."""
    ratios = [a / b for a, b in zip(reference, times) if b > 0]
    return [min(ratios), max(ratios)] if ratios else None


def _cpu_counters() -> tuple[float, float, float | None]:
    """(wall clock, CPU seconds of finished children, CPU seconds busy machine-wide or None)."""
    busy = None
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait
    except (OSError, ValueError, IndexError):
        pass
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), child.ru_utime + child.ru_stime, busy


def _others_share(before, after) -> float | None:
    """Share of the machine's CPU time that other processes used while a worker ran: timings taken
    while it is more than a few percent are slowed by them, the more so with every core in use."""
    if before[2] is None or after[2] is None:
        return None
    wall = after[0] - before[0]
    others = (after[2] - before[2]) - (after[1] - before[1])
    return max(0.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def _planned(name: str, s: dict) -> list[tuple[str, str]]:
    return _peer_paths(name, s) + [("default", p) for p in s["precisions"]]


def _peer_paths(name: str, s: dict) -> list[tuple[str, str]]:
    fast = name not in FAST_IS_DEFAULT and s.get("fast", True)
    return [("chapter", "fp32")] + ([("fast", "fp32")] if fast else [])


def _fill_missing(name: str, s: dict, results: list, events: list) -> None:
    """A row with the worker's error for every path it did not report (it crashed or was stopped)."""
    done = {(r["path"], r["precision"]) for r in results if r["backend"] == name}
    failure = next((e["error"] for e in events if e.get("error") and e.get("fatal")), "no result")
    for path, precision in _planned(name, s):
        if (path, precision) not in done:
            results.append(_row(name, path, precision, error=failure))


def _row(backend: str, path: str, precision: str, error: str | None = None, **numbers) -> dict:
    row = {"backend": backend, "path": path, "precision": precision, "layout": LAYOUTS.get(backend),
           "description": DESCRIPTIONS.get((backend, path), path), "train_img_s": None, "infer_img_s": None,
           "train_step_s": None, "infer_step_s": None, "train_steps_s": [], "infer_steps_s": [],
           "first_train_step_s": None, "error": error}
    row.update(numbers)
    return row


def _run_worker(name: str, s: dict, log) -> list[dict]:
    env = dict(os.environ)
    if name == "mxnet" and s["threads"]:
        env["OMP_NUM_THREADS"] = str(s["threads"])  # MXNet sizes its pool at import, from this only
    root = str(Path(__file__).resolve().parents[1])  # where ``backends`` and ``nin_multi`` live
    env["PYTHONPATH"] = root + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else root
    cmd = [sys.executable, "-m", "nin_multi.bench", "--worker", json.dumps({**s, "backend": name})]
    log(f"bench: {name} (worker process)")
    events = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        err_lines: deque[str] = deque(maxlen=50)  # the worker's stderr: its last line names a crash
        drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        drain.start()
        for line in proc.stdout:
            if not line.startswith(_TAG):
                continue
            e = json.loads(line[len(_TAG):])
            if e["event"] == "log":
                log(f"bench: {name}: {e['message']}")
                continue
            events.append(e)
        proc.wait()
        drain.join()
    if proc.returncode != 0 and not any(e.get("fatal") for e in events):
        tail = [ln.strip() for ln in err_lines if ln.strip()]
        why = tail[-1] if tail else "no output"
        events.append({"event": "failure", "fatal": True,
                       "error": f"worker exited with status {proc.returncode}: {why}"[:300]})
    return events


# -- data pipeline --------------------------------------------------------------------------------------
def measure_pipeline(s: dict, results: list) -> list[dict]:
    """Images per second of ``data.batches`` per layout, and its time per batch over each default path's
    training step time: the share of a step the pipeline would take if it did not overlap at all."""
    from . import data

    rng = np.random.default_rng(0)
    n_batches = max(8, 2 * s["steps"])
    images = rng.integers(0, 256, (n_batches * s["batch_size"], 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images), dtype=np.uint8)
    out = []
    for layout in sorted({LAYOUTS[b] for b in s["backends"] if b in LAYOUTS}):
        for _ in data.batches(images[: 2 * s["batch_size"]], labels[:2 * s["batch_size"]], s["batch_size"],
                              s["resize"], layout):
            pass  # warm-up: interpolation matrices, NumPy's BLAS threads
        t0 = time.perf_counter()
        for _ in data.batches(images, labels, s["batch_size"], s["resize"], layout):
            pass
        seconds = (time.perf_counter() - t0) / n_batches
        shares = {}
        for r in results:
            if r["layout"] == layout and r["path"] == "default" and r.get("train_step_s"):
                shares[f"{r['backend']} {r['precision']}"] = seconds / r["train_step_s"]
        out.append({"layout": layout, "img_s": s["batch_size"] / seconds, "batch_s": seconds,
                    "batches": n_batches, "share_of_train_step": shares})
    return out


# -- targets --------------------------------------------------------------------------------------------
def evaluate_targets(report: dict) -> list[dict]:
    s, results = report["settings"], report["results"]
    targets = []

    def find(backend, path, precision):
        return next((r for r in results if (r["backend"], r["path"], r["precision"]) == (backend, path, precision)),
                    None)

    targets += _peer_targets(s, results, find)

    shares = [(f"{p['layout']} vs {k}", v) for p in report["pipeline"] for k, v in p["share_of_train_step"].items()]
    name = f"data pipeline < {TARGET_PIPELINE:.0%} of a training step at 224"
    if not shares:
        targets.append({"name": name, "met": None, "detail": "no training step was measured"})
    else:
        where, worst = max(shares, key=lambda t: t[1])
        note = "" if s["resize"] == 224 else f" (measured at resize {s['resize']}, not 224)"
        targets.append({"name": name, "met": worst < TARGET_PIPELINE,
                        "detail": f"largest share {worst:.1%} ({where}){note}"})

    name = f"no memory growth (peak and current RSS after the last chunk within {TARGET_MEMORY:.0%} of the first)"
    mem = [m for m in report["memory"] if not m.get("error")]
    errors = [m for m in report["memory"] if m.get("error")]
    if not mem and not errors:
        targets.append({"name": name, "met": None, "detail": "not measured (--chunks 0 or every backend failed)"})
    else:
        parts = [f"{m['backend']} peak {m['peak_growth']:+.1%}, current {m['rss_growth']:+.1%}" for m in mem]
        parts += [f"{m['backend']} error" for m in errors]
        targets.append({"name": name, "met": all(m["within_target"] for m in mem) and not errors,
                        "detail": "; ".join(parts)})
    targets += _epoch_targets(report.get("epochs", []))
    return targets


def _peer_targets(s: dict, results: list, find) -> list[dict]:
    """The default path against its framework's best peer, the backends against each other, the fastest
    path against the machine's GEMM rate."""
    targets = []
    for b in s["backends"]:
        name = f"{b}: default fp32 training >= {TARGET_PEER:g}x the best peer of its framework"
        r = find(b, "default", "fp32")
        if r is None:
            targets.append({"name": name, "met": None, "detail": "not measured (add fp32 to --precision)"})
        elif r.get("error") or r.get("ratio_best_peer_train") is None:
            targets.append({"name": name, "met": False, "detail": f"error: {r.get('error') or 'no peer ran'}"})
        else:
            path, precision = r["best_peer"].split()
            top = find(b, path, precision)
            low, high = _round_ratios(top["train_steps_s"], r["train_steps_s"]) or (r["ratio_best_peer_train"],) * 2
            straddles = "; the rounds straddle the target" if low < TARGET_PEER <= high else ""
            targets.append({"name": name, "met": r["ratio_best_peer_train"] >= TARGET_PEER,
                            "detail": f"{r['ratio_best_peer_train']:.2f}x the {r['best_peer']} path "
                                      f"({r['train_img_s']:.1f} vs {top['train_img_s']:.1f} img/s; rounds "
                                      f"{low:.2f}-{high:.2f}x{straddles})"})
    for precision in s.get("precisions", ()):
        rows = [r for r in results if r["path"] == "default" and r["precision"] == precision and not r.get("error")]
        name = f"every backend's default {precision} training within {TARGET_SPREAD:g}x of the fastest backend's"
        if len(rows) < 2:
            targets.append({"name": name, "met": None, "detail": "fewer than two backends measured"})
            continue
        top, low = max(rows, key=lambda r: r["train_img_s"]), min(rows, key=lambda r: r["train_img_s"])
        gap = top["train_img_s"] / low["train_img_s"]
        targets.append({"name": name, "met": gap <= TARGET_SPREAD,
                        "detail": f"fastest {top['backend']} {top['train_img_s']:.1f} img/s, slowest {low['backend']} "
                                  f"{low['train_img_s']:.1f} img/s ({gap:.2f}x)"})
    for precision in machine.GEMM_PRECISIONS:
        name = f"fastest {precision} training path >= {TARGET_GEMM:.0%} of the machine's {precision} GEMM rate"
        rows = [r for r in results if r["precision"] == precision and r.get("gemm_fraction_train") is not None]
        if not rows:
            targets.append({"name": name, "met": None, "detail": f"not measured (needs {precision} in --precision "
                                                                 f"and a GEMM probe)"})
            continue
        top = max(rows, key=lambda r: r["gemm_fraction_train"])
        targets.append({"name": name, "met": top["gemm_fraction_train"] >= TARGET_GEMM,
                        "detail": f"{top['backend']} {top['path']}: {top['train_gflops']:.0f} of "
                                  f"{top['gemm_gflops']:.0f} GFLOP/s ({top['gemm_fraction_train']:.0%})"})
    return targets


def _epoch_targets(epochs: list) -> list[dict]:
    targets = []
    for e in epochs:
        name = (f"{e['backend']} {e['precision']}: an epoch's throughput (after the first) within "
                f"{1 - TARGET_EPOCH:.0%} of the step rate")
        done = [ep for ep in e.get("epochs", []) if ep.get("ratio_to_step") is not None and ep.get("prefetch", True)]
        if not done:
            targets.append({"name": name, "met": False if e.get("error") else None,
                            "detail": f"error: {e['error']}" if e.get("error") else "no step rate to compare with"})
            continue
        later, first = done[-1], done[0]
        # the stricter of the two: against the step rate timed alone, and against its own steady steps
        own = later.get("ratio_to_own_steps") or later["ratio_to_step"]
        ratio = min(later["ratio_to_step"], own)
        targets.append({"name": name, "met": ratio >= TARGET_EPOCH,
                        "detail": f"{ratio:.2f}x (vs the step rate {later['ratio_to_step']:.2f}x, vs its own steps "
                                  f"{own:.2f}x; first epoch {first['ratio_to_step']:.2f}x: its first step "
                                  f"{first['first_step_excess_s']:+.2f} s over a steady one)"})
    return targets


# -- output ---------------------------------------------------------------------------------------------
def _num(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def _pct(v):
    return "-" if v is None else f"{v:.0%}"


def machine_lines(report: dict) -> list[str]:
    """The CPU, its instruction sets, the GEMM rates and where each backend computed."""
    m, env = report.get("machine", {}), report["environment"]
    cpu = m.get("cpu") or env.get("cpu") or {}
    lines = [f"CPU: {cpu.get('model', 'unknown')}, {env.get('cpus')} CPUs; "
             f"{machine.isa_text(cpu.get('isa', {})) or 'instruction sets unknown'}"]
    by_precision: dict[str, list[str]] = {}
    for e in m.get("gemm", []):
        text = f"{e['framework']} {e['gflops']:.0f}" if e.get("gflops") else f"{e['framework']} n/a"
        by_precision.setdefault(e["precision"], []).append(text)
    for precision, parts in by_precision.items():
        top = m.get("gemm_best", {}).get(precision)
        head = (f"{top['gflops']:.0f} GFLOP/s ({top['op']}, n={top['n']})" if top else "not measured")
        lines.append(f"GEMM {precision}: {head}; per framework: {', '.join(parts)}")
    if not by_precision:
        lines.append("GEMM: not measured (--gemm-size 0, or every backend failed)")
    devices = {k[:-len("_device")]: v for k, v in env.items() if k.endswith("_device")}
    if devices:
        gpu = [f"{k} {v}" for k, v in devices.items() if v != "cpu"]
        lines.append("devices: " + ", ".join(f"{k} {v}" for k, v in devices.items()) +
                     ("" if gpu else "; no GPU found: every figure is the CPU's (no CUDA path was run)"))
    return lines


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [f"NiN ({s['variant']}) at {s['resize']}x{s['resize']}, batch {s['batch_size']}: median of "
             f"{s['steps']} steps after {s['warmup']} warm-up, threads {s['threads'] or 'all'} "
             f"({report['environment'].get('cpus')} CPUs)"] + machine_lines(report) + [""]
    head = (f"{'backend':<11} {'path':<8} {'what':<28} {'precision':<9} {'train img/s':>11} {'infer img/s':>11} "
            f"{'train x':>8} {'(rounds)':>11} {'infer x':>8} {'vs peer':>8} {'GFLOP/s':>8} {'% GEMM':>7}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        left = f"{r['backend']:<11} {r['path']:<8} {r['description']:<28} {r['precision']:<9}"
        if r.get("error"):
            lines.append(f"{left} error: {r['error']}")
        else:
            spread = r.get("ratio_train_range")
            spread = f"{spread[0]:.2f}-{spread[1]:.2f}" if spread and r["path"] != "chapter" else ""
            lines.append(f"{left} {_num(r['train_img_s']):>11} {_num(r['infer_img_s']):>11} "
                         f"{_num(r['ratio_train'], '{:.2f}x'):>8} {spread:>11} {_num(r['ratio_infer'], '{:.2f}x'):>8} "
                         f"{_num(r.get('ratio_best_peer_train'), '{:.2f}x'):>8} "
                         f"{_num(r.get('train_gflops'), '{:.0f}'):>8} {_pct(r.get('gemm_fraction_train')):>7}")
    lines.append("train x / infer x: vs the chapter path; vs peer: training vs the faster of the chapter and fast "
                 "paths (fp32); GFLOP/s: training, 3 x 2 x forward multiply-adds per image; % GEMM: of the best "
                 "GEMM rate at the row's precision")
    firsts = [f"{r['backend']} {r['path']} {r['precision']} {r['first_train_step_s']:.1f}" for r in report["results"]
              if r.get("first_train_step_s") is not None]
    if firsts:
        lines.append("first training step, s (tracing or compiling included): " + ", ".join(firsts))
    busy = {k: v for k, v in report["environment"].get("others_cpu_share", {}).items() if v is not None}
    if busy:
        lines.append("CPU time used by other processes meanwhile: "
                     + ", ".join(f"{v:.0%} during {k}" for k, v in busy.items())
                     + ("  (timings are disturbed above a few percent)" if max(busy.values()) > 0.05 else ""))
    lines.append("")
    for p in report["pipeline"]:
        shares = ", ".join(f"{v:.1%} of a {k} step" for k, v in p["share_of_train_step"].items()) or "no step measured"
        lines.append(f"pipeline {p['layout']}: {p['img_s']:.0f} img/s ({p['batch_s'] * 1000:.1f} ms per batch of "
                     f"{s['batch_size']} at {s['resize']}x{s['resize']}): {shares}")
    lines += epoch_lines(report)
    for m in report["memory"]:
        if m.get("error"):
            lines.append(f"memory {m['backend']}: error: {m['error']}")
            continue
        peaks = " / ".join(f"{c['max_rss_mb']:.0f}" for c in m["chunks"])
        now = " / ".join(f"{c['rss_mb']:.0f}" for c in m["chunks"]) if m["chunks"][0]["rss_mb"] is not None else "-"
        verdict = "within" if m["within_target"] else "NOT within"
        lines.append(f"memory {m['backend']} ({m['path']} {m['precision']}, {len(m['chunks'])} chunks of "
                     f"{m['steps_per_chunk']} steps): peak RSS {peaks} MB, current RSS {now} MB; last chunk "
                     f"{verdict} {TARGET_MEMORY:.0%} of the first (peak {m['peak_growth']:+.1%}, "
                     f"current {m['rss_growth']:+.1%})")
    lines += ["", "targets"]
    for t in report["targets"]:
        mark = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
        lines.append(f"  [{mark:^7}] {t['name']}: {t['detail']}")
    return "\n".join(lines)


def epoch_lines(report: dict) -> list[str]:
    s, lines = report["settings"], []
    for e in report.get("epochs", []):
        where = f"epoch {e['backend']} {e['precision']}"
        if e.get("error") and not e["epochs"]:
            lines.append(f"{where}: error: {e['error']}")
            continue
        full, short = divmod(e["images"], e["batch_size"])
        shape = f"{full} batches of {e['batch_size']}" + (f" + 1 of {short}" if short else "")
        parts = []
        for i, ep in enumerate(e["epochs"]):
            ratio = f" = {ep['ratio_to_step']:.2f}x the step rate" if ep.get("ratio_to_step") else ""
            slow = f", steps {ep['step_slowdown']:.2f}x as long as alone" if ep.get("step_slowdown") else ""
            slow += f"; {ep['ratio_to_own_steps']:.2f}x its own steps' rate" if ep.get("ratio_to_own_steps") else ""
            label = "first" if i == 0 else "later" if ep.get("prefetch", True) else "no prefetch"
            parts.append(f"{label} {ep['img_s']:.1f} img/s{ratio} (first step "
                         f"{ep['first_step_excess_s']:+.2f} s, last batch {ep['last_step_excess_s']:+.2f} s, outside "
                         f"steps {ep['outside_steps_s']:.2f} s{slow})")
        step = f"steady step {e['step_img_s']:.1f} img/s" if e.get("step_img_s") else "no steady step rate"
        lines.append(f"{where} ({e['images']} images: {shape}; {step}):")
        lines += [f"  {part}" for part in parts]
    if lines:
        lines.insert(0, f"end to end (train_epoch, fresh Trainer, at {s['resize']}x{s['resize']}; excess over a "
                        f"steady step's share):")
    return lines


# -- the worker -----------------------------------------------------------------------------------------
def _emit(event: str, **fields) -> None:
    print(_TAG + json.dumps({"event": event, **fields}, default=float), flush=True)


def _rss_mb() -> tuple[float, float | None]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        current = None
    return peak, current


def _error_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class _TorchChapter:
    """The chapter's PyTorch loop: eager, contiguous NCHW, fp32 (the Trainer with channels-last off)."""

    def __init__(self, backend, model):
        self.inner = type("Contiguous", (backend.Trainer,), {"CHANNELS_LAST": False})(model, LR, "fp32")
        self.train_step, self.eval_step = self.inner.train_step, self.inner.eval_step


class _TorchCompiled(_TorchChapter):
    """The chapter's loop with PyTorch's one switch: ``model = torch.compile(model)`` (inductor, default
    mode). It compiles at the first step (and again for the first eval step, and for a new batch size)."""

    def __init__(self, backend, model):
        super().__init__(backend, model)
        self.inner.model = backend.torch.compile(model)  # the optimizer keeps the same parameters


class _KerasFit:
    """The book's TensorFlow ``train_ch6``: ``model.compile(optimizer=SGD(lr), loss=SparseCategoricalCrossentropy(
    from_logits=True), metrics=["accuracy"])``, then ``fit``. ``train_on_batch`` runs the same compiled
    train function as ``fit``, one batch at a time. ``jit_compile``: the book passes none, so Keras's
    "auto" decides (XLA on GPUs, not on CPUs); the fast path asks for XLA."""

    def __init__(self, backend, model, jit_compile="auto"):
        keras = backend.keras
        self.model = model
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=LR),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      jit_compile=jit_compile)

    @staticmethod
    def _result(logs, y):
        return float(logs["loss"]) * len(y), int(round(float(logs["accuracy"]) * len(y)))

    def train_step(self, x, y):
        return self._result(self.model.train_on_batch(x, y, return_dict=True), y)

    def eval_step(self, x, y):
        return self._result(self.model.test_on_batch(x, y, return_dict=True), y)


class _KerasXLA(_KerasFit):
    def __init__(self, backend, model):
        super().__init__(backend, model, jit_compile=True)


class _GluonChapter:
    """The chapter's Gluon loop: imperative (the model not hybridized), ``autograd.record``, ``trainer.step``.
    ``hybrid``: Gluon's one switch, ``net.hybridize()`` with its defaults (no static_alloc/static_shape,
    which the backend's Trainer adds)."""

    def __init__(self, backend, model, hybrid: bool = False):
        mx = backend.mx
        self.mx, self.autograd, self.model = mx, backend.autograd, model
        if hybrid:
            model.hybridize()  # resets the flags build_model set: static_alloc and static_shape off
        else:
            model.hybridize(active=False)
        self.trainer = backend.gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": LR})
        self.loss = backend.gluon.loss.SoftmaxCrossEntropyLoss()
        self.ctx = backend._ctx()

    def _result(self, logits, loss, y):
        return float(loss.sum().asscalar()), int((logits.asnumpy().argmax(1) == y).sum())

    def train_step(self, x, y):
        xs, ys = self.mx.nd.array(x, ctx=self.ctx), self.mx.nd.array(y, ctx=self.ctx)
        with self.autograd.record():
            logits = self.model(xs)
            loss = self.loss(logits, ys)
        loss.backward()
        self.trainer.step(len(y))
        return self._result(logits, loss, y)

    def eval_step(self, x, y):
        xs, ys = self.mx.nd.array(x, ctx=self.ctx), self.mx.nd.array(y, ctx=self.ctx)
        with self.autograd.predict_mode():
            logits = self.model(xs)
        return self._result(logits, self.loss(logits, ys), y)


class _GluonHybrid(_GluonChapter):
    def __init__(self, backend, model):
        super().__init__(backend, model, hybrid=True)


class _JaxChapter:
    """The book's JAX loop (d2l's ``Classifier.loss`` under ``jax.jit``, ``fit_epoch``'s
    ``jax.value_and_grad`` of it, then the optax SGD update applied eagerly, outside any jit)."""

    def __init__(self, backend, model):
        import optax

        jax, module = backend.jax, model.module
        self.jax, self.optax, self.model, self.step = jax, optax, model, 0

        def loss(params, x, y, key, train):
            logits = module.apply({"params": params}, x, train=train, rngs={"dropout": key})[-1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        self.loss = jax.jit(loss, static_argnums=4)
        self.grad = jax.value_and_grad(self.loss, has_aux=True)
        self.opt = optax.sgd(LR)
        self.state = self.opt.init(model.params)

    def train_step(self, x, y):
        key = self.jax.random.fold_in(self.jax.random.PRNGKey(0), self.step)
        self.step += 1
        (loss, logits), grads = self.grad(self.model.params, x, y, key, True)
        updates, self.state = self.opt.update(grads, self.state)
        self.model.params = self.optax.apply_updates(self.model.params, updates)
        return float(loss) * len(y), int((logits.argmax(1) == y).sum())

    def eval_step(self, x, y):
        loss, logits = self.loss(self.model.params, x, y, self.jax.random.PRNGKey(0), False)
        return float(loss) * len(y), int((logits.argmax(1) == y).sum())


#: the peer paths of each framework: what a reader of the book runs, and its one-switch fast path
PEERS = {
    "chapter": {"torch": _TorchChapter, "tensorflow": _KerasFit, "mxnet": _GluonChapter, "jax": _JaxChapter},
    "fast": {"torch": _TorchCompiled, "tensorflow": _KerasXLA, "mxnet": _GluonHybrid},
}


def make_path_step(backend, model, path: str, precision: str):
    """The object whose ``train_step`` / ``eval_step`` a bench path times: a peer, or the backend's Trainer."""
    if path == "default":
        return backend.Trainer(model, LR, precision)
    if precision != "fp32":
        raise ConfigError(f"the {path} path runs in fp32 only, not {precision}")
    return PEERS[path][backend.NAME](backend, model)


def _sync_for(backend, model):
    """MXNet's engine is asynchronous: a step returns once its loss is known, while the backward pass
    and the update still run. Wait for them, or they would be timed as part of the next path's step.
    JAX dispatches asynchronously too: wait for the updated parameters."""
    if backend.NAME == "mxnet":
        return backend.mx.nd.waitall
    if backend.NAME == "jax":
        return lambda: backend.jax.block_until_ready(model.params)
    return lambda: None


class _Path:
    def __init__(self, backend, spec, path, precision):
        self.path, self.precision, self.error = path, precision, None
        self.train_times, self.infer_times, self.first_train = [], [], None
        model = backend.build_model(spec, seed=0, dtype=param_dtype(precision))
        self.step = make_path_step(backend, model, path, precision)
        self.sync = _sync_for(backend, model)

    def timed(self, kind, x, y):
        t0 = time.perf_counter()
        (self.step.train_step if kind == "train" else self.step.eval_step)(x, y)
        self.sync()
        return time.perf_counter() - t0


def _phases(name: str, precisions: list[str], s: dict) -> list[list[tuple[str, str]]]:
    """Paths whose steps are interleaved. MXNet's AMP patches its operators for the whole process once a
    bf16 Trainer exists, so there each lower precision runs alone, after every fp32 path is done."""
    first = _peer_paths(name, s)
    rest = [("default", p) for p in precisions]
    if name != "mxnet":
        return [first + rest]
    return [first + [r for r in rest if r[1] == "fp32"]] + [[r] for r in rest if r[1] != "fp32"]


def _worker(s: dict) -> int:
    from nin_multi import backends
    from . import data

    name = s["backend"]
    try:
        (backend,) = backends.load_backends([name])
        backend.configure(s["threads"], 0)
        env = {f"{name}_version": _framework_version(name), f"{name}_device": backend.device()}
        if name == "torch":
            env["torch_threads"] = backend.torch.get_num_threads()
        _emit("environment", **env)
    except NinMultiError as e:
        _emit("failure", fatal=True, error=str(e))
        return 0
    if s.get("gemm_size"):
        for precision in dict.fromkeys(machine.GEMM_PRECISIONS + tuple(p for p in s["precisions"] if p == "fp64")):
            entry = machine.measure_gemm(name, precision, s["gemm_size"], s.get("gemm_repeats", 3))
            _emit("gemm", **entry)
            _emit("log", message=f"GEMM {precision} n={s['gemm_size']}: " +
                  (f"{entry['gflops']:.0f} GFLOP/s" if entry["gflops"] else entry["error"]))
    spec = make_spec(s["variant"], s.get("in_channels", 1), image_size=s["resize"])
    rng = np.random.default_rng(0)
    x = data.to_float_batch(rng.integers(0, 256, (s["batch_size"], 28, 28), dtype=np.uint8), s["resize"],
                            backend.LAYOUT, channels=spec.in_channels)
    y = rng.integers(0, spec.num_classes, s["batch_size"]).astype(np.int64)
    memory_done = s["chunks"] == 0
    for phase in _phases(name, s["precisions"], s):
        paths = []
        for path, precision in phase:
            try:
                p = _Path(backend, spec, path, precision)
            except Exception as e:  # noqa: BLE001 - any failure of one path is that path's result
                _emit("result", **_row(name, path, precision, error=_error_text(e)))
                continue
            paths.append(p)
        for kind in ("train", "infer"):
            warmup = s["warmup"] if kind == "train" else min(s["warmup"], 1)
            for i in range(warmup + s["steps"]):
                for p in paths:
                    if p.error:
                        continue
                    try:
                        t = p.timed(kind, x, y)
                    except Exception as e:  # noqa: BLE001
                        p.error = _error_text(e)
                        traceback.print_exc()
                        continue
                    if kind == "train" and p.first_train is None:
                        p.first_train = t  # the first step: tracing or compiling included
                    if i < warmup:
                        if t > s["max_step_seconds"]:
                            p.error = (f"too slow: a warm-up {kind} step took {t:.0f} s "
                                       f"(over --max-step-seconds {s['max_step_seconds']:g})")
                        continue
                    (p.train_times if kind == "train" else p.infer_times).append(t)
            _emit("log", message=f"{kind}: " + ", ".join(_summary(p, kind, s["batch_size"]) for p in paths))
        for p in paths:
            if p.error:
                _emit("result", **_row(name, p.path, p.precision, error=p.error))
                continue
            tr, inf = statistics.median(p.train_times), statistics.median(p.infer_times)
            _emit("result", **_row(name, p.path, p.precision, train_img_s=s["batch_size"] / tr,
                                   infer_img_s=s["batch_size"] / inf, train_step_s=tr, infer_step_s=inf,
                                   train_steps_s=p.train_times, infer_steps_s=p.infer_times,
                                   first_train_step_s=p.first_train))
        if not memory_done:
            target = next((p for p in paths if p.path == "default" and not p.error), None)
            if target is not None:
                memory_done = True
                _memory_chunks(name, target, s, x, y)
        del paths
        if s.get("epoch_images"):
            for path, precision in phase:
                if path == "default":
                    _emit("epoch", **measure_epochs(backend, spec, s, precision))
    if not memory_done:
        _emit("memory", backend=name, error="no default path ran")
    return 0


class _StepTimer:
    """A Trainer whose ``train_step`` records how long each call took and its batch size. No extra
    synchronisation: ``train_epoch`` sees the Trainer exactly as ``nin-multi train`` does."""

    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []

    def train_step(self, x, y):
        t0 = time.perf_counter()
        out = self.trainer.train_step(x, y)
        self.steps.append((time.perf_counter() - t0, len(y)))
        return out


@contextmanager
def _no_prefetch():
    """``nin_multi.data.batches`` without its background thread, for this worker process only."""
    from . import data

    batches = data.batches
    data.batches = lambda *a, **k: batches(*a, **{**k, "prefetch": 0})
    try:
        yield
    finally:
        data.batches = batches


def measure_epochs(backend, spec, s: dict, precision: str, epochs: int = 2) -> dict:
    """``train_epoch`` (the loop of ``nin-multi train``, its data pipeline included) over ``epoch_images``
    random 28x28 images (the pipeline's cost does not depend on the pixels), with a fresh model and
    Trainer, ``epochs`` times. The first epoch pays the first step's tracing or compilation and the first
    short batch; later ones are what each further epoch of a run costs. Each epoch's time is split into
    the steady steps, the excess of its first step and of its last (short) batch over a steady step's
    share, and the time outside steps (waiting for data, bookkeeping). One more epoch runs without the
    pipeline's background thread: if steps inside an epoch are slower than steps run alone (the NumPy
    resize threads and the framework's threads sharing the cores), it shows here."""
    from types import SimpleNamespace

    from .config import TrainConfig
    from .train import train_epoch

    n, batch = s["epoch_images"], s["batch_size"]
    out = {"backend": backend.NAME, "precision": precision, "images": n, "batch_size": batch,
           "data": "random uint8 28x28 images through nin_multi.data.batches", "epochs": [], "error": None}
    try:
        rng = np.random.default_rng(1)
        ds = SimpleNamespace(train_images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                             train_labels=rng.integers(0, spec.num_classes, n).astype(np.uint8))
        cfg = TrainConfig(backend=backend.NAME, epochs=epochs, batch_size=batch, lr=LR, resize=s["resize"],
                          precision=precision, variant=s["variant"], in_channels=spec.in_channels, progress=False)
        model = backend.build_model(spec, seed=0, dtype=param_dtype(precision))
        timer = _StepTimer(backend.Trainer(model, LR, precision))
        sync = _sync_for(backend, model)
        for epoch in range(epochs + 1):
            timer.steps = []
            prefetch = epoch < epochs
            t0 = time.perf_counter()
            with nullcontext() if prefetch else _no_prefetch():
                train_epoch(timer, ds, cfg, backend.LAYOUT, epoch)
            sync()
            wall = time.perf_counter() - t0
            times = [t for t, _ in timer.steps]
            full = [t for t, b in timer.steps if b == batch] or times
            steady = statistics.median(full[1:] if len(full) > 2 else full)
            last_t, last_b = timer.steps[-1]
            out["epochs"].append({
                "prefetch": prefetch, "seconds": wall, "img_s": n / wall, "steps": len(times), "step_seconds": times,
                "steady_step_s": steady, "first_step_excess_s": times[0] - steady * timer.steps[0][1] / batch,
                "last_step_excess_s": (last_t - steady * last_b / batch) if len(times) > 1 and last_b != batch
                else 0.0,
                "outside_steps_s": wall - sum(times),
                # against what its own steady steps would give: only the epoch's overheads count
                "ratio_to_own_steps": (n / wall) / (batch / steady)})
    except Exception as e:  # noqa: BLE001 - this measurement's failure is its result
        traceback.print_exc()
        out["error"] = _error_text(e)
    if out["epochs"]:
        parts = ", ".join(f"epoch {i + 1}{'' if e['prefetch'] else ' (no prefetch)'} {e['img_s']:.1f} img/s"
                          for i, e in enumerate(out["epochs"]))
        _emit("log", message=f"epochs {precision}: {parts}")
    return out


def _summary(p: _Path, kind: str, batch: int) -> str:
    times = p.train_times if kind == "train" else p.infer_times
    if p.error or not times:
        return f"{p.path} {p.precision} error"
    return f"{p.path} {p.precision} {batch / statistics.median(times):.1f} img/s"


def _memory_chunks(name, p: _Path, s: dict, x, y) -> None:
    chunks = []
    try:
        for _ in range(s["chunks"]):
            for _ in range(s["steps"]):
                p.step.train_step(x, y)
            p.sync()
            peak, current = _rss_mb()
            chunks.append({"max_rss_mb": peak, "rss_mb": current})
    except Exception as e:  # noqa: BLE001
        _emit("memory", backend=name, path=p.path, precision=p.precision, error=_error_text(e))
        return
    first, last = chunks[0], chunks[-1]
    peak_growth = last["max_rss_mb"] / first["max_rss_mb"] - 1
    rss_growth = last["rss_mb"] / first["rss_mb"] - 1 if first["rss_mb"] else 0.0
    _emit("memory", backend=name, path=p.path, precision=p.precision, steps_per_chunk=s["steps"], chunks=chunks,
          peak_growth=peak_growth, rss_growth=rss_growth,
          within_target=peak_growth <= TARGET_MEMORY and rss_growth <= TARGET_MEMORY)
    peaks = " / ".join(f"{c['max_rss_mb']:.0f}" for c in chunks)
    _emit("log", message=f"memory: peak RSS after each chunk {peaks} MB")


def _framework_version(name: str) -> str:
    module = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet", "jax": "jax"}[name]
    return getattr(sys.modules.get(module), "__version__", "?")


def _worker_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m nin_multi.bench")
    parser.add_argument("--worker", required=True, help="settings as JSON (internal: started by nin-multi bench)")
    s = json.loads(parser.parse_args(argv).worker)
    try:
        return _worker(s)
    except Exception as e:  # noqa: BLE001 - report it; the parent turns it into error rows
        traceback.print_exc()
        _emit("failure", fatal=True, error=_error_text(e))
        return 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
