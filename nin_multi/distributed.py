"""Data parallelism on each framework's own engine, behind one small object (HF Accelerate's idea).

Each ecosystem launches its workers its own way and tells them who they are through the environment:
torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``, TensorFlow reads
``TF_CONFIG``, MXNet's parameter server ``DMLC_ROLE``/``DMLC_NUM_WORKER``/``DMLC_PS_ROOT_URI``/....
``from_env()`` reads whichever is there into a ``Context``; the training driver only asks it for the rank,
the world size and ``is_main`` (only rank 0 writes the run directory and the console). The per-framework
part is each backend's ``distribute(ctx, build)``: it starts the engine (DDP over gloo/NCCL,
MultiWorkerMirroredStrategy, a ``dist_sync`` kvstore), builds the model and trainer where the engine
needs them built, and returns an engine that ``ShardedTrainer`` drives like a single-process Trainer.

The meaning is the same for all three: ``--batch-size`` is the global batch; every worker builds the
same global batch (order from (seed, epoch), as one process) and computes its contiguous 1/N share of it
(``shard``: sizes differ by at most one where N does not divide the epoch's last, shorter batch); each
worker's loss is its examples' summed loss divided by the global batch size, and the engine sums the
workers' gradients, so the update is the single-process update on the global batch. Evaluation is
sharded the same way and its sums reduced, so it gives one process's numbers. Training metrics are
reduced every step, so every worker sees the same loss (and stops together if it diverges).

``launch()`` is the ``--workers N`` convenience on one machine: it starts the framework's own N-worker
setup on 127.0.0.1 (torchrun; N processes with TF_CONFIG; MXNet's scheduler, server and N workers), each
in its own process group, and tears all of it down when the run ends or any process fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

from . import environment, isolation, torchrun
from .errors import ConfigError, DistributedError, NinMultiError

TIMEOUT_ENV = "NIN_MULTI_DIST_TIMEOUT"
#: Seconds a worker waits for the others in one collective (a step's gradient exchange, the start)
#: before it gives up: long enough for the slowest step of the chapter's 224x224 run on a CPU.
DEFAULT_TIMEOUT = 300.0
#: The environment ``--workers`` gives MXNet's parameter server: glibc then fills every allocation with
#: zeros (perturb byte 255 fills with its complement; tcache off, since its fast path skips the fill).
#: MXNet 1.9.1's server object never initialises its ``multi_precision_`` flag; left to the allocator's
#: garbage the flag is nearly always set, and the server then stores and sums float64 in float32.
MXNET_SERVER_TUNABLES = "glibc.malloc.tcache_count=0:glibc.malloc.perturb=255"
DMLC_VARS = ("DMLC_ROLE", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT")
#: Set for every process ``--workers`` starts (and inherited by torchrun's workers): it dies with its parent.
LAUNCHED_ENV = "NIN_MULTI_LAUNCHED"
DROPOUT_NOTE = ("dropout masks differ per worker (each draws its own for its share of the batch), so with "
                "dropout a distributed run matches one process in distribution, not bit for bit")


class Context:
    """Who this process is in a data-parallel run; a single process is rank 0 of a world of 1."""

    def __init__(self, launcher: str = "none", rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 role: str = "worker", address: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                 tf_config: Optional[dict] = None):
        self.launcher = launcher      # "none", "torchrun", "tf_config" or "dmlc"
        self.rank = rank              # MXNet's is assigned by its scheduler: set by backends.mxnet.distribute
        self.world_size = world_size
        self.local_rank = local_rank
        self.role = role              # MXNet: "worker", "server" or "scheduler"
        self.address = address        # the coordinator, for messages
        self.timeout = timeout
        self.tf_config = tf_config

    @property
    def active(self) -> bool:
        return self.launcher != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This worker's contiguous part of a global batch of ``n``: sizes differ by at most one."""
        q, r = divmod(n, self.world_size)
        lo = self.rank * q + min(self.rank, r)
        return slice(lo, lo + q + (self.rank < r))

    def __repr__(self) -> str:
        return f"Context({self.launcher}, rank {self.rank} of {self.world_size}, {self.role})"


def _int_env(name: str, env) -> int:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        raise DistributedError(f"${name} must be an integer, got {env.get(name)!r}") from None


