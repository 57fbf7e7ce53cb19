"""Training for reproduce: every backend from one start (NumPy-drawn weights, one example order per
epoch) through the one epoch loop (``loop.fit``) and the driver's ``evaluate``, and the loop over several
starts.

The command runs each backend in a worker process of its own (``worker.py``), on the interpreter bound to
it (``nin_multi.interpreters``), so nothing one framework sets for its process reaches another; this
process imports no framework. The Python API can still train backend modules loaded here (``one_start``
with modules, ``reproduce(..., workers=False)``): the same code trains them, in this process."""
from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from .. import loop, optim
from ..config import TrainConfig, param_dtype
from ..data import epoch_order, num_batches
from ..errors import ConfigError
from ..fileio import write_json
from ..interpreters import Worker
from ..run import CONFIG, PLOT, WEIGHTS, Run, default_run_dir, plot_curves, prepare_dir, release_dir
from ..spec import NiNSpec
from ..train import load_data, spec_for
from ..weights import initial_weights, load_weights, save_weights, trained_entry
from .comparison import drift_rows, step_drift, step_table, weight_differences, write_rows_csv, write_steps_csv
from .plots import plot_drift, plot_seeds
from .report import (BACKENDS_CSV, DRIFT_CSV, DRIFT_PLOT, INITIAL_WEIGHTS, REPORT_JSON, SEEDS_CSV, SEEDS_PLOT,
                     STEPS_CSV, explanation, format_report, format_seeds_report, seeds_conclusion, settings)
from .statistics import parse_seeds, seed_statistics, write_seeds_csv


def reproduce(cfg: TrainConfig, backend_names=None, overwrite: bool = False, log=print,
              seeds=None, workers: bool = True) -> tuple[Path, dict]:
    """Train every named backend (a list or a comma-separated string; default: every installed one, or
    bound to an interpreter of its own) from one start; with several ``seeds`` (a list or "0,1,2"), from
    one start per seed, each in ``seed-N/``, and compare the backends' final results across seeds.
    ``workers=False``: every framework in this process (bound interpreters are then not used). Returns
    (run dir, report)."""
    from nin_multi import backends as registry

    seeds = parse_seeds(seeds) if seeds is not None else [cfg.seed]
    keys = registry.select(backend_names, trains=True, bound=workers)
    if len(keys) < 2:
        installed = ", ".join(registry.installed()) or "none"
        raise ConfigError(f"reproduce compares frameworks and needs at least two backends, got "
                          f"{', '.join(keys) or 'none'} (installed: {installed}); install another with "
                          f"pip install 'nin-multi[torch]', '[tensorflow]', '[mxnet]' or '[jax]'")
    spec = spec_for(cfg)
    with ExitStack() as stack:
        if workers:  # every framework loaded, each in its process, before anything is written
            hosts = start_workers(keys, stack, log)
        else:
            hosts = [InProcess(m) for m in registry.load_backends(keys)]  # PyTorch before TensorFlow
        ds = load_data(cfg)
        run_dir = prepare_dir(cfg.out or default_run_dir("reproduce"), overwrite=overwrite)  # under its lock
        if len(seeds) == 1:
            report = one_start(dataclasses.replace(cfg, seed=seeds[0]), hosts, spec, ds, run_dir, log)
            log(format_report(report, run_dir))
        else:
            report = several_starts(dataclasses.replace(cfg, out=str(run_dir)), seeds, hosts, spec, ds, run_dir,
                                    log)
            log(format_seeds_report(report, run_dir))
    release_dir(run_dir)
    return run_dir, report


# -- where a backend trains -----------------------------------------------------------------------------
class InProcess:
    """A backend module loaded in this process: ``setup`` builds its model on the shared start and its
    trainer, ``train`` trains it into ``run_dir/<name>``. The worker process runs exactly this."""

    def __init__(self, module):
        self.m, self.name = module, module.NAME

    def setup(self, cfg: TrainConfig, spec: NiNSpec, start: dict, sgd: optim.SGDSettings, start_path: Path) -> None:
        _, self.model, self.trainer = _from_start(self.m, spec, cfg, start, sgd)

    def train(self, spec: NiNSpec, cfg: TrainConfig, ds, run_dir: Path, title: str, log) -> dict:
        run = Run(run_dir / self.name, f"{title}: {self.name}")
        try:
            return _train_backend(self.m, self.model, self.trainer, spec, cfg, ds, run, log)
        finally:
            self.model = self.trainer = None
            release_dir(run.path)


