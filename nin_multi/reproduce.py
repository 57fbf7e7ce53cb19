"""``reproduce``: the same training in several frameworks, from one set of initial weights and one
example order, laid side by side.

What differs between two ``train`` runs on different backends is (a) the initial weights (each
framework draws from its own generator), (b) the dropout masks, and (c) floating-point rounding. This
command removes (a) by drawing the spec's initialisation once in NumPy and handing it to every backend
with ``set_weights``, and hands every backend the same example order per epoch (``train_epoch``'s
``order``); ``--no-dropout`` removes (b). What is left is (c), which the report measures per epoch.

Everything else is the shared driver: each backend's own ``Trainer``, ``train_epoch`` and ``evaluate``
from ``nin_multi.train``, one ``Run`` (metrics, plot) per backend in a subdirectory of one run
directory, and one overlaid plot and comparison table at its top.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np

from .config import INITS, TrainConfig
from .errors import ConfigError
from .run import CONFIG, PLOT, WEIGHTS, Run, plot_curves, prepare_dir, write_json
from .spec import Conv, Dropout, NiNSpec
from .train import evaluate, load_data, spec_for, train_epoch
from .weights import save_weights

INITIAL_WEIGHTS = "initial_weights.npz"
BACKENDS_CSV = "backends.csv"
DRIFT_CSV = "drift.csv"
REPORT_JSON = "reproduce.json"


# -- the shared starting point ----------------------------------------------------------------------------
def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Canonical layouts: conv OIHW (fan_in = I*k*k, fan_out = O*k*k), dense (in, out)."""
    if len(shape) == 4:
        o, i, kh, kw = shape
        return i * kh * kw, o * kh * kw
    i, o = shape
    return i, o


def initial_weights(spec: NiNSpec, init: str = "xavier", seed: int = 0) -> dict:
    """The spec's initialisation drawn once in NumPy, in canonical layout: float32, biases zero.

    ``xavier`` is Glorot uniform, U(-b, b) with b = sqrt(6 / (fan_in + fan_out)) (the chapter's, and
    PyTorch's ``xavier_uniform_``); ``kaiming`` is He normal, N(0, 2 / fan_in) untruncated (PyTorch's
    ``kaiming_normal_`` for ReLU). Layers are drawn in forward order from one generator seeded by ``seed``.
    """
    if init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for p in spec.param_layers():
        shape = p.weight_shape if isinstance(p, Conv) else (p.in_features, p.out_features)
        fan_in, fan_out = _fans(shape)
        if init == "xavier":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-bound, bound, shape)
        else:
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        out[f"{p.name}.weight"] = w.astype(np.float32)
        out[f"{p.name}.bias"] = np.zeros(shape[0] if isinstance(p, Conv) else shape[1], np.float32)
    return out


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch, a function of (seed, epoch) only: handed to every backend.

    It is the permutation ``train`` uses by default, so a backend's curve here is the one ``train``
    gives from the same initial weights.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


# -- comparison -------------------------------------------------------------------------------------------
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
        out[f"{a} vs {b}"] = num / den if den else num
    return out


def dropout_rate(spec: NiNSpec) -> float:
    return max((layer.rate for layer in spec.layers if isinstance(layer, Dropout)), default=0.0)


def explanation(cfg: TrainConfig, spec: NiNSpec, drift: list[dict], weight_diff: float, n_test: int) -> list[str]:
    """Why the curves differ as much as they do, in words, around the measured numbers."""
    first, last = drift[1], drift[-1]
    lines = [f"The backends started from identical weights (their test loss agreed to "
             f"{drift[0]['test_loss_diff']:.1e} before training) and saw identical batches. Train loss "
             f"differed by {first['train_loss_diff']:.1e} ({first['train_loss_rel_diff']:.1e} relative) after "
             f"epoch 1 and {last['train_loss_diff']:.1e} ({last['train_loss_rel_diff']:.1e}) after epoch "
             f"{last['epoch']}; test accuracy by {last['test_examples_diff']} of {n_test} images at the end; "
             f"final weights by {weight_diff:.1e} (relative L2)."]
    if dropout_rate(spec) > 0:
        lines.append(f"Dropout is on (rate {dropout_rate(spec):g}): each framework draws its own masks, so "
                     f"these are different random samples of the same training and agree only "
                     f"statistically. --no-dropout removes that source of difference.")
    if cfg.precision != "fp32":
        lines.append(f"--precision {cfg.precision} rounds every product to a few significant digits, in a "
                     f"different order in each framework's kernels: expect differences far above fp32's.")
    lines.append("What remains is floating-point rounding. The frameworks' kernels (PyTorch's own, oneDNN in "
                 "TensorFlow and MXNet) sum the same products in different orders, so activations and "
                 "gradients differ in their last bits (~1e-7 relative in fp32). Where an activation lies "
                 "that close to ReLU's kink, or two max-pool inputs that close to each other, frameworks "
                 "can take different branches, and that step's gradient differs by far more than rounding. "
                 "SGD on a non-convex loss amplifies every such difference step after step (chaotically: "
                 "fastest on the plateau near loss ln 10 = 2.30, where tiny differences decide which "
                 "features grow first), so the drift grows with the number of steps and the learning rate. "
                 "No framework is the correct one: past the first steps, compare the curves as samples of "
                 "one training, not digit for digit.")
    return lines