def timeout_from_env(env=None) -> float:
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not value > 0:
        raise DistributedError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def from_env(env=None) -> Context:
    """The launcher's environment, read once and checked (``environment.check``); none of them set: a
    single process."""
    env = os.environ if env is None else env
    environment.check(env)
    timeout = timeout_from_env(env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return Context("torchrun", _int_env("RANK", env), _int_env("WORLD_SIZE", env),
                       int(env.get("LOCAL_RANK", 0)), address=f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}",
                       timeout=timeout)
    if "TF_CONFIG" in env:
        try:
            cfg = json.loads(env["TF_CONFIG"])
            cluster, task = cfg["cluster"], cfg["task"]
            chief = list(cluster.get("chief", []))
            workers = list(cluster.get("worker", []))
            kind, index = task["type"], int(task["index"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DistributedError(f"$TF_CONFIG is not a valid cluster description ({e!r}); expected "
                                   '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                                   '"index": i}}') from None
        if kind not in ("chief", "worker"):
            raise DistributedError(f"$TF_CONFIG task type {kind!r}: only chief and worker tasks train "
                                   f"(MultiWorkerMirroredStrategy has no parameter servers)")
        tasks = chief + workers
        rank = index if kind == "chief" else len(chief) + index
        if not 0 <= rank < len(tasks):
            raise DistributedError(f"$TF_CONFIG task {kind} {index} is not in its cluster of {len(tasks)}")
        return Context("tf_config", rank, len(tasks), 0, address=tasks[rank], timeout=timeout, tf_config=cfg)
    if "DMLC_ROLE" in env:
        missing = [v for v in DMLC_VARS if v not in env]
        if missing:
            raise DistributedError(f"MXNet's parameter server needs {', '.join(missing)} as well as DMLC_ROLE")
        role = env["DMLC_ROLE"]
        if role not in ("worker", "server", "scheduler"):
            raise DistributedError(f"$DMLC_ROLE must be worker, server or scheduler, got {role!r}")
        return Context("dmlc", -1 if role == "worker" else 0, _int_env("DMLC_NUM_WORKER", env), role=role,
                       address=f"{env['DMLC_PS_ROOT_URI']}:{env['DMLC_PS_ROOT_PORT']}", timeout=timeout)
    return Context(timeout=timeout)


def check_config(ctx: Context, cfg, n_train: int, n_test: int) -> None:
    """Refuse, before any engine starts, what N workers cannot compute as one process would."""
    n = ctx.world_size
    if cfg.batch_size % n:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and {n} workers cannot share it "
                          f"equally: choose a multiple of {n} (e.g. {cfg.batch_size - cfg.batch_size % n or n})")
    for split, size in (("training", n_train), ("test", n_test)):
        last = size % cfg.batch_size
        if 0 < last < n:
            raise ConfigError(f"the {split} set's last batch has {last} example(s), fewer than the {n} workers: "
                              f"change --batch-size or --{'subset' if split == 'training' else 'test-subset'}")
    if cfg.precision not in ("fp32", "fp64"):
        raise ConfigError(f"--precision {cfg.precision} is not supported with several workers yet; use fp32")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_port(host: str, port: int, what: str, env_var: str) -> None:
    if host in ("127.0.0.1", "localhost") and port_in_use("127.0.0.1", port):
        raise DistributedError(f"port {port} on {host} ({what}) is in use by another program: choose a free "
                               f"port with {env_var}, or stop the program that holds it")


def free_ports(n: int) -> list[int]:
    """Ports the OS has free now (held together so that they differ); a tiny race with other programs."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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

    It receives the global batch, hands this worker's share to the backend's engine with the global
    size (for the loss scale), and returns the sums over all workers."""

    def __init__(self, engine, ctx: Context):
        self.engine, self.ctx = engine, ctx
        self.watchdog = Watchdog(ctx)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        part = self.ctx.shard(len(y))
        with self.watchdog.guard("a training step"):
            loss, correct = self.engine.train_step(x[part], y[part], len(y))
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


