"""``nin-multi bench``: training and inference throughput of each backend, against the chapter's own code.

For every backend two kinds of code path run on the same random batch, in the same run:

* ``default``: the backend's ``Trainer`` as ``nin-multi train`` uses it (its fast path: PyTorch
  channels-last, a traced ``tf.function`` step, a hybridized Gluon graph), at each ``--precision``;
* ``chapter``: the plain code of the chapter (Dive into Deep Learning 2, section 8.3, whose training
  loops are eager), fp32: PyTorch eager with contiguous NCHW tensors, Keras through an eager
  ``tf.GradientTape`` step without ``tf.function``, Gluon imperative (not hybridized).

Each speed-up is the ratio of two paths measured in the same worker, their steps interleaved (one step
of each path per round), so a machine whose load changes during the run slows every path alike. The
chapter paths are written here, a few lines each, rather than as options of the backends' Trainers:
they exist only to be compared against, and keeping them out of ``backends`` keeps the Trainers the one
code path that trains.

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
from pathlib import Path

import numpy as np

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
    ("torch", "default"): "Trainer: channels-last",
    ("tensorflow", "chapter"): "eager GradientTape",
    ("tensorflow", "default"): "Trainer: tf.function",
    ("mxnet", "chapter"): "imperative Gluon",
    ("mxnet", "default"): "Trainer: hybridized",
    ("jax", "chapter"): "jit loss, eager update",
    ("jax", "default"): "Trainer: one jitted step",
}
TARGET_DEFAULT = 1.5     # default fp32 training step vs the chapter's code
TARGET_BF16 = 4.0        # bf16 training step vs the chapter's code (PyTorch, TensorFlow)
TARGET_PIPELINE = 0.05   # data pipeline time per batch / training step time
TARGET_MEMORY = 0.05     # growth allowed from the first chunk to the last
BF16_TARGET_BACKENDS = ("torch", "tensorflow")


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
            "max_step_seconds": a.max_step_seconds}


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
    the cores), then the data pipeline in this process, then the targets."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results, memory, environment = [], [], {"python": platform.python_version(), "machine": platform.machine(),
                                            "cpus": os.cpu_count(), "numpy": np.__version__}
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
            elif kind == "environment":
                environment.update(e)
        _fill_missing(name, s, results, events)
    order = {(b, path, p): i for i, (b, (path, p)) in
             enumerate((b, planned) for b in s["backends"] for planned in _planned(b, s))}
    results.sort(key=lambda r: order.get((r["backend"], r["path"], r["precision"]), len(order)))
    for r in results:
        r["ratio_train"] = r["ratio_infer"] = r["ratio_train_range"] = r["ratio_infer_range"] = None
        ref = next((c for c in results if c["backend"] == r["backend"] and c["path"] == "chapter"
                    and not c.get("error")), None)
        if ref and not r.get("error"):
            r["ratio_train"] = r["train_img_s"] / ref["train_img_s"]
            r["ratio_infer"] = r["infer_img_s"] / ref["infer_img_s"]
            r["ratio_train_range"] = _round_ratios(ref["train_steps_s"], r["train_steps_s"])
            r["ratio_infer_range"] = _round_ratios(ref["infer_steps_s"], r["infer_steps_s"])
    log("bench: data pipeline")
    pipeline = measure_pipeline(s, results)
    report = {"settings": s, "environment": environment, "results": results, "pipeline": pipeline,
              "memory": memory}
    report["targets"] = evaluate_targets(report)
    return report


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
    return [("chapter", "fp32")] + [("default", p) for p in s["precisions"]]


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
           "error": error}
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

    def ratio_target(backend, precision, need):
        name = f"{backend}: default {precision} training >= {need:g}x the chapter's code"
        r = find(backend, "default", precision)
        ref = find(backend, "chapter", "fp32")
        if r is None:
            return {"name": name, "met": None, "detail": f"not measured (add {precision} to --precision)"}
        if r.get("error") or ref is None or ref.get("error"):
            return {"name": name, "met": False,
                    "detail": f"error: {(r.get('error') or (ref or {}).get('error'))}"}
        low, high = r["ratio_train_range"] or (r["ratio_train"], r["ratio_train"])
        straddles = "; the rounds straddle the target" if low < need <= high else ""
        return {"name": name, "met": r["ratio_train"] >= need,
                "detail": f"{r['ratio_train']:.2f}x ({r['train_img_s']:.1f} vs {ref['train_img_s']:.1f} img/s; "
                          f"rounds {low:.2f}-{high:.2f}x{straddles})"}

    for b in s["backends"]:
        targets.append(ratio_target(b, "fp32", TARGET_DEFAULT))
    for b in s["backends"]:
        if b in BF16_TARGET_BACKENDS:
            targets.append(ratio_target(b, "bf16", TARGET_BF16))

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
    return targets


# -- output ---------------------------------------------------------------------------------------------
def _num(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [f"NiN ({s['variant']}) at {s['resize']}x{s['resize']}, batch {s['batch_size']}: median of "
             f"{s['steps']} steps after {s['warmup']} warm-up, threads {s['threads'] or 'all'} "
             f"({report['environment'].get('cpus')} CPUs)", ""]
    head = (f"{'backend':<11} {'path':<8} {'what':<24} {'precision':<9} {'train img/s':>11} {'infer img/s':>11} "
            f"{'train x':>8} {'(rounds)':>11} {'infer x':>8}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        left = f"{r['backend']:<11} {r['path']:<8} {r['description']:<24} {r['precision']:<9}"
        if r.get("error"):
            lines.append(f"{left} error: {r['error']}")
        else:
            spread = r.get("ratio_train_range")
            spread = f"{spread[0]:.2f}-{spread[1]:.2f}" if spread and r["path"] != "chapter" else ""
            lines.append(f"{left} {_num(r['train_img_s']):>11} {_num(r['infer_img_s']):>11} "
                         f"{_num(r['ratio_train'], '{:.2f}x'):>8} {spread:>11} {_num(r['ratio_infer'], '{:.2f}x'):>8}")
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
        self.inner = backend.Trainer(model, LR, "fp32", channels_last=False)
        self.train_step, self.eval_step = self.inner.train_step, self.inner.eval_step


class _KerasChapter:
    """The chapter's Keras loop (d2l 2's ``Trainer.fit_epoch``): an eager ``tf.GradientTape`` step,
    no ``tf.function``."""

    def __init__(self, backend, model):
        import keras

        self.tf, self.model = backend.tf, model
        self.opt = keras.optimizers.SGD(learning_rate=LR)
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def _result(self, logits, loss, y):
        tf = self.tf
        return float(loss) * len(y), int(tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == y, tf.int32)))

    def train_step(self, x, y):
        with self.tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            loss = self.loss(y, logits)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.opt.apply_gradients(zip(grads, self.model.trainable_variables))
        return self._result(logits, loss, y)

    def eval_step(self, x, y):
        logits = self.model(x, training=False)
        return self._result(logits, self.loss(y, logits), y)


class _GluonChapter:
    """The chapter's Gluon loop: imperative (the model not hybridized), ``autograd.record``, ``trainer.step``."""

    def __init__(self, backend, model):
        mx = backend.mx
        self.mx, self.autograd, self.model = mx, backend.autograd, model
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


