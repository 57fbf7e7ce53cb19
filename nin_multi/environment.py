"""The environment variables a run reads, checked once, before any process or engine starts.

Launchers (torchrun, TF_CONFIG, MXNet's ``DMLC_*``) and this project (``NIN_MULTI_*``) pass settings through
the environment, where a typo surfaces late and far from its cause: ``MASTER_PORT=abc`` as a traceback in
a worker, ``NIN_MULTI_DIST_TIMEOUT=inf`` as an ``OverflowError`` in a watchdog thread. ``check`` reads every
one that is set against ``variables()`` (each data-parallel backend's launcher's, declared in its
``backends/<module>_launch.py``, and the project's own ``VARIABLES``) and refuses the first bad value in
one line naming the variable, its value and what it should be. Unset variables are not checked; unknown
ones are left alone.
"""
from __future__ import annotations

import ipaddress
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


def _path(v: str) -> Optional[str]:
    return None if v and "\0" not in v else "a path"


def _url(v: str) -> Optional[str]:
    parts = urlsplit(v)
    ok = parts.scheme in ("http", "https") and parts.netloc or parts.scheme == "file" and parts.path
    return None if ok else "an http://, https:// or file:// address"


def _interface(v: str) -> Optional[str]:
    return None if _INTERFACE.match(v) else "a network interface name (e.g. lo or eth0)"


#: The project's own variables: (its check, the error a bad value is). Each launcher's are its backend's
#: (``VARIABLES`` of ``backends/<module>_launch.py``); ``variables()`` has them all.
VARIABLES: dict[str, tuple[Callable[[str], Optional[str]], type]] = {
    "NIN_MULTI_DIST_TIMEOUT": (_seconds, DistributedError),
    "OMP_NUM_THREADS": (_count, ConfigError),  # the threads of a run that asks for none (machine.default_threads)
    "NIN_MULTI_DATA_DIR": (_path, ConfigError),
    "NIN_MULTI_CACHE_DIR": (_path, ConfigError),
    "NIN_MULTI_MIRROR": (_url, ConfigError),
    "NIN_MULTI_TORCHRUN_REPORT": (_path, ConfigError),
    # the interpreter each backend runs in (nin_multi.interpreters; checked further when it is used)
    **{f"NIN_MULTI_PYTHON_{b}": (_path, ConfigError) for b in ("TORCH", "TENSORFLOW", "MXNET", "JAX", "ONNX")},
}


def variables() -> dict:
    """Every variable a run reads or hands to an engine: the data-parallel backends' launchers' (in the
    registry's order), then the project's own."""
    from nin_multi.backends import launchers

    found: dict = {}
    for module in launchers():
        found.update(module.VARIABLES)
    return {**found, **VARIABLES}


def check(env: Optional[Mapping[str, str]] = None) -> None:
    """Refuse the first variable whose value its check rejects, then the contradictions between them
    (a launch module's ``check``)."""
    from nin_multi.backends import launchers

    env = os.environ if env is None else env
    for name, (valid, error) in variables().items():
        value = env.get(name)
        if value is None:
            continue
        want = valid(value)
        if want:
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise error(f"${name} must be {want}, got {shown!r}: correct it or unset it")
    for module in launchers():
        if hasattr(module, "check"):
            module.check(env)
