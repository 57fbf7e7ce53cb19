"""The environment variables a run reads, checked once, before any process or engine starts.

Launchers (torchrun, TF_CONFIG, MXNet's ``DMLC_*``) and this project (``NIN_MULTI_*``) pass settings through
the environment, where a typo surfaces late and far from its cause: ``MASTER_PORT=abc`` as a traceback in
a worker, ``NIN_MULTI_DIST_TIMEOUT=inf`` as an ``OverflowError`` in a watchdog thread. ``check`` reads every
one that is set against ``VARIABLES`` and refuses the first bad value in one line naming the variable, its
value and what it should be. Unset variables are not checked; unknown ones are left alone.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from typing import Callable, Mapping, Optional
from urllib.parse import urlsplit

from .errors import ConfigError, DistributedError

MAX_TIMEOUT = 7 * 24 * 3600.0  # a week: beyond what any collective of this project can take
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?\Z")
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\Z")


def _port(v: str) -> Optional[str]:
    return None if v.isdigit() and 0 < int(v) < 65536 else "a port number from 1 to 65535"


def _host(v: str) -> Optional[str]:
    try:
        ipaddress.ip_address(v.strip("[]"))
        return None
    except ValueError:
        return None if _HOSTNAME.match(v) else "an IP address or a host name"


def _count(v: str) -> Optional[str]:
    return None if v.isdigit() and int(v) >= 1 else "a positive integer"


def _index(v: str) -> Optional[str]:
    return None if v.isdigit() else "a non-negative integer"


def _seconds(v: str) -> Optional[str]:
    try:
        x = float(v)
    except ValueError:
        x = math.nan
    return None if math.isfinite(x) and 0 < x <= MAX_TIMEOUT else f"seconds, above 0 and at most {MAX_TIMEOUT:g}"


def _role(v: str) -> Optional[str]:
    return None if v in ("worker", "server", "scheduler") else "worker, server or scheduler"


def _path(v: str) -> Optional[str]:
    return None if v and "\0" not in v else "a path"


def _url(v: str) -> Optional[str]:
    parts = urlsplit(v)
    ok = parts.scheme in ("http", "https") and parts.netloc or parts.scheme == "file" and parts.path
    return None if ok else "an http://, https:// or file:// address"


def _interface(v: str) -> Optional[str]:
    return None if _INTERFACE.match(v) else "a network interface name (e.g. lo or eth0)"


def _tf_config(v: str) -> Optional[str]:
    """Each address of the cluster is host:port (the cluster's shape is ``cluster.from_env``'s to check,
    within a size limit here)."""
    if len(v) > 1 << 20:
        return "a JSON cluster description of at most 1 MiB"
    try:
        cluster = json.loads(v)["cluster"]
        addresses = [a for kind in ("chief", "worker") for a in cluster.get(kind, [])]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # not a cluster at all: cluster.from_env says what one looks like
    for a in addresses:
        host, _, port = str(a).rpartition(":")
        if _host(host) or _port(port):
            return f"a cluster of host:port addresses ({str(a)[:60]!r} is not one)"
    return None


#: Every variable this project reads or hands to an engine: (its check, the error a bad value is).
VARIABLES: dict[str, tuple[Callable[[str], Optional[str]], type]] = {
    "MASTER_ADDR": (_host, DistributedError),
    "MASTER_PORT": (_port, DistributedError),
    "RANK": (_index, DistributedError),
    "LOCAL_RANK": (_index, DistributedError),
    "WORLD_SIZE": (_count, DistributedError),
    "LOCAL_WORLD_SIZE": (_count, DistributedError),
    "TF_CONFIG": (_tf_config, DistributedError),
    "DMLC_ROLE": (_role, DistributedError),
    "DMLC_NUM_WORKER": (_count, DistributedError),
    "DMLC_NUM_SERVER": (_count, DistributedError),
    "DMLC_PS_ROOT_URI": (_host, DistributedError),
    "DMLC_PS_ROOT_PORT": (_port, DistributedError),
    "DMLC_NODE_HOST": (_host, DistributedError),
    "DMLC_INTERFACE": (_interface, DistributedError),
    "GLOO_SOCKET_IFNAME": (_interface, DistributedError),
    "NIN_MULTI_DIST_TIMEOUT": (_seconds, DistributedError),
    "NIN_MULTI_DATA_DIR": (_path, ConfigError),
    "NIN_MULTI_CACHE_DIR": (_path, ConfigError),
    "NIN_MULTI_MIRROR": (_url, ConfigError),
    "NIN_MULTI_TORCHRUN_REPORT": (_path, ConfigError),
    # the interpreter each backend runs in (nin_multi.interpreters; checked further when it is used)
    **{f"NIN_MULTI_PYTHON_{b}": (_path, ConfigError) for b in ("TORCH", "TENSORFLOW", "MXNET", "JAX", "ONNX")},
}


def check(env: Optional[Mapping[str, str]] = None) -> None:
    """Refuse the first variable whose value its check rejects, then the contradictions between them."""
    env = os.environ if env is None else env
    for name, (valid, error) in VARIABLES.items():
        value = env.get(name)
        if value is None:
            continue
        want = valid(value)
        if want:
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise error(f"${name} must be {want}, got {shown!r}: correct it or unset it")
    if "RANK" in env and "WORLD_SIZE" in env and int(env["RANK"]) >= int(env["WORLD_SIZE"]):
        raise DistributedError(f"$RANK {env['RANK']} is not below $WORLD_SIZE {env['WORLD_SIZE']}: ranks count "
                               f"from 0")
