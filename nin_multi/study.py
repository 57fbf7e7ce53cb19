"""The exercises answered by experiment: the variants of exercises 1-3 over several seeds, and the chapter's
plain SGD as a collapse study (which runs stay at loss ln 10, and which channels went dead).

Both studies keep one row per finished run in ``OUT.jsonl`` and rewrite ``OUT.txt`` and ``OUT.png`` after
every row: a study that is stopped keeps what it finished, and the same command run again trains only the
runs still missing. Each row records the settings it was made with, so rows of another setting are never
mixed into a table (the command refuses instead and names ``--restart``).

Why a run can stop for good: NiN's class scores are the global averages of the last block's ReLU outputs.
A class channel whose ReLU output is 0 at every position of every image has a constant score (0) and its
weights get no gradient; only a change of the layers below, driven by the other classes, can bring it back.
When all ten are dead the logits are all 0, the softmax is uniform, the loss is exactly ln 10 = 2.3026 for
every image and no layer gets any gradient: nothing changes again.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import machine
from .errors import ConfigError
from .fileio import write_text
from .plotting import colours, figure
from .spec import VARIANTS, GlobalAvgPool, MaxPool, NiNBlock, NiNSpec

LN10 = math.log(10)
#: Exercises 1-3's variants, in the order the table lists them.
SEED_VARIANTS = ("chapter", "one-1x1", "three-1x1", "no-1x1", "3x3-inner", "fc-head")
COLLAPSE_INITS = ("xavier", "kaiming", "kaiming-identity")
COLLAPSE_LRS = (0.1, 0.05)


# -- shared: the rows file, the header ---------------------------------------------------------------------
def command_line(argv) -> str:
    """The command exactly as typed after ``python -m nin_multi``, for the first line of each stored file."""
    return "$ python -m nin_multi " + shlex.join(list(argv))


def framework_versions(keys) -> str:
    """``torch 2.13.0+cpu, numpy 1.26.4``: a loaded framework's own ``__version__``, else its installed
    distribution's (a framework trained in a worker process is not imported here)."""
    from importlib import metadata

    from nin_multi import backends

    found = {}
    for key in keys:
        for module, version in backends.versions(key).items():
            if version == "unknown":
                dists = metadata.packages_distributions().get(module, [module])
                for dist in dists:
                    try:
                        version = metadata.version(dist)
                        break
                    except metadata.PackageNotFoundError:
                        continue
            found[module] = version
    found["numpy"] = np.__version__
    return ", ".join(f"{m} {v}" for m, v in found.items())


def header(argv, keys, device: str = "cpu") -> list[str]:
    return [command_line(argv), f"{machine.describe(device)}; {framework_versions(keys)}"]


def read_rows(path: Path, settings: dict, restart: bool) -> list[dict]:
    """The finished rows of an earlier, stopped run of the same study; none when ``restart``."""
    if restart or not path.exists():
        return []
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e.strerror}): fix it or start again with --restart") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            same = row["settings"] == settings
        except (ValueError, TypeError, KeyError):
            raise ConfigError(f"{path} line {n} is not a row of this study: start again with --restart") from None
        if not same:
            raise ConfigError(f"{path} holds runs made with other settings ({_difference(row['settings'], settings)}):"
                              f" run the same command to continue them, or --restart to start again") from None
        rows.append(row)
    return rows


def _difference(old: dict, new: dict) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k} {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:3])


def write_rows(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def mean_sd(values) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1 in the denominator); the sd is None for one value."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def outputs(out) -> tuple[Path, Path, Path]:
    """``OUT`` names three files: OUT.txt (the table), OUT.png (the picture), OUT.jsonl (the finished runs)."""
    out = Path(out)
    if out.suffix in (".txt", ".png", ".jsonl"):
        out = out.with_suffix("")
    if out.name in ("", ".", ".."):
        raise ConfigError(f"--out names the files' common stem, e.g. docs/img/collapse, got {str(out)!r}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    return out.with_suffix(".txt"), out.with_suffix(".png"), out.with_suffix(".jsonl")


# -- exercises 1-3: the variants over seeds ---------------------------------------------------------------
def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in str(text).split(",") if v.strip()]
    if not names:
        raise ConfigError("--variants needs at least one variant name, e.g. --variants chapter,one-1x1")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--variants names {', '.join(sorted({v for v in names if names.count(v) > 1}))} more "
                          f"than once")
    return names


