"""``nin-multi study``: the exercises answered by experiment, stored as a table and a picture
(the experiments are ``nin_multi.study``)."""
from __future__ import annotations

import argparse

DEFAULT_VARIANTS = "chapter,one-1x1,three-1x1,no-1x1,3x3-inner,fc-head"


def register(sub) -> None:
    p = sub.add_parser("study", help=("the chapter's exercises by experiment: the variants over seeds, the "
                                      "collapse of plain SGD at ln 10; a table and a picture each, continued when "
                                      "run again"))
    kinds = p.add_subparsers(dest="study", required=True)

    v = kinds.add_parser("variants", help="exercises 1-3: each variant trained with a recipe over several seeds "
                                          "(test accuracy mean and sd, seconds, parameters)")
    v.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default: {DEFAULT_VARIANTS})")
    v.add_argument("--seeds", default="0,1,2",
                   help="comma-separated seeds, one run of every variant each (default: 0,1,2)")
    v.add_argument("--recipe", default="fast", help="the recipe trained (default: fast)")
    v.add_argument("--epochs", type=int, default=4,
                   help="epochs per run; the recipe's schedule spans them (default: 4)")
    v.add_argument("--backend", "-b", default="torch", help="the framework that trains (default: torch)")
    v.add_argument("--precision", default=None, help="fp32, bf16 or auto (default: the recipe's)")
    v.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    v.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images only")
    _common(v, "docs/img/exercises-seeds")
    v.set_defaults(func=run_variants)

    c = kinds.add_parser("collapse", help="the hyperparameter exercise: the chapter's plain SGD from each init and "
                                          "learning rate over seeds; runs stuck at ln 10 and dead channels, and a "
                                          "few runs again in every framework in float64")
    c.add_argument("--seeds", default="0,1,2,3,4,5", help="comma-separated seeds (default: 0 to 5)")
    c.add_argument("--lrs", default="0.1,0.05", help="learning rates (default: 0.1,0.05: the 1st edition's and "
                                                     "d2l.ai's current)")
    c.add_argument("--inits", default="xavier,kaiming,kaiming-identity", help="initialisations (default: all three)")
    c.add_argument("--backend", "-b", default="torch", help="the framework of the study (default: torch)")
    c.add_argument("--resize", type=int, default=67, help="image size (default: 67, the smallest the network takes)")
    c.add_argument("--batch-size", type=int, default=128, help="batch (default: 128, the chapter's)")
    c.add_argument("--subset", type=int, default=1024, help="the first N training images (default: 1024)")
    c.add_argument("--test-subset", type=int, default=250, help="the first N test images (default: 250)")
    c.add_argument("--epochs", type=int, default=2, help="epochs over the subset (default: 2)")
    c.add_argument("--window", type=int, default=4,
                   help="stuck: the mean loss of this many last steps ... (default: 4)")
    c.add_argument("--tolerance", type=float, default=0.01, help="... within this of ln 10 (default: 0.01)")
    c.add_argument("--probe", type=int, default=256,
                   help="dead: a channel's ReLU output 0 on every one of the first N training images (default: 256)")
    c.add_argument("--cross", default="0:0.1:kaiming,0:0.1:xavier", metavar="SEED:LR:INIT,...",
                   help="cases trained again in every framework in float64 without dropout ('' for none)")
    c.add_argument("--cross-subset", type=int, default=256,
                   help="those cases' first N training images (default: 256; float64 is slow)")
    c.add_argument("--cross-epochs", type=int, default=2, help="those cases' epochs (default: 2)")
    c.add_argument("--cross-backends", default="torch,tensorflow,mxnet,jax",
                   help="the frameworks of those cases (default: torch,tensorflow,mxnet,jax)")
    c.add_argument("--part", choices=("all", "study", "frameworks"), default="all",
                   help="all (default); study or frameworks: only that part, so the two can run at once in two "
                        "processes (each keeps its finished runs in a file of its own)")
    _common(c, "docs/img/collapse")
    c.set_defaults(func=run_collapse)


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--data-dir", default=None,
                   help="the Fashion-MNIST files (default: $NIN_MULTI_DATA_DIR or the cache)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core)")
    p.add_argument("--out", default=out, help=f"the files' stem: OUT.txt, OUT.png and OUT.jsonl, the finished runs "
                                              f"a rerun continues from (default: {out})")
    p.add_argument("--restart", action="store_true", help="discard the finished runs in OUT.jsonl and start again")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="accepted; the study prints "
                                                                                "one line per run")


