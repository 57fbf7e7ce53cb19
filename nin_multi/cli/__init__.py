"""``python -m nin_multi`` / ``nin-multi``: one module per command, each with ``register(subparsers)``.

The command layer is the top of the package: it parses options and calls the domain code (which has no
argparse). User errors (``NinMultiError``) become one line on stderr and a non-zero exit; anything else is
a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from nin_multi import __version__, environment
from nin_multi.errors import NinMultiError, Terminated

#: The commands, in the order ``--help`` lists them; each module of this package registers its own.
#: They import their frameworks lazily, so ``--help`` stays fast.
COMMANDS = ("train", "summary", "evaluate", "convert", "reproduce", "resources", "compare", "study", "bench",
            "sweep")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nin-multi", description=(
        "Network in Network (Dive into Deep Learning, 8.3) from one spec in PyTorch, TensorFlow/Keras, "
        "MXNet Gluon, JAX/Flax and ONNX."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for command in sub.choices.values():
        if command.formatter_class is argparse.HelpFormatter:
            command.formatter_class = WholeNamesHelpFormatter
    return parser


class WholeNamesHelpFormatter(argparse.HelpFormatter):
    """Wraps help at spaces only: argparse's default also breaks at hyphens, which splits the names a user
    copies from the help (``d2l-1st-`` / ``edition``, ``--warmup-`` / ``epochs``)."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what schedulers send before preempting a job) and SIGHUP (a closed terminal) raise
    ``Terminated``, a ``KeyboardInterrupt``: a run stops as on Ctrl-C, keeping its last checkpoint, and a
    launcher stops its workers. Only in the main thread (where Python delivers signals); the previous
    handlers are restored afterwards."""
    def handler(signum, frame):
        raise Terminated(signum, signal.Signals(signum).name)

    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    try:
        previous = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


#: The commands that use one framework, named by --backend: where that framework is bound to another
#: interpreter (NIN_MULTI_PYTHON_<BACKEND>) the whole command runs there.
ONE_BACKEND = ("train", "summary", "evaluate", "convert", "sweep", "compare")


def bound_backend(args: argparse.Namespace):
    """The backend of a one-framework command when it is bound to another interpreter, else None. A
    ``train --resume`` without --backend continues in the run's own framework, read from its config."""
    from nin_multi import interpreters
    from nin_multi.backends import canonical_name

    if args.command not in ONE_BACKEND:
        return None
    name = getattr(args, "backend", None)
    if not name and args.command == "train":
        if getattr(args, "resume", None):
            from nin_multi.record import read_run_config

            try:
                name = read_run_config(Path(args.resume))["backend"]
            except (NinMultiError, OSError, KeyError, TypeError):
                return None  # the command itself says what is wrong with the run directory
        else:
            from nin_multi.config import TrainConfig

            name = TrainConfig().backend
    if not name:
        return None
    key = canonical_name(name)
    return key if interpreters.bound(key) else None


def main(argv=None) -> int:
    """Exit status: 0 done, 2 an error (one line on stderr), 3 training diverged, 4 a data-parallel run
    failed or a bad value of its environment, or a backend's worker process (or the interpreter the command
    was handed to) died, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # ``train --workers`` starts it again per worker
    try:
        environment.check()  # every variable a run reads, before anything starts
        with sigterm_as_interrupt():
            bound = bound_backend(args)
            if bound:
                from nin_multi.backends import delegate

                return delegate(bound, args.argv)
            return args.func(args)
    except NinMultiError as e:
        print(f"nin-multi: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)
        print(f"nin-multi: {getattr(e, 'how', 'interrupted')}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
