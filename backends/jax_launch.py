"""JAX's launcher environment, read without importing JAX: the coordinator's address, the process count
and this process's id, which ``train --workers N`` gives each process and ``jax.distributed.initialize``
takes.

``cluster.from_env`` asks ``context`` who a process is. The values are checked where the engine joins
(``jax_dist.join``), with messages that say how JAX's processes are started, so ``VARIABLES`` is empty.
"""
from __future__ import annotations

from typing import Mapping, Optional

from nin_multi.cluster import Context, int_env

#: The environment ``jax_dist.start_workers`` gives each process: JAX's own ``JAX_COORDINATOR_ADDRESS``
#: (host:port of process 0's coordination service), and the number of processes and this one's id,
#: ``jax.distributed.initialize``'s ``num_processes`` and ``process_id``.
LAUNCH_ENV = {"address": "JAX_COORDINATOR_ADDRESS", "world_size": "JAX_NUM_PROCESSES", "rank": "JAX_PROCESS_ID"}
VARIABLES: dict = {}
LAUNCH_VARS = tuple(LAUNCH_ENV.values())
#: The engine runs one jitted step on the global batch, sharded over the processes, with the step's one
#: key: its dropout masks are one process's wherever the batch splits evenly over the devices (see
#: ``distributed.World.notes``).
SAME_DROPOUT_MASKS = True


def context(env: Mapping[str, str], timeout: float) -> Optional[Context]:
    if LAUNCH_ENV["rank"] not in env:
        return None
    return Context("jax.distributed", int_env(LAUNCH_ENV["rank"], env), int_env(LAUNCH_ENV["world_size"], env),
                   address=env.get(LAUNCH_ENV["address"]), timeout=timeout)
