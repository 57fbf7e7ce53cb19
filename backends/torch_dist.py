"""PyTorch's data parallelism: ``DistributedDataParallel`` in processes that ``torchrun`` starts.

``distribute`` joins torchrun's process group (gloo on CPU, NCCL on CUDA) and wraps the model; the
engine steps the backend's own Trainer (its optimizer, schedule, label smoothing, precision) through the
wrapper, each worker minimizing its share's summed loss over the global batch, and DDP's reduction is
made a sum, so the update is one process's on the global batch. ``start_workers`` is ``train --workers
N``'s launcher: PyTorch's own ``torchrun`` (its argument parser, rendezvous and elastic agent,
``torch.distributed.run.run``) run as ``python -m`` this module,
minus the uncaught ``ChildFailedError`` that the ``torchrun`` command turns into a page of traceback
when a worker dies. A failed worker is written to ``$NIN_MULTI_TORCHRUN_REPORT`` (JSON: its rank and
exit status, negative for a signal, as ``subprocess`` reports them), so that the launcher names it in its
one line, as it does for TensorFlow's and MXNet's workers; the agent's own log lines (which rank failed,
with its pid) stay on stderr above that line.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run
from torch.nn.parallel import DistributedDataParallel

from nin_multi.backends.torch import Trainer, device
from nin_multi.cluster import rank_seed
from nin_multi.errors import DistributedError
from nin_multi.host import check_port, free_ports
from nin_multi.isolation import listening_socket, loopback_interface

REPORT_ENV = "NIN_MULTI_TORCHRUN_REPORT"


def distribute(ctx, cfg, make_model, make_trainer):
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA, with the run's timeout), build the model
    (``make_model()``) and trainer (``make_trainer(model)``), and wrap the model in
    ``DistributedDataParallel`` (which broadcasts rank 0's weights)."""
    engine = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank)
    timeout = datetime.timedelta(seconds=ctx.timeout)
    try:
        tdist.init_process_group(engine, timeout=timeout, **_own_store(ctx, timeout))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"worker {ctx.rank} could not join the {engine} process group at {ctx.address} "
                               f"within {ctx.timeout:g} s: {str(e).splitlines()[0]}") from None
    model = make_model()
    trainer = make_trainer(model)
    return model, _DDPEngine(model, trainer, ctx)


def _own_store(ctx, timeout) -> dict:
    """Launched without torchrun's agent store (``RANK``/``MASTER_ADDR`` set by hand or by another launcher):
    rank 0's store listens on ``MASTER_ADDR`` alone, not on every interface as ``env://`` would have it."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return {}
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise DistributedError("$RANK and $WORLD_SIZE are set but $MASTER_ADDR or $MASTER_PORT is not: set both "
                               "(rank 0's address and a free port), or start the workers with torchrun")
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    fd = listening_socket(host, port).detach() if ctx.rank == 0 else None
    store = tdist.TCPStore(host, port, ctx.world_size, ctx.rank == 0, timeout, master_listen_fd=fd)
    return {"store": store, "rank": ctx.rank, "world_size": ctx.world_size}


def _sum_hook(_, bucket):
    """DDP's gradient reduction as a sum (its default hook divides by the workers first): each worker's
    loss is already its share of the global batch's mean."""
    return tdist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])


class _DDPEngine:
    """One worker's share of a global-batch step: the single-process Trainer's ``train_step`` with the
    global batch size, its forward pass through ``DistributedDataParallel`` (``Trainer.net``), whose
    summed gradients make one process's update on the global batch."""

    def __init__(self, model: nn.Module, trainer: Trainer, ctx):
        self.base, self.ctx, self.tdist = trainer, ctx, tdist
        ids = [ctx.local_rank] if torch.cuda.is_available() else None
        self.ddp = DistributedDataParallel(model, device_ids=ids)
        self.ddp.register_comm_hook(None, _sum_hook)
        trainer.net = self.ddp
        self.seed = torch.initial_seed()
        torch.manual_seed(rank_seed(self.seed, ctx.rank))

    def train_step(self, x, y, lr: float, total: int) -> tuple[float, int]:
        return self.base.train_step(x, y, lr, total)

    def eval_step(self, x, y) -> tuple[float, int]:
        return self.base.eval_step(x, y)

    def all_sum(self, values: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.array(values, np.float64))
        if torch.cuda.is_available():
            t = t.to(device())
        self.tdist.all_reduce(t)
        return t.cpu().numpy()

    def extra_state(self) -> dict:
        return self.base.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.base.load_extra_state(state)
        if self.ctx.rank:  # its own dropout stream, derived from the restored one
            torch.manual_seed(rank_seed(int(torch.randint(2**31 - 1, ())), self.ctx.rank))

    def close(self) -> None:
        if self.tdist.is_initialized():
            self.tdist.destroy_process_group()


def start_workers(launch, workers: int, command: list, env: dict) -> list:
    """torchrun on 127.0.0.1 (``$MASTER_PORT`` or a free port)."""
    port = int(env.get("MASTER_PORT", 0)) or free_ports(1)[0]
    check_port("127.0.0.1", port, "torchrun's rendezvous", "MASTER_PORT")
    report = Path(tempfile.mkdtemp(prefix="nin-multi-torchrun-")) / "failure.json"
    # OMP_NUM_THREADS is set (the cores shared out, by distributed.launch): torchrun would set 1, with a banner
    env["GLOO_SOCKET_IFNAME"] = loopback_interface()  # gloo's pairs on loopback, not the host name's address
    launch.start("torchrun", [command[0], "-m", __spec__.name, "--nnodes", "1", "--nproc-per-node", str(workers),
                              "--master-addr", "127.0.0.1", "--master-port", str(port), "--max-restarts", "0",
                              "--monitor-interval", "0.5", *command[1:]], {**env, REPORT_ENV: str(report)})

    def settle(failure):
        if failure is not None:  # torchrun names the worker that failed first
            failure = _torchrun_failure(report, *failure)
        shutil.rmtree(report.parent, ignore_errors=True)
        return failure

    launch.at_stop(settle)
    return ["torchrun"]


def _torchrun_failure(report: Path, name: str, rc: int) -> tuple[str, int]:
    """(worker N, its status) from ``main``'s report, else torchrun's own."""
    try:
        failed = json.loads(report.read_text())
        return f"worker {int(failed['rank'])}", int(failed["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return name, rc


def bind_store_where_told() -> None:
    """The static rendezvous's store (the agent's on node 0) listens on ``--master-addr`` alone: torchrun
    creates its ``TCPStore`` without ``master_listen_fd``, and the store then binds every interface
    (tests/test_workers_safety.py reproduces it)."""
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    def bound_store(host, port, world_size=None, is_master=False, *args, **kwargs):
        if is_master and "master_listen_fd" not in kwargs:
            kwargs["master_listen_fd"] = listening_socket(host, port).detach()
        return tdist.TCPStore(host, port, world_size, is_master, *args, **kwargs)

    static_tcp_rendezvous.TCPStore = bound_store


def main(argv: list[str]) -> int:
    bind_store_where_told()
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        # the cause rather than its echoes: a worker killed by a signal before one that then lost its peer
        # (the agent sends SIGTERM to the rest once one fails: a worker dies of it, or stops cleanly with
        # 128 + SIGTERM, whichever comes first; one that lost its peer exits with DistributedError's status)
        rank, failure = min(e.failures.items(), key=lambda kv: (kv[1].exitcode in (-signal.SIGTERM,
                                                                                   128 + signal.SIGTERM),
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
