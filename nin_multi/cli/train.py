"""``nin-multi train``: the chapter's training, resumable, in one process or several workers."""
from __future__ import annotations

import argparse
from pathlib import Path

from nin_multi.isolation import ALLOW_ENV

from .common import (DEFAULTS, add_data_args, add_network_args, add_recipe_args, add_recipe_preset_arg,
                     config_from_args)


def register(sub) -> None:
    p = sub.add_parser("train", help="train on Fashion-MNIST with the chapter's recipe")
    add_network_args(p)
    add_recipe_args(p)
    add_data_args(p, auto=True)
    add_recipe_preset_arg(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<time>-<backend>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a stopped run from its newest intact checkpoint, with its saved settings "
                        "(--epochs may extend it; --backend continues it in another framework)")
    p.add_argument("--workers", type=int, default=1,
                   help="data-parallel workers on this machine, started with the framework's own launcher "
                        "(torchrun, TF_CONFIG, MXNet's parameter server); --batch-size stays the global batch "
                        "(default: 1)")
    p.add_argument("--allow-network", action="store_true",
                   help=f"let a data-parallel engine that cannot be bound to one address (TensorFlow's gRPC "
                        f"server) listen on every interface of a machine on a network; its workers accept "
                        f"work from anyone who can reach them, so only on a trusted network (also "
                        f"${ALLOW_ENV}=1)")
    p.set_defaults(func=run, backend=None)  # None: the default backend, or on --resume the run's own


def run(a: argparse.Namespace) -> int:
    from nin_multi.train import resume, train

    if a.workers != 1:
        return workers(a)
    if a.resume:
        resume(a.resume, epochs=a.epochs, progress_bar=a.progress, backend=a.backend,
               allow_network=a.allow_network)
        return 0
    train(config_from_args(a, keep_auto=True, backend=a.backend or DEFAULTS.backend), overwrite=a.overwrite,
          allow_network=a.allow_network)
    return 0


def workers(a: argparse.Namespace) -> int:
    """``--workers N``: the framework's own launcher starts N copies of this command without it, once
    what N workers cannot train is refused here, before any process starts."""
    from nin_multi.distributed import check_config, launch, refuse_workers
    from nin_multi.isolation import network_allowed
    from nin_multi.record import read_run_config
    from nin_multi.run import default_run_dir

    backend = refuse_workers(a.backend or DEFAULTS.backend, a.workers)
    argv = list(a.argv)
    if a.resume and not a.backend:  # the run's own framework, read as resume() reads it
        backend = refuse_workers(read_run_config(Path(a.resume))["backend"], a.workers)
    cfg = resumed_config(a.resume) if a.resume else config_from_args(a, keep_auto=True, backend=backend)
    if cfg is not None:
        check_config(a.workers, cfg, *data_sizes(cfg))
    if not a.resume:  # a new run's settings are known here: --precision auto is measured once, before launch
        argv += precision_for_workers(cfg)
    given = a.resume or a.out  # every worker must be given the same run directory
    out = given or str(default_run_dir(backend))
    launch(backend, a.workers, argv if given else [*argv, "--out", out], out,
           allow_network=a.allow_network or network_allowed())
    return 0


def resumed_config(run_dir: str):
    """The settings a resumed run's workers will read, or None where the run directory cannot give them
    (each worker then says what is wrong with it)."""
    from nin_multi.config import TrainConfig
    from nin_multi.errors import NinMultiError
    from nin_multi.record import read_run_config

    try:
        return TrainConfig.from_dict(read_run_config(Path(run_dir)))
    except (NinMultiError, OSError, TypeError, KeyError):
        return None


def data_sizes(cfg) -> tuple[int, int]:
    """The training and test set sizes the workers will load (``--subset``/``--test-subset`` applied):
    loaded here once, as each worker loads them (which also downloads the data once, not per worker)."""
    from nin_multi.train import load_data

    ds = load_data(cfg)
    return len(ds.train_images), len(ds.test_images)


def precision_for_workers(cfg) -> list[str]:
    """``--precision auto`` is measured once, here, and every worker is given its answer: workers that
    measured each for itself could choose differently."""
    from nin_multi.backends import get_backend
    from nin_multi.config import AUTO
    from nin_multi.train import choose_precision, spec_for

    if cfg.precision != AUTO:
        return []
    backend = get_backend(cfg.backend)
    resolved, choice = choose_precision(backend, spec_for(cfg), cfg)
    print(choice.line())
    return ["--precision", resolved.precision]
