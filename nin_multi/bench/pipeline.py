"""The data pipeline's speed (``nin_multi.data.batches``: uint8 28x28 images to resized float32 batches)
per layout, and its share of a training step."""
from __future__ import annotations

import time

import numpy as np

from .. import data


def measure_pipeline(s: dict, results: list, layouts) -> list[dict]:
    """Images per second of ``data.batches`` per layout, and its time per batch over each default path's
    training step time: the share of a step the pipeline would take if it did not overlap at all."""
    rng = np.random.default_rng(0)
    n_batches = max(8, 2 * s["steps"])
    images = rng.integers(0, 256, (n_batches * s["batch_size"], 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images), dtype=np.uint8)
    out = []
    for layout in layouts:
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