# -- the command ------------------------------------------------------------------------------------------
def default_run_dir() -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-reproduce"


def reproduce(cfg: TrainConfig, backend_names=None, overwrite: bool = False, log=print) -> tuple[Path, dict]:
    """Train every named backend (a list or a comma-separated string; default: every installed one) from
    one start; returns (run dir, report)."""
    from nin_multi import backends as registry

    keys = registry.select(backend_names, trains=True)
    if len(keys) < 2:
        installed = ", ".join(registry.installed()) or "none"
        raise ConfigError(f"reproduce compares frameworks and needs at least two backends, got "
                          f"{', '.join(keys) or 'none'} (installed: {installed}); install another with "
                          f"pip install 'nin-multi[torch]', '[tensorflow]', '[mxnet]' or '[jax]'")
    mods = registry.load_backends(keys)  # PyTorch before TensorFlow
    spec = spec_for(cfg)
    ds = load_data(cfg)
    n_train, n_test = len(ds.train_images), len(ds.test_images)
    run_dir = prepare_dir(cfg.out or default_run_dir(), overwrite=overwrite)
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    start = initial_weights(spec, cfg.init, cfg.seed)
    save_weights(run_dir / INITIAL_WEIGHTS, spec, start,
                 meta={"init": cfg.init, "seed": cfg.seed, "drawn_by": "numpy"})
    dropout = f"{dropout_rate(spec):g}" if dropout_rate(spec) > 0 else "off"
    title = (f"NiN ({spec.variant}): lr {cfg.lr:g}, batch {cfg.batch_size}, {cfg.resize}x{cfg.resize}, "
             f"{cfg.precision}, dropout {dropout}, {n_train} train images, same start")
    write_json(run_dir / CONFIG, {**cfg.to_dict(), "backend": None, "backends": [m.NAME for m in mods]})
    log(f"reproducing {spec.variant} NiN ({spec.num_params:,} parameters) on {', '.join(m.NAME for m in mods)}: "
        f"one {cfg.init} initialisation (seed {cfg.seed}), one example order per epoch, dropout {dropout}, "
        f"{cfg.precision}; {n_train} training and {n_test} test images at {cfg.resize}x{cfg.resize}; "
        f"run directory {run_dir}")

    # Every model and trainer first: a setting some framework refuses fails before any training.
    setups = []
    for m in mods:
        m.configure(cfg.threads, cfg.seed)
        model = m.build_model(spec, cfg.init, cfg.seed)
        m.set_weights(model, spec, start)
        got = m.get_weights(model, spec)
        if any(not np.array_equal(got[k], start[k]) for k in start):
            raise RuntimeError(f"{m.NAME}: set_weights did not take the shared initial weights exactly")
        setups.append((m, model, m.Trainer(model, cfg.lr, cfg.precision)))

    histories, initial, finals, backend_rows = {}, {}, {}, []
    for m, model, trainer in setups:
        bcfg = dataclasses.replace(cfg, backend=m.NAME, out=str(run_dir / m.NAME))
        run = Run(run_dir / m.NAME, f"{title}: {m.NAME}")
        run.write_config(bcfg.to_dict())
        loss0, acc0 = evaluate(trainer, ds.test_images, ds.test_labels, bcfg, m.LAYOUT, f"{m.NAME} start")
        initial[m.NAME] = {"test_loss": loss0, "test_acc": acc0}
        log(f"[{m.NAME}] ({m.device()}) before training: test loss {loss0:.6f}, test acc {acc0:.3f}")
        for epoch in range(cfg.epochs):
            row = {"epoch": epoch + 1, **train_epoch(trainer, ds, bcfg, m.LAYOUT, epoch,
                                                     order=epoch_order(n_train, cfg.seed, epoch))}
            row["test_loss"], row["test_acc"] = evaluate(trainer, ds.test_images, ds.test_labels, bcfg,
                                                         m.LAYOUT, f"{m.NAME} test")
            run.log_epoch(row)
            log(f"[{m.NAME}] epoch {epoch + 1}: train loss {row['train_loss']:.6f}, train acc "
                f"{row['train_acc']:.3f}, test acc {row['test_acc']:.3f}, "
                f"{row['examples_per_sec']:.1f} examples/sec")
        finals[m.NAME] = m.get_weights(model, spec)
        save_weights(run.path / WEIGHTS, spec, finals[m.NAME],
                     meta={"backend": m.NAME, "epochs": cfg.epochs, "config": bcfg.to_dict()})
        histories[m.NAME] = run.history
        last = run.history[-1]
        seconds = sum(r["seconds"] for r in run.history)
        backend_rows.append({
            "backend": m.NAME, "device": m.device(), "train_loss": last["train_loss"],
            "train_acc": last["train_acc"], "test_loss": last["test_loss"], "test_acc": last["test_acc"],
            "examples_per_sec": n_train * cfg.epochs / seconds, "train_seconds": seconds})

    plot_curves(histories, run_dir / PLOT, title)
    drift = drift_rows(histories, initial, n_train, n_test)
    pairs = weight_differences(finals)
    weight_diff = max(pairs.values())
    why = explanation(cfg, spec, drift, weight_diff, n_test)
    report = {"config": cfg.to_dict(), "backends": backend_rows, "drift": drift, "initial": initial,
              "final_weights_rel_diff": pairs, "n_train": n_train, "n_test": n_test, "explanation": why,
              "files": {"plot": PLOT, "initial_weights": INITIAL_WEIGHTS, "backends_table": BACKENDS_CSV,
                        "drift_table": DRIFT_CSV, "per_backend": [m.NAME for m, _, _ in setups]}}
    _write_csv(run_dir / BACKENDS_CSV, backend_rows)
    _write_csv(run_dir / DRIFT_CSV, drift)
    write_json(run_dir / REPORT_JSON, report)
    log(format_report(report, run_dir))
    return run_dir, report


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_report(report: dict, run_dir: Path) -> str:
    n_train, n_test = report["n_train"], report["n_test"]
    out = ["", f"{'backend':<11} {'device':<8} {'train loss':>10} {'train acc':>9} {'test loss':>9} "
               f"{'test acc':>8} {'examples/sec':>12}"]
    for r in report["backends"]:
        out.append(f"{r['backend']:<11} {r['device']:<8} {r['train_loss']:>10.4f} {r['train_acc']:>9.3f} "
                   f"{r['test_loss']:>9.4f} {r['test_acc']:>8.3f} {r['examples_per_sec']:>12.1f}")
    out += ["", f"largest difference between backends per epoch (epoch 0: the shared initial weights; "
                f"{n_train} train, {n_test} test images)",
            f"{'epoch':>5} {'train loss':>10} {'relative':>9} {'train acc (images)':>18} {'test loss':>9} "
            f"{'test acc (images)':>17}"]
    for d in report["drift"]:
        train_acc = "-" if d["train_acc_diff"] is None else f"{d['train_acc_diff']:.3f} ({d['train_examples_diff']})"
        test_acc = f"{d['test_acc_diff']:.3f} ({d['test_examples_diff']})"
        out.append(f"{d['epoch']:>5} {_num(d['train_loss_diff'], '.2e'):>10} "
                   f"{_num(d['train_loss_rel_diff'], '.1e'):>9} {train_acc:>18} {d['test_loss_diff']:>9.2e} "
                   f"{test_acc:>17}")
    pairs = report["final_weights_rel_diff"]
    out += ["", "final weights, relative L2 difference: " + ", ".join(f"{k} {v:.1e}" for k, v in pairs.items()),
            "", *report["explanation"], "",
            f"plot: {run_dir / PLOT}",
            f"tables: {run_dir / BACKENDS_CSV}, {run_dir / DRIFT_CSV}, {run_dir / REPORT_JSON}; "
            f"initial weights: {run_dir / INITIAL_WEIGHTS}; per-backend metrics: "
            f"{', '.join(str(run_dir / n) for n in report['files']['per_backend'])}"]
    return "\n".join(out)


def register(sub) -> None:
    from .cli import (add_backends_arg, add_data_args, add_network_args, add_output_args, add_recipe_args,
                      add_recipe_preset_arg)

    p = sub.add_parser("reproduce", help="train several frameworks from one start and compare their curves",
                       description="Train every named backend from one set of initial weights (drawn in "
                                   "NumPy) and one example order per epoch, then overlay their curves and "
                                   "tabulate how far they drift apart.")
    add_backends_arg(p)
    add_network_args(p, backend=False)
    add_recipe_args(p, dropout=False)
    p.add_argument("--no-dropout", action="store_true",
                   help="dropout rate 0, so that no framework draws its own masks: the runs then differ "
                        "by floating-point rounding alone")
    add_data_args(p)
    add_recipe_preset_arg(p)
    add_output_args(p, "runs/<time>-reproduce")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .cli import config_from_args

    cfg = config_from_args(a, dropout=0.0 if a.no_dropout else None)
    reproduce(cfg, a.backends, overwrite=a.overwrite)
    return 0