def variants_study(variants: list[str], seeds: list[int], cfg_kwargs: dict, out, argv, restart: bool = False,
                   log: Callable = print, train_one: Optional[Callable] = None) -> list[dict]:
    """Each variant trained once per seed with ``cfg_kwargs`` (TrainConfig fields: the recipe, shortened),
    seeds outermost so the variants alternate within each seed and a busy spell of the machine falls on all
    of them. ``train_one(cfg) -> (history, precision)`` trains one run (default: the driver, in a temporary
    run directory). Returns every row, the earlier ones included."""
    from .config import TrainConfig
    from .train import spec_for

    txt, png, jsonl = outputs(out)
    base = TrainConfig(**{**cfg_kwargs, "variant": variants[0], "progress": False})
    specs = {}
    for v in variants:  # every variant checked against the image size before any trains
        specs[v] = spec_for(dataclasses.replace(base, variant=v))
    settings = {k: cfg_kwargs.get(k) for k in ("backend", "recipe", "epochs", "resize", "batch_size", "lr",
                                               "init", "subset", "test_subset", "precision")}
    rows = read_rows(jsonl, settings, restart)
    done = {(r["variant"], r["seed"]) for r in rows}
    todo = [(s, v) for s in seeds for v in variants if (v, s) not in done]
    total = len(seeds) * len(variants)
    if done:
        log(f"{len(done)} run(s) already in {jsonl}; {len(todo)} to go")
    train_one = train_one or _train_in_temporary_dir
    for seed, variant in todo:
        cfg = dataclasses.replace(base, variant=variant, seed=seed)
        t0 = time.perf_counter()
        history, precision = train_one(cfg)
        last = history[-1]
        rows.append({"variant": variant, "seed": seed, "params": specs[variant].num_params,
                     "test_acc": last["test_acc"], "train_loss": last["train_loss"],
                     "train_seconds": sum(r["seconds"] for r in history), "precision": precision,
                     "settings": settings})
        write_rows(jsonl, rows)
        write_seed_table(rows, variants, seeds, txt, png, argv, cfg_kwargs)
        log(f"[{len(rows)}/{total}] seed {seed}, {variant}: test acc {last['test_acc']:.3f}, "
            f"{rows[-1]['train_seconds']:.1f} s of training ({time.perf_counter() - t0:.0f} s in all)")
    write_seed_table(rows, variants, seeds, txt, png, argv, cfg_kwargs)
    return rows


def _train_in_temporary_dir(cfg) -> tuple[list[dict], str]:
    from .train import train

    with tempfile.TemporaryDirectory(prefix="nin-multi-study-") as tmp:
        run_dir, history = train(dataclasses.replace(cfg, out=str(Path(tmp) / "run")),
                                 log=lambda line: print(f"    {line}", flush=True))
        precision = json.loads((run_dir / "config.json").read_text()).get("precision", cfg.precision)
    return history, precision


def seed_table_rows(rows: list[dict], variants: list[str]) -> list[dict]:
    """One summary per variant with any finished run: accuracy mean and sd over its seeds, mean training
    seconds and their ratio to the chapter's (over the seeds both finished, so a half-done seed does not
    skew it)."""
    by = {v: [r for r in rows if r["variant"] == v] for v in variants}
    chapter = {r["seed"]: r["train_seconds"] for r in by.get("chapter", [])}
    out = []
    for v in variants:
        runs = sorted(by[v], key=lambda r: r["seed"])
        if not runs:
            continue
        acc_m, acc_sd = mean_sd(r["test_acc"] for r in runs)
        sec_m, _ = mean_sd(r["train_seconds"] for r in runs)
        both = [r for r in runs if r["seed"] in chapter]
        ratio = (sum(r["train_seconds"] for r in both) / sum(chapter[r["seed"]] for r in both)) if both else None
        out.append({"variant": v, "params": runs[0]["params"], "n": len(runs), "seeds": [r["seed"] for r in runs],
                    "accs": [r["test_acc"] for r in runs], "acc_mean": acc_m, "acc_sd": acc_sd,
                    "seconds_mean": sec_m, "ratio": ratio,
                    "precision": ",".join(sorted({r["precision"] for r in runs}))})
    return out


