"""Time to accuracy: ``nin-multi train --recipe fast`` on the real data, in the backend's worker, timed
as ``train`` times it (wall seconds of the train and test passes from the first step) to the first epoch
whose test accuracy reaches the recipe's target. What a learner waits for, beside the images per second."""
from __future__ import annotations

import tempfile
import traceback

from ..config import TrainConfig
from ..loop import reached
from ..recipes import get_recipe
from .protocol import emit, error_text

RECIPE = "fast"


def measure_time_to_accuracy(name: str, s: dict) -> dict:
    recipe = get_recipe(RECIPE)
    out = {"backend": name, "recipe": recipe.name, "target": recipe.target, "seconds": None, "epoch": None,
           "best_acc": None, "epochs": [], "error": None}
    try:
        from ..train import train

        with tempfile.TemporaryDirectory(prefix="nin-multi-bench-") as run_dir:
            cfg = TrainConfig(**recipe.settings, backend=name, recipe=recipe.name, data_dir=s.get("data_dir"),
                              threads=s["threads"], out=run_dir, progress=False)
            _, history = train(cfg, overwrite=True, log=lambda *_: None)
        out["epochs"] = [{k: r[k] for k in ("epoch", "test_acc", "wall_seconds")} for r in history]
        out["best_acc"] = max(r["test_acc"] for r in history)
        hit = reached(history, recipe.target)
        if hit:
            out["seconds"], out["epoch"] = hit["wall_seconds"], hit["epoch"]
    except Exception as e:  # noqa: BLE001 - this measurement's failure is its result
        traceback.print_exc()
        out["error"] = error_text(e)
    when = f"{out['seconds']:.1f} s (epoch {out['epoch']})" if out["seconds"] is not None else "not reached"
    emit("log", message=f"time to test acc {recipe.target:g} ({recipe.name} recipe): {when}")
    return out


def accuracy_lines(report: dict) -> list[str]:
    """One line per backend: wall seconds to the recipe's test accuracy, and the others' CPU share meanwhile."""
    rows = report.get("accuracy", [])
    if not rows:
        return []
    lines = [f"time to accuracy ({rows[0]['recipe']} recipe, test acc {rows[0]['target']:g}; wall seconds of "
             f"training from the first step):"]
    busy = report["environment"].get("others_cpu_share", {})
    for r in rows:
        if r["error"]:
            text = f"error: {r['error']}"
        elif r["seconds"] is not None:
            text = f"{r['seconds']:.1f} s, at epoch {r['epoch']} (best {r['best_acc']:.3f})"
        else:
            text = f"not reached in {r['epochs'][-1]['wall_seconds']:.1f} s (best {r['best_acc']:.3f})"
        share = busy.get(r["backend"])
        lines.append(f"  {r['backend']:<10} {text}" + (f"; other processes {share:.0%} of the CPU" if share else ""))
    return lines