def _argv(a: argparse.Namespace) -> list[str]:
    return a.argv[1:] if a.argv and a.argv[0] == "study" else a.argv


def run_variants(a: argparse.Namespace) -> int:
    from nin_multi.backends import can_train, or_list, trainable
    from nin_multi.errors import ConfigError
    from nin_multi.recipes import get_recipe
    from nin_multi.reproduce.statistics import parse_seeds
    from nin_multi.study import outputs, parse_variants, variants_study

    variants, seeds = parse_variants(a.variants), parse_seeds(a.seeds)
    recipe = get_recipe(a.recipe)
    if not can_train(a.backend):
        raise ConfigError(f"{a.backend} is inference-only: study with {or_list(trainable())}")
    settings = dict(recipe.settings)
    settings.pop("variant", None)
    cfg_kwargs = {**settings, "epochs": a.epochs, "backend": a.backend, "recipe": recipe.name,
                  "subset": a.subset, "test_subset": a.test_subset, "data_dir": a.data_dir, "threads": a.threads}
    if a.precision:
        cfg_kwargs["precision"] = a.precision
    if cfg_kwargs.get("warmup_epochs", 0) >= a.epochs:  # the one-cycle's warm-up shrinks with the run
        cfg_kwargs["warmup_epochs"] = a.epochs / 4
    txt, png, _ = outputs(a.out)
    variants_study(variants, seeds, cfg_kwargs, a.out, ["study"] + _argv(a), restart=a.restart,
                   log=lambda line: print(line, flush=True))
    print(txt.read_text(), end="")
    print(f"wrote {txt} and {png}")
    return 0


def run_collapse(a: argparse.Namespace) -> int:
    from nin_multi import backends
    from nin_multi.errors import ConfigError
    from nin_multi.reproduce.statistics import parse_seeds
    from nin_multi.study import CollapseSetup, collapse_study, parse_cases, parse_floats, parse_inits

    seeds, lrs, inits = parse_seeds(a.seeds), parse_floats(a.lrs, "--lrs"), parse_inits(a.inits)
    cross = parse_cases(a.cross)
    cross_backends = backends.select(a.cross_backends, trains=True, bound=True) if cross else []
    if cross and len(cross_backends) < 2:
        raise ConfigError(f"--cross compares frameworks and needs at least two of --cross-backends installed, got "
                          f"{', '.join(cross_backends) or 'none'}; or --cross '' for none")
    if not backends.can_train(a.backend):
        raise ConfigError(f"{a.backend} is inference-only: study with {backends.or_list(backends.trainable())}")
    setup = CollapseSetup(resize=a.resize, batch_size=a.batch_size, subset=a.subset, epochs=a.epochs,
                          window=a.window, tolerance=a.tolerance, probe=a.probe, test_subset=a.test_subset,
                          cross_subset=a.cross_subset, cross_epochs=a.cross_epochs)
    result = collapse_study(setup, seeds, lrs, inits, backends.canonical_name(a.backend), cross, cross_backends,
                            a.out, ["study"] + _argv(a), data_dir=a.data_dir, threads=a.threads,
                            restart=a.restart, log=lambda line: print(line, flush=True), part=a.part)
    print(result["txt"].read_text(), end="")
    print(f"wrote {result['txt']} and {result['png']}")
    return 0