def format_seed_table(rows: list[dict], variants: list[str], seeds: list[int], cfg_kwargs: dict) -> list[str]:
    c = cfg_kwargs
    summary = seed_table_rows(rows, variants)
    images = (f"the first {c['subset']} training images" if c.get("subset") else "every training image") + \
        (f", the first {c['test_subset']} test images" if c.get("test_subset") else ", every test image")
    lines = [
        f"the {c.get('recipe') or 'given'} recipe shortened to {c['epochs']} epoch(s) (its schedule spans them), "
        f"{c['resize']}x{c['resize']}, batch {c['batch_size']}, {c['backend']}; {images}",
        f"{len(rows)} of {len(seeds) * len(variants)} runs finished ({len(variants)} variants x {len(seeds)} seeds "
        f"{', '.join(map(str, seeds))}; within each seed the variants ran one after another)",
        "test acc: the last epoch's, mean +- sample sd over the seeds; train s: the training passes' seconds "
        "(test passes excluded), mean over the seeds, on a machine shared with other work, so read the ratio to "
        "chapter (same seeds, interleaved) rather than the seconds",
        "",
        f"{'variant':<10} {'params':>10} {'runs':>4} {'test acc':>15} {'per seed':<20} {'train s':>8} "
        f"{'x chapter':>9} {'precision':<9}",
    ]
    for s in summary:
        sd = f"{s['acc_sd']:.3f}" if s["acc_sd"] is not None else "-"
        ratio = f"{s['ratio']:.2f}" if s["ratio"] is not None else "-"
        lines.append(f"{s['variant']:<10} {s['params']:>10,} {s['n']:>4} {s['acc_mean']:>7.3f} +- {sd:<5} "
                     f"{' '.join(f'{a:.3f}' for a in s['accs']):<20} {s['seconds_mean']:>8.1f} {ratio:>9} "
                     f"{s['precision']:<9}")
    return lines


def write_seed_table(rows, variants, seeds, txt: Path, png: Path, argv, cfg_kwargs) -> None:
    rows = [r for r in rows if r["variant"] in variants and r["seed"] in seeds]  # this command's runs only
    text = header(argv, [cfg_kwargs["backend"]]) + format_seed_table(rows, variants, seeds, cfg_kwargs)
    write_text(txt, "\n".join(text) + "\n")
    plot_seed_table(seed_table_rows(rows, variants), png,
                    f"NiN variants, {cfg_kwargs['epochs']} epochs of the {cfg_kwargs.get('recipe')} recipe on "
                    f"{cfg_kwargs['backend']}, {len(seeds)} seeds ({machine.describe()}, shared)")


def plot_seed_table(summary: list[dict], dest, title: str) -> None:
    """Accuracy (each seed a dot, the mean a bar with its sd), parameters and seconds relative to the chapter."""
    if not summary:
        return
    names = [s["variant"] for s in summary]
    x = np.arange(len(summary))
    palette = colours()
    col = [palette[i % len(palette)] for i in range(len(summary))]
    with figure(dest, title, title_size=9, nrows=1, ncols=3, figsize=(13, 4)) as (fig, axes):
        ax = axes[0]
        ax.bar(x, [s["acc_mean"] for s in summary], yerr=[s["acc_sd"] or 0 for s in summary], color=col,
               alpha=0.5, capsize=4)
        for i, s in enumerate(summary):
            ax.plot([i] * len(s["accs"]), s["accs"], "k.", ms=6)
        lo = min(min(s["accs"]) for s in summary)
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.set_title("test accuracy (mean, sd, each seed a dot)", fontsize=9)
        ax = axes[1]
        bars = ax.bar(x, [s["params"] / 1e6 for s in summary], color=col)
        ax.bar_label(bars, labels=[f"{s['params'] / 1e6:.2f}" for s in summary], fontsize=7)
        ax.set_title("parameters (millions)", fontsize=9)
        ax = axes[2]
        ratios = [s["ratio"] if s["ratio"] is not None else 0 for s in summary]
        bars = ax.bar(x, ratios, color=col)
        ax.bar_label(bars, labels=[f"{r:.2f}" if r else "-" for r in ratios], fontsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title("training seconds relative to chapter", fontsize=9)
        for ax in axes:
            ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)


# -- the collapse study ----------------------------------------------------------------------------------
def is_stuck(step_losses, window: int, tolerance: float) -> bool:
    """Whether training is still at chance: the mean loss of the last ``window`` steps within
    ``tolerance`` of ln 10 (10 classes, uniform prediction)."""
    if window < 1 or len(step_losses) < window:
        raise ConfigError(f"the stuck test needs {window} steps, the run made {len(step_losses)}")
    last = step_losses[-window:]
    return abs(sum(last) / window - LN10) <= tolerance


