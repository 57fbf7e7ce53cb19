"""What reproduce prints and stores in words: the tables, and the explanation around the measured numbers.

The prose lives in ``PROSE``, one template per sentence (or sentence group), filled in by name; the code
below only chooses which ones apply and supplies the numbers. The tables' headers and rows are templates
too, so a reader sees a report's shape here without reading the code that fills it.
"""
from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig
from ..spec import NiNSpec
from .comparison import dropout_rate

# -- the files of a run directory (named in the report, written by the runner) ------------------------------
INITIAL_WEIGHTS = "initial_weights.safetensors"
BACKENDS_CSV = "backends.csv"
DRIFT_CSV = "drift.csv"
REPORT_JSON = "reproduce.json"
STEPS_CSV = "steps.csv"
DRIFT_PLOT = "drift.png"
SEEDS_CSV = "seeds.csv"
SEEDS_PLOT = "seeds.png"

#: The explanation's sentences. The kernel note is measured, not assumed: on a CPU PyTorch's convolutions run
#: in oneDNN too (``aten::mkldnn_convolution`` in its profiler), as TensorFlow's and MXNet's do, each in its
#: own version and layout; JAX's run in XLA's own CPU kernels (docs/speed.md).
PROSE = {
    "start": (
        "The backends started from identical weights (their test loss agreed to {start_loss:.1e} before "
        "training) and saw identical batches. Train loss differed by {first_loss:.1e} ({first_rel:.1e} relative) "
        "after epoch 1 and {last_loss:.1e} ({last_rel:.1e}) after epoch {last_epoch}; test accuracy by "
        "{last_images} of {n_test} images at the end; final weights by {weights:.1e} (relative L2)."),
    "dropout": (
        "Dropout is on (rate {rate:g}): each framework draws its own masks, so these are different random "
        "samples of the same training and agree only statistically (--seeds measures how well). --no-dropout "
        "removes that source of difference."),
    "low_precision": (
        "--precision {precision} rounds every product to a few significant digits, in a different order in each "
        "framework's kernels: expect differences far above fp32's."),
    "fp64": (
        "In float64 each rounding is ~1e-16 relative instead of fp32's ~1e-7, so an activation within rounding "
        "of ReLU's kink or of a max-pool tie, where frameworks can take different branches, is a billion times "
        "rarer: {verdict}. {coda}"),
    "fp64_one": ("every pair stayed within {agreement:.0e} of each other at every one of the {steps} steps "
                 "(largest {largest:.1e}): one trajectory"),
    "fp64_one_coda": "The same network and the same training, computed by each framework.",
    "fp64_apart": "the largest per-step difference was {largest:.1e} ({largest_pair})",
    "fp64_apart_coda": "Look at drift.png for the step where the pair left the others.",
    "separated": ("Step by step, the per-batch losses left rounding level (relative difference above "
                  "{threshold:.0e}) at {where} of {steps}."),
    "separated_at": "step {step} ({pair})",
    "rounding": (
        "What remains is floating-point rounding. The frameworks' kernels (on a CPU, oneDNN in PyTorch, TensorFlow "
        "and MXNet, each with its own version, layouts and fusions, and XLA's own in JAX) sum the same products in "
        "different orders, so activations and gradients differ in their last bits (~1e-7 relative in fp32). Where "
        "an activation lies that close to ReLU's kink, or two max-pool inputs that close to each other, frameworks "
        "can take different branches, and that step's gradient differs by far more than rounding. SGD on a "
        "non-convex loss amplifies every such difference step after step (chaotically: fastest on the plateau near "
        "loss ln 10 = 2.30, where tiny differences decide which features grow first), so the drift grows with the "
        "number of steps and the learning rate. No framework is the correct one: past the first steps, compare the "
        "curves as samples of one training, not digit for digit; --precision fp64 shows the trajectories coincide "
        "when rounding is taken away."),
    "significant": ("The backends do NOT train the same at this sample size: {differences}, below the corrected "
                    "level {corrected_alpha:.3g}."),
    "significant_pair": "{pair} {metric} differs by {difference:+.4f} (Welch's t {t:.2f}, df {df:.1f}, p {p:.2g})",
    "noise": ("No backend's mean differs from another's by more than seed-to-seed noise: every Welch's t-test has "
              "p >= {corrected_alpha:.3g} (level {alpha:g}, Bonferroni-corrected for {tests} tests; smallest p "
              "{smallest_p:.2g})."),
    "nominal": ("{pairs} would pass an uncorrected {alpha:g}; when all means are equal, one of {tests} tests does "
                "so by chance about {by_chance:.0%} of the time (were they independent)."),
    "nominal_pair": "{pair} ({metric}, p {p:.2g})",
    "limits": (
        "What {n} seeds can and cannot say: a p-value above the level does not show the backends are equal, only "
        "that any difference is hidden in the noise; with these spreads a difference in mean test accuracy below "
        "about {detect:.3f} ({detect_images:.0f} of {n_test} test images) could not have been detected (that is "
        "the smallest difference the test would call significant at p < {corrected_alpha:.3g}). Welch's test "
        "assumes each backend's results are roughly normal across seeds, which {n} values can hardly check; and "
        "each seed changes the initial weights, the example order and the dropout masks together, so this "
        "compares the frameworks' trainings as a whole, not one of those sources. More seeds shrink the "
        "detectable difference, roughly as 1/sqrt(seeds)."),
    "settings": ("NiN ({variant}): {precision}, dropout {dropout}, {init} init, lr {lr:g}, batch {batch_size}, "
                 "{resize}x{resize}, {n_train} train images"),
}

