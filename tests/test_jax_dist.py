"""JAX's data-parallel engine: ``--workers N`` starts N ``jax.distributed`` processes on 127.0.0.1 whose
global batch runs through the JAX Trainer's own step, so they train what one process trains, with the
fast recipe's optimizer (Nesterov momentum, weight decay, warm-up and linear decay, label smoothing)."""
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nin_multi import backends
from nin_multi.cluster import from_env
from nin_multi.config import TrainConfig
from nin_multi.errors import DistributedError
from nin_multi.host import free_ports
from nin_multi.train import train
from nin_multi.weights import load_weights

from conftest import ROOT, descendants, load
from test_workers_safety import nin_multi, stop, wait_for

TIMEOUT = 300  # seconds for one multi-process run on the shared 2-core machine
#: The fast recipe's optimizer on the mini net at 28x28, float64, no dropout: 2 epochs of 3 steps, the
#: last of each epoch 11 examples (shares of 6 and 5: one worker's padded and masked). The learning rate
#: warms up over the first epoch and decays linearly over the second.
RECIPE = dict(variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32, subset=75, test_subset=50,
              epochs=2, dropout=0.0, precision="fp64", momentum=0.9, nesterov=True, weight_decay=5e-4,
              label_smoothing=0.1, schedule="linear", warmup_epochs=1.0)


def launch_env() -> dict:
    return backends.launcher("jax").LAUNCH_ENV


def test_the_launcher_environment_is_declared_by_the_backend_and_read_without_jax():
    names = launch_env()
    assert names == {"address": "JAX_COORDINATOR_ADDRESS", "world_size": "JAX_NUM_PROCESSES",
                     "rank": "JAX_PROCESS_ID"}
    ctx = from_env({names["address"]: "127.0.0.1:4000", names["world_size"]: "3", names["rank"]: "2"})
    assert (ctx.launcher, ctx.rank, ctx.world_size, ctx.address, ctx.is_main) == ("jax.distributed", 2, 3,
                                                                                  "127.0.0.1:4000", False)
    with pytest.raises(DistributedError, match=r"^\$JAX_NUM_PROCESSES must be an integer, got 'two'$"):
        from_env({names["address"]: "127.0.0.1:4000", names["world_size"]: "two", names["rank"]: "0"})


def test_a_stop_signal_caught_in_a_gc_callback_is_sent_again_after_it():
    """JAX runs a callback at every garbage collection; the run's stop handler raises, and an exception
    raised there would be printed and dropped: the signal comes back once the callback has returned."""
    load("jax")
    import gc
    from nin_multi.backends.jax_dist import _outside_gc_callbacks

    frames, seen = [], []

    def callback(phase, info):
        frames.append(sys._getframe())

    gc.callbacks.append(callback)
    try:
        gc.collect()
        wrapped = _outside_gc_callbacks(lambda signum, frame: seen.append(signum))
        previous = signal.signal(signal.SIGUSR1, wrapped)
        try:
            wrapped(signal.SIGUSR1, frames[0])  # as if it arrived inside the callback
            assert seen == []
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            signal.signal(signal.SIGUSR1, previous)
    finally:
        gc.callbacks.remove(callback)
    assert seen == [signal.SIGUSR1]


def by_hand(rank: int, address: str, tmp_path, **env) -> subprocess.CompletedProcess:
    """One JAX worker of two started by hand (no --workers), with the run's timeout at 5 s."""
    load("jax")
    names = launch_env()
    return subprocess.run([sys.executable, "-m", "nin_multi", "train", "--backend", "jax", "--variant", "mini",
                           "--resize", "28", "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, names["address"]: address, names["world_size"]: "2",
                               names["rank"]: str(rank), "NIN_MULTI_DIST_TIMEOUT": "5", **env})


def test_a_worker_whose_partner_never_comes_gives_up_in_one_line(tmp_path):
    address = f"127.0.0.1:{free_ports(1)[0]}"
    done = by_hand(0, address, tmp_path)
    assert done.returncode == DistributedError.exit_code, done.stderr[-2000:]
    assert done.stderr == (f"nin-multi: error: worker 0 of 2 could not join JAX's coordination service at {address} "
                           f"within 5 s ($NIN_MULTI_DIST_TIMEOUT sets the bound)\n")
    assert not (tmp_path / "run").exists()


def test_a_coordinator_address_without_a_port_is_one_line(tmp_path):
    done = by_hand(1, "10.0.0.1", tmp_path)
    assert done.returncode == DistributedError.exit_code
    assert done.stderr == ("nin-multi: error: $JAX_COORDINATOR_ADDRESS must be process 0's host:port, got '10.0.0.1': "
                           "set it on every process, or start the workers with --workers\n")


