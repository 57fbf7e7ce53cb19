"""Data parallelism on each framework's own engine, behind one small object (HF Accelerate's idea).

``World`` is this process's place in a run. A process no launcher started is a world of one: ``prepare``
builds the model and the backend's own Trainer and the rest does nothing, so the training driver has no
distributed branches. Under a launcher (torchrun, ``TF_CONFIG``, MXNet's ``DMLC_*``; read by
``cluster.from_env``) ``prepare`` asks the backend's ``<module>_dist`` companion to start its engine (DDP
over gloo/NCCL, MultiWorkerMirroredStrategy, a ``dist_sync`` kvstore) and to build the model where the
engine needs it built, and wraps the engine in a ``ShardedTrainer``, which the driver drives like a
single-process Trainer; only rank 0 writes the run directory and the console.

The meaning is the same for every engine: ``--batch-size`` is the global batch; every worker builds the
same global batch (order from (seed, epoch), as one process) and computes its contiguous 1/N share of it
(``Context.shard``: sizes differ by at most one where N does not divide the epoch's last, shorter batch);
each worker's loss is its examples' summed loss divided by the global batch size, and the engine sums the
workers' gradients, so the update is the single-process update on the global batch. The engine steps the
backend's own Trainer (``train_step(x, y, lr, total)``) with the driver's rate, so every optimizer
setting and precision one process has trains on N workers too. Evaluation is
sharded the same way and its sums reduced, so it gives one process's numbers. Training metrics are
reduced every step, so every worker sees the same loss (and stops together if it diverges).

``launch(backend, workers, argv, run_dir)`` is the ``--workers N`` convenience on one machine: the
backend's ``start_workers`` starts its framework's own N-worker setup on 127.0.0.1 (torchrun; N processes
with TF_CONFIG; MXNet's scheduler, server and N workers), each process in its own process group, and
``launch`` tears all of it down when the run ends or any process fails.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Optional

import numpy as np

from . import isolation, machine
from .cluster import TIMEOUT_ENV, Context, from_env
from .errors import ConfigError, DistributedError, NinMultiError
from .interpreters import describe_exit

#: Set for every process ``--workers`` starts (and inherited by torchrun's workers): it dies with its parent.
LAUNCHED_ENV = "NIN_MULTI_LAUNCHED"
DROPOUT_NOTE = ("dropout masks differ per worker (each draws its own for its share of the batch), so with "
                "dropout a distributed run matches one process in distribution, not bit for bit")
#: For an engine whose launch module declares ``SAME_DROPOUT_MASKS`` (one step on the global batch, one key).
SAME_MASKS_NOTE = ("dropout masks are drawn over the global batch with the step's one key, so they are one "
                   "process's on every batch that splits evenly over the workers' devices; on one that does not "
                   "(an epoch's last, shorter batch, say) each share is padded and the masks fall on other rows")


class World:
    """This process's place in the run; every method is a no-op in a world of one (a single process)."""

    def __init__(self, ctx: Optional[Context] = None, allow_network: bool = False):
        self.ctx = ctx if ctx is not None else from_env(allow_network=allow_network)
        self.trainer = None

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def size(self) -> int:
        return self.ctx.world_size

    @property
    def serves(self) -> bool:
        """A parameter server's scheduler or server (MXNet's ``DMLC_ROLE``): it trains nothing."""
        return self.ctx.role != "worker"

    def prepare(self, backend, cfg, make_model: Callable, make_trainer: Callable, n_train: int, n_test: int):
        """The model and what the driver trains it with: the backend's Trainer in a world of one, else
        its engine's ``ShardedTrainer`` (refused first where N workers cannot compute what one would)."""
        if not self.ctx.active:
            backend.configure(cfg.threads, cfg.seed)
            model = make_model()
            return model, make_trainer(model)
        from nin_multi.backends import capabilities, companion, data_parallel

        if not capabilities(backend.NAME).data_parallel:
            raise ConfigError(f"the {backend.NAME} backend has no data-parallel engine yet: train it in one process "
                              f"(several workers: {', '.join(data_parallel())})")
        check_config(self.size, cfg, n_train, n_test)  # ``--workers`` checked it before launch; by hand, here
        backend.configure(cfg.threads, cfg.seed)
        model, engine = companion(backend.NAME, "dist").distribute(self.ctx, cfg, make_model, make_trainer)
        self.trainer = ShardedTrainer(engine, self.ctx)
        return model, self.trainer

    def agree(self, error: Optional[BaseException], what: str) -> None:
        """Every worker learns whether any failed ``what``; alone, an error is simply raised."""
        if self.trainer is not None:
            self.trainer.agree(error, what)
        elif error is not None:
            raise error

    def check_same_weights(self, weights: dict) -> None:
        if self.trainer is not None:
            self.trainer.check_same_weights(weights)

    def describe(self, batch_size: int) -> str:
        """What the start-up line adds about the workers (nothing for one process)."""
        if not self.ctx.active:
            return ""
        return (f" x {self.size} workers ({self.ctx.launcher}); --batch-size {batch_size} is the global batch, "
                f"{batch_size // self.size} per worker")

    def notes(self, spec) -> list[str]:
        """What the run's numbers mean beside one process's: its engine's dropout masks, where it has dropout."""
        if not self.ctx.active or not any(getattr(layer, "rate", 0) for layer in spec.layers):
            return []
        same = getattr(engine_launcher(self.ctx), "SAME_DROPOUT_MASKS", False)
        return [f"note: {SAME_MASKS_NOTE if same else DROPOUT_NOTE}"]

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.close()


