"""``--precision auto``: the fastest precision a framework trains correctly on this machine, chosen by measuring.

No recipe can name one precision for every machine. bf16 has hardware only on CPUs with AVX-512 BF16 or AMX;
elsewhere oneDNN and XLA convert to fp32 and back around fp32 kernels, and a training step of the chapter's
network took 5-10x an fp32 one on an AVX2 CPU, while on an AMX CPU bf16 is about twice as fast in PyTorch and
TensorFlow and still slower in MXNet and JAX. So, as cuDNN's benchmark mode times its candidate kernels on
the spot, ``auto`` times a few training steps of the run's own network, at its size and batch, in each
precision the framework can run here, and keeps the fastest. The CPU class (``machine.cpu_class``, which
honours an instruction-set cap) is the prior: it rules out what cannot run at all (MXNet's bf16 below
AVX-512 BF16) before anything is timed, and it is part of the reason printed. Each answer is cached per
machine, framework version, network and shape, so a second run pays nothing.

A lower precision has to pay for itself: bf16 is chosen only when its step takes at most ``MIN_GAIN`` of
fp32's, so ``auto`` is never more than ~5% slower than fp32, nor than bf16 where bf16 wins.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import machine, optim
from .config import AUTO, TrainConfig, param_dtype
from .errors import ConfigError

#: What ``auto`` chooses between. fp16 needs loss scaling and a GPU, fp64 is asked for by name.
CANDIDATES = ("fp32", "bf16")
#: bf16 only when its step takes at most this fraction of fp32's.
MIN_GAIN = 0.95
#: Timed steps per precision after one untimed step (kernels chosen, graphs traced or compiled), stopping
#: early once a precision has used ``STEP_BUDGET_S``; at least one.
MAX_STEPS = 3
STEP_BUDGET_S = 0.5
#: Where the CPU class says bf16 has no hardware, bf16 is not timed further once its untimed first step
#: (one-off costs included) has taken this many fp32 steps: it cannot win, and a second slow step would
#: double the probe's cost (1.3 s a step on an AVX2 CPU, against 0.14 s in fp32).
NO_HARDWARE_STOP = 2.0
CACHE_ENV = "NIN_MULTI_CACHE_DIR"
CACHE_FILE = "precision-auto.json"
CACHE_FORMAT = "nin_multi.precision-auto/1"
#: A cache file larger than this is not read (it holds a few hundred bytes an entry).
MAX_CACHE_BYTES = 1 << 20
MAX_CACHE_ENTRIES = 200
STEP_KEYS = CANDIDATES + ("bf16_first_step",)


@dataclass(frozen=True)
class Choice:
    """What ``auto`` chose and why: the seconds per step measured, the precisions that cannot run here
    (with why), the CPU class, and whether the answer came from the cache."""
    precision: str
    reason: str
    seconds: dict = field(default_factory=dict)  # precision -> seconds per step; "bf16_first_step": see below
    refused: dict = field(default_factory=dict)
    cpu_class: str = ""
    cached: bool = False
    probe_seconds: float = 0.0

    def line(self) -> str:
        how = "measured earlier on this machine, cached" if self.cached else f"measured in {self.probe_seconds:.1f} s"
        return f"precision auto → {self.precision}: {self.reason} ({how})"

    def record(self) -> dict:
        """What ``config.json`` keeps beside the precision used."""
        return {"precision_request": AUTO, "precision_choice": self.line(),
                "precision_step_seconds": {k: round(v, 5) for k, v in self.seconds.items()}}


def _class_note(cls: str, device: str) -> str:
    if device != "cpu":
        return f"on {device}"
    if cls in machine.BF16_HARDWARE:
        return f"CPU class {cls}"
    return f"CPU class {cls}: no AVX-512 BF16 or AMX"


def choose(seconds: dict, refused: dict, cls: str, device: str = "cpu") -> tuple[str, str]:
    """``(precision, reason)`` from the seconds per step measured and the precisions refused (``why``).
    ``seconds["bf16_first_step"]`` instead of ``seconds["bf16"]``: bf16 stopped after its untimed first
    step (``NO_HARDWARE_STOP``)."""
    note = _class_note(cls, device)
    fp32, bf16 = seconds.get("fp32"), seconds.get("bf16")
    if fp32 is None:  # never: fp32 runs everywhere, and its failure is raised, not chosen around
        raise ConfigError("precision auto could not time an fp32 step")
    if "bf16_first_step" in seconds:
        return "fp32", (f"bf16's first step (one-off costs included) took {seconds['bf16_first_step'] / fp32:.1f}x "
                        f"an fp32 step here, so it was not timed further ({note})")
    if bf16 is None:
        why = refused.get("bf16", "not offered by this framework")
        return "fp32", f"bf16 {why} ({note})"
    ratio = bf16 / fp32
    if ratio <= MIN_GAIN:
        return "bf16", f"bf16 step {1 / ratio:.1f}x faster than fp32 here ({note})"
    if ratio < 1.05:
        return "fp32", f"bf16 step no faster than fp32 here ({ratio:.2f}x its time; {note})"
    return "fp32", f"bf16 step {ratio:.1f}x slower than fp32 here ({note})"


def unsupported(name: str, precision: str, device: str = "cpu", cls: Optional[str] = None) -> Optional[str]:
    """Why ``precision`` cannot run in backend ``name`` here (None: it can), from the backend's
    ``PRECISION_NEEDS`` field, read without importing its framework."""
    from nin_multi.backends import capabilities

    caps = capabilities(name)
    if precision not in caps.precisions:
        return f"is not offered by the {name} backend (it offers {', '.join(caps.precisions)})"
    needs = caps.precision_needs.get(precision)
    if not needs:
        return None
    if device != "cpu":
        return None if "gpu" in needs else f"runs on a CPU only in {name}"
    cls = cls or machine.cpu_class()
    if cls in needs:
        return None
    cpus = [n for n in needs if n != "gpu"]
    return f"needs {('a CPU with ' + ' or '.join(cpus)) if cpus else 'a GPU'} in {name}"


def check_runs_here(name: str, precision: str, device: str = "cpu") -> None:
    """Refuse, before training, a precision the framework cannot run on this device, in one line that
    names the CPU class and what to use instead."""
    from nin_multi.backends import capabilities

    if precision == AUTO or precision not in capabilities(name).precisions:  # the Trainer says why, its way
        return
    why = unsupported(name, precision, device)
    if why is not None:
        raise ConfigError(f"--precision {precision} {why}; this is {machine.describe(device)}: use --precision fp32, "
                          f"or --precision auto, which picks the fastest precision that runs here")


# -- measuring ------------------------------------------------------------------------------------------
def _batch(cfg: TrainConfig, layout: str, dtype: str):
    rng = np.random.default_rng(0)
    shape = (cfg.batch_size, cfg.in_channels, cfg.resize, cfg.resize)
    x = rng.random(shape, dtype=np.float32).astype(dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x, rng.integers(0, cfg.num_classes, cfg.batch_size).astype(np.int64)


def time_steps(backend, spec, cfg: TrainConfig, precision: str, stop_above: Optional[float] = None):
    """``(seconds per training step, False)`` of ``spec`` in ``precision``: the fastest of up to ``MAX_STEPS``
    timed steps after an untimed one, on a throwaway model with the run's optimizer, size and batch; or
    ``(the untimed step's seconds, True)`` when that step alone took longer than ``stop_above``."""
    dtype = param_dtype(precision)
    model = backend.build_model(spec, "kaiming", cfg.seed, dtype=dtype)
    settings = optim.from_config(cfg, 1)
    trainer = backend.Trainer(model, cfg.lr, precision, optim=settings)
    x, y = _batch(cfg, backend.LAYOUT, dtype)
    lr = settings.lr_at(0)
    t0 = time.perf_counter()
    trainer.train_step(x, y, lr)
    first = time.perf_counter() - t0
    if stop_above is not None and first > stop_above:
        return first, True
    times, t_start = [], time.perf_counter()
    while len(times) < MAX_STEPS and (not times or time.perf_counter() - t_start < STEP_BUDGET_S):
        t0 = time.perf_counter()
        trainer.train_step(x, y, lr)
        times.append(time.perf_counter() - t0)
    return min(times), False


def _time_alone(cfg: TrainConfig, precision: str, stop_above: Optional[float] = None):
    """``time_steps`` in a process of its own, for a framework whose lower precision changes the whole
    process (MXNet's AMP): the run itself may train in fp32 afterwards."""
    job = {"cfg": cfg.to_dict(), "precision": precision, "stop_above": stop_above}
    try:
        done = subprocess.run([sys.executable, "-m", "nin_multi.precision"], input=json.dumps(job), text=True,
                              capture_output=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"its probe process failed ({type(e).__name__})") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise RuntimeError(f"its probe process ended with status {done.returncode}: {tail}") from None
    if answer.get("error"):
        raise RuntimeError(answer["error"])
    return float(answer["seconds"]), bool(answer["first_step_only"])


def measure(backend, spec, cfg: TrainConfig, candidates, hardware: bool = True) -> tuple[dict, dict]:
    """``({precision: seconds per step}, {precision: why it failed})``, fp32 first. fp32's failure is
    raised (nothing would train); a lower precision that fails is left out, with its first line, never a
    traceback. ``hardware``: whether the CPU class has bf16 arithmetic (else ``NO_HARDWARE_STOP`` applies)."""
    from nin_multi.backends import companion

    alone = companion(backend.NAME, "bench").LOWER_PRECISIONS_ALONE
    seconds, failed = {}, {}
    for precision in sorted(candidates, key=lambda p: p != "fp32"):
        if precision == "fp32":
            seconds[precision], _ = time_steps(backend, spec, cfg, precision)
            continue
        stop = None if hardware or "fp32" not in seconds else NO_HARDWARE_STOP * seconds["fp32"]
        try:
            value, first_only = (_time_alone(cfg, precision, stop) if alone else
                                 time_steps(backend, spec, cfg, precision, stop))
        except Exception as e:  # noqa: BLE001 - a precision that fails here is one auto does not choose
            text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            failed[precision] = f"failed here ({text})"
            continue
        seconds[f"{precision}_first_step" if first_only else precision] = value
    return seconds, failed


# -- the cache ------------------------------------------------------------------------------------------
def cache_path() -> Path:
    """$NIN_MULTI_CACHE_DIR, else the system's cache folder, as the data's cache (``data.default_cache_dir``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env) / CACHE_FILE
    import pooch

    return Path(pooch.os_cache("nin_multi")) / CACHE_FILE


def cache_key(name: str, versions: dict, device: str, spec, cfg: TrainConfig) -> str:
    """Everything the answer depends on: the machine (CPU model, class with any cap, usable cores, threads,
    device), the framework's version, the network and the step's shape."""
    info = machine.cpu_info()
    text = json.dumps({"cpu": info["model"], "class": machine.cpu_class(info["isa"]), "cap": machine.isa_cap(),
                       "cores": machine.usable_cores(), "threads": cfg.threads or machine.default_threads(),
                       "device": device, "backend": name, "versions": versions, "network": spec.to_dict(),
                       "resize": cfg.resize, "batch": cfg.batch_size}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _valid_entry(e) -> bool:
    return (isinstance(e, dict) and e.get("precision") in CANDIDATES and isinstance(e.get("reason"), str)
            and isinstance(e.get("seconds"), dict) and isinstance(e.get("refused"), dict)
            and all(k in STEP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    for k, v in e["seconds"].items())
            and all(isinstance(k, str) and isinstance(v, str) for k, v in e["refused"].items()))


def read_cache(path: Path) -> dict:
    """The cache's entries, or none: a missing, damaged, oversized or foreign file is ignored (and replaced
    at the next write), never an error, since the cache only saves a measurement."""
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(k, str) and _valid_entry(v)}


def write_cache(path: Path, entries: dict) -> None:
    """Written whole and renamed into place; a cache that cannot be written is only not written."""
    from .fileio import atomic_write

    entries = dict(list(entries.items())[-MAX_CACHE_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True).encode())
    except Exception:  # noqa: BLE001 - the run goes on without the cache (read-only home, full disk)
        pass


# -- the choice -----------------------------------------------------------------------------------------
def resolve(backend, spec, cfg: TrainConfig, versions: Optional[dict] = None, measure_fn: Optional[Callable] = None,
            cache: Optional[Path] = None) -> tuple[TrainConfig, Optional[Choice]]:
    """``cfg`` with its precision decided, and the ``Choice`` when it was ``auto`` (None otherwise: an
    explicit precision always wins, unchanged). ``measure_fn(backend, spec, cfg, candidates)`` and
    ``cache`` are the measurement and the cache file (tests give their own)."""
    if cfg.precision != AUTO:
        return cfg, None
    device = backend.device()
    cls = machine.cpu_class()
    refused = {p: why for p in CANDIDATES if (why := unsupported(backend.NAME, p, device, cls)) is not None}
    candidates = [p for p in CANDIDATES if p not in refused]
    cache = cache_path() if cache is None else cache
    key = cache_key(backend.NAME, versions or {}, device, spec, cfg)
    entries = read_cache(cache)
    if key in entries:
        e = entries[key]
        choice = Choice(e["precision"], e["reason"], e["seconds"], e["refused"], cls, cached=True)
    else:
        t0 = time.perf_counter()
        probe = dataclasses.replace(cfg, precision="fp32")
        hardware = device != "cpu" or cls in machine.BF16_HARDWARE
        seconds, failed = (measure_fn or measure)(backend, spec, probe, candidates, hardware)
        refused = {**refused, **failed}
        precision, reason = choose(seconds, refused, cls, device)
        choice = Choice(precision, reason, seconds, refused, cls, probe_seconds=time.perf_counter() - t0)
        entries[key] = {"precision": precision, "reason": reason, "seconds": seconds, "refused": refused,
                        "what": f"{backend.NAME} {spec.variant} at {cfg.resize}x{cfg.resize}, batch {cfg.batch_size}"}
        write_cache(cache, entries)
    return dataclasses.replace(cfg, precision=choice.precision, **choice.record()), choice


def _probe_main() -> int:
    """``python -m nin_multi.precision``: one precision's ``time_steps`` in this process, asked for as JSON
    on stdin, answered as one JSON line on stdout."""
    from nin_multi.backends import get_backend

    from .train import spec_for

    job = json.loads(sys.stdin.read())
    try:
        cfg = TrainConfig.from_dict(job["cfg"])
        backend = get_backend(cfg.backend)
        backend.configure(cfg.threads, cfg.seed)
        seconds, first_only = time_steps(backend, spec_for(cfg), cfg, job["precision"], job.get("stop_above"))
        print(json.dumps({"seconds": seconds, "first_step_only": first_only}))
    except Exception as e:  # noqa: BLE001 - the asking process reports it as this precision's failure
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        print(json.dumps({"error": f"{type(e).__name__}: {text}"}))
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main())
