"""One backend's worker process (``python -m nin_multi.bench --worker SETTINGS``): its GEMM probe, then
its paths, their steps interleaved (one step of each path per round, so a machine whose load changes
slows every path alike), then memory over chunks of steps and the end-to-end epochs. Everything the
framework itself does (its peers, its GEMM, how to wait for it) comes from its ``<backend>_bench``
module; this loop names no framework."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback

import numpy as np

from .. import data, machine
from ..config import param_dtype
from ..errors import ConfigError, NinMultiError
from ..spec import make_spec
from . import protocol
from .accuracy import measure_time_to_accuracy
from .epochs import measure_epochs
from .load import rss_mb
from .protocol import LR, emit, error_text
from .targets import TARGET_MEMORY


def make_path_step(backend, bench_module, model, path: str, precision: str):
    """The object whose ``train_step`` / ``eval_step`` a bench path times: a peer, or the backend's Trainer."""
    if path == "default":
        return AtRate(backend.Trainer(model, LR, precision), LR)
    if precision != "fp32":
        raise ConfigError(f"the {path} path runs in fp32 only, not {precision}")
    return bench_module.PEERS[path](backend, model, LR)


class AtRate:
    """A Trainer stepped as a peer is, ``train_step(x, y)``: at bench's constant rate."""

    def __init__(self, trainer, lr: float):
        self.trainer, self.lr, self.eval_step = trainer, lr, trainer.eval_step

    def train_step(self, x, y):
        return self.trainer.train_step(x, y, self.lr)


class _Path:
    def __init__(self, backend, bench_module, spec, path, precision):
        self.path, self.precision, self.error = path, precision, None
        self.train_times, self.infer_times, self.first_train = [], [], None
        model = backend.build_model(spec, seed=0, dtype=param_dtype(precision))
        self.step = make_path_step(backend, bench_module, model, path, precision)
        self.sync = bench_module.sync(model)

    def timed(self, kind, x, y):
        t0 = time.perf_counter()
        (self.step.train_step if kind == "train" else self.step.eval_step)(x, y)
        self.sync()
        return time.perf_counter() - t0

    def run(self, kind, i, warmup, x, y, max_seconds) -> None:
        """Round ``i`` of this path: one step, kept when past the warm-up; a failure is the path's result."""
        if self.error:
            return
        try:
            t = self.timed(kind, x, y)
        except Exception as e:  # noqa: BLE001 - any failure of one path is that path's result
            self.error = error_text(e)
            traceback.print_exc()
            return
        if kind == "train" and self.first_train is None:
            self.first_train = t  # the first step: tracing or compiling included
        if i >= warmup:
            (self.train_times if kind == "train" else self.infer_times).append(t)
        elif t > max_seconds:
            self.error = (f"too slow: a warm-up {kind} step took {t:.0f} s "
                          f"(over --max-step-seconds {max_seconds:g})")

    def summary(self, kind: str, batch: int) -> str:
        times = self.train_times if kind == "train" else self.infer_times
        if self.error or not times:
            return f"{self.path} {self.precision} error"
        return f"{self.path} {self.precision} {batch / statistics.median(times):.1f} img/s"


def phases(bench_module, precisions: list[str], s: dict) -> list[list[tuple[str, str]]]:
    """Paths whose steps are interleaved. Where a lower-precision Trainer changes the whole process
    (``LOWER_PRECISIONS_ALONE``), each lower precision runs alone, after every fp32 path is done."""
    first = protocol.peer_paths(bench_module.FAST_IS_DEFAULT, "fast" in bench_module.PEERS, s)
    rest = [("default", p) for p in precisions]
    if not bench_module.LOWER_PRECISIONS_ALONE:
        return [first + rest]
    return [first + [r for r in rest if r[1] == "fp32"]] + [[r] for r in rest if r[1] != "fp32"]


def _start(name: str, s: dict):
    """The backend and its bench module, loaded and configured; the plan and environment sent back."""
    from nin_multi import backends

    if s["threads"]:
        # a framework that sizes its OpenMP pool at import reads only this (NumPy's is already sized)
        os.environ["OMP_NUM_THREADS"] = str(s["threads"])
    (backend,) = backends.load_backends([name])
    bench_module = backends.companion(name, "bench")
    backend.configure(s["threads"], 0)
    emit("plan", layout=backend.LAYOUT, descriptions=bench_module.DESCRIPTIONS,
         fast_is_default=bench_module.FAST_IS_DEFAULT,
         paths=[p for phase in phases(bench_module, s["precisions"], s) for p in phase])
    emit("environment", **{f"{name}_version": bench_module.version(), f"{name}_device": backend.device(),
                           **bench_module.environment()})
    return backend, bench_module


