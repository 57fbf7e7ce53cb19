"""End to end: ``nin_multi.loop.train_epoch`` over a small synthetic training set (the real pipeline:
uint8 28x28 images resized into batches in a background thread, the progress bookkeeping, a short last
batch) with a fresh Trainer. The first epoch pays the first step's tracing or compilation; later ones
are what each further epoch of ``nin-multi train`` costs; their throughput against the steady step
rate, the gap split into its parts."""
from __future__ import annotations

import statistics
import time
import traceback
from types import SimpleNamespace

import numpy as np

from ..config import TrainConfig, param_dtype
from .protocol import LR, emit, error_text


class _StepTimer:
    """A Trainer whose ``train_step`` records how long each call took and its batch size. No extra
    synchronisation: ``train_epoch`` sees the Trainer exactly as ``nin-multi train`` does."""

    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []

    def train_step(self, x, y, lr, total=None):
        t0 = time.perf_counter()
        out = self.trainer.train_step(x, y, lr, total)
        self.steps.append((time.perf_counter() - t0, len(y)))
        return out


def _split(timer: _StepTimer, n: int, batch: int, wall: float, prefetch: bool) -> dict:
    """One epoch's time: steady steps, the excess of its first step and of its last (short) batch over
    a steady step's share, and the time outside steps (waiting for data, bookkeeping)."""
    times = [t for t, _ in timer.steps]
    full = [t for t, b in timer.steps if b == batch] or times
    steady = statistics.median(full[1:] if len(full) > 2 else full)
    last_t, last_b = timer.steps[-1]
    return {"prefetch": prefetch, "seconds": wall, "img_s": n / wall, "steps": len(times), "step_seconds": times,
            "steady_step_s": steady, "first_step_excess_s": times[0] - steady * timer.steps[0][1] / batch,
            "last_step_excess_s": (last_t - steady * last_b / batch) if len(times) > 1 and last_b != batch else 0.0,
            "outside_steps_s": wall - sum(times),
            # against what its own steady steps would give: only the epoch's overheads count
            "ratio_to_own_steps": (n / wall) / (batch / steady)}


def measure_epochs(backend, bench_module, spec, s: dict, precision: str, epochs: int = 2) -> dict:
    """``train_epoch`` over ``epoch_images`` random 28x28 images (the pipeline's cost does not depend on
    the pixels), ``epochs`` times, then once more without the pipeline's background thread: if steps
    inside an epoch are slower than steps run alone (the NumPy resize threads and the framework's
    threads sharing the cores), it shows there."""
    from ..loop import train_epoch

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
        sync = bench_module.sync(model)
        for epoch in range(epochs + 1):
            timer.steps = []
            prefetch = epoch < epochs
            t0 = time.perf_counter()
            train_epoch(timer, ds, cfg, backend.LAYOUT, epoch, prefetch=2 if prefetch else 0)
            sync()
            out["epochs"].append(_split(timer, n, batch, time.perf_counter() - t0, prefetch))
    except Exception as e:  # noqa: BLE001 - this measurement's failure is its result
        traceback.print_exc()
        out["error"] = error_text(e)
    if out["epochs"]:
        parts = ", ".join(f"epoch {i + 1}{'' if e['prefetch'] else ' (no prefetch)'} {e['img_s']:.1f} img/s"
                          for i, e in enumerate(out["epochs"]))
        emit("log", message=f"epochs {precision}: {parts}")
    return out
