"""MXNet's data parallelism: the parameter-server kvstore (``dist_sync``), its processes described by
``DMLC_*`` variables.

The server sums the workers' gradients and each worker updates its own copy of the weights with the
backend's own Trainer (its optimizer, schedule, weight decay, label smoothing and precision).
``start_workers`` is ``train --workers N``'s launcher: MXNet's scheduler, one server and N workers on
127.0.0.1. A scheduler or server is an MXNet process that importing MXNet with ``DMLC_ROLE`` set runs
until the workers finish.
"""
from __future__ import annotations

import os

import numpy as np

from nin_multi.backends.mxnet import Trainer, mx
from nin_multi.cluster import rank_seed
from nin_multi.errors import DistributedError
from nin_multi.host import check_port, free_ports

#: The environment ``--workers`` gives MXNet's parameter server: glibc then fills every allocation with
#: zeros (perturb byte 255 fills with its complement; tcache off, since its fast path skips the fill).
#: MXNet 1.9.1's server object never initialises its ``multi_precision_`` flag; left to the allocator's
#: garbage the flag is nearly always set, and the server then stores and sums float64 in float32.
MXNET_SERVER_TUNABLES = "glibc.malloc.tcache_count=0:glibc.malloc.perturb=255"


def distribute(ctx, cfg, make_model, make_trainer):
    """A ``dist_sync`` kvstore from the ``DMLC_*`` environment (its scheduler assigns this worker's rank),
    and a Gluon Trainer on it that updates locally: the server only sums the workers' gradients."""
    if not mx.runtime.Features().is_enabled("DIST_KVSTORE"):
        raise DistributedError("this MXNet build has no distributed kvstore (DIST_KVSTORE is off): install a "
                               "wheel built with USE_DIST_KVSTORE=1, such as mxnet 1.9.1 from PyPI")
    kv = mx.kv.create("dist_sync")
    ctx.rank = kv.rank
    if kv.num_workers != ctx.world_size:
        raise DistributedError(f"the kvstore has {kv.num_workers} workers but DMLC_NUM_WORKER says {ctx.world_size}")
    if cfg.precision == "fp64":
        _check_float64(kv)
    model = make_model()
    trainer = make_trainer(model)
    return model, _KVStoreEngine(model, trainer, kv, ctx)


#: A key of its own for ``_check_float64``, beyond the Trainer's parameter indices.
_PROBE_KEY = 999


def _check_float64(kv) -> None:
    """Refuse fp64 where the parameter server would round it: MXNet 1.9.1's server (``KVStoreDistServer``)
    never initialises its ``multi_precision_`` flag, and when the byte it gets is not zero, which is the
    usual case, it stores and sums every non-float32 array in float32 (float64 weights and gradients came
    back with float32-sized errors, 1.3e-9 in the weights after 21 steps). ``--workers`` starts the server
    with glibc's allocator zero-filling memory (``MXNET_SERVER_TUNABLES``), which leaves the flag
    false; a server started some other way is checked here: rank 0 stores a float64 value that float32
    cannot hold and every worker reads it back."""

    value = np.array([1 / 3, 1 + 2.0 ** -40])
    kv.init(_PROBE_KEY, mx.nd.array(value, dtype="float64"))  # only rank 0's is stored; init ends in a barrier
    out = mx.nd.zeros(len(value), dtype="float64")
    kv.pull(_PROBE_KEY, out=out)
    if not np.array_equal(out.asnumpy(), value):
        raise DistributedError("--precision fp64: this MXNet parameter server rounds float64 to float32 (MXNet "
                               "1.9.1's server leaves its multi-precision flag uninitialised); start the server "
                               f"with GLIBC_TUNABLES={MXNET_SERVER_TUNABLES} in its environment, as --workers does, "
                               "or use fp32")