# -- real workers ------------------------------------------------------------------------------------
def args(cfg: dict, out) -> list:
    return ["train", "--backend", "jax", *[f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()
                                           if k not in ("nesterov",)],
            *(["--nesterov"] if cfg.get("nesterov") else []), "--out", str(out), "--no-progress"]


def relative_difference(a: dict, b: dict) -> float:
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in b)
    return (num / sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for k in b)) ** 0.5


def check_same_training(run, one, what: str) -> None:
    """The weights within 1e-9 (relative) of one process's, every epoch's metrics within 1e-10."""
    diff = relative_difference(load_weights(run / "weights.safetensors")[1],
                               load_weights(one / "weights.safetensors")[1])
    print(f"jax, {what}: relative weight difference from one process {diff:.1e}")
    assert diff <= 1e-9
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (run, one)]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]] == [1, 2]
    for two, single in zip(*rows):
        for key in ("train_acc", "test_acc"):
            assert two[key] == single[key], key
        for key in ("train_loss", "test_loss"):
            assert two[key] == pytest.approx(single[key], rel=1e-10), key


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, sample_dir):
    """The recipe trained by one process: what two workers must leave."""
    load("jax")
    out = tmp_path_factory.mktemp("jax-one") / "run"
    train(TrainConfig(backend="jax", out=str(out), progress=False, data_dir=str(sample_dir), **RECIPE),
          log=lambda *_: None)
    return out


@pytest.mark.slow
def test_two_workers_leave_one_process_s_weights_with_the_fast_recipe_s_optimizer(one_process, sample_dir, tmp_path):
    p = nin_multi([*args({**RECIPE, "data_dir": sample_dir}, tmp_path / "two"), "--workers", "2"])
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        stop(p)
    assert p.returncode == 0, err[-3000:]
    assert "x 2 workers (jax.distributed)" in out and "16 per worker" in out
    check_same_training(tmp_path / "two", one_process, "2 workers, 2 x 3 steps")


def _listening(pid: int) -> list:
    from test_workers_safety import listening
    try:
        return listening(pid)
    except OSError:  # it ended meanwhile
        return []


def loopback(address: str) -> bool:
    """127.0.0.1 also as gRPC's dual-stack socket shows it, ::ffff:127.0.0.1."""
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def _worker(launcher_pid: int, rank: int):
    for pid in descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"{launch_env()['rank']}={rank}".encode() in env:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_a_killed_worker_is_named_and_nothing_is_left(sample_dir, tmp_path):
    """While two workers train, every socket they listen on is on loopback; worker 1 SIGKILLed after the
    first epoch's checkpoint ends the run in one line, with no process left. (That the run then resumes
    exactly on two workers is test_distributed's, for every engine.)"""
    load("jax")
    run = tmp_path / "run"
    p = nin_multi([*args({**RECIPE, "data_dir": sample_dir}, run), "--workers", "2"])
    try:
        wait_for(run / "checkpoints" / "epoch-0001.npz", p, TIMEOUT)
        started = descendants(p.pid)
        sockets = {pid: _listening(pid) for pid in [p.pid, *started]}
        assert sum(len(s) for s in sockets.values()) >= 2, sockets  # the coordinator and gloo's pairs
        assert all(loopback(a) for found in sockets.values() for a, _ in found), sockets
        victim = _worker(p.pid, 1)
        assert victim is not None and p.poll() is None
        os.kill(victim, signal.SIGKILL)
        _, err = p.communicate(timeout=60)
    finally:
        stop(p)
    assert p.returncode == DistributedError.exit_code
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"nin-multi: error: worker 1 was killed by SIGKILL, so the 2-worker jax run was stopped (every process "
        f"ended); the last completed epoch's checkpoint is in {run}: continue with --resume {run} --workers 2")
    assert [pid for pid in started if os.path.exists(f"/proc/{pid}")
            and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"] == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_a_launcher_stopped_by_sigterm_stops_its_jax_workers_in_one_line(sample_dir, tmp_path):
    """SIGTERM to ``--workers 2``: the workers stop on the run's own handler (which JAX's start-up would
    take over), the launcher says so in one line, and no process is left."""
    load("jax")
    run = tmp_path / "run"
    p = nin_multi([*args({**RECIPE, "precision": "fp32", "subset": 64, "test_subset": 32, "epochs": 1000,
                          "data_dir": sample_dir}, run), "--workers", "2"])
    try:
        wait_for(run / "checkpoints" / "epoch-0001.npz", p, TIMEOUT)
        started = descendants(p.pid)
        assert len(started) == 2
        os.kill(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        stop(p)
    assert p.returncode == DistributedError.exit_code and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"nin-multi: error: stopped by SIGTERM; stopped all 2 workers; continue "
                                            f"with --resume {run} --workers 2")
    assert "SIGTERM caught" not in err  # the run's handler got it, not JAX's preemption notifier
    assert [pid for pid in started if os.path.exists(f"/proc/{pid}")
            and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"] == []
