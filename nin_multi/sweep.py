"""Time to accuracy, measured: train settings around a recipe on a validation split carved from the
training images, and record how long each takes to reach a validation accuracy.

The test images are never looked at here, so choosing the ``fast`` recipe's settings by these numbers
does not tune them to the 500 test images of the sample; the chosen recipe's test accuracy is then
reported once, by ``train``. Beside each wall time the table keeps the process's CPU seconds and the
share of the machine's CPU that other processes used meanwhile: on a shared machine a setting can look
slow only because something else ran.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from . import data as data_mod
from . import loop
from .bench import load
from .config import TrainConfig
from .errors import ConfigError
from .train import build, spec_for

#: What the sweep varies, one at a time around the base recipe unless a full grid is asked for. The seed
#: is one of them because on a few thousand images it moves the accuracy as much as any setting does: a
#: setting is only better than another if it is so over several seeds.
FACTORS = ("init", "resize", "batch_size", "lr", "epochs", "precision", "nesterov", "seed")
#: The share of the training images held out for validation: the last ones, a fixed split.
VALIDATION = 0.1


def validation_split(ds: data_mod.FashionMNIST, fraction: float = VALIDATION) -> data_mod.FashionMNIST:
    """The training images split in two: the first ``1 - fraction`` to train on, the last ``fraction`` in
    the place of the test split (the test images are dropped)."""
    n_val = int(round(len(ds.train_images) * fraction))
    if not 0 < n_val < len(ds.train_images):
        raise ConfigError(f"a validation share of {fraction} leaves no images on one side of the split")
    cut = len(ds.train_images) - n_val
    return data_mod.FashionMNIST(ds.train_images[:cut], ds.train_labels[:cut], ds.train_images[cut:],
                                 ds.train_labels[cut:], f"{ds.source} (training images: last {n_val} held out)")


def settings_around(base: dict, values: dict[str, list], grid: bool = False) -> list[dict]:
    """The settings to measure: ``base`` first, then each factor's other values one at a time (or, with
    ``grid``, every combination)."""
    if grid:
        out = [{}]
        for key, vs in values.items():
            out = [{**o, key: v} for o in out for v in vs]
        return [{**base, **o} for o in out]
    out = [dict(base)]
    for key, vs in values.items():
        out += [{**base, key: v} for v in vs if v != base.get(key)]
    return out


def time_to_accuracy(backend, cfg: TrainConfig, ds: data_mod.FashionMNIST, target: float,
                     log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` on ``ds`` (its test split being the validation images) through the one loop, which
    evaluates after every epoch; the wall seconds from the first step to the first epoch whose validation
    accuracy reaches ``target`` (``loop.reached``, as ``train`` reports it)."""
    backend.configure(cfg.threads, cfg.seed)
    make_model, make_trainer = build(backend, spec_for(cfg), cfg, len(ds.train_images))
    trainer = make_trainer(make_model())

    def say(row: dict, step: int) -> None:
        log(f"  epoch {row['epoch']}: train loss {row['train_loss']:.3f}, validation acc {row['test_acc']:.3f}, "
            f"{row['wall_seconds']:.1f} s")

    before = load.cpu_counters(own=True)
    rows = loop.fit(trainer, ds, cfg, backend.LAYOUT, on_epoch=[say], eval_desc="validation")
    after = load.cpu_counters(own=True)
    curve, hit = [round(r["test_acc"], 4) for r in rows], loop.reached(rows, target)
    return {"epoch_reached": hit["epoch"] if hit else None, "seconds_to_target": hit["wall_seconds"] if hit else None,
            "best_val_acc": max(curve), "final_val_acc": curve[-1], "val_acc": curve,
            "wall_seconds": after[0] - before[0], "cpu_seconds": after[1] - before[1],
            "others_cpu_share": load.others_share(before, after)}


def run_sweep(backend, base: TrainConfig, settings: Iterable[dict], ds: data_mod.FashionMNIST, target: float,
              log: Callable[[str], None] = print, on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Every setting in turn, each a fresh model from the same seed, on the same split; ``on_row`` gets
    each result as it comes (a long sweep stopped halfway keeps what it measured)."""
    rows = []
    for s in settings:
        cfg = dataclasses.replace(base, **s)
        log(f"{describe(s)}:")
        rows.append({**{k: getattr(cfg, k) for k in FACTORS}, **time_to_accuracy(backend, cfg, ds, target, log)})
        on_row(rows[-1])
    return rows


def describe(s: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {s[k]}" for k in FACTORS if k in s)


def table(rows: list[dict], target: float) -> str:
    """A Markdown table, fastest to the target first (settings that never reached it last)."""
    head = (f"| init | resize | batch | peak lr | epochs | precision | Nesterov | seed "
            f"| s to val acc {target:g} (epoch) | best val acc | wall s | CPU s | others' CPU |\n"
            f"|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = sorted(rows, key=lambda r: (r["seconds_to_target"] is None, r["seconds_to_target"] or r["wall_seconds"]))
    lines = [head]
    for r in order:
        hit = f"{r['seconds_to_target']:.1f} ({r['epoch_reached']})" if r["seconds_to_target"] else "not reached"
        share = "?" if r["others_cpu_share"] is None else f"{r['others_cpu_share']:.0%}"
        lines.append(f"| {r['init']} | {r['resize']} | {r['batch_size']} | {r['lr']:g} | {r['epochs']} "
                     f"| {r['precision']} | {'yes' if r['nesterov'] else 'no'} | {r['seed']} | {hit} "
                     f"| {r['best_val_acc']:.3f} | {r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | {share} |")
    return "\n".join(lines)
