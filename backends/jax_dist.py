"""JAX's data parallelism: ``jax.distributed`` processes, one global batch sharded over their devices.

Each process joins JAX's coordination service (``jax.distributed.initialize``; CPU collectives over gloo)
and sees every process's devices. The engine builds each step's global batch from the workers' shares
(``jax.make_array_from_process_local_data``, sharded along the batch over a ``Mesh`` of all devices), keeps
the parameters and optimizer state replicated, and runs **the JAX Trainer's own jitted step** on them:
XLA adds the gradients' all-reduce, so the update is one process's on the global batch, with the same
Optax optimizer (momentum, Nesterov, weight decay, the schedule's rate, label smoothing). Dropout masks
are drawn over the global batch with the step's key, as one process draws them.

``start_workers`` is ``train --workers N``'s launcher: N processes on 127.0.0.1, told the coordinator's
address, the process count and their own id (``jax_launch.LAUNCH_ENV``). The coordinator (process 0) listens on
the address it is given, not on every interface as JAX's default would have it, and gloo's pairs are
made on 127.0.0.1 when the coordinator is there (else on the interface that reaches the coordinator).
"""
from __future__ import annotations

import functools
import gc
import os
import signal
import socket
import sys
import threading
import warnings

import numpy as np

from nin_multi.backends.jax import Trainer, jax
from nin_multi.backends.jax_launch import LAUNCH_ENV
from nin_multi.cluster import TIMEOUT_ENV
from nin_multi.errors import DistributedError
from nin_multi.host import check_port, free_ports
from nin_multi.machine import usable_cores

try:  # JAX 0.8 and newer: the config option's own context manager (jax.experimental's is gone)
    from jax import enable_x64 as _x64_option

    def enable_x64():
        return _x64_option(True)
except ImportError:  # JAX 0.7 and older
    from jax.experimental import enable_x64

