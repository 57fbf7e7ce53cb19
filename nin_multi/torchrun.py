"""``torchrun`` for ``train --workers N``: PyTorch's own launcher (its argument parser, rendezvous and
elastic agent, ``torch.distributed.run.run``), minus the uncaught ``ChildFailedError`` that the
``torchrun`` command turns into a page of traceback when a worker dies.

A failed worker is written to ``$NIN_MULTI_TORCHRUN_REPORT`` (JSON: its rank and exit status, negative
for a signal, as ``subprocess`` reports them), so that ``distributed.launch`` can name it in its one
line, as it does for TensorFlow's and MXNet's workers; this process then exits with status 1. The
agent's own log lines (which rank failed, with its pid) stay on stderr above that line.
"""
from __future__ import annotations

import json
import os
import signal
import sys

REPORT_ENV = "NIN_MULTI_TORCHRUN_REPORT"


def bind_store_where_told() -> None:
    """The static rendezvous's store (the agent's on node 0) listens on ``--master-addr`` alone: torchrun
    creates its ``TCPStore`` without ``master_listen_fd``, and the store then binds every interface."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    from nin_multi.isolation import listening_socket

    def bound_store(host, port, world_size=None, is_master=False, *args, **kwargs):
        if is_master and "master_listen_fd" not in kwargs:
            kwargs["master_listen_fd"] = listening_socket(host, port).detach()
        return TCPStore(host, port, world_size, is_master, *args, **kwargs)

    static_tcp_rendezvous.TCPStore = bound_store


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from nin_multi.errors import DistributedError

    bind_store_where_told()
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        # the cause rather than its echoes: a worker killed by a signal before one that then lost its peer
        # (the agent sends SIGTERM to the rest once one fails, and a worker that lost its peer exits with
        # DistributedError's status)
        rank, failure = min(e.failures.items(), key=lambda kv: (kv[1].exitcode == -signal.SIGTERM,
                                                                kv[1].exitcode == DistributedError.exit_code,
                                                                kv[1].timestamp, kv[0]))
        report = os.environ.get(REPORT_ENV)
        if report:
            with open(report, "w") as f:
                json.dump({"rank": rank, "status": failure.exitcode}, f)  # negative: a signal
        return 1
    except SignalException as e:  # the launcher stopping us: the workers are already gone
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
