"""``reproduce``: the same training in several frameworks, from one set of initial weights and one
example order, laid side by side, step by step.

What differs between two ``train`` runs on different backends is (a) the initial weights (each
framework draws from its own generator), (b) the dropout masks, and (c) floating-point rounding. This
command removes (a) by drawing the spec's initialisation once in NumPy and handing it to every backend
with ``set_weights``, and hands every backend the same example order per epoch (``train_epoch``'s
``order``); ``--no-dropout`` removes (b). What is left is (c): every SGD step's loss is recorded per
backend (``steps.csv``), and the relative difference of each pair against the step (``drift.png``) shows
where fp32 trajectories leave rounding level and that ``--precision fp64`` ones do not.

With dropout on, the runs are different samples of one training; ``--seeds`` repeats the comparison from
several starts and asks, with Welch's t-test (``nin_multi.stats``), whether any backend's final results
differ from another's by more than seed-to-seed noise.

Everything else is the shared driver: each backend's own ``Trainer``, ``train_epoch`` and ``evaluate``
from ``nin_multi.train``, one ``Run`` (metrics, plot) per backend in a subdirectory of one run
directory, and one overlaid plot and comparison table at its top.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .config import TrainConfig, param_dtype
from .data import num_batches
from .errors import ConfigError
from .fileio import save_figure, write_csv, write_json
from .run import CONFIG, PLOT, WEIGHTS, Run, plot_curves, prepare_dir, release_dir
from .spec import ChannelDropout, Dropout, NiNSpec
from .stats import FP64_AGREEMENT, SEPARATION, first_exceeding, largest_per_epoch, mean_std, relative_difference, welch
from .train import evaluate, load_data, spec_for, train_epoch
from .weights import initial_weights, save_weights

INITIAL_WEIGHTS = "initial_weights.npz"
BACKENDS_CSV = "backends.csv"
DRIFT_CSV = "drift.csv"
REPORT_JSON = "reproduce.json"
STEPS_CSV = "steps.csv"
DRIFT_PLOT = "drift.png"
SEEDS_CSV = "seeds.csv"
SEEDS_PLOT = "seeds.png"


# -- the shared starting point (the weights: ``weights.initial_weights``) -----------------------------------
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
    """The largest dropout rate, of single values or of whole channels (the standalone NinNet's)."""
    return max((layer.rate for layer in spec.layers if isinstance(layer, (Dropout, ChannelDropout))), default=0.0)


def pair_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of backends, in the registry's order (the second of a pair is the reference)."""
    return list(itertools.combinations(names, 2))


def pair_label(a: str, b: str) -> str:
    return f"{a} vs {b}"


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


def write_steps_csv(path: Path, table: dict) -> None:
    columns = {"step": table["step"], "epoch": table["epoch"], "batch_size": table["batch_size"],
               **table["loss"], **table["rel_diff"]}
    write_csv(path, [dict(zip(columns, row)) for row in zip(*columns.values())], list(columns))


#: Where an exact agreement (relative difference 0) is drawn on the log scale: below float64's epsilon.
ZERO_FLOOR = 1e-17


def plot_drift(table: dict, drift: dict, dest, title: str) -> None:
    """The relative loss difference of each pair against the step, log scale: one sees the step where
    fp32 trajectories leave rounding level, and fp64 trajectories staying at it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(table["step"])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_zero = False
    for i, (pair, rel) in enumerate(table["rel_diff"].items()):
        rel = np.asarray(rel)
        any_zero |= bool((rel == 0).any())
        first = drift["pairs"][pair]["first_step_above"]
        c = colours[i % len(colours)]
        label = f"{pair}: " + (f"above {drift['threshold']:.0e} from step {first}" if first else
                               f"never above {drift['threshold']:.0e} (largest {rel.max():.1e})")
        # Later pairs thinner: where two pairs coincide (one backend apart from two that agree) both show.
        ax.plot(steps, np.maximum(rel, ZERO_FLOOR), "-", color=c, lw=max(2.6 - 0.7 * i, 0.8), label=label)
        if first:
            ax.plot([first], [rel[first - 1]], "o", color=c, ms=6, mfc="none", mew=1.5)
    ax.axhline(drift["threshold"], color="black", ls="--", lw=1)
    ax.text(steps[-1], drift["threshold"] * 1.5, f"{drift['threshold']:.0e}: separated", ha="right", va="bottom",
            fontsize=8)
    ax.axhline(drift["agreement"], color="grey", ls=":", lw=1)
    ax.text(steps[-1], drift["agreement"] * 1.5, f"{drift['agreement']:.0e}: fp64 agreement", ha="right",
            va="bottom", fontsize=8, color="dimgrey")
    per_epoch = drift["steps_per_epoch"]
    for boundary in range(per_epoch, len(steps), per_epoch):
        ax.axvline(boundary + 0.5, color="grey", lw=0.8, alpha=0.5)
    if len(steps) > per_epoch:
        for e in range(len(steps) // per_epoch):
            ax.text(e * per_epoch + per_epoch / 2, 1.02, f"epoch {e + 1}", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="dimgrey")
    ax.set_yscale("log")
    finite = [v for rel in table["rel_diff"].values() for v in rel if np.isfinite(v)]
    top = max(1.0, max(finite, default=1.0) * 3)
    ax.set_ylim(ZERO_FLOOR / 3, top)
    ax.set_xlim(0, steps[-1] + 1)
    ax.set_xlabel("SGD step" + (f" ({per_epoch} per epoch)" if per_epoch else ""))
    ax.set_ylabel("relative difference of the step's training loss |a - b| / |b|")
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize=8, loc="best", title_fontsize=7,
              title=f"exact agreement (0) drawn at {ZERO_FLOOR:.0e}" if any_zero else None)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest, dpi=110)
    plt.close(fig)


def explanation(cfg: TrainConfig, spec: NiNSpec, drift: list[dict], weight_diff: float, n_test: int,
                steps: dict) -> list[str]:
    """Why the curves differ as much as they do (or do not), in words, around the measured numbers."""
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
                     f"statistically (--seeds measures how well). --no-dropout removes that source of difference.")
    if cfg.precision in ("bf16", "fp16"):
        lines.append(f"--precision {cfg.precision} rounds every product to a few significant digits, in a "
                     f"different order in each framework's kernels: expect differences far above fp32's.")
    separated = {p: d["first_step_above"] for p, d in steps["pairs"].items() if d["first_step_above"]}
    if cfg.precision == "fp64":
        verdict = (f"every pair stayed within {steps['agreement']:.0e} of each other at every one of the "
                   f"{steps['steps']} steps (largest {steps['largest']:.1e}): one trajectory"
                   if steps["all_within_agreement"] else
                   f"the largest per-step difference was {steps['largest']:.1e} ({steps['largest_pair']})")
        lines.append(f"In float64 each rounding is ~1e-16 relative instead of fp32's ~1e-7, so an activation within "
                     f"rounding of ReLU's kink or of a max-pool tie, where frameworks can take different branches, "
                     f"is a billion times rarer: {verdict}. "
                     + ("The same network and the same training, computed by each framework." if
                        steps["all_within_agreement"] else
                        "Look at drift.png for the step where the pair left the others."))
        return lines
    if separated:
        lines.append("Step by step, the per-batch losses left rounding level (relative difference above "
                     f"{steps['threshold']:.0e}) at " + ", ".join(f"step {s} ({p})" for p, s in separated.items())
                     + f" of {steps['steps']}.")
    lines.append("What remains is floating-point rounding. The frameworks' kernels (PyTorch's own, oneDNN in "
                 "TensorFlow and MXNet) sum the same products in different orders, so activations and "
                 "gradients differ in their last bits (~1e-7 relative in fp32). Where an activation lies "
                 "that close to ReLU's kink, or two max-pool inputs that close to each other, frameworks "
                 "can take different branches, and that step's gradient differs by far more than rounding. "
                 "SGD on a non-convex loss amplifies every such difference step after step (chaotically: "
                 "fastest on the plateau near loss ln 10 = 2.30, where tiny differences decide which "
                 "features grow first), so the drift grows with the number of steps and the learning rate. "
                 "No framework is the correct one: past the first steps, compare the curves as samples of "
                 "one training, not digit for digit; --precision fp64 shows the trajectories coincide when "
                 "rounding is taken away.")
    return lines


# -- one start ------------------------------------------------------------------------------------------
def default_run_dir() -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-reproduce"


def settings(cfg: TrainConfig, spec: NiNSpec, n_train: int) -> str:
    dropout = f"{dropout_rate(spec):g}" if dropout_rate(spec) > 0 else "off"
    return (f"NiN ({spec.variant}): {cfg.precision}, dropout {dropout}, {cfg.init} init, lr {cfg.lr:g}, batch "
            f"{cfg.batch_size}, {cfg.resize}x{cfg.resize}, {n_train} train images")


def one_start(cfg: TrainConfig, mods: list, spec: NiNSpec, ds, run_dir: Path, log=print) -> dict:
    """Train every backend in ``mods`` from one start (``cfg.seed``) into ``run_dir``; returns the report."""
    n_train, n_test = len(ds.train_images), len(ds.test_images)
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    start = initial_weights(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))
    save_weights(run_dir / INITIAL_WEIGHTS, spec, start,
                 meta={"init": cfg.init, "seed": cfg.seed, "drawn_by": "numpy",
                       "rounding": "drawn in float64, rounded to float32"
                                   + (", then widened to float64" if cfg.precision == "fp64" else "")})
    title = f"{settings(cfg, spec, n_train)}, same start (seed {cfg.seed})"
    write_json(run_dir / CONFIG, {**cfg.to_dict(), "backend": None, "backends": [m.NAME for m in mods]})
    log(f"reproducing {spec.variant} NiN ({spec.num_params:,} parameters) on {', '.join(m.NAME for m in mods)}: "
        f"one {cfg.init} initialisation (seed {cfg.seed}), one example order per epoch, "
        f"{settings(cfg, spec, n_train).split(': ', 1)[1]}, {n_test} test images; run directory {run_dir}")

    # Every model and trainer first: a setting some framework refuses fails before any training.
    setups = []
    for m in mods:
        m.configure(cfg.threads, cfg.seed)
        model = m.build_model(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))
        m.set_weights(model, spec, start)
        got = m.get_weights(model, spec)
        if any(not np.array_equal(got[k], start[k]) for k in start):
            raise RuntimeError(f"{m.NAME}: set_weights did not take the shared initial weights exactly")
        setups.append((m, model, m.Trainer(model, cfg.lr, cfg.precision)))

    histories, initial, finals, backend_rows, step_losses = {}, {}, {}, [], {}
    for m, model, trainer in setups:
        bcfg = dataclasses.replace(cfg, backend=m.NAME, out=str(run_dir / m.NAME))
        run = Run(run_dir / m.NAME, f"{title}: {m.NAME}")
        run.write_config(bcfg.to_dict())
        loss0, acc0 = evaluate(trainer, ds.test_images, ds.test_labels, bcfg, m.LAYOUT, f"{m.NAME} start")
        initial[m.NAME] = {"test_loss": loss0, "test_acc": acc0}
        log(f"[{m.NAME}] ({m.device()}) before training: test loss {loss0:.6f}, test acc {acc0:.3f}")
        step_losses[m.NAME] = []
        for epoch in range(cfg.epochs):
            row = {"epoch": epoch + 1, **train_epoch(trainer, ds, bcfg, m.LAYOUT, epoch,
                                                     order=epoch_order(n_train, cfg.seed, epoch),
                                                     step_losses=step_losses[m.NAME])}
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
    steps = step_table(step_losses, n_train, cfg.batch_size, cfg.epochs)
    sdrift = step_drift(steps)
    plot_drift(steps, sdrift, run_dir / DRIFT_PLOT,
               f"{title}\nrelative difference of each SGD step's training loss between frameworks")
    write_steps_csv(run_dir / STEPS_CSV, steps)
    drift = drift_rows(histories, initial, n_train, n_test)
    pairs = weight_differences(finals)
    weight_diff = max(pairs.values())
    why = explanation(cfg, spec, drift, weight_diff, n_test, sdrift)
    report = {"config": cfg.to_dict(), "backends": backend_rows, "drift": drift, "initial": initial,
              "steps": steps, "step_drift": sdrift,
              "final_weights_rel_diff": pairs, "n_train": n_train, "n_test": n_test, "explanation": why,
              "files": {"plot": PLOT, "drift_plot": DRIFT_PLOT, "initial_weights": INITIAL_WEIGHTS,
                        "backends_table": BACKENDS_CSV, "drift_table": DRIFT_CSV, "steps_table": STEPS_CSV,
                        "per_backend": [m.NAME for m, _, _ in setups]}}
    _write_csv(run_dir / BACKENDS_CSV, backend_rows)
    _write_csv(run_dir / DRIFT_CSV, drift)
    write_json(run_dir / REPORT_JSON, report)
    return report


# -- several starts -------------------------------------------------------------------------------------
METRICS = (("test_acc", "test accuracy"), ("test_loss", "test loss"))
ALPHA = 0.05


def parse_seeds(text) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers, in the order given."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except (TypeError, ValueError):
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be comma-separated non-negative integers such as 0,1,2,3,4, got {text!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise ConfigError(f"--seeds lists seed {', '.join(map(str, twice))} more than once: each seed is one "
                          f"sample, a repeat would count it twice")
    return seeds


def seed_statistics(per_seed: list[dict], names: list[str], alpha: float = ALPHA) -> dict:
    """Across seeds: each backend's mean and standard deviation of each final metric, and Welch's t-test of
    every pair of backends on each metric, judged at ``alpha`` Bonferroni-corrected for the number of tests."""
    values = {n: {k: [s["final"][n][k] for s in per_seed] for k, _ in METRICS} for n in names}
    summary = {n: {f"{k}_{stat}": v for k, _ in METRICS
                   for stat, v in zip(("mean", "std"), mean_std(values[n][k]))} for n in names}
    tests = []
    n_tests = len(pair_names(names)) * len(METRICS)
    for a, b in pair_names(names):
        for k, _ in METRICS:
            w = welch(values[a][k], values[b][k])
            tests.append({"pair": pair_label(a, b), "metric": k, "difference": w.difference, "t": w.t,
                          "df": w.df, "p": w.p, "smallest_significant": w.smallest_significant(alpha / n_tests),
                          "significant": bool(w.p < alpha / n_tests)})
    return {"seeds": [s["seed"] for s in per_seed], "values": values, "summary": summary, "welch": tests,
            "alpha": alpha, "tests": n_tests, "corrected_alpha": alpha / n_tests,
            "any_significant": any(t["significant"] for t in tests)}


def write_seeds_csv(path: Path, per_seed: list[dict], names: list[str]) -> None:
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    rows = [{"seed": s["seed"], "backend": n, **{k: s["final"][n][k] for k in keys}} for s in per_seed for n in names]
    _write_csv(path, rows)


def plot_seeds(stats: dict, names: list[str], dest, title: str) -> None:
    """Every seed's final test accuracy and loss per backend (dots), with each backend's mean ± standard
    deviation beside them, and Welch's p-value of each pair underneath."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 5))
    seeds = stats["seeds"]
    offsets = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(1)
    for ax, (key, label) in zip(axes, METRICS):
        for i, n in enumerate(names):
            c = colours[i % len(colours)]
            xs, ys = i + offsets - 0.1, stats["values"][n][key]
            ax.scatter(xs, ys, s=28, color=c, alpha=0.8, zorder=3)
            for x, y, seed in zip(xs, ys, seeds):
                ax.annotate(str(seed), (x, y), xytext=(-3, 0), textcoords="offset points", ha="right",
                            va="center", fontsize=6, color="dimgrey")
            mean, std = stats["summary"][n][f"{key}_mean"], stats["summary"][n][f"{key}_std"]
            ax.errorbar(i + 0.22, mean, yerr=std, fmt="D", color="black", ms=5, capsize=5, zorder=4)
            ax.annotate(f"{mean:.3f}\n±{std:.3f}", (i + 0.3, mean), fontsize=7, va="center")
        ax.scatter([], [], s=28, color="grey", label="one seed (its number beside it)")
        ax.errorbar([], [], yerr=[], fmt="D", color="black", ms=5, capsize=5, label="mean ± std")
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.2)
        ax.set(ylabel=f"final {label}", title=f"final {label}, {len(seeds)} seeds")
        ax.grid(alpha=0.3, axis="y")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi + 0.25 * (hi - lo))  # room for the legend above the points
        ax.legend(fontsize=7, loc="upper right")
        ps = [t for t in stats["welch"] if t["metric"] == key]
        ax.set_xlabel("Welch's t-test, two-sided p:\n" + "\n".join(f"{t['pair']}: p = {t['p']:.2g}" for t in ps),
                      fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, dest, dpi=110)
    plt.close(fig)