class _KVStoreEngine:
    """The server SUMS what the workers push, so each worker backpropagates its examples' summed loss
    and the Trainer's step over the global batch rescales the sum by 1 / (global batch): one process's
    update. The Trainer's own optimizer moves onto the kvstore with ``update_on_kvstore=False``, which
    keeps it on the workers, since a server-side optimizer fixes its rescaling at the first step and the
    epoch's last batch is shorter (and the driver changes the rate every step).

    Rank 0's weights are broadcast through the kvstore by ``_start()`` before the first forward pass,
    not by the Gluon Trainer's lazy initialisation inside its first ``step()``: see ``_start``."""

    SUM_KEY = 1000  # beyond the Trainer's parameter indices (and _PROBE_KEY)

    def __init__(self, model, trainer: Trainer, kv, ctx):
        self.base, self.kv, self.ctx = trainer, kv, ctx
        trainer.with_kvstore(trainer.trainer.optimizer, kv)
        trainer.seed = rank_seed(trainer.seed, ctx.rank)
        self._sum_keys: set = set()
        self._started = False

    def _start(self) -> None:
        """Every worker takes rank 0's weights from the kvstore, and has them, before its first forward.

        Left to itself, Gluon's Trainer (MXNet 1.9.1) initialises the kvstore lazily inside its first
        ``step()``, after that step's gradients were computed on each worker's own weights:
        ``_init_params`` broadcasts each parameter (``kv.init`` by rank 0, then an asynchronous ``pull``
        into the weights) and ``_allreduce_grads`` then issues the gradients' ``pushpull`` on the SAME keys
        at once. The pull writes the weight's buffer and the pushpull the gradient's, so MXNet's engine does
        not order them, and the dist_sync server keeps one value per key and replaces it with the gradient
        sum as soon as every worker's gradient has arrived. A pull that reaches the server after that gets
        the gradient sum instead of the weights: now and then, on one worker, some parameter became
        sum(g) - lr * sum(g) / batch, and the run diverged (the workers, whose weights then differ, went on
        without noticing). Here the same two calls of the Trainer (``_init_kvstore``, ``_init_params``)
        run before the first forward pass, on the weights every worker has after a resume, and each worker
        waits for its pulls (``wait_to_read``) before it pushes any gradient, so the server overwrites a
        key only once every worker has its weights. The Trainer then finds its kvstore initialised and
        never broadcasts again."""
        trainer = self.base.trainer
        if not trainer._kv_initialized:
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        assert not trainer._params_to_init, "a parameter with a deferred shape would be broadcast in step()"
        for param in self.base.model.collect_params().values():
            for data in param.list_data():
                data.wait_to_read()
        self._started = True

    def train_step(self, x, y, lr: float, total: int) -> tuple[float, int]:
        if not self._started:
            self._start()
        return self.base.train_step(x, y, lr, total)

    def eval_step(self, x, y) -> tuple[float, int]:
        if not self._started:
            self._start()
        return self.base.eval_step(x, y)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        """In float64 (exact where the server keeps float64, see ``_check_float64``; a server that rounds
        to float32 still keeps counts exact below 2**24, and ~7 digits of a loss sum)."""
        key = self.SUM_KEY + len(values)
        if key not in self._sum_keys:
            self.kv.init(key, mx.nd.zeros(len(values), dtype="float64"))
            self.kv._barrier()  # no worker's first push may reach the server before rank 0's init
            self._sum_keys.add(key)
        out = mx.nd.zeros(len(values), dtype="float64")
        self.kv.push(key, mx.nd.array(values, dtype="float64"))
        self.kv.pull(key, out=out)
        return out.asnumpy()

    def extra_state(self) -> dict:
        """Rank 0's (unmixed) dropout seed: every worker derives its own from it again on resume."""
        return self.base.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.base.load_extra_state(state)
        self.base.seed = rank_seed(self.base.seed, self.ctx.rank)

    def close(self) -> None:
        pass


def start_workers(launch, workers: int, command: list, env: dict) -> list:
    """The scheduler (on ``$DMLC_PS_ROOT_PORT`` or a free port), one server with zero-filled memory (see
    ``MXNET_SERVER_TUNABLES``) and the workers; only the workers are waited for."""
    port = int(os.environ.get("DMLC_PS_ROOT_PORT", 0)) or free_ports(1)[0]  # ``env`` is without DMLC_*
    check_port("127.0.0.1", port, "the MXNet scheduler", "DMLC_PS_ROOT_PORT")
    dmlc = {**env, "DMLC_NUM_WORKER": str(workers), "DMLC_NUM_SERVER": "1", "DMLC_PS_ROOT_URI": "127.0.0.1",
            "DMLC_PS_ROOT_PORT": str(port), "DMLC_NODE_HOST": "127.0.0.1"}
    launch.start("scheduler", command, {**dmlc, "DMLC_ROLE": "scheduler"})
    tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES"), MXNET_SERVER_TUNABLES) if t)
    launch.start("server", command, {**dmlc, "DMLC_ROLE": "server", "GLIBC_TUNABLES": tunables})
    for i in range(workers):
        launch.start(f"worker {i}", command, {**dmlc, "DMLC_ROLE": "worker"})
    return [f"worker {i}" for i in range(workers)]
