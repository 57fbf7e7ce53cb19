"""``nin-multi bench``: its options, their checks, and the command: run, print the table, write the JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nin_multi.config import AUTO, PRECISIONS
from nin_multi.errors import BackendUnavailableError, ConfigError
from nin_multi.fileio import write_text
from nin_multi.spec import VARIANTS, make_spec

from .common import DEFAULTS, add_backends_arg, add_recipe_preset_arg, apply_recipe

#: What bench measures when neither a flag nor --recipe says otherwise: the chapter's network and input,
#: at a batch of 64 (which keeps steps short).
BENCH_DEFAULTS = {**{k: getattr(DEFAULTS, k) for k in ("resize", "precision", "variant", "in_channels")},
                  "batch_size": 64}


#: ``--workers``' epoch: ~10-20 s of the fast recipe in one process on a 2-core AVX2 CPU, 100 global batches.
SCALING_SUBSET = 3200


def register(sub) -> None:
    p = sub.add_parser("bench", help="training and inference throughput of each backend vs the chapter's code",
                       description="Images per second of each backend's training and inference step, its "
                                   "default path against the chapter's plain code, plus the data pipeline's "
                                   "share of a step and memory growth. Prints a table and writes JSON.")
    add_backends_arg(p)
    p.add_argument("--resize", type=int, default=DEFAULTS.resize,
                   help=f"input image size (default: {DEFAULTS.resize}, the chapter's)")
    p.add_argument("--batch-size", type=int, default=BENCH_DEFAULTS["batch_size"],
                   help=f"batch size (default: {BENCH_DEFAULTS['batch_size']})")
    p.add_argument("--precision", default=DEFAULTS.precision,
                   help=f"comma-separated precisions of the default path: {', '.join(PRECISIONS)}, auto (fp32 and "
                        f"bf16, "
                        f"what --precision auto chooses between) (default: "
                        f"{DEFAULTS.precision}); the chapter path is always fp32")
    p.add_argument("--steps", type=int, default=5, help="timed steps per path (default: 5; the median counts)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, per path (default: 2)")
    p.add_argument("--chunks", type=int, default=3,
                   help="chunks of --steps training steps of the first precision's default path, RSS after "
                        "each, for memory growth (default: 3; 0 skips)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per framework (default: every core)")
    p.add_argument("--variant", default=DEFAULTS.variant, choices=list(VARIANTS),
                   help=f"network variant (default: {DEFAULTS.variant})")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each framework's one-switch fast path (torch.compile, Keras XLA, Gluon "
                        "hybridize); --no-fast skips them and their compile time (default: on)")
    p.add_argument("--gemm-size", type=int, default=2048,
                   help="n of the n x n x n matrix products that measure the machine (default: 2048; 0 skips)")
    p.add_argument("--gemm-repeats", type=int, default=3, help="timed products per framework and precision, "
                                                               "the fastest counts (default: 3)")
    p.add_argument("--epoch-images", type=int, default=None,
                   help="images of the end-to-end epochs timed per default path (default: 4.5 batches, so the "
                        "last batch is short; 0 skips)")
    p.add_argument("--time-to-accuracy", action="store_true",
                   help="also train the fast recipe on the real data in each backend and report the wall seconds "
                        "to its test accuracy (minutes per backend; the data from --data-dir)")
    p.add_argument("--data-dir", default=None, help="the Fashion-MNIST files for --time-to-accuracy (default: "
                                                    "$NIN_MULTI_DATA_DIR, else the download cache)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="instead of everything above, the data-parallel speed-up: per backend with an engine, "
                        "`train --workers 1` and `--workers N` (N >= 2) on the real data (--data-dir), the fast "
                        "recipe for 2 epochs of --subset images, one --precision (default fp32), the cores shared "
                        "out among the workers; prints the second epoch's examples/sec and their ratio. Of the "
                        "other options only --backends, --precision, --threads (cores to share; default every "
                        "usable one), --data-dir, --subset and --json apply (minutes per backend)")
    p.add_argument("--subset", type=int, default=SCALING_SUBSET,
                   help=f"training images per epoch of the --workers runs (default: {SCALING_SUBSET}, about 10 s "
                        f"an epoch in one process on 2 cores)")
    p.add_argument("--max-step-seconds", type=float, default=300.0,
                   help="a path whose warm-up step takes longer is reported as too slow (default: 300)")
    p.add_argument("--json", default="bench.json",
                   help="where to write the results as JSON; a directory gets bench.json (default: ./bench.json)")
    add_recipe_preset_arg(p)  # after the options it covers: with no --recipe, BENCH_DEFAULTS fill them
    p.set_defaults(func=run)


def _positive(name: str, v, zero_ok: bool = False) -> None:
    if v is None or (v < 0 if zero_ok else v <= 0):
        raise ConfigError(f"--{name} must be a {'non-negative' if zero_ok else 'positive'} integer, got {v!r}")


def _precisions(text: str) -> list[str]:
    """Each once, fp32 first: MXNet's AMP, once on, changes every later graph in its process. ``auto`` (the
    fast recipe's) is every precision it chooses between, each measured."""
    from nin_multi.precision import CANDIDATES

    precisions = []
    for p in (s.strip().lower() for s in text.split(",")):
        if p == AUTO:
            precisions += [c for c in CANDIDATES if c not in precisions]
            continue
        if p not in PRECISIONS:
            raise ConfigError(f"--precision takes a comma-separated list of {', '.join(PRECISIONS)}; got {p!r}")
        if p not in precisions:
            precisions.append(p)
    return sorted(precisions, key=lambda p: p != "fp32")