#: The tables: headers, one template per row, and the lines around them.
TABLES = {
    "backends_header": "{:<11} {:<8} {:>10} {:>9} {:>9} {:>8} {:>12}".format(
        "backend", "device", "train loss", "train acc", "test loss", "test acc", "examples/sec"),
    "backends_row": ("{backend:<11} {device:<8} {train_loss:>10.4f} {train_acc:>9.3f} {test_loss:>9.4f} "
                     "{test_acc:>8.3f} {examples_per_sec:>12.1f}"),
    "drift_title": ("largest difference between backends per epoch (epoch 0: the shared initial weights; "
                    "{n_train} train, {n_test} test images)"),
    "drift_header": "{:>5} {:>10} {:>9} {:>18} {:>9} {:>17}".format(
        "epoch", "train loss", "relative", "train acc (images)", "test loss", "test acc (images)"),
    "drift_row": "{epoch:>5} {train_loss:>10} {relative:>9} {train_acc:>18} {test_loss_diff:>9.2e} {test_acc:>17}",
    "steps_title": ("relative difference of each step's training loss, |a - b| / |b| ({steps} steps, "
                    "{steps_per_epoch} per epoch)"),
    "steps_verdict": "every pair within {agreement:.0e} at every step of every epoch: {verdict}",
    "steps_yes": "yes (largest {largest:.1e})",
    "steps_no": "no (largest {largest:.1e}, {largest_pair})",
    "weights": "final weights, relative L2 difference: {pairs}",
    "files": ("plots: {plot} (curves), {drift_plot} (step-by-step drift)\n"
              "tables: {backends}, {drift}, {steps}, {report}; initial weights: {initial}; per-backend metrics: "
              "{per_backend}"),
    "seeds_title": ("final test accuracy and loss over {n} seeds ({seeds}): mean ± standard deviation (n - 1); "
                    "{n_test} test images"),
    "seeds_header": "{:<11} {:^17} {:^17}   per seed (test acc)".format("backend", "test acc", "test loss"),
    "seeds_row": ("{name:<11} {test_acc_mean:>8.4f} ± {test_acc_std:<6.4f} {test_loss_mean:>8.4f} ± "
                  "{test_loss_std:<6.4f}   {per_seed}"),
    "welch_title": "Welch's t-test per pair (two-sided; difference = first - second backend's mean)",
    "welch_header": "{:<24} {:<10} {:>10} {:>7} {:>5} {:>7} {:>10}".format(
        "pair", "metric", "difference", "t", "df", "p", "detectable"),
    "welch_row": ("{pair:<24} {metric:<10} {difference:>+10.4f} {t:>7.2f} {df:>5.1f} {p:>7.3f} "
                  "{smallest_significant:>10.4f}"),
    "welch_note": ("(detectable: the smallest |difference| the test would call significant at p < "
                   "{corrected_alpha:.3g} with these spreads)"),
    "seeds_files": ("plot: {plot}; tables: {table}, {report}; per seed (steps, drift plot, curves): {per_seed}"),
}