_CHAPTER = {"torch": _TorchChapter, "tensorflow": _KerasChapter, "mxnet": _GluonChapter, "jax": _JaxChapter}


class _Path:
    def __init__(self, backend, spec, path, precision):
        self.path, self.precision, self.error = path, precision, None
        self.train_times, self.infer_times = [], []
        model = backend.build_model(spec, seed=0, dtype=param_dtype(precision))
        self.step = _CHAPTER[backend.NAME](backend, model) if path == "chapter" else \
            backend.Trainer(model, LR, precision)
        # MXNet's engine is asynchronous: a step returns once its loss is known, while the backward pass
        # and the update still run. Wait for them, or they would be timed as part of the next path's step.
        # JAX dispatches asynchronously too: wait for the updated parameters.
        self.sync = backend.mx.nd.waitall if backend.NAME == "mxnet" else \
            (lambda: backend.jax.block_until_ready(model.params)) if backend.NAME == "jax" else (lambda: None)

    def timed(self, kind, x, y):
        t0 = time.perf_counter()
        (self.step.train_step if kind == "train" else self.step.eval_step)(x, y)
        self.sync()
        return time.perf_counter() - t0


def _phases(name: str, precisions: list[str]) -> list[list[tuple[str, str]]]:
    """Paths whose steps are interleaved. MXNet's AMP patches its operators for the whole process once a
    bf16 Trainer exists, so there each lower precision runs alone, after every fp32 path is done."""
    first = [("chapter", "fp32")]
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
    spec = make_spec(s["variant"], s.get("in_channels", 1), image_size=s["resize"])
    rng = np.random.default_rng(0)
    x = data.to_float_batch(rng.integers(0, 256, (s["batch_size"], 28, 28), dtype=np.uint8), s["resize"],
                            backend.LAYOUT, channels=spec.in_channels)
    y = rng.integers(0, spec.num_classes, s["batch_size"]).astype(np.int64)
    memory_done = s["chunks"] == 0
    for phase in _phases(name, s["precisions"]):
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
                                   train_steps_s=p.train_times, infer_steps_s=p.infer_times))
        if not memory_done:
            target = next((p for p in paths if p.path == "default" and not p.error), None)
            if target is not None:
                memory_done = True
                _memory_chunks(name, target, s, x, y)
        del paths
    if not memory_done:
        _emit("memory", backend=name, error="no default path ran")
    return 0


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