def _gemm(name: str, bench_module, s: dict) -> None:
    for precision in dict.fromkeys(machine.GEMM_PRECISIONS + tuple(p for p in s["precisions"] if p == "fp64")):
        entry = machine.measure_gemm(name, bench_module.gemm, precision, s["gemm_size"], s.get("gemm_repeats", 3))
        emit("gemm", **entry)
        emit("log", message=f"GEMM {precision} n={s['gemm_size']}: " +
             (f"{entry['gflops']:.0f} GFLOP/s" if entry["gflops"] else entry["error"]))


def _result(backend, bench_module, path, precision, **fields) -> None:
    emit("result", **protocol.row(backend.NAME, path, precision, layout=backend.LAYOUT,
                                  description=bench_module.DESCRIPTIONS.get(path, path), **fields))


def _run_phase(backend, bench_module, spec, phase, s: dict, x, y) -> list[_Path]:
    """Every path of a phase, built, warmed up and timed round by round; each one's row sent back."""
    paths = []
    for path, precision in phase:
        try:
            paths.append(_Path(backend, bench_module, spec, path, precision))
        except Exception as e:  # noqa: BLE001 - any failure of one path is that path's result
            _result(backend, bench_module, path, precision, error=error_text(e))
    for kind in ("train", "infer"):
        warmup = s["warmup"] if kind == "train" else min(s["warmup"], 1)
        for i in range(warmup + s["steps"]):
            for p in paths:
                p.run(kind, i, warmup, x, y, s["max_step_seconds"])
        emit("log", message=f"{kind}: " + ", ".join(p.summary(kind, s["batch_size"]) for p in paths))
    for p in paths:
        if p.error:
            _result(backend, bench_module, p.path, p.precision, error=p.error)
            continue
        tr, inf = statistics.median(p.train_times), statistics.median(p.infer_times)
        _result(backend, bench_module, p.path, p.precision, train_img_s=s["batch_size"] / tr,
                infer_img_s=s["batch_size"] / inf, train_step_s=tr, infer_step_s=inf, train_steps_s=p.train_times,
                infer_steps_s=p.infer_times, first_train_step_s=p.first_train)
    return paths


def work(s: dict) -> int:
    name = s["backend"]
    try:
        backend, bench_module = _start(name, s)
    except NinMultiError as e:
        emit("failure", fatal=True, error=str(e))
        return 0
    if s.get("gemm_size"):
        _gemm(name, bench_module, s)
    spec = make_spec(s["variant"], s.get("in_channels", 1), image_size=s["resize"])
    rng = np.random.default_rng(0)
    x = data.to_float_batch(rng.integers(0, 256, (s["batch_size"], 28, 28), dtype=np.uint8), s["resize"],
                            backend.LAYOUT, channels=spec.in_channels)
    y = rng.integers(0, spec.num_classes, s["batch_size"]).astype(np.int64)
    memory_done = s["chunks"] == 0
    for phase in phases(bench_module, s["precisions"], s):
        paths = _run_phase(backend, bench_module, spec, phase, s, x, y)
        target = next((p for p in paths if p.path == "default" and not p.error), None)
        if not memory_done and target is not None:
            memory_done = True
            _memory_chunks(name, target, s, x, y)
        del paths, target
        if s.get("epoch_images"):
            for path, precision in phase:
                if path == "default":
                    emit("epoch", **measure_epochs(backend, bench_module, spec, s, precision))
    if not memory_done:
        emit("memory", backend=name, error="no default path ran")
    if s.get("time_to_accuracy"):
        emit("accuracy", **measure_time_to_accuracy(name, s))
    return 0


def _memory_chunks(name, p: _Path, s: dict, x, y) -> None:
    chunks = []
    try:
        for _ in range(s["chunks"]):
            for _ in range(s["steps"]):
                p.step.train_step(x, y)
            p.sync()
            peak, current = rss_mb()
            chunks.append({"max_rss_mb": peak, "rss_mb": current})
    except Exception as e:  # noqa: BLE001
        emit("memory", backend=name, path=p.path, precision=p.precision, error=error_text(e))
        return
    first, last = chunks[0], chunks[-1]
    peak_growth = last["max_rss_mb"] / first["max_rss_mb"] - 1
    rss_growth = last["rss_mb"] / first["rss_mb"] - 1 if first["rss_mb"] else 0.0
    emit("memory", backend=name, path=p.path, precision=p.precision, steps_per_chunk=s["steps"], chunks=chunks,
         peak_growth=peak_growth, rss_growth=rss_growth,
         within_target=peak_growth <= TARGET_MEMORY and rss_growth <= TARGET_MEMORY)
    peaks = " / ".join(f"{c['max_rss_mb']:.0f}" for c in chunks)
    emit("log", message=f"memory: peak RSS after each chunk {peaks} MB")


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m nin_multi.bench")
    parser.add_argument("--worker", required=True, help="settings as JSON (internal: started by nin-multi bench)")
    s = json.loads(parser.parse_args(argv).worker)
    try:
        return work(s)
    except Exception as e:  # noqa: BLE001 - report it; the parent turns it into error rows
        traceback.print_exc()
        emit("failure", fatal=True, error=error_text(e))
        return 1
