"""Who this process is in a data-parallel run, read from its launcher's environment.

Each ecosystem launches its workers its own way and tells them who they are through the environment
(torchrun's ``RANK``/``WORLD_SIZE``/..., TensorFlow's ``TF_CONFIG``, MXNet's ``DMLC_*``, JAX's process id
and count). Those facts are each engine's own: a data-parallel backend's ``<module>_launch`` module names
its launcher's variables and reads them (``context``) without importing the framework. ``from_env()``
asks each of them, in the registry's order, and a process none of them started is rank 0 of a world of
one. A leaf module: the backends' engines (``backends/*_dist.py``) read the ``Context`` and use
``rank_seed`` without importing the driver.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from . import environment, isolation
from .errors import DistributedError

TIMEOUT_ENV = "NIN_MULTI_DIST_TIMEOUT"
#: Seconds a worker waits for the others in one collective (a step's gradient exchange, the start)
#: before it gives up: long enough for the slowest step of the chapter's 224x224 run on a CPU.
DEFAULT_TIMEOUT = 300.0


class Context:
    """Who this process is in a data-parallel run; a single process is rank 0 of a world of 1."""

    def __init__(self, launcher: str = "none", rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 role: str = "worker", address: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
                 tf_config: Optional[dict] = None, allow_network: bool = False):
        self.launcher = launcher      # "none", "torchrun", "tf_config", "dmlc" or "jax.distributed"
        self.rank = rank              # MXNet's is assigned by its scheduler: set by backends.mxnet_dist.distribute
        self.world_size = world_size
        self.local_rank = local_rank
        self.role = role              # MXNet: "worker", "server" or "scheduler"
        self.address = address        # the coordinator, for messages
        self.timeout = timeout
        self.tf_config = tf_config
        self.allow_network = allow_network  # --allow-network: an engine may listen on every interface

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


def int_env(name: str, env) -> int:
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


def from_env(env=None, allow_network: bool = False) -> Context:
    """The launcher's environment, read once and checked (``environment.check``) by the first data-parallel
    backend's launch module that knows it; none of them: a single process. ``allow_network`` is the
    user's ``--allow-network``; ``$NIN_MULTI_ALLOW_NETWORK`` of ``env`` allows it as well."""
    from nin_multi.backends import launchers

    env = os.environ if env is None else env
    environment.check(env)
    timeout = timeout_from_env(env)
    ctx = next((c for c in (m.context(env, timeout) for m in launchers()) if c is not None), None)
    ctx = ctx or Context(timeout=timeout)
    ctx.allow_network = allow_network or isolation.network_allowed(env)
    return ctx


def rank_seed(seed: int, rank: int) -> int:
    """A worker's own dropout seed: rank 0 keeps the run's (so its masks are one process's)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0] & 0x7FFFFFFF)
