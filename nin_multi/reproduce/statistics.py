"""Several starts: each backend's final results across seeds, and whether any two backends differ by
more than seed-to-seed noise (Welch's t-test from ``nin_multi.stats``, Bonferroni-corrected)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..stats import mean_std, welch
from .comparison import pair_label, pair_names, write_rows_csv

#: The final metrics compared across seeds, with their names in figures.
METRICS = (("test_acc", "test accuracy"), ("test_loss", "test loss"))
#: The family-wise level, divided among the tests (Bonferroni).
ALPHA = 0.05
#: The columns of ``seeds.csv`` besides the seed and the backend.
SEED_COLUMNS = ("train_loss", "train_acc", "test_loss", "test_acc")


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
    rows = [{"seed": s["seed"], "backend": n, **{k: s["final"][n][k] for k in SEED_COLUMNS}}
            for s in per_seed for n in names]
    write_rows_csv(path, rows)