#: The signals the run stops on (``nin_multi.cli``'s handlers, which JAX's start-up disturbs).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def join(ctx) -> None:
    """Join the coordination service at ``ctx.address`` (process 0 runs it, bound to that address alone)
    and make the CPU backend with gloo collectives whose pairs listen on the address that reaches it.
    Must come before XLA's backend starts (``backends/jax.py`` calls it from ``device()``)."""
    from jax._src import distributed, xla_bridge
    from jax._src.lib import xla_client

    if jax.distributed.is_initialized():
        return
    host, _, port = (ctx.address or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"${LAUNCH_ENV['address']} must be process 0's host:port, got {ctx.address!r}: "
                               f"set it on every process, or start the workers with --workers")
    if not 0 <= ctx.rank < ctx.world_size:
        raise DistributedError(f"${LAUNCH_ENV['rank']} {ctx.rank} is not below ${LAUNCH_ENV['world_size']} "
                               f"{ctx.world_size}: process ids count from 0")
    if ctx.rank == 0:
        check_port(host.strip("[]"), int(port), "JAX's coordination service", LAUNCH_ENV["address"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    own = _own_address(host)

    def cpu_client():  # JAX's own CPU client, with gloo told where to listen (by default: the host name's address)
        collectives = xla_client._xla.make_gloo_tcp_collectives(distributed_client=distributed.global_state.client,
                                                                hostname=own)
        return xla_bridge.make_cpu_client(collectives=collectives)

    xla_bridge.register_backend_factory("cpu", cpu_client, priority=0)
    handlers = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    # JAX's client ends the process with a fatal log line when the others do not all come in time: the
    # run's own bound comes first, as one line; and no client waits at a shutdown barrier as it is
    # destroyed (``close`` says when to wait for the others)
    late = threading.Timer(ctx.timeout, _give_up, (f"worker {ctx.rank} of {ctx.world_size} could not join JAX's "
                                                   f"coordination service at {ctx.address} within {ctx.timeout:g} s "
                                                   f"(${TIMEOUT_ENV} sets the bound)",))
    late.daemon = True
    make_client = distributed._jax.get_distributed_runtime_client
    distributed._jax.get_distributed_runtime_client = functools.partial(make_client, shutdown_on_destruction=False)
    late.start()
    try:
        jax.distributed.initialize(ctx.address, ctx.world_size, ctx.rank, cluster_detection_method="deactivate",
                                   initialization_timeout=int(ctx.timeout) + 60,
                                   # a peer that stopped is the watchdog's to report (one line), not the
                                   # coordination service's missed heartbeats (a fatal log line)
                                   heartbeat_timeout_seconds=int(ctx.timeout) + 60,
                                   coordinator_bind_address=ctx.address)
    except Exception as e:  # noqa: BLE001 - JAX raises XlaRuntimeError, RuntimeError, ValueError
        cause = (str(e).strip().splitlines() or ["no message"])[0][:200]
        _forget()
        raise DistributedError(f"worker {ctx.rank} could not join JAX's coordination service at {ctx.address}: "
                               f"{cause}") from None
    finally:
        late.cancel()
        distributed._jax.get_distributed_runtime_client = make_client
    # JAX's preemption notifier takes SIGTERM for itself (it notes the signal and carries on): the run's own
    # handler stops it, as it stops every other backend's worker
    for sig, handler in handlers.items():
        if callable(handler):
            signal.signal(sig, _outside_gc_callbacks(handler))


def _outside_gc_callbacks(handler):
    """Python runs a signal's handler between any two bytecodes, a garbage-collection callback's too (JAX
    registers one, run at every collection), where the exception the run's handler raises to stop would be
    printed with a traceback and dropped: there the signal is sent again once the callback has returned."""
    def on_signal(signum, frame):
        callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
        f = frame
        while f is not None:
            if f.f_code in callbacks:
                threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
                return
            f = f.f_back
        handler(signum, frame)
    return on_signal


def _give_up(message: str) -> None:
    sys.stderr.write(f"nin-multi: error: {message}\n")
    sys.stderr.flush()
    os._exit(DistributedError.exit_code)


def _forget() -> None:
    """Drop JAX's client and service without their shutdown barrier (peers may be gone), so that JAX's
    own clean-up at exit finds nothing to shut down."""
    from jax._src import distributed

    state = distributed.global_state
    state.preemption_sync_manager = state.client = state.service = None


def _own_address(coordinator_host: str) -> str:
    """The local address that reaches the coordinator: 127.0.0.1 on one machine; on several, the one the
    kernel routes to it (a UDP socket's connect sends nothing)."""
    host = coordinator_host.strip("[]")
    try:
        if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
            return host if host != "localhost" else "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError as e:
        raise DistributedError(f"no route from this machine to JAX's coordinator {host}: {e}") from None


def distribute(ctx, cfg, make_model, make_trainer):
    """Join (if ``device()`` has not already), build the model and the backend's own Trainer, and wrap it."""
    join(ctx)
    if jax.process_count() != ctx.world_size:
        raise DistributedError(f"JAX sees {jax.process_count()} processes but {LAUNCH_ENV['world_size']} says "
                               f"{ctx.world_size}")
    model = make_model()
    return model, _GlobalBatchEngine(model, make_trainer(model), ctx)


class _GlobalBatchEngine:
    """The Trainer's jitted step on a global batch: every process's share padded to one length (the last
    batch of an epoch may not split evenly) and masked, the loss summed over the real rows and divided by
    the global batch size. The step's results are the whole batch's, replicated: worker 0 reports them
    and the others report zeros, so that ``ShardedTrainer``'s sum over the workers counts them once.

    Evaluation needs no exchange per batch: each worker scores its share with its own replica of the
    parameters, and ``ShardedTrainer`` adds the workers' sums."""

    def __init__(self, model, trainer: Trainer, ctx):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.model, self.base, self.ctx = model, trainer, ctx
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        self.batch = NamedSharding(mesh, PartitionSpec("batch"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.local = jax.local_device_count()
        self._sum = jax.jit(lambda v: v.sum(0), out_shardings=self.replicated)
        self.completed = True  # every exchange so far completed (False while one is under way or failed)

    def _place(self) -> None:
        """Parameters and optimizer state replicated on every device; again after ``set_weights`` or
        ``load_extra_state`` (a restore) made them this process's arrays."""
        def put(tree):
            leaves = jax.tree_util.tree_leaves(tree)
            if all(getattr(a, "sharding", None) == self.replicated for a in leaves):
                return tree
            return jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a), self.replicated), tree)

        self.model.params = put(self.model.params)
        self.base.opt_state = put(self.base.opt_state)

    def _global(self, a: np.ndarray, rows: int, dtype):
        """This worker's share padded to ``rows`` and placed as its part of the global array."""
        padded = np.zeros((rows, *a.shape[1:]), dtype)
        padded[:len(a)] = a
        return jax.make_array_from_process_local_data(self.batch, padded, (rows * self.ctx.world_size, *a.shape[1:]))

    def train_step(self, x, y, lr: float, total: int) -> tuple[float, int]:
        self.completed = False
        self._place()
        per = -(-total // self.ctx.world_size)
        rows = -(-per // self.local) * self.local  # each local device gets the same number of rows
        valid = np.zeros(rows, bool)
        valid[:len(y)] = True
        loss, correct = self.base.step_on(self._global(x, rows, np.dtype(self.base.in_dtype)),
                                          self._global(y, rows, np.int32), self._global(valid, rows, bool), total,
                                          lr)
        loss, correct = float(loss), int(correct)
        self.completed = True
        return (loss, correct) if self.ctx.rank == 0 else (0.0, 0)

    def eval_step(self, x, y) -> tuple[float, int]:
        self._place()
        mine = jax.tree_util.tree_map(lambda a: a.addressable_data(0), self.model.params)
        loss, correct = self.base.eval_on(mine, *self.base._inputs(x, y))
        return float(loss), int(correct)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """Each worker's row of a (workers, n) float64 global array, summed by XLA (an all-reduce)."""
        values = np.asarray(values, np.float64)[None]
        self.completed = False
        with enable_x64():  # float64 even in an fp32 run, where x64 mode is off
            parts = jax.make_array_from_process_local_data(self.batch, values,
                                                           (self.ctx.world_size, values.shape[1]))
            total = np.asarray(self._sum(parts), np.float64)
        self.completed = True
        return total

    def extra_state(self) -> dict:
        return self.base.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.base.load_extra_state(state)

    def close(self) -> None:
        """JAX's shutdown waits for every worker: only at the end of a run whose every exchange completed,
        not while an error or a stop signal ends it (the others may be gone, or stopping mid-step)."""
        if self.completed and sys.exc_info()[0] is None:
            try:
                jax.distributed.shutdown()
            except Exception:  # noqa: BLE001 - a peer that failed at the very end: nothing left to do
                pass
        _forget()


def start_workers(launch, workers: int, command: list, env: dict) -> list:
    """N processes on 127.0.0.1 (the coordinator on ``$JAX_COORDINATOR_ADDRESS``'s port or a free one),
    each pinned to its share of this process's cores: XLA sizes its CPU thread pool from the cores a
    process may run on and offers no count of its own."""
    given = os.environ.get(LAUNCH_ENV["address"], "")  # ``env`` is without the launch variables
    port = int(given.rsplit(":", 1)[1]) if given.rpartition(":")[2].isdigit() else free_ports(1)[0]
    check_port("127.0.0.1", port, "JAX's coordination service", LAUNCH_ENV["address"])
    cores = _core_shares(workers)
    with warnings.catch_warnings():
        # JAX warns at every fork once it has run here (``--precision auto`` measures in this process); each
        # child execs at once, after setting its parent-death signal and its cores
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        for i in range(workers):
            launch.start(f"worker {i}", command, {**env, LAUNCH_ENV["address"]: f"127.0.0.1:{port}",
                                                  LAUNCH_ENV["world_size"]: str(workers), LAUNCH_ENV["rank"]: str(i)},
                         _pin(cores[i]))
    return [f"worker {i}" for i in range(workers)]


def _core_shares(workers: int) -> list:
    """This process's cores split into ``workers`` contiguous sets (shared round-robin when there are more
    workers than cores)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS): the workers share every core
        return [None] * workers
    if workers > len(cores):
        return [{cores[i % len(cores)]} for i in range(workers)]
    return [set(part.tolist()) for part in np.array_split(np.array(cores), workers)]


def _pin(cores):
    if cores is None or len(cores) == usable_cores():
        return None
    return lambda: os.sched_setaffinity(0, cores)