def engine_launcher(ctx: Context):
    """The launch module of the backend whose launcher started this process (``ctx.launcher``)."""
    from nin_multi.backends import capabilities, data_parallel, launcher

    return launcher(next(k for k in data_parallel() if capabilities(k).data_parallel == ctx.launcher))


def check_config(n: int, cfg, n_train: int, n_test: int) -> None:
    """Refuse, before any process or engine starts, what ``n`` workers cannot compute as one process would.
    ``--workers`` runs it once in the launcher; a worker started by hand (torchrun, ``TF_CONFIG``) in
    ``World.prepare``, where it is the only place (there it cannot fail for a launcher's workers, which
    have the settings and data the launcher checked)."""
    if cfg.batch_size % n:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and {n} workers cannot share it "
                          f"equally: choose a multiple of {n} (e.g. {cfg.batch_size - cfg.batch_size % n or n})")
    for split, size in (("training", n_train), ("test", n_test)):
        last = size % cfg.batch_size
        if 0 < last < n:
            raise ConfigError(f"the {split} set's last batch has {last} example(s), fewer than the {n} workers: "
                              f"change --batch-size or --{'subset' if split == 'training' else 'test-subset'}")


# -- the watchdog: no collective waits forever --------------------------------------------------------
class Watchdog:
    """Ends the process when one collective takes longer than the timeout. Engines have timeouts of their
    own (gloo's, TensorFlow's collective timeout) but MXNet's parameter server waits forever for a worker
    that died, so every backend gets this bound as well."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._deadline: Optional[float] = None
        self._what = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True, name="nin-multi-watchdog").start()

    @contextmanager
    def guard(self, what: str):
        """Bound ``what`` in time, and turn the engine's error for a peer that went away (gloo's
        "Connection closed by peer", a cancelled TensorFlow collective, ...) into one line: with several
        workers such an error is the echo of another worker's failure, which the launcher reports."""
        with self._lock:
            self._deadline, self._what = time.monotonic() + self.ctx.timeout, what
        try:
            yield
        except (NinMultiError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the engines raise their own types (RuntimeError, tf.errors...)
            # TensorFlow's message opens with a heading and the Python stack that defined the failed node
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().endswith(":")
                     and not ln.strip().startswith(("File ", "Detected at node"))]
            cause = (lines or ["no message"])[0][:200]
            raise DistributedError(f"worker {self.ctx.rank} of {self.ctx.world_size} failed during {what}, most "
                                   f"likely because another worker stopped ({type(e).__name__}: {cause}); continue "
                                   f"from the last checkpoint with --resume") from None
        finally:
            with self._lock:
                self._deadline = None

    def _watch(self):
        while True:
            time.sleep(0.5)
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if late:
                sys.stderr.write(f"nin-multi: error: worker {self.ctx.rank} of {self.ctx.world_size} waited more "
                                 f"than {self.ctx.timeout:g} s for the other workers during {what}: a worker has "
                                 f"died or hangs; stopping (continue from the last checkpoint with --resume; "
                                 f"${TIMEOUT_ENV} sets the bound)\n")
                sys.stderr.flush()
                os._exit(DistributedError.exit_code)