# -- the command ----------------------------------------------------------------------------------------
def reproduce(cfg: TrainConfig, backend_names=None, overwrite: bool = False, log=print,
              seeds=None) -> tuple[Path, dict]:
    """Train every named backend (a list or a comma-separated string; default: every installed one) from
    one start; with several ``seeds`` (a list or "0,1,2"), from one start per seed, each in ``seed-N/``,
    and compare the backends' final results across seeds. Returns (run dir, report)."""
    from nin_multi import backends as registry

    seeds = parse_seeds(seeds) if seeds is not None else [cfg.seed]
    keys = registry.select(backend_names, trains=True)
    if len(keys) < 2:
        installed = ", ".join(registry.installed()) or "none"
        raise ConfigError(f"reproduce compares frameworks and needs at least two backends, got "
                          f"{', '.join(keys) or 'none'} (installed: {installed}); install another with "
                          f"pip install 'nin-multi[torch]', '[tensorflow]', '[mxnet]' or '[jax]'")
    mods = registry.load_backends(keys)  # PyTorch before TensorFlow
    spec = spec_for(cfg)
    ds = load_data(cfg)
    run_dir = prepare_dir(cfg.out or default_run_dir(), overwrite=overwrite)
    if len(seeds) == 1:
        report = one_start(dataclasses.replace(cfg, seed=seeds[0]), mods, spec, ds, run_dir, log)
        log(format_report(report, run_dir))
        release_dir(run_dir)
        return run_dir, report

    names = [m.NAME for m in mods]
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    write_json(run_dir / CONFIG, {**cfg.to_dict(), "backend": None, "backends": names, "seeds": seeds})
    log(f"reproducing on {', '.join(names)} from {len(seeds)} starts (seeds {', '.join(map(str, seeds))}), "
        f"one run directory per seed in {run_dir}")
    per_seed = []
    for seed in seeds:
        sub = prepare_dir(run_dir / f"seed-{seed}")
        rep = one_start(dataclasses.replace(cfg, seed=seed), mods, spec, ds, sub, log)
        per_seed.append({"seed": seed, "dir": sub.name, "final": {r["backend"]: r for r in rep["backends"]},
                         "first_step_above": {p: d["first_step_above"]
                                              for p, d in rep["step_drift"]["pairs"].items()},
                         "final_weights_rel_diff": rep["final_weights_rel_diff"]})
        log(f"seed {seed}: " + ", ".join(f"{n} test acc {per_seed[-1]['final'][n]['test_acc']:.3f}" for n in names)
            + f"; report in {sub / REPORT_JSON}")
    stats = seed_statistics(per_seed, names)
    title = (f"{settings(cfg, spec, len(ds.train_images))}, {cfg.epochs} epoch{'s' * (cfg.epochs > 1)}, "
             f"one start per seed")
    plot_seeds(stats, names, run_dir / SEEDS_PLOT, title)
    write_seeds_csv(run_dir / SEEDS_CSV, per_seed, names)
    report = {"config": cfg.to_dict(), "backends": names, "seeds": seeds, "per_seed": per_seed,
              "statistics": stats, "n_train": len(ds.train_images), "n_test": len(ds.test_images),
              "files": {"seeds_plot": SEEDS_PLOT, "seeds_table": SEEDS_CSV,
                        "per_seed": [s["dir"] for s in per_seed]}}
    report["conclusion"] = seeds_conclusion(stats, names, report["n_test"], cfg)
    write_json(run_dir / REPORT_JSON, report)
    log(format_seeds_report(report, run_dir))
    release_dir(run_dir)
    return run_dir, report