def settings(a) -> dict:
    """The run's settings from the parsed options, every one checked (``ConfigError`` says which)."""
    from nin_multi import backends

    if a.workers is not None:
        return scaling_settings(a)
    apply_recipe(a, fallback=BENCH_DEFAULTS)
    for name, zero_ok in (("resize", False), ("batch-size", False), ("steps", False), ("warmup", True),
                          ("chunks", True), ("gemm-size", True), ("gemm-repeats", False)):
        _positive(name, getattr(a, name.replace("-", "_")), zero_ok)
    if a.epoch_images is None:
        a.epoch_images = 4 * a.batch_size + max(1, a.batch_size // 2)
    _positive("epoch-images", a.epoch_images, zero_ok=True)
    if a.threads is not None:
        _positive("threads", a.threads)
    if not a.max_step_seconds > 0:
        raise ConfigError(f"--max-step-seconds must be positive, got {a.max_step_seconds!r}")
    precisions = _precisions(a.precision)
    names = backends.select(a.backends, trains=True)
    if not names:
        raise BackendUnavailableError("no backend to benchmark: install torch, tensorflow-cpu, mxnet or jax")
    make_spec(a.variant, a.in_channels, image_size=a.resize).walk(a.resize)  # refuse an image it cannot take
    return {"backends": names, "resize": a.resize, "batch_size": a.batch_size, "precisions": precisions,
            "steps": a.steps, "warmup": a.warmup, "chunks": a.chunks, "threads": a.threads,
            "variant": a.variant, "in_channels": a.in_channels, "recipe": a.recipe,
            "max_step_seconds": a.max_step_seconds, "gemm_size": a.gemm_size, "gemm_repeats": a.gemm_repeats,
            "epoch_images": a.epoch_images, "fast": a.fast, "time_to_accuracy": a.time_to_accuracy,
            "data_dir": a.data_dir}


def scaling_settings(a) -> dict:
    """``--workers N``: one precision (the figures compare it), backends with an engine, data that is there
    and holds ``--subset`` images, all checked before the first run starts."""
    from nin_multi import backends
    from nin_multi.data import load_fashion_mnist
    from nin_multi.machine import usable_cores

    if a.workers < 2:
        raise ConfigError(f"--workers must be 2 or more (the one-process run is always measured beside it), "
                          f"got {a.workers}")
    if a.recipe is not None:
        raise ConfigError("--workers always trains the fast recipe's settings; leave out --recipe")
    precision = (a.precision or "fp32").strip().lower()
    if precision not in PRECISIONS:
        raise ConfigError(f"--workers compares one precision: give --precision one of {', '.join(PRECISIONS)}, "
                          f"got {a.precision!r}")
    _positive("subset", a.subset)
    if a.threads is not None:
        _positive("threads", a.threads)
    engines = backends.data_parallel()
    if a.backends:
        names = backends.select(a.backends, trains=True)
        without = [n for n in names if n not in engines]
        if without:
            raise ConfigError(f"{', '.join(without)} has no data-parallel engine: --workers measures "
                              f"{backends.or_list(engines)}")
    else:
        names = [n for n in backends.select(None, trains=True, bound=True) if n in engines]
    if not names:
        raise BackendUnavailableError(f"no backend with a data-parallel engine is installed: install "
                                      f"{backends.or_list(engines)}")
    data = load_fashion_mnist(a.data_dir, download=False)
    if a.subset > len(data.train_labels):
        raise ConfigError(f"--subset {a.subset} is more than the {len(data.train_labels)} training images in "
                          f"{data.source}")
    return {"workers": a.workers, "backends": names, "precision": precision, "subset": a.subset,
            "cores": a.threads or usable_cores(), "data_dir": str(Path(data.source).resolve())}


def run(a: argparse.Namespace) -> int:
    from nin_multi.bench import format_report, run_bench

    s = settings(a)
    out = Path(a.json)
    if out.is_dir():
        out = out / "bench.json"
    if a.workers is not None:
        from nin_multi.bench.scaling import format_scaling, run_scaling

        report = run_scaling(s)
        print(format_scaling(report))
    else:
        report = run_bench(s)
        print(format_report(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
