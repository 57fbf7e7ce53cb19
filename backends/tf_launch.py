"""TensorFlow's launcher environment, ``TF_CONFIG``, read and checked without importing TensorFlow.

Each worker of a ``MultiWorkerMirroredStrategy`` run is told the cluster and its own task in ``TF_CONFIG``
(``train --workers N`` writes one per worker). ``cluster.from_env`` asks ``context`` who a process is,
``environment.check`` checks ``VARIABLES`` before anything starts.
"""
from __future__ import annotations

import json
from typing import Mapping, Optional

from nin_multi.cluster import Context
from nin_multi.environment import _host, _port
from nin_multi.errors import DistributedError


def _tf_config(v: str) -> Optional[str]:
    """Each address of the cluster is host:port (the cluster's shape is ``context``'s to check, within a
    size limit here)."""
    if len(v) > 1 << 20:
        return "a JSON cluster description of at most 1 MiB"
    try:
        cluster = json.loads(v)["cluster"]
        addresses = [a for kind in ("chief", "worker") for a in cluster.get(kind, [])]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None  # not a cluster at all: context says what one looks like
    for a in addresses:
        host, _, port = str(a).rpartition(":")
        if _host(host) or _port(port):
            return f"a cluster of host:port addresses ({str(a)[:60]!r} is not one)"
    return None


VARIABLES = {"TF_CONFIG": (_tf_config, DistributedError)}
LAUNCH_VARS = ("TF_CONFIG",)


def context(env: Mapping[str, str], timeout: float) -> Optional[Context]:
    if "TF_CONFIG" not in env:
        return None
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