def rank_seed(seed: int, rank: int) -> int:
    """A worker's own dropout seed: rank 0 keeps the run's (so its masks are one process's)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0] & 0x7FFFFFFF)


# -- the --workers N launcher ------------------------------------------------------------------------
class Launch:
    """The processes of one local N-worker run, each in its own process group (so that a torchrun's
    workers go with it); ``stop()`` ends them all: SIGTERM, then SIGKILL after a grace period."""

    GRACE = 5.0

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict, preexec=None) -> subprocess.Popen:
        """In its own process group, killed with the launcher (``PR_SET_PDEATHSIG``, even by SIGKILL);
        ``preexec`` runs in the child before it starts ``cmd``."""
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


def _torchrun_failure(report: Path, name: str, rc: int) -> tuple[str, int]:
    """(worker N, its status) from ``nin_multi.torchrun``'s report, else torchrun's own."""
    try:
        failed = json.loads(report.read_text())
        return f"worker {int(failed['rank'])}", int(failed["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return name, rc


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


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


def launch(backend: str, workers: int, argv: list[str], run_dir: str) -> None:
    """``train --workers N``: the framework's own N-worker setup on 127.0.0.1, for one run directory."""
    if from_env().active:
        raise ConfigError("--workers starts its own workers; it cannot be used inside a torchrun, TF_CONFIG or "
                          "DMLC launch (leave it out there)")
    if workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers}")
    py = sys.executable
    train = [py, "-m", "nin_multi", *strip_workers(argv)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TF_CONFIG", *DMLC_VARS)}
    env.setdefault("PYTHONUNBUFFERED", "1")
    run = Launch()
    names: list[str] = []
    report = None
    if backend == "torch":
        port = int(os.environ.get("MASTER_PORT", 0)) or free_ports(1)[0]
        check_port("127.0.0.1", port, "torchrun's rendezvous", "MASTER_PORT")
        report = Path(tempfile.mkdtemp(prefix="nin-multi-torchrun-")) / "failure.json"
        # torchrun would set 1 with a banner; the cores shared out is what it means
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        env["GLOO_SOCKET_IFNAME"] = loopback_interface()  # gloo's pairs on loopback, not the host name's address
        run.start("torchrun", [py, "-m", "nin_multi.torchrun", "--nnodes", "1", "--nproc-per-node",
                               str(workers), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "--max-restarts", "0", "--monitor-interval", "0.5", *train[1:]],
                  {**env, torchrun.REPORT_ENV: str(report)})
        names = ["torchrun"]
    elif backend == "tensorflow":
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # a lost peer is one line below, not pages of gRPC errors
        ports = free_ports(workers)
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        private = isolation.private_network_available()  # TensorFlow listens on every interface: see isolation
        if private:
            env[isolation.PRIVATE_ENV] = "1"
        else:
            isolation.refuse_unbound(*TF_EXPOSURE)
        first = None
        for i in range(workers):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            step = None if not private else (isolation.new_private_network if first is None
                                             else isolation.join_private_network(first.pid))
            p = run.start(f"worker {i}", train, {**env, "TF_CONFIG": tf_config}, step)
            first = first or p
            names.append(f"worker {i}")
    elif backend == "mxnet":
        port = int(os.environ.get("DMLC_PS_ROOT_PORT", 0)) or free_ports(1)[0]
        check_port("127.0.0.1", port, "the MXNet scheduler", "DMLC_PS_ROOT_PORT")
        dmlc = {**env, "DMLC_NUM_WORKER": str(workers), "DMLC_NUM_SERVER": "1", "DMLC_PS_ROOT_URI": "127.0.0.1",
                "DMLC_PS_ROOT_PORT": str(port), "DMLC_NODE_HOST": "127.0.0.1"}
        run.start("scheduler", train, {**dmlc, "DMLC_ROLE": "scheduler"})
        tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES"), MXNET_SERVER_TUNABLES) if t)
        run.start("server", train, {**dmlc, "DMLC_ROLE": "server", "GLIBC_TUNABLES": tunables})
        for i in range(workers):
            run.start(f"worker {i}", train, {**dmlc, "DMLC_ROLE": "worker"})
            names.append(f"worker {i}")
    else:
        raise ConfigError(f"--workers is not available for the {backend} backend")
    failure = None
    try:
        failure = run.wait(names)
        if failure is None and backend == "mxnet":  # the scheduler and server leave once the workers have
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and run.running():
                time.sleep(0.2)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (the CLI's handlers raise Terminated)
        raise DistributedError(f"{getattr(e, 'how', 'interrupted')}; stopped all {workers} workers; continue "
                               f"with --resume {run_dir} --workers {workers}") from None
    finally:
        run.stop()
        if report is not None:
            if failure is not None:  # torchrun names the worker that failed first
                failure = _torchrun_failure(report, *failure)
            shutil.rmtree(report.parent, ignore_errors=True)
    if failure is not None:
        name, rc = failure
        raise DistributedError(f"{name} {_describe(rc)}, so the {workers}-worker {backend} run was stopped (every "
                               f"process ended); the last completed epoch's checkpoint is in {run_dir}: continue "
                               f"with --resume {run_dir} --workers {workers}")


#: What a TensorFlow worker exposes, for ``isolation.refuse_unbound``.
TF_EXPOSURE = ("TensorFlow's gRPC worker", "runs any graph it is sent (file reads and writes included)")


def loopback_interface() -> str:
    """The name of the loopback interface (lo on Linux, lo0 on macOS), for gloo's GLOO_SOCKET_IFNAME."""
    names = [n for _, n in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((n for n in ("lo", "lo0") if n in names), "lo")


def die_with_launcher() -> None:
    """A worker ``--workers`` started (or torchrun's worker under it) ends when its parent does."""
    if os.environ.get(LAUNCHED_ENV) == "1":
        isolation.die_with_parent()
        if os.getppid() == 1:  # the parent is already gone
            os._exit(DistributedError.exit_code)


def serve(ctx: Context, backend: str) -> None:
    """An MXNet scheduler or server (``DMLC_ROLE``): importing MXNet runs it until the workers finish."""
    from nin_multi.backends import canonical_name, get_backend

    if canonical_name(backend) != "mxnet":
        raise DistributedError(f"DMLC_ROLE={ctx.role} is a role of MXNet's parameter server; it needs "
                               f"--backend mxnet, not {backend}")
    if ctx.role == "scheduler":
        host, port = ctx.address.rsplit(":", 1)
        check_port(host, int(port), "the MXNet scheduler", "DMLC_PS_ROOT_PORT")
    get_backend("mxnet")