def seeds_conclusion(stats: dict, names: list[str], n_test: int, cfg: TrainConfig) -> list[str]:
    """The verdict, and what a test on this many seeds can and cannot say."""
    n = len(stats["seeds"])
    sig = [t for t in stats["welch"] if t["significant"]]
    nominal = [t for t in stats["welch"] if t["p"] < stats["alpha"] and not t["significant"]]
    acc = [t for t in stats["welch"] if t["metric"] == "test_acc"]
    if sig:
        verdict = ("The backends do NOT train the same at this sample size: " + "; ".join(
            f"{t['pair']} {t['metric'].replace('_', ' ')} differs by {t['difference']:+.4f} (Welch's t "
            f"{t['t']:.2f}, df {t['df']:.1f}, p {t['p']:.2g})" for t in sig)
            + f", below the corrected level {stats['corrected_alpha']:.3g}.")
    else:
        verdict = (f"No backend's mean differs from another's by more than seed-to-seed noise: every Welch's "
                   f"t-test has p >= {stats['corrected_alpha']:.3g} (level {stats['alpha']:g}, Bonferroni-corrected "
                   f"for {stats['tests']} tests; smallest p {min(t['p'] for t in stats['welch']):.2g}).")
        if nominal:
            verdict += (" " + ", ".join(f"{t['pair']} ({t['metric'].replace('_', ' ')}, p {t['p']:.2g})"
                                        for t in nominal)
                        + f" would pass an uncorrected {stats['alpha']:g}; when all means are equal, one of "
                          f"{stats['tests']} tests does so by chance about "
                          f"{1 - (1 - stats['alpha']) ** stats['tests']:.0%} of the time (were they independent).")
    detect = max(t["smallest_significant"] for t in acc)
    return [verdict,
            f"What {n} seeds can and cannot say: a p-value above the level does not show the backends are equal, "
            f"only that any difference is hidden in the noise; with these spreads a difference in mean test "
            f"accuracy below about {detect:.3f} ({detect * n_test:.0f} of {n_test} test images) could not have "
            f"been detected (that is the smallest difference the test would call significant at p < "
            f"{stats['corrected_alpha']:.3g}). Welch's test assumes each backend's results are roughly normal "
            f"across seeds, "
            f"which {n} values can hardly check; and each seed changes the initial weights, the example order and "
            f"the dropout masks together, so this compares the frameworks' trainings as a whole, not one of those "
            f"sources. More seeds shrink the detectable difference, roughly as 1/sqrt(seeds)."]