class InWorker:
    """A backend in its worker process (``python -m nin_multi.reproduce.worker NAME``), driven over the
    protocol: the shared start goes as the file ``one_start`` saved, the results come back as JSON
    (floats round-trip exactly) and the final weights as the file the worker saved."""

    def __init__(self, name: str, log):
        self.name = name
        self.worker = Worker(name, "nin_multi.reproduce.worker", [name], log=log)

    def loaded(self) -> None:
        self.worker.wait_for("loaded")

    def setup(self, cfg: TrainConfig, spec: NiNSpec, start: dict, sgd: optim.SGDSettings, start_path: Path) -> None:
        self.worker.request("setup", cfg=cfg.to_dict(), start=str(start_path), sgd=dataclasses.asdict(sgd))
        self.worker.wait_for("ready")

    def train(self, spec: NiNSpec, cfg: TrainConfig, ds, run_dir: Path, title: str, log) -> dict:
        self.worker.log = log
        self.worker.request("train", cfg=cfg.to_dict(), run_dir=str(run_dir), title=title)
        result = self.worker.wait_for("result")["result"]
        _, result["final"] = load_weights(run_dir / self.name / WEIGHTS)
        return result


def start_workers(keys: list, stack: ExitStack, log) -> list:
    """One worker per backend, all started at once (importing a framework is most of their start), each
    ended with ``stack``; returned once every one has loaded its framework. An interpreter bound to a
    backend is checked first, so a bad one is one line before any process starts."""
    from nin_multi import backends as registry

    for k in keys:
        registry.check_interpreter(k)
    hosts = [InWorker(k, log) for k in keys]
    for h in hosts:
        stack.enter_context(h.worker)
    for h in hosts:
        h.loaded()
    return hosts


# -- one start ------------------------------------------------------------------------------------------
def one_start(cfg: TrainConfig, mods: list, spec: NiNSpec, ds, run_dir: Path, log=print) -> dict:
    """Train every backend in ``mods`` (backend modules, or ``InProcess``/``InWorker`` hosts) from one start
    (``cfg.seed``) into ``run_dir``; returns the report."""
    hosts = [m if isinstance(m, (InProcess, InWorker)) else InProcess(m) for m in mods]
    n_train, n_test = len(ds.train_images), len(ds.test_images)
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    start = initial_weights(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))
    save_weights(run_dir / INITIAL_WEIGHTS, spec, start,
                 meta={"init": cfg.init, "seed": cfg.seed, "drawn_by": "numpy",
                       "rounding": "drawn in float64, rounded to float32"
                                   + (", then widened to float64" if cfg.precision == "fp64" else "")})
    title = f"{settings(cfg, spec, n_train)}, same start (seed {cfg.seed})"
    write_json(run_dir / CONFIG, {**cfg.to_dict(), "backend": None, "backends": [h.name for h in hosts]})
    log(f"reproducing {spec.variant} NiN ({spec.num_params:,} parameters) on {', '.join(h.name for h in hosts)}: "
        f"one {cfg.init} initialisation (seed {cfg.seed}), one example order per epoch, "
        f"{settings(cfg, spec, n_train).split(': ', 1)[1]}, {n_test} test images; run directory {run_dir}")
    # Every model and trainer first: a setting some framework refuses fails before any training.
    sgd = optim.from_config(cfg, num_batches(n_train, cfg.batch_size))  # one optimizer's settings for all
    for h in hosts:
        h.setup(cfg, spec, start, sgd, run_dir / INITIAL_WEIGHTS)
    results = [h.train(spec, cfg, ds, run_dir, title, log) for h in hosts]
    return _compare(cfg, spec, results, n_train, n_test, run_dir, title)


def _from_start(m, spec: NiNSpec, cfg: TrainConfig, start: dict, sgd: optim.SGDSettings) -> tuple:
    """One backend's model holding the shared start exactly, and its trainer."""
    m.configure(cfg.threads, cfg.seed)
    model = m.build_model(spec, cfg.init, cfg.seed, dtype=param_dtype(cfg.precision))
    m.set_weights(model, spec, start)
    got = m.get_weights(model, spec)
    if any(not np.array_equal(got[k], start[k]) for k in start):
        raise RuntimeError(f"{m.NAME}: set_weights did not take the shared initial weights exactly")
    return m, model, m.Trainer(model, cfg.lr, cfg.precision, optim=sgd)


