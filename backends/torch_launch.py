"""torchrun's environment: what it tells each worker, read and checked without importing PyTorch.

torchrun (and ``train --workers N`` with the torch backend, which runs it) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the store's ``MASTER_ADDR``/``MASTER_PORT`` in every worker; gloo reads
``GLOO_SOCKET_IFNAME``. ``cluster.from_env`` asks ``context`` who a process is, ``environment.check``
checks ``VARIABLES`` (and ``check``'s contradiction) before anything starts.
"""
from __future__ import annotations

from typing import Mapping, Optional

from nin_multi.cluster import Context, int_env
from nin_multi.environment import _count, _host, _index, _interface, _port
from nin_multi.errors import DistributedError

#: Every variable of torchrun's and gloo's that a run reads: (its check, the error a bad value is).
VARIABLES = {
    "MASTER_ADDR": (_host, DistributedError),
    "MASTER_PORT": (_port, DistributedError),
    "RANK": (_index, DistributedError),
    "LOCAL_RANK": (_index, DistributedError),
    "WORLD_SIZE": (_count, DistributedError),
    "LOCAL_WORLD_SIZE": (_count, DistributedError),
    "GLOO_SOCKET_IFNAME": (_interface, DistributedError),
}
#: What a worker's place is told by: ``distributed.launch`` removes them from the workers' environment.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def check(env: Mapping[str, str]) -> None:
    """The contradiction each variable's own check cannot see (run after every variable is valid)."""
    if "RANK" in env and "WORLD_SIZE" in env and int(env["RANK"]) >= int(env["WORLD_SIZE"]):
        raise DistributedError(f"$RANK {env['RANK']} is not below $WORLD_SIZE {env['WORLD_SIZE']}: ranks count "
                               f"from 0")


def context(env: Mapping[str, str], timeout: float) -> Optional[Context]:
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    return Context("torchrun", int_env("RANK", env), int_env("WORLD_SIZE", env), int(env.get("LOCAL_RANK", 0)),
                   address=f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}", timeout=timeout)