class ShardedTrainer:
    """What the driver's loop sees in a distributed run: the single-process Trainer's interface.

    It receives the global batch and the driver's rate for this step, hands this worker's share to the
    backend's engine with the rate and the global size (for the loss scale), and returns the sums over all
    workers."""

    def __init__(self, engine, ctx: Context):
        self.engine, self.ctx = engine, ctx
        self.watchdog = Watchdog(ctx)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: Optional[int] = None) -> tuple[float, int]:
        part = self.ctx.shard(len(y))
        with self.watchdog.guard("a training step"):
            loss, correct = self.engine.train_step(x[part], y[part], lr, total or len(y))
            return self._total(loss, correct)

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        part = self.ctx.shard(len(y))
        with self.watchdog.guard("evaluation"):
            loss, correct = self.engine.eval_step(x[part], y[part])
            return self._total(loss, correct)

    def _total(self, loss: float, correct: int) -> tuple[float, int]:
        loss, correct = self.engine.all_sum(np.array([loss, correct], np.float64))
        return float(loss), int(round(correct))

    def all_sum(self, values, what: str = "an exchange between workers") -> np.ndarray:
        with self.watchdog.guard(what):
            return self.engine.all_sum(np.asarray(values, np.float64))

    def agree(self, error: Optional[BaseException], what: str) -> None:
        """Every worker learns whether any failed ``what`` (rank 0 making the run directory, say), so
        none is left waiting for a worker that has stopped."""
        failed = self.all_sum([error is not None], what)[0]
        if error is not None:
            raise error
        if failed:
            raise DistributedError(f"another worker failed during {what}; its message says why")

    def check_same_weights(self, weights: dict) -> None:
        """Every worker must start from the same weights (same seed, same checkpoint): compare a
        fingerprint of each tensor with the workers' sum of them, to 1e-6 of the largest (an MXNet server
        started without MXNET_SERVER_TUNABLES sums float64 in float32; another seed differs by O(1))."""
        names = sorted(weights)
        mine = np.array([float(np.sum(np.asarray(weights[k], np.float64) * (1 + np.arange(weights[k].size)
                                                                            .reshape(weights[k].shape) % 7)))
                         for k in names])
        total = self.all_sum(mine, "the start-up weight check")
        scale = 1e-6 * max(1.0, float(np.abs(mine).max()))
        bad = [k for k, a, b in zip(names, mine * self.ctx.world_size, total) if abs(a - b) > scale]
        if bad:
            raise DistributedError(f"the workers start from different weights ({bad[0]} differs): give every worker "
                                   f"the same --seed and, to resume, the same run directory")

    def extra_state(self) -> dict:
        return self.engine.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.engine.load_extra_state(state)

    def close(self) -> None:
        self.engine.close()