def _train_backend(m, model, trainer, spec: NiNSpec, cfg: TrainConfig, ds, run: Run, log) -> dict:
    """Evaluate the start, then the driver's epochs, each over the shared example order of that epoch,
    recording every step's loss; the backend's metrics and final weights go to its own ``run``."""
    bcfg = dataclasses.replace(cfg, backend=m.NAME, out=str(run.path))
    run.write_config(bcfg.to_dict())
    loss0, acc0 = loop.evaluate(trainer, ds.test_images, ds.test_labels, bcfg, m.LAYOUT, f"{m.NAME} start")
    log(f"[{m.NAME}] ({m.device()}) before training: test loss {loss0:.6f}, test acc {acc0:.3f}")
    step_losses: list[float] = []

    def keep(row: dict, step: int) -> None:
        run.log_epoch(row)
        log(f"[{m.NAME}] epoch {row['epoch']}: train loss {row['train_loss']:.6f}, train acc {row['train_acc']:.3f}, "
            f"test acc {row['test_acc']:.3f}, {row['examples_per_sec']:.1f} examples/sec")

    loop.fit(trainer, ds, bcfg, m.LAYOUT, order_of=lambda epoch: epoch_order(len(ds.train_images), cfg.seed, epoch),
             step_losses=step_losses, on_step=run.log_step, on_epoch=[keep], eval_desc=f"{m.NAME} test")
    final = m.get_weights(model, spec)
    save_weights(run.path / WEIGHTS, spec, final, meta={"backend": m.NAME, "epochs": cfg.epochs,
                                                        "config": bcfg.to_dict()},
                 trained=trained_entry(cfg.resize, m.LAYOUT, cfg.precision))
    run.close()
    last, seconds = run.history[-1], sum(r["seconds"] for r in run.history)
    return {"name": m.NAME, "history": run.history, "initial": {"test_loss": loss0, "test_acc": acc0},
            "final": final, "steps": step_losses,
            "row": {"backend": m.NAME, "device": m.device(), "train_loss": last["train_loss"],
                    "train_acc": last["train_acc"], "test_loss": last["test_loss"], "test_acc": last["test_acc"],
                    "examples_per_sec": len(ds.train_images) * cfg.epochs / seconds, "train_seconds": seconds}}


def _compare(cfg: TrainConfig, spec: NiNSpec, results: list[dict], n_train: int, n_test: int, run_dir: Path,
             title: str) -> dict:
    """The backends laid side by side: curves, steps table and drift plot, epoch table, report."""
    histories = {r["name"]: r["history"] for r in results}
    plot_curves(histories, run_dir / PLOT, title)
    steps = step_table({r["name"]: r["steps"] for r in results}, n_train, cfg.batch_size, cfg.epochs)
    sdrift = step_drift(steps)
    plot_drift(steps, sdrift, run_dir / DRIFT_PLOT,
               f"{title}\nrelative difference of each SGD step's training loss between frameworks")
    write_steps_csv(run_dir / STEPS_CSV, steps)
    initial = {r["name"]: r["initial"] for r in results}
    drift = drift_rows(histories, initial, n_train, n_test)
    pairs = weight_differences({r["name"]: r["final"] for r in results})
    why = explanation(cfg, spec, drift, max(pairs.values()), n_test, sdrift)
    backend_rows = [r["row"] for r in results]
    report = {"config": cfg.to_dict(), "backends": backend_rows, "drift": drift, "initial": initial,
              "steps": steps, "step_drift": sdrift,
              "final_weights_rel_diff": pairs, "n_train": n_train, "n_test": n_test, "explanation": why,
              "files": {"plot": PLOT, "drift_plot": DRIFT_PLOT, "initial_weights": INITIAL_WEIGHTS,
                        "backends_table": BACKENDS_CSV, "drift_table": DRIFT_CSV, "steps_table": STEPS_CSV,
                        "per_backend": list(histories)}}
    write_rows_csv(run_dir / BACKENDS_CSV, backend_rows)
    write_rows_csv(run_dir / DRIFT_CSV, drift)
    write_json(run_dir / REPORT_JSON, report)
    return report


# -- several starts -------------------------------------------------------------------------------------
def several_starts(cfg: TrainConfig, seeds: list[int], mods: list, spec: NiNSpec, ds, run_dir: Path,
                   log=print) -> dict:
    """One start per seed, each a whole one-start run in ``seed-N/``; then the backends' final results
    across seeds, their statistics, table and plot. Returns the report."""
    names = [getattr(m, "name", None) or m.NAME for m in mods]
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
    return report