def _write_csv(path: Path, rows: list[dict]) -> None:
    write_csv(path, [{k: ("" if v is None else v) for k, v in r.items()} for r in rows], list(rows[0]))


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_step_drift(sd: dict) -> list[str]:
    """One column per pair: the first step above the threshold, then the largest difference per epoch."""
    pairs = list(sd["pairs"])
    width = max([len(p) for p in pairs] + [14]) + 2
    out = [f"relative difference of each step's training loss, |a - b| / |b| ({sd['steps']} steps, "
           f"{sd['steps_per_epoch']} per epoch)",
           f"{'':<22}" + "".join(f"{p:>{width}}" for p in pairs)]
    firsts = []
    for p in pairs:
        d = sd["pairs"][p]
        firsts.append("never" if d["first_step_above"] is None else
                      f"{d['first_step_above']} (epoch {d['first_epoch_above']})")
    out.append(f"{'first step > ' + format(sd['threshold'], '.0e'):<22}" + "".join(f"{f:>{width}}" for f in firsts))
    n_epochs = len(next(iter(sd["pairs"].values()))["largest_per_epoch"]) if pairs else 0
    for e in range(n_epochs):
        out.append(f"{'largest in epoch ' + str(e + 1):<22}"
                   + "".join(f"{sd['pairs'][p]['largest_per_epoch'][e]:>{width}.1e}" for p in pairs))
    out.append(f"every pair within {sd['agreement']:.0e} at every step of every epoch: "
               + (f"yes (largest {sd['largest']:.1e})" if sd["all_within_agreement"] else
                  f"no (largest {sd['largest']:.1e}, {sd['largest_pair']})"))
    return out


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
    out += ["", *format_step_drift(report["step_drift"])]
    pairs = report["final_weights_rel_diff"]
    files = report["files"]
    out += ["", "final weights, relative L2 difference: " + ", ".join(f"{k} {v:.1e}" for k, v in pairs.items()),
            "", *report["explanation"], "",
            f"plots: {run_dir / files['plot']} (curves), {run_dir / files['drift_plot']} (step-by-step drift)",
            f"tables: {run_dir / BACKENDS_CSV}, {run_dir / DRIFT_CSV}, {run_dir / STEPS_CSV}, "
            f"{run_dir / REPORT_JSON}; initial weights: {run_dir / INITIAL_WEIGHTS}; per-backend metrics: "
            f"{', '.join(str(run_dir / n) for n in files['per_backend'])}"]
    return "\n".join(out)


