"""MXNet's parameter-server environment, ``DMLC_*``, read and checked without importing MXNet, and the
scheduler's and server's part of a run.

Every process of a ``dist_sync`` run (scheduler, server, workers) is told its role and the scheduler's
address in ``DMLC_*`` variables. ``cluster.from_env`` asks ``context`` who a process is,
``environment.check`` checks ``VARIABLES`` before anything starts, and ``serve`` is what a scheduler or
server does: importing MXNet with ``DMLC_ROLE`` set runs it until the workers finish, so its port is
checked before the import.
"""
from __future__ import annotations

from typing import Mapping, Optional

from nin_multi.cluster import Context, int_env
from nin_multi.environment import _count, _host, _interface, _port
from nin_multi.errors import DistributedError
from nin_multi.host import check_port


def _role(v: str) -> Optional[str]:
    return None if v in ("worker", "server", "scheduler") else "worker, server or scheduler"


VARIABLES = {
    "DMLC_ROLE": (_role, DistributedError),
    "DMLC_NUM_WORKER": (_count, DistributedError),
    "DMLC_NUM_SERVER": (_count, DistributedError),
    "DMLC_PS_ROOT_URI": (_host, DistributedError),
    "DMLC_PS_ROOT_PORT": (_port, DistributedError),
    "DMLC_NODE_HOST": (_host, DistributedError),
    "DMLC_INTERFACE": (_interface, DistributedError),
}
#: What every process of the parameter server needs (``--workers`` sets them per process).
LAUNCH_VARS = ("DMLC_ROLE", "DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT")


def context(env: Mapping[str, str], timeout: float) -> Optional[Context]:
    if "DMLC_ROLE" not in env:
        return None
    missing = [v for v in LAUNCH_VARS if v not in env]
    if missing:
        raise DistributedError(f"MXNet's parameter server needs {', '.join(missing)} as well as DMLC_ROLE")
    role = env["DMLC_ROLE"]
    if role not in ("worker", "server", "scheduler"):
        raise DistributedError(f"$DMLC_ROLE must be worker, server or scheduler, got {role!r}")
    return Context("dmlc", -1 if role == "worker" else 0, int_env("DMLC_NUM_WORKER", env), role=role,
                   address=f"{env['DMLC_PS_ROOT_URI']}:{env['DMLC_PS_ROOT_PORT']}", timeout=timeout)


def serve(ctx: Context) -> None:
    """A scheduler or server: importing the framework runs it until the workers finish (a scheduler's port
    is checked first, so that a busy one is one line rather than MXNet's abort)."""
    from nin_multi.backends import get_backend

    if ctx.role == "scheduler":
        host, port = ctx.address.rsplit(":", 1)
        check_port(host, int(port), "the MXNet scheduler", "DMLC_PS_ROOT_PORT")
    get_backend("mxnet")
