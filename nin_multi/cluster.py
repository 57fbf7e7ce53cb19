"""Who this process is in a data-parallel run, read from its launcher's environment.

Each ecosystem launches its workers its own way and tells them who they are through the environment:
torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``, TensorFlow reads
``TF_CONFIG``, MXNet's parameter server ``DMLC_ROLE``/``DMLC_NUM_WORKER``/``DMLC_PS_ROOT_URI``/...; a
backend may declare its launcher's variables itself (``LAUNCH_ENV`` in ``backends/jax_dist.py``).
``from_env()`` reads whichever is there into a ``Context``; a process none of them started is rank 0 of a
world of one. A leaf module: the backends' engines (``backends/*_dist.py``) read the ``Context`` and use
``rank_seed`` without importing the driver.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from . import environment
from .errors import DistributedError

TIMEOUT_ENV = "NIN_MULTI_DIST_TIMEOUT"
#: Seconds a worker waits for the others in one collective (a step's gradient exchange, the start)
#: before it gives up: long enough for the slowest step of the chapter's 224x224 run on a CPU.
DEFAULT_TIMEOUT = 300.0
DMLC_VARS = ("DMLC_ROLE", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT")
#: What every launcher sets: ``distributed.launch`` removes them from the workers' environment before
#: it sets its own, and ``from_env`` reads them.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TF_CONFIG", *DMLC_VARS)


class Context:
    """Who this process is in a data-parallel run; a single process is rank 0 of a world of 1."""

    def __init__(self, launcher: str = "none", rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 role: str = "worker", address: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                 tf_config: Optional[dict] = None):
        self.launcher = launcher      # "none", "torchrun", "tf_config", "dmlc" or "jax.distributed"
        self.rank = rank              # MXNet's is assigned by its scheduler: set by backends.mxnet_dist.distribute
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
    from nin_multi.backends import launch_env  # launchers whose variables their backend declares (JAX's)
    for launcher, names in launch_env().items():
        if names["rank"] in env:
            return Context(launcher, _int_env(names["rank"], env), _int_env(names["world_size"], env),
                           address=env.get(names["address"]), timeout=timeout)
    return Context(timeout=timeout)


def rank_seed(seed: int, rank: int) -> int:
    """A worker's own dropout seed: rank 0 keeps the run's (so its masks are one process's)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0] & 0x7FFFFFFF)