def dead_channels(activations: np.ndarray) -> list[int]:
    """Channels (axis 1) that are exactly 0 at every position of every image: (N, C) or (N, C, H, W)."""
    a = np.asarray(activations)
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    return [int(c) for c in np.flatnonzero(~np.any(flat != 0, axis=(0, 2)))]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation of NCHW ``x`` with OIHW ``w`` as one matrix product (im2col)."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N, C, Ho, Wo, k, k
    n, c, ho, wo = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
    y = cols @ w.reshape(w.shape[0], -1).T + b
    return y.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)


def dead_per_conv(spec: NiNSpec, weights: dict, x: np.ndarray) -> dict[str, list[int]]:
    """Every conv's dead ReLU channels on the images ``x`` (NCHW), by a float64 NumPy forward pass of the
    spec (dropout is the identity, as when predicting). Covers NiN blocks, max and global pools, the
    layers of every variant the collapse study trains."""
    x = x.astype(np.float64)
    dead = {}
    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            for c in layer.convs:
                x = np.maximum(_conv(x, weights[f"{c.name}.weight"].astype(np.float64),
                                     weights[f"{c.name}.bias"].astype(np.float64), c.stride, c.padding), 0)
                dead[c.name] = dead_channels(x)
        elif isinstance(layer, MaxPool):
            x = sliding_window_view(x, (layer.kernel, layer.kernel), axis=(2, 3))[
                :, :, ::layer.stride, ::layer.stride].max(axis=(4, 5))
        elif isinstance(layer, GlobalAvgPool):
            x = x.mean(axis=(2, 3))
    return dead


def class_conv(spec: NiNSpec) -> str:
    """The conv whose ReLU outputs, averaged, are the class scores."""
    return list(spec.convs())[-1].name


def collapse_verdict(step_losses, dead: dict[str, list[int]], class_layer: str, window: int,
                     tolerance: float) -> dict:
    last = step_losses[-window:]
    return {"final_loss": sum(last) / len(last), "stuck": is_stuck(step_losses, window, tolerance),
            "dead_classes": dead[class_layer], "dead": {k: len(v) for k, v in dead.items()}}


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"{option} must be comma-separated positive numbers such as 0.1,0.05, got {text!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{option} lists a value more than once, got {text!r}")
    return values


def parse_inits(text: str) -> list[str]:
    from .config import INITS

    names = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [n for n in names if n not in INITS]
    if not names or bad:
        raise ConfigError(f"--inits must be comma-separated names from {', '.join(INITS)}, got {text!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--inits lists an init more than once, got {text!r}")
    return names


def parse_cases(text: str) -> list[tuple[int, float, str]]:
    """``--cross SEED:LR:INIT,...``: the runs made again in every framework in float64."""
    from .config import INITS

    cases = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        try:
            seed, lr, init = part.split(":")
            case = (int(seed), float(lr), init)
        except ValueError:
            raise ConfigError(f"--cross takes SEED:LR:INIT cases such as 0:0.1:kaiming, got {part!r}") from None
        if case[0] < 0 or not case[1] > 0 or init not in INITS:
            raise ConfigError(f"--cross case {part!r}: a seed >= 0, a positive lr and an init from "
                              f"{', '.join(INITS)}")
        cases.append(case)
    return cases


