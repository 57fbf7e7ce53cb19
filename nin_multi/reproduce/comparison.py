"""What one start's runs are compared by: the spread between backends per epoch, every SGD step's loss
side by side with each pair's relative difference, and the final weights' distance."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import num_batches
from ..fileio import write_csv
from ..spec import ChannelDropout, Dropout, NiNSpec
from ..stats import FP64_AGREEMENT, SEPARATION, first_exceeding, largest_per_epoch, relative_difference


def dropout_rate(spec: NiNSpec) -> float:
    """The largest dropout rate, of single values or of whole channels (the standalone NinNet's)."""
    return max((layer.rate for layer in spec.layers if isinstance(layer, (Dropout, ChannelDropout))), default=0.0)


def pair_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of backends, in the registry's order (the second of a pair is the reference)."""
    return list(itertools.combinations(names, 2))


def pair_label(a: str, b: str) -> str:
    return f"{a} vs {b}"


# -- per epoch ----------------------------------------------------------------------------------------
def _spread(values) -> float:
    values = [v for v in values if v is not None]
    return float(max(values) - min(values)) if len(values) > 1 else 0.0


def drift_rows(histories: dict[str, list[dict]], initial: dict[str, dict], n_train: int, n_test: int) -> list[dict]:
    """Per epoch (0: the shared initial weights, before any step), the largest difference between any
    two backends: train loss (absolute, and relative to the smallest), train/test accuracy (also in
    examples), test loss."""
    rows = [{"epoch": 0, "train_loss_diff": None, "train_loss_rel_diff": None, "train_acc_diff": None,
             "train_examples_diff": None, "test_loss_diff": _spread(r["test_loss"] for r in initial.values()),
             "test_acc_diff": _spread(r["test_acc"] for r in initial.values()),
             "test_examples_diff": round(_spread(r["test_acc"] for r in initial.values()) * n_test),
             **{f"{name}.train_loss": None for name in histories},
             **{f"{name}.test_acc": r["test_acc"] for name, r in initial.items()}}]
    epochs = min(len(h) for h in histories.values())
    for e in range(epochs):
        at = {name: h[e] for name, h in histories.items()}
        losses = [r["train_loss"] for r in at.values()]
        rows.append({
            "epoch": e + 1,
            "train_loss_diff": _spread(losses),
            "train_loss_rel_diff": _spread(losses) / min(losses),
            "train_acc_diff": _spread(r["train_acc"] for r in at.values()),
            "train_examples_diff": round(_spread(r["train_acc"] for r in at.values()) * n_train),
            "test_loss_diff": _spread(r["test_loss"] for r in at.values()),
            "test_acc_diff": _spread(r["test_acc"] for r in at.values()),
            "test_examples_diff": round(_spread(r["test_acc"] for r in at.values()) * n_test),
            **{f"{name}.train_loss": r["train_loss"] for name, r in at.items()},
            **{f"{name}.test_acc": r["test_acc"] for name, r in at.items()},
        })
    return rows


def weight_differences(finals: dict[str, dict]) -> dict[str, float]:
    """Relative L2 difference of all final parameters, for each pair of backends."""
    out = {}
    for (a, wa), (b, wb) in itertools.combinations(finals.items(), 2):
        num = np.sqrt(sum(float(np.sum((wa[k].astype(np.float64) - wb[k]) ** 2)) for k in wa))
        den = np.sqrt(sum(float(np.sum(wa[k].astype(np.float64) ** 2)) for k in wa))
        out[pair_label(a, b)] = num / den if den else num
    return out


# -- step by step ---------------------------------------------------------------------------------------
def step_table(losses: dict[str, list[float]], n_train: int, batch_size: int, epochs: int) -> dict:
    """Every SGD step's mean training loss per backend, with its epoch and batch size, and the relative
    difference of each pair at that step: the columns of ``steps.csv`` and ``reproduce.json``."""
    per_epoch = num_batches(n_train, batch_size)
    sizes = [min(batch_size, n_train - i * batch_size) for i in range(per_epoch)]
    n_steps = min(len(v) for v in losses.values())
    table = {"step": list(range(1, n_steps + 1)),
             "epoch": [i // per_epoch + 1 for i in range(n_steps)],
             "batch_size": [sizes[i % per_epoch] for i in range(n_steps)],
             "loss": {name: [float(v) for v in values[:n_steps]] for name, values in losses.items()},
             "rel_diff": {}}
    for a, b in pair_names(list(losses)):
        table["rel_diff"][pair_label(a, b)] = relative_difference(table["loss"][a], table["loss"][b]).tolist()
    assert n_steps == per_epoch * epochs, (n_steps, per_epoch, epochs)
    return table


def step_drift(table: dict, threshold: float = SEPARATION, agreement: float = FP64_AGREEMENT) -> dict:
    """Per pair: the first step above ``threshold`` (None: never) and the largest difference in each
    epoch; overall: whether every pair stayed within ``agreement`` at every step."""
    pairs = {}
    for pair, rel in table["rel_diff"].items():
        first = first_exceeding(rel, threshold)
        per_epoch = largest_per_epoch(rel, table["epoch"])
        pairs[pair] = {"first_step_above": first,
                       "first_epoch_above": None if first is None else table["epoch"][first - 1],
                       "largest_per_epoch": per_epoch, "largest": max(per_epoch, default=0.0)}
    worst = max(pairs, key=lambda k: pairs[k]["largest"]) if pairs else None
    return {"threshold": threshold, "agreement": agreement, "steps": len(table["step"]),
            "steps_per_epoch": table["epoch"].count(1), "pairs": pairs,
            "largest": pairs[worst]["largest"] if worst else 0.0, "largest_pair": worst,
            "all_within_agreement": all(p["largest"] <= agreement for p in pairs.values())}


# -- tables on disk ---------------------------------------------------------------------------------------
def write_steps_csv(path: Path, table: dict) -> None:
    columns = {"step": table["step"], "epoch": table["epoch"], "batch_size": table["batch_size"],
               **table["loss"], **table["rel_diff"]}
    write_csv(path, [dict(zip(columns, row)) for row in zip(*columns.values())], list(columns))


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Rows of one shape as CSV, a missing value (None) as an empty cell."""
    write_csv(path, [{k: ("" if v is None else v) for k, v in r.items()} for r in rows], list(rows[0]))