def settings(cfg: TrainConfig, spec: NiNSpec, n_train: int) -> str:
    """The recipe in one line: figure titles and the opening log line."""
    rate = dropout_rate(spec)
    return PROSE["settings"].format(variant=spec.variant, precision=cfg.precision,
                                    dropout=f"{rate:g}" if rate > 0 else "off", init=cfg.init, lr=cfg.lr,
                                    batch_size=cfg.batch_size, resize=cfg.resize, n_train=n_train)


# -- one start ----------------------------------------------------------------------------------------------
def explanation(cfg: TrainConfig, spec: NiNSpec, drift: list[dict], weight_diff: float, n_test: int,
                steps: dict) -> list[str]:
    """Why the curves differ as much as they do (or do not), in words, around the measured numbers."""
    first, last = drift[1], drift[-1]
    lines = [PROSE["start"].format(start_loss=drift[0]["test_loss_diff"], first_loss=first["train_loss_diff"],
                                   first_rel=first["train_loss_rel_diff"], last_loss=last["train_loss_diff"],
                                   last_rel=last["train_loss_rel_diff"], last_epoch=last["epoch"],
                                   last_images=last["test_examples_diff"], n_test=n_test, weights=weight_diff)]
    if dropout_rate(spec) > 0:
        lines.append(PROSE["dropout"].format(rate=dropout_rate(spec)))
    if cfg.precision in ("bf16", "fp16"):
        lines.append(PROSE["low_precision"].format(precision=cfg.precision))
    if cfg.precision == "fp64":
        outcome = "fp64_one" if steps["all_within_agreement"] else "fp64_apart"
        lines.append(PROSE["fp64"].format(verdict=PROSE[outcome].format(**steps), coda=PROSE[f"{outcome}_coda"]))
        return lines
    separated = [PROSE["separated_at"].format(step=d["first_step_above"], pair=p)
                 for p, d in steps["pairs"].items() if d["first_step_above"]]
    if separated:
        lines.append(PROSE["separated"].format(threshold=steps["threshold"], where=", ".join(separated),
                                               steps=steps["steps"]))
    lines.append(PROSE["rounding"])
    return lines


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_step_drift(sd: dict) -> list[str]:
    """One column per pair: the first step above the threshold, then the largest difference per epoch."""
    pairs = list(sd["pairs"])
    width = max([len(p) for p in pairs] + [14]) + 2
    firsts = ["never" if sd["pairs"][p]["first_step_above"] is None else
              f"{sd['pairs'][p]['first_step_above']} (epoch {sd['pairs'][p]['first_epoch_above']})" for p in pairs]
    out = [TABLES["steps_title"].format(**sd),
           f"{'':<22}" + "".join(f"{p:>{width}}" for p in pairs),
           f"{'first step > ' + format(sd['threshold'], '.0e'):<22}" + "".join(f"{f:>{width}}" for f in firsts)]
    n_epochs = len(next(iter(sd["pairs"].values()))["largest_per_epoch"]) if pairs else 0
    for e in range(n_epochs):
        out.append(f"{'largest in epoch ' + str(e + 1):<22}"
                   + "".join(f"{sd['pairs'][p]['largest_per_epoch'][e]:>{width}.1e}" for p in pairs))
    verdict = TABLES["steps_yes" if sd["all_within_agreement"] else "steps_no"].format(**sd)
    out.append(TABLES["steps_verdict"].format(agreement=sd["agreement"], verdict=verdict))
    return out