@dataclasses.dataclass
class CollapseSetup:
    resize: int = 67
    batch_size: int = 128
    subset: int = 1024
    epochs: int = 2
    window: int = 4
    tolerance: float = 0.01
    probe: int = 256
    test_subset: int = 250
    cross_subset: int = 256  # the runs made again in every framework in float64: smaller, as float64 is slow
    cross_epochs: int = 2

    def steps(self) -> int:
        return self.epochs * -(-self.subset // self.batch_size)

    def cross(self) -> "CollapseSetup":
        """The setting of the framework cases: the study's, on their own subset and epochs."""
        return dataclasses.replace(self, subset=self.cross_subset, epochs=self.cross_epochs)

    def check(self, cross: bool = True) -> None:
        """Every setting a positive integer where it counts steps or images, before anything loads;
        ``cross``: the framework cases' too."""
        for name in ("resize", "batch_size", "subset", "epochs", "window", "probe", "test_subset", "cross_subset",
                     "cross_epochs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance < 1):
            raise ConfigError(f"--tolerance must be a loss difference in (0, 1), got {self.tolerance!r}")
        if self.window > self.steps():
            raise ConfigError(f"--window {self.window} is longer than the run ({self.steps()} steps: --epochs "
                              f"{self.epochs} of {self.subset} images at batch {self.batch_size})")
        if cross and self.cross_subset > self.subset:
            raise ConfigError(f"--cross-subset {self.cross_subset} must be at most --subset {self.subset}")
        if cross and self.window > self.cross().steps():
            raise ConfigError(f"--window {self.window} is longer than a framework case ({self.cross().steps()} "
                              f"steps: --cross-epochs {self.cross_epochs} of {self.cross_subset} images at batch "
                              f"{self.batch_size})")
        if self.probe > self.subset:
            raise ConfigError(f"--probe {self.probe} must be at most --subset {self.subset} (it is their first "
                              f"images)")


def collapse_config(setup: CollapseSetup, backend: str, seed: int, lr: float, init: str, precision: str,
                    dropout: Optional[float], data_dir, threads):
    from .config import TrainConfig

    return TrainConfig(backend=backend, epochs=setup.epochs, batch_size=setup.batch_size, lr=lr,
                       resize=setup.resize, init=init, seed=seed, data_dir=data_dir, subset=setup.subset,
                       test_subset=setup.test_subset, precision=precision, threads=threads, dropout=dropout,
                       progress=False)


def train_collapse_case(hosts: list, cfg, ds, probe_nchw: np.ndarray, setup: CollapseSetup,
                        log: Callable) -> dict[str, dict]:
    """One (seed, lr, init) run in each host (reproduce's: every framework from the same NumPy-drawn start
    and example order, plain SGD), each judged: stuck or not, and every conv's dead channels on the probe
    images (a float64 NumPy pass over the framework's final weights)."""
    from . import optim
    from .config import param_dtype
    from .reproduce.report import INITIAL_WEIGHTS
    from .train import spec_for
    from .weights import initial_weights, save_weights

    spec = spec_for(cfg)
    start = initial_weights(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))
    sgd = optim.from_config(cfg, -(-len(ds.train_images) // cfg.batch_size))
    out = {}
    with tempfile.TemporaryDirectory(prefix="nin-multi-collapse-") as tmp:
        run_dir = Path(tmp)
        save_weights(run_dir / INITIAL_WEIGHTS, spec, start)
        for h in hosts:
            h.setup(cfg, spec, start, sgd, run_dir / INITIAL_WEIGHTS)
            result = h.train(spec, cfg, ds, run_dir, f"collapse seed {cfg.seed}", lambda line: None)
            verdict = collapse_verdict(result["steps"], dead_per_conv(spec, result["final"], probe_nchw),
                                       class_conv(spec), setup.window, setup.tolerance)
            out[h.name] = {**verdict, "steps": result["steps"], "classes": spec.num_classes,
                           "test_acc": result["history"][-1]["test_acc"]}
    return out


def probe_images(ds, setup: CollapseSetup) -> np.ndarray:
    from .data import batches

    x, _ = next(iter(batches(ds.train_images[:setup.probe], ds.train_labels[:setup.probe], setup.probe,
                             setup.resize, "NCHW", dtype=np.float64)))
    return x


PARTS = ("all", "study", "frameworks")


def collapse_study(setup: CollapseSetup, seeds: list[int], lrs: list[float], inits: list[str], backend: str,
                   cross: list[tuple], cross_backends: list[str], out, argv, data_dir=None, threads=None,
                   restart: bool = False, log: Callable = print, part: str = "all") -> dict:
    """The chapter's plain SGD from every (init, lr, seed): stuck or not, dead channels per conv; then the
    ``cross`` cases again in every framework of ``cross_backends`` in float64 without dropout, where their
    trajectories agree, to show the verdict and the dead channels are the network's and not a framework's.

    The two parts keep their finished runs in files of their own (OUT.jsonl, OUT-frameworks.jsonl), and
    each rewrites the table from both, so ``part`` "study" and "frameworks" can run at once in two
    processes on a machine with cores to spare; the whole command run afterwards finds both done."""
    from contextlib import ExitStack

    from .data import load_fashion_mnist
    from .reproduce.runner import start_workers
    from .train import spec_for
    from .weights import initial_weights

    if part not in PARTS:
        raise ConfigError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    setup.check(cross=bool(cross) and part != "study")
    txt, png, jsonl = outputs(out)
    cross_jsonl = jsonl.with_name(jsonl.stem + "-frameworks.jsonl")
    main_cfg = collapse_config(setup, backend, seeds[0], lrs[0], inits[0], "fp32", None, data_dir, threads)
    spec = spec_for(main_cfg)
    settings = {**dataclasses.asdict(setup), "backend": backend, "variant": spec.variant}
    files = {"main": jsonl, "cross": cross_jsonl}
    mine = {"all": ("main", "cross"), "study": ("main",), "frameworks": ("cross",)}[part]
    rows = {k: read_rows(f, settings, restart and k in mine) for k, f in files.items()}
    ds = load_fashion_mnist(data_dir)
    if len(ds.train_images) < setup.subset:
        raise ConfigError(f"--subset {setup.subset} is more than the {len(ds.train_images)} training images there")
    ds = ds.subset(setup.subset, setup.test_subset)
    probe = probe_images(ds, setup)
    start_dead: dict = {}

    def with_start(found: list[dict]) -> bool:
        """Each row's dead channels at its start too (the NumPy draw of its init and seed, on the same
        images), so the table tells the channels training killed from those dead from the first step."""
        added = False
        for r in found:
            if "dead_start" not in r:
                key = (r["init"], r["seed"])
                if key not in start_dead:
                    start_dead[key] = {k: len(v) for k, v in dead_per_conv(
                        spec, initial_weights(spec, r["init"], r["seed"]), probe).items()}
                r["dead_start"], added = start_dead[key], True
        return added

    for k in mine:  # rows written before the start was recorded get it now
        if with_start(rows[k]):
            write_rows(files[k], rows[k])
    done = {(r["kind"], r["backend"], r["init"], r["lr"], r["seed"]) for k in rows for r in rows[k]}
    main = [(i, lr, s) for s in seeds for i in inits for lr in lrs if ("main", backend, i, lr, s) not in done]
    cases = [c for c in cross if any(("cross", b, c[2], c[1], c[0]) not in done for b in cross_backends)]
    main, cases = (main if part != "frameworks" else []), (cases if part != "study" else [])
    total = len(seeds) * len(inits) * len(lrs)
    state = {"seeds": seeds, "lrs": lrs, "inits": inits, "cross": cross, "cross_backends": cross_backends}

    def table() -> None:
        other = {k: read_rows(f, settings, False) if k not in mine else rows[k] for k, f in files.items()}
        with_start(other["main"] + other["cross"])
        write_collapse(other["main"] + other["cross"], state, setup, backend, spec, txt, png, argv)

    def keep(kind: str, new_rows: list[dict]) -> None:
        with_start(new_rows)
        rows[kind].extend(new_rows)
        write_rows(files[kind], rows[kind])
        table()

    if done:
        log(f"{len(done)} run(s) already in {jsonl} and {cross_jsonl.name}; {len(main)} of the study and "
            f"{len(cases)} framework case(s) to go")
    with ExitStack() as stack:
        if main:
            (host,) = start_workers([backend], stack, log)
            for init, lr, seed in main:
                cfg = collapse_config(setup, backend, seed, lr, init, "fp32", None, data_dir, threads)
                t0 = time.perf_counter()
                v = train_collapse_case([host], cfg, ds, probe, setup, log)[host.name]
                keep("main", [{"kind": "main", "backend": host.name, "init": init, "lr": lr, "seed": seed,
                               "precision": "fp32", "dropout": None, **v, "settings": settings}])
                log(f"[{len(rows['main'])}/{total}] {init}, lr {lr:g}, seed {seed}: loss {v['final_loss']:.4f}"
                    f"{' (stuck)' if v['stuck'] else ''}, dead class channels {len(v['dead_classes'])}/"
                    f"{spec.num_classes}, {time.perf_counter() - t0:.0f} s")
    with ExitStack() as stack:
        if cases:
            hosts = start_workers(cross_backends, stack, log)
            for seed, lr, init in cases:
                cfg = collapse_config(setup.cross(), backend, seed, lr, init, "fp64", 0.0, data_dir, threads)
                t0 = time.perf_counter()
                per = train_collapse_case(hosts, cfg, ds.subset(setup.cross_subset), probe, setup.cross(), log)
                keep("cross", [{"kind": "cross", "backend": name, "init": init, "lr": lr, "seed": seed,
                                "precision": "fp64", "dropout": 0.0, **v, "settings": settings}
                               for name, v in per.items()])
                log(f"[framework case] {init}, lr {lr:g}, seed {seed}: " + "; ".join(
                    f"{n} loss {v['final_loss']:.6f}, dead classes {v['dead_classes']}" for n, v in per.items())
                    + f" ({time.perf_counter() - t0:.0f} s)")
    table()
    return {"rows": rows["main"] + rows["cross"], "txt": txt, "png": png}


def collapse_summary(rows: list[dict], inits, lrs) -> list[dict]:
    main = [r for r in rows if r["kind"] == "main"]
    out = []
    for init in inits:
        for lr in lrs:
            runs = sorted((r for r in main if r["init"] == init and r["lr"] == lr), key=lambda r: r["seed"])
            if not runs:
                continue
            out.append({"init": init, "lr": lr, "n": len(runs), "stuck": sum(r["stuck"] for r in runs),
                        "all_dead": sum(len(r["dead_classes"]) == r["classes"] for r in runs),
                        "dead_counts": [len(r["dead_classes"]) for r in runs],
                        "start_counts": [_start(r, class_key(r)) for r in runs],
                        "final_losses": [r["final_loss"] for r in runs]})
    return out


def class_key(row: dict) -> str:
    return list(row["dead"])[-1]


def _start(row: dict, conv: str):
    return row.get("dead_start", {}).get(conv, "?")


def format_collapse(rows: list[dict], state: dict, setup: CollapseSetup, backend: str, spec: NiNSpec) -> list[str]:
    steps = setup.steps()
    cls = class_conv(spec)
    blocks = [b for b in spec.layers if isinstance(b, NiNBlock)]
    main = sorted((r for r in rows if r["kind"] == "main"),
                  key=lambda r: (state["inits"].index(r["init"]) if r["init"] in state["inits"] else 99,
                                 -r["lr"], r["seed"]))
    total = len(state["seeds"]) * len(state["inits"]) * len(state["lrs"])
    lines = [
        f"the chapter's training (plain SGD: no momentum, weight decay or schedule; cross-entropy; dropout 0.5) of "
        f"the {spec.variant} network at {setup.resize}x{setup.resize}, batch {setup.batch_size}, on {backend} in "
        f"fp32: the first {setup.subset} training images, {setup.epochs} epoch(s) = {steps} steps; initial weights "
        f"drawn in NumPy for every framework alike",
        f"stuck: the mean training loss of the last {setup.window} steps within {setup.tolerance:g} of ln 10 = "
        f"{LN10:.4f}; dead: a channel whose ReLU output is 0 at every position of every one of the first "
        f"{setup.probe} training images (a float64 NumPy pass over the weights, dropout off); a dead class channel "
        f"({cls}) gives its class a constant score 0 and its weights no gradient, and with all ten dead no layer "
        f"gets any: the loss stays ln 10 for good",
        f"{len(main)} of {total} runs finished ({len(state['inits'])} inits x {len(state['lrs'])} learning rates x "
        f"{len(state['seeds'])} seeds {', '.join(map(str, state['seeds']))}, seed by seed)",
        "",
        f"{'init':<17} {'lr':>5} {'runs':>4} {'stuck':>7} {'all 10 dead':>11}  dead class channels per seed, "
        f"at the start -> after {steps} steps",
    ]
    for s in collapse_summary(rows, state["inits"], state["lrs"]):
        lines.append(f"{s['init']:<17} {s['lr']:>5g} {s['n']:>4} {s['stuck']:>3}/{s['n']:<3} {s['all_dead']:>7}/"
                     f"{s['n']:<3}  " + " ".join(f"{a}->{b}" for a, b in zip(s["start_counts"], s["dead_counts"])))
    names = [c.name for b in blocks for c in b.convs]
    width = {c.name: c.out_channels for b in blocks for c in b.convs}
    lines += ["", "every run: the final loss (mean of the last steps) and each conv's dead channels, at the start -> "
                  "at the end (of its output channels)",
              f"{'init':<17} {'lr':>5} {'seed':>4} {'loss':>7} {'stuck':>5} {'test acc':>8}  "
              + " ".join(f"{n:>13}" for n in names)]
    for r in main:
        cells = " ".join(f"{_start(r, n)}->{r['dead'][n]}/{width[n]}".rjust(13) for n in names)
        lines.append(f"{r['init']:<17} {r['lr']:>5g} {r['seed']:>4} {r['final_loss']:>7.4f} "
                     f"{'yes' if r['stuck'] else 'no':>5} {r['test_acc']:>8.3f}  {cells}")
    cross = [r for r in rows if r["kind"] == "cross"]
    if cross:
        cs = setup.cross()
        lines += ["", f"a few runs again in every framework ({', '.join(state['cross_backends'])}), where their "
                      f"trajectories agree: float64, dropout off (its masks are each framework's own draw), the "
                      f"same start and example order; the first {cs.subset} training images, {cs.epochs} epoch(s) "
                      f"= {cs.steps()} steps, otherwise as above",
                  f"{'case (init, lr, seed)':<28} {'framework':<11} {'loss':>20} {'stuck':>5}  "
                  f"{'dead class channels':<27} dead per conv, {', '.join(names)}"]
        for seed, lr, init in state["cross"]:
            per = [r for r in cross if (r["seed"], r["lr"], r["init"]) == (seed, lr, init)]
            if not per:
                continue
            for r in per:
                lines.append(f"{f'{init}, {lr:g}, {seed}':<28} {r['backend']:<11} {r['final_loss']:>20.15f} "
                             f"{'yes' if r['stuck'] else 'no':>5}  {str(r['dead_classes']):<27} "
                             + ",".join(str(r["dead"][n]) for n in names))
            spread = max(max(abs(a - b) for a, b in zip(p["steps"], per[0]["steps"])) for p in per)
            same = all(p["stuck"] == per[0]["stuck"] and p["dead"] == per[0]["dead"]
                       and p["dead_classes"] == per[0]["dead_classes"] for p in per)
            lines.append(f"{'':<28} {'':<11} largest difference of a step's loss between frameworks {spread:.1e};"
                         f" same verdict and dead channels: {'yes' if same else 'NO'}")
    return lines


def write_collapse(rows, state, setup, backend, spec, txt: Path, png: Path, argv) -> None:
    rows = [r for r in rows if (r["seed"] in state["seeds"] and r["init"] in state["inits"] and r["lr"] in state["lrs"]
                                if r["kind"] == "main" else (r["seed"], r["lr"], r["init"]) in state["cross"]
                                and r["backend"] in state["cross_backends"])]  # this command's runs only
    keys = [backend] + [b for b in state["cross_backends"] if b != backend] if any(
        r["kind"] == "cross" for r in rows) else [backend]
    write_text(txt, "\n".join(header(argv, keys) + format_collapse(rows, state, setup, backend, spec)) + "\n")
    plot_collapse(rows, state, setup, png,
                  f"NiN with the chapter's plain SGD, {setup.resize}x{setup.resize}, batch {setup.batch_size}, "
                  f"{setup.steps()} steps, on {backend} fp32")


def plot_collapse(rows: list[dict], state: dict, setup: CollapseSetup, dest, title: str) -> None:
    """One panel per learning rate: every run's training loss per step, coloured by init, ln 10 marked; and
    a panel of the fraction of runs stuck and of runs whose ten class channels all died."""
    main = [r for r in rows if r["kind"] == "main"]
    if not main:
        return
    lrs, inits = state["lrs"], state["inits"]
    palette = colours()
    with figure(dest, title, title_size=9, nrows=1, ncols=len(lrs) + 1,
                figsize=(4.3 * (len(lrs) + 1), 3.8)) as (fig, axes):
        for ax, lr in zip(axes, lrs):
            for i, init in enumerate(inits):
                for j, r in enumerate(r for r in main if r["lr"] == lr and r["init"] == init):
                    ax.plot(np.arange(1, len(r["steps"]) + 1), r["steps"], color=palette[i % len(palette)], lw=0.9,
                            alpha=0.8, label=init if j == 0 else None)
            ax.axhline(LN10, color="black", lw=0.8, ls="--", label="ln 10")
            ax.set_title(f"lr {lr:g}: training loss per step", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylim(1.0, 3.0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[-1]
        summary = collapse_summary(rows, inits, lrs)
        labels = [f"{s['init']}\nlr {s['lr']:g}" for s in summary]
        x = np.arange(len(summary))
        ax.bar(x - 0.2, [s["stuck"] / s["n"] for s in summary], 0.4, label="stuck at ln 10", color=palette[0])
        ax.bar(x + 0.2, [s["all_dead"] / s["n"] for s in summary], 0.4, label="all 10 class channels dead",
               color=palette[3 % len(palette)])
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title("fraction of runs", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