# -- the --workers N launcher ------------------------------------------------------------------------
class Launch:
    """The processes of one local N-worker run, each in its own process group (so that a torchrun's
    workers go with it); ``stop()`` ends them all: SIGTERM, then SIGKILL after a grace period."""

    GRACE = 5.0

    def __init__(self, allow_network: bool = False):
        self.allow_network = allow_network  # --allow-network: an engine may listen on every interface
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._at_stop: list[Callable] = []

    def start(self, name: str, cmd: list[str], env: dict, preexec=None) -> subprocess.Popen:
        """In its own process group, killed with the launcher (``PR_SET_PDEATHSIG``, even by SIGKILL);
        ``preexec`` runs in the child before it starts ``cmd`` (a private network namespace, say)."""
        p = subprocess.Popen(cmd, env={**env, LAUNCHED_ENV: "1"}, start_new_session=True,
                             preexec_fn=isolation.preexec(preexec))
        self.procs.append((name, p))
        return p

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, p in self.procs:
                if p.poll() is None or sig == signal.SIGKILL:
                    try:
                        os.killpg(p.pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            deadline = time.monotonic() + self.GRACE
            while sig == signal.SIGTERM and time.monotonic() < deadline and self.running():
                time.sleep(0.1)
        for _, p in self.procs:
            p.wait()

    def at_stop(self, fn: Callable) -> None:
        """``fn(failure) -> failure`` once every process has ended: cleans up, may name the failed worker."""
        self._at_stop.append(fn)

    def settle(self, failure: Optional[tuple[str, int]]) -> Optional[tuple[str, int]]:
        for fn in self._at_stop:
            failure = fn(failure)
        return failure

    def linger(self, seconds: float) -> None:
        """Helpers that leave once the workers have (MXNet's scheduler and server): up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.running():
            time.sleep(0.2)

    def running(self) -> bool:
        return any(p.poll() is None for _, p in self.procs)

    def wait(self, workers: list[str]) -> Optional[tuple[str, int]]:
        """Until every named worker has ended; the first failure (name, exit status) ends the wait."""
        while True:
            running = False
            for name, p in self.procs:
                rc = p.poll()
                if rc is None:
                    running = running or name in workers
                elif rc != 0:
                    return name, rc
            if not running:
                return None
            time.sleep(0.2)


def strip_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def refuse_workers(backend: str, workers: int) -> str:
    """``--workers N``'s refusals that need nothing but the command line: the backend's canonical name."""
    from nin_multi.backends import canonical_name, capabilities

    if from_env().active:
        raise ConfigError("--workers starts its own workers; it cannot be used inside a torchrun, TF_CONFIG or "
                          "DMLC launch (leave it out there)")
    if workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers}")
    backend = canonical_name(backend)
    if not capabilities(backend).data_parallel:
        raise ConfigError(f"--workers is not available for the {backend} backend")
    return backend


def launch(backend: str, workers: int, argv: list[str], run_dir: str, allow_network: bool = False) -> None:
    """``train --workers N``: the framework's own N-worker setup on 127.0.0.1, for one run directory. The
    caller has refused what the N workers cannot train (``check_config``) before: nothing is started
    that would fail. ``allow_network``: the user's ``--allow-network``, for an engine that cannot be bound
    to loopback (the workers have it on their command line)."""
    from nin_multi.backends import companion, launchers

    backend = refuse_workers(backend, workers)
    strip = {name for module in launchers() for name in module.LAUNCH_VARS}
    env = {k: v for k, v in os.environ.items() if k not in strip}
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The workers share this machine's cores: each computes with its share unless the user said otherwise
    # (--threads, or OMP_NUM_THREADS), instead of every worker taking every core.
    env.setdefault("OMP_NUM_THREADS", str(max(1, machine.usable_cores() // workers)))
    run, failure = Launch(allow_network), None
    try:
        names = companion(backend, "dist").start_workers(run, workers, [sys.executable, "-m", "nin_multi",
                                                                        *strip_workers(argv)], env)
        failure = run.wait(names)
        if failure is None:
            run.linger(30)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (the CLI's handlers raise Terminated)
        raise DistributedError(f"{getattr(e, 'how', 'interrupted')}; stopped all {workers} workers; continue "
                               f"with --resume {run_dir} --workers {workers}") from None
    finally:
        run.stop()
        failure = run.settle(failure)
    if failure is not None:
        name, rc = failure
        raise DistributedError(f"{name} {describe_exit(rc)}, so the {workers}-worker {backend} run was stopped (every "
                               f"process ended); the last completed epoch's checkpoint is in {run_dir}: continue "
                               f"with --resume {run_dir} --workers {workers}")


def die_with_launcher() -> None:
    """A worker ``--workers`` started (or torchrun's worker under it) ends when its parent does."""
    if os.environ.get(LAUNCHED_ENV) == "1":
        isolation.die_with_parent()
        if os.getppid() == 1:  # the parent is already gone
            os._exit(DistributedError.exit_code)


def serve(ctx: Context, backend: str) -> None:
    """A parameter server's scheduler or server (MXNet's ``DMLC_ROLE``): its engine's launch module runs it
    until the workers finish."""
    from nin_multi.backends import canonical_name, capabilities, data_parallel

    owner = next(k for k in data_parallel() if capabilities(k).data_parallel == ctx.launcher)
    if canonical_name(backend) != owner:
        raise DistributedError(f"DMLC_ROLE={ctx.role} is a role of MXNet's parameter server; it needs "
                               f"--backend {owner}, not {backend}")
    engine_launcher(ctx).serve(ctx)