def format_seeds_report(report: dict, run_dir: Path) -> str:
    st, names = report["statistics"], report["backends"]
    seeds = ", ".join(map(str, report["seeds"]))
    out = ["", f"final test accuracy and loss over {len(report['seeds'])} seeds ({seeds}): mean ± standard deviation "
               f"(n - 1); {report['n_test']} test images",
           f"{'backend':<11} {'test acc':^17} {'test loss':^17}   per seed (test acc)"]
    for n in names:
        s = st["summary"][n]
        per = " ".join(f"{v:.3f}" for v in st["values"][n]["test_acc"])
        out.append(f"{n:<11} {s['test_acc_mean']:>8.4f} ± {s['test_acc_std']:<6.4f} "
                   f"{s['test_loss_mean']:>8.4f} ± {s['test_loss_std']:<6.4f}   {per}")
    out += ["", "Welch's t-test per pair (two-sided; difference = first - second backend's mean)",
            f"{'pair':<24} {'metric':<10} {'difference':>10} {'t':>7} {'df':>5} {'p':>7} {'detectable':>10}"]
    for t in st["welch"]:
        out.append(f"{t['pair']:<24} {t['metric'].replace('_', ' '):<10} {t['difference']:>+10.4f} {t['t']:>7.2f} "
                   f"{t['df']:>5.1f} {t['p']:>7.3f} {t['smallest_significant']:>10.4f}")
    out += [f"(detectable: the smallest |difference| the test would call significant at p < "
            f"{st['corrected_alpha']:.3g} with these spreads)", "", *report["conclusion"], "",
            f"plot: {run_dir / SEEDS_PLOT}; tables: {run_dir / SEEDS_CSV}, {run_dir / REPORT_JSON}; per seed "
            f"(steps, drift plot, curves): {', '.join(str(run_dir / s['dir']) for s in report['per_seed'])}"]
    return "\n".join(out)


def register(sub) -> None:
    from .cli import (add_backends_arg, add_data_args, add_network_args, add_output_args, add_recipe_args,
                      add_recipe_preset_arg)

    p = sub.add_parser("reproduce", help="train several frameworks from one start and compare their curves",
                       description="Train every named backend from one set of initial weights (drawn in "
                                   "NumPy) and one example order per epoch, then overlay their curves, "
                                   "compare their losses step by step and tabulate how far they drift apart; "
                                   "with --seeds, repeat from several starts and test whether the backends' "
                                   "final results differ by more than seed-to-seed noise.")
    add_backends_arg(p)
    add_network_args(p, backend=False)
    add_recipe_args(p, dropout=False)
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds, e.g. 0,1,2,3,4: one start per seed (in seed-N/), then each "
                        "backend's mean ± std of final test accuracy and loss and Welch's t-test between "
                        "backends (overrides --seed)")
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
    reproduce(cfg, a.backends, overwrite=a.overwrite, seeds=a.seeds)
    return 0