def _drift_line(d: dict) -> str:
    train_acc = "-" if d["train_acc_diff"] is None else f"{d['train_acc_diff']:.3f} ({d['train_examples_diff']})"
    return TABLES["drift_row"].format(epoch=d["epoch"], train_loss=_num(d["train_loss_diff"], ".2e"),
                                      relative=_num(d["train_loss_rel_diff"], ".1e"), train_acc=train_acc,
                                      test_loss_diff=d["test_loss_diff"],
                                      test_acc=f"{d['test_acc_diff']:.3f} ({d['test_examples_diff']})")


def format_report(report: dict, run_dir: Path) -> str:
    files = report["files"]
    out = ["", TABLES["backends_header"], *(TABLES["backends_row"].format(**r) for r in report["backends"]),
           "", TABLES["drift_title"].format(**report), TABLES["drift_header"], *map(_drift_line, report["drift"]),
           "", *format_step_drift(report["step_drift"]), "",
           TABLES["weights"].format(pairs=", ".join(f"{k} {v:.1e}"
                                                    for k, v in report["final_weights_rel_diff"].items())),
           "", *report["explanation"], "",
           TABLES["files"].format(plot=run_dir / files["plot"], drift_plot=run_dir / files["drift_plot"],
                                  backends=run_dir / BACKENDS_CSV, drift=run_dir / DRIFT_CSV,
                                  steps=run_dir / STEPS_CSV, report=run_dir / REPORT_JSON,
                                  initial=run_dir / INITIAL_WEIGHTS,
                                  per_backend=", ".join(str(run_dir / n) for n in files["per_backend"]))]
    return "\n".join(out)


# -- several starts -------------------------------------------------------------------------------------
def seeds_conclusion(stats: dict, names: list[str], n_test: int, cfg: TrainConfig) -> list[str]:
    """The verdict, and what a test on this many seeds can and cannot say."""
    def metric(t):
        return {**t, "metric": t["metric"].replace("_", " ")}

    sig = [metric(t) for t in stats["welch"] if t["significant"]]
    nominal = [metric(t) for t in stats["welch"] if t["p"] < stats["alpha"] and not t["significant"]]
    if sig:
        verdict = PROSE["significant"].format(
            differences="; ".join(PROSE["significant_pair"].format(**t) for t in sig), **stats)
    else:
        verdict = PROSE["noise"].format(smallest_p=min(t["p"] for t in stats["welch"]), **stats)
        if nominal:
            verdict += " " + PROSE["nominal"].format(
                pairs=", ".join(PROSE["nominal_pair"].format(**t) for t in nominal),
                by_chance=1 - (1 - stats["alpha"]) ** stats["tests"], **stats)
    detect = max(t["smallest_significant"] for t in stats["welch"] if t["metric"] == "test_acc")
    return [verdict, PROSE["limits"].format(n=len(stats["seeds"]), detect=detect, detect_images=detect * n_test,
                                            n_test=n_test, corrected_alpha=stats["corrected_alpha"])]


def format_seeds_report(report: dict, run_dir: Path) -> str:
    st = report["statistics"]
    out = ["", TABLES["seeds_title"].format(n=len(report["seeds"]), seeds=", ".join(map(str, report["seeds"])),
                                            n_test=report["n_test"]),
           TABLES["seeds_header"]]
    for n in report["backends"]:
        per_seed = " ".join(f"{v:.3f}" for v in st["values"][n]["test_acc"])
        out.append(TABLES["seeds_row"].format(name=n, per_seed=per_seed, **st["summary"][n]))
    out += ["", TABLES["welch_title"], TABLES["welch_header"],
            *(TABLES["welch_row"].format(**{**t, "metric": t["metric"].replace("_", " ")}) for t in st["welch"]),
            TABLES["welch_note"].format(**st), "", *report["conclusion"], "",
            TABLES["seeds_files"].format(plot=run_dir / SEEDS_PLOT, table=run_dir / SEEDS_CSV,
                                         report=run_dir / REPORT_JSON,
                                         per_seed=", ".join(str(run_dir / s["dir"]) for s in report["per_seed"]))]
    return "\n".join(out)
