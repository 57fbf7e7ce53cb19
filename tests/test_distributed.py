"""Data parallelism on each framework's own engine: N workers equal one process, faults end runs.

The multi-process tests start real launchers (torchrun, TF_CONFIG workers, MXNet's scheduler, server
and workers) on 127.0.0.1 through ``train --workers 2``; every process runs under a timeout and is
killed (its whole process group) if the test fails.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nin_multi import backends, host, optim
from nin_multi.backends import capabilities
from nin_multi.config import TrainConfig
from nin_multi.cluster import Context, from_env
from nin_multi.distributed import check_config, strip_workers
from nin_multi.errors import ConfigError, DistributedError
from nin_multi.train import train
from nin_multi.run import WEIGHTS
from nin_multi.weights import load_weights

from conftest import ROOT, descendants, load_companion
from test_formats import f32, read_events
from test_training import FAST_OPTIMIZER

TIMEOUT = 240  # seconds for one multi-process run on the shared 2-core machine


def quiet(*_):
    pass


def test_shards_cover_the_global_batch_contiguously():
    for n in (32, 19, 7):
        for world in (1, 2, 3):
            parts = [Context("torchrun", r, world).shard(n) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_environment_of_each_launcher():
    t = from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": "29500"})
    assert (t.launcher, t.rank, t.world_size, t.local_rank, t.is_main) == ("torchrun", 1, 4, 1, False)
    cluster = {"chief": ["a:1"], "worker": ["b:2", "c:3"]}
    f = from_env({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})})
    assert (f.launcher, f.rank, f.world_size, f.address) == ("tf_config", 2, 3, "c:3")
    dmlc = {"DMLC_ROLE": "server", "DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "1",
            "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000"}
    m = from_env(dmlc)
    assert (m.launcher, m.role, m.world_size) == ("dmlc", "server", 2)
    assert not from_env({}).active and from_env({}).is_main
    with pytest.raises(DistributedError, match="TF_CONFIG is not a valid"):
        from_env({"TF_CONFIG": "{"})
    with pytest.raises(DistributedError, match="DMLC_PS_ROOT_PORT"):
        from_env({k: v for k, v in dmlc.items() if k != "DMLC_PS_ROOT_PORT"})
    with pytest.raises(DistributedError, match="NIN_MULTI_DIST_TIMEOUT"):
        from_env({"NIN_MULTI_DIST_TIMEOUT": "soon"})


def test_global_batches_that_workers_cannot_share_are_refused():
    with pytest.raises(ConfigError, match="--batch-size 32 is the global batch and 3 workers cannot share it"):
        check_config(3, TrainConfig(batch_size=32), 640, 96)
    with pytest.raises(ConfigError, match="training set's last batch has 1 example"):
        check_config(3, TrainConfig(batch_size=33), 100, 99)
    check_config(3, TrainConfig(batch_size=33), 103, 99)  # the last batch of 4: shares of 2, 1 and 1


@pytest.mark.parametrize("name", backends.data_parallel())
def test_each_engine_s_launch_module_reads_its_own_launcher_without_its_framework(name):
    """``cluster.from_env`` asks each launch module; the one that answers names its backend's launcher,
    the others answer None, and none of them loads a framework."""
    env = {"torch": {"RANK": "1", "WORLD_SIZE": "2"},
           "tensorflow": {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                   "task": {"type": "worker", "index": 1}})},
           "mxnet": {"DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "2", "DMLC_NUM_SERVER": "1",
                     "DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000"},
           "jax": {"JAX_PROCESS_ID": "1", "JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:9"}}[name]
    code = ("import json, sys\nfrom nin_multi import backends\nfrom nin_multi.cluster import from_env\n"
            f"env = json.loads({json.dumps(json.dumps(env))})\nctx = from_env(env)\n"
            "answers = {k: backends.launcher(k).context(env, 1.0) is not None for k in backends.data_parallel()}\n"
            "loaded = sorted(m for m in ('torch', 'tensorflow', 'mxnet', 'jax', 'flax') if m in sys.modules)\n"
            "print(json.dumps([ctx.launcher, ctx.world_size, answers, loaded]))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    launcher, size, answers, loaded = json.loads(done.stdout)
    assert (launcher, size, loaded) == (capabilities(name).data_parallel, 2, [])
    assert answers == {k: k == name for k in backends.data_parallel()}
    assert set(backends.launcher(name).LAUNCH_VARS) & set(env)  # --workers strips what it sets itself


def test_allow_network_reaches_the_context_and_leaves_the_environment_alone(monkeypatch, tmp_path):
    """``--allow-network`` travels as a parameter (``train`` -> ``World`` -> ``Context``), never through
    ``os.environ``; ``$NIN_MULTI_ALLOW_NETWORK=1`` is its documented alternative."""
    from nin_multi import isolation
    from nin_multi import train as train_mod
    from nin_multi.cli import main
    from nin_multi.distributed import World

    seen = []

    class Spy(World):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.ctx.allow_network)
            raise ConfigError("stopped by the test")

    monkeypatch.setattr(train_mod, "World", Spy)
    monkeypatch.delenv(isolation.ALLOW_ENV, raising=False)
    before = dict(os.environ)
    for flag in (["--allow-network"], []):
        assert main(["train", "--backend", "torch", *flag, "--out", str(tmp_path / "run")]) == ConfigError.exit_code
        assert dict(os.environ) == before
    assert seen == [True, False]
    assert from_env({isolation.ALLOW_ENV: "1"}).allow_network and not from_env({}).allow_network
    assert from_env({}, allow_network=True).allow_network


def workers_cli(monkeypatch, capsys, sample_dir, tmp_path, *args):
    """``train --workers`` with every way of starting a process replaced by a failure: (exit status,
    stderr, what the launcher handed a backend's ``start_workers``)."""
    from nin_multi import backends as registry
    from nin_multi.cli import main
    from nin_multi.distributed import Launch

    handed = []

    class FakeDist:
        @staticmethod
        def start_workers(launch, workers, command, env):
            handed.append((launch.allow_network, workers))
            return []

    monkeypatch.setattr(registry, "companion", lambda name, part: FakeDist)
    monkeypatch.setattr(Launch, "start", lambda *a, **k: pytest.fail("a process was started"))
    rc = main(["train", "--variant", "mini", "--resize", "28", "--precision", "fp32", "--data-dir", str(sample_dir),
               "--out", str(tmp_path / "run"), *args])
    return rc, capsys.readouterr().err, handed


@pytest.mark.parametrize("args, message", [
    (["--workers", "3", "--batch-size", "32"],
     "--batch-size 32 is the global batch and 3 workers cannot share it equally: choose a multiple of 3 (e.g. 30)"),
    (["--workers", "2", "--batch-size", "32", "--subset", "65"],
     "the training set's last batch has 1 example(s), fewer than the 2 workers: change --batch-size or --subset"),
    (["--workers", "4", "--batch-size", "64", "--test-subset", "66"],
     "the test set's last batch has 2 example(s), fewer than the 4 workers: change --batch-size or --test-subset"),
    (["--workers", "2", "--backend", "onnx"], "--workers is not available for the onnx backend"),
])
def test_workers_refuse_what_they_cannot_share_before_any_process_starts(monkeypatch, capsys, sample_dir,
                                                                         tmp_path, args, message):
    rc, err, handed = workers_cli(monkeypatch, capsys, sample_dir, tmp_path, *args)
    assert (rc, err, handed) == (ConfigError.exit_code, f"nin-multi: error: {message}\n", [])
    assert not (tmp_path / "run").exists()


def test_the_launcher_hands_its_engine_the_network_permission(monkeypatch, capsys, sample_dir, tmp_path):
    from nin_multi import isolation

    monkeypatch.delenv(isolation.ALLOW_ENV, raising=False)
    for flag, allowed in (([], False), (["--allow-network"], True)):
        rc, err, handed = workers_cli(monkeypatch, capsys, sample_dir, tmp_path, "--workers", "2", *flag)
        assert (rc, handed) == (0, [(allowed, 2)]), err
    monkeypatch.setenv(isolation.ALLOW_ENV, "1")
    assert workers_cli(monkeypatch, capsys, sample_dir, tmp_path, "--workers", "2")[2] == [(True, 2)]


@pytest.mark.parametrize("name", backends.data_parallel())
def test_the_dropout_note_is_true_of_each_engine(name):
    """JAX's engine draws the masks over the global batch with one key (one process's masks where the batch
    splits evenly); the others draw each worker's own."""
    from nin_multi.distributed import DROPOUT_NOTE, SAME_MASKS_NOTE, World
    from nin_multi.spec import make_spec

    world = World(Context(capabilities(name).data_parallel, 0, 2))
    assert world.notes(make_spec("chapter")) == [f"note: {SAME_MASKS_NOTE if name == 'jax' else DROPOUT_NOTE}"]
    assert world.notes(make_spec("chapter", dropout=0.0)) == []
    assert World(Context()).notes(make_spec("chapter")) == []


def test_mxnet_fp64_workers_refuse_a_server_that_rounds_float64(sample_dir, tmp_path, procs):
    """MXNet 1.9.1's server leaves its multi-precision flag uninitialised (mxnet_dist.MXNET_SERVER_TUNABLES):
    a server whose allocations glibc fills with 0xfe sets it and sums float64 in float32. An fp64 worker
    finds out before training (one line, nothing written); ``--workers`` gives its server zero-filled memory."""
    mxnet_dist = load_companion("mxnet", "dist")
    port = host.free_ports(1)[0]
    dmlc = {**os.environ, "DMLC_NUM_WORKER": "1", "DMLC_NUM_SERVER": "1", "DMLC_PS_ROOT_URI": "127.0.0.1",
            "DMLC_PS_ROOT_PORT": str(port), "DMLC_NODE_HOST": "127.0.0.1"}
    args = cli_args("mxnet", recipe(sample_dir, precision="fp64"), tmp_path / "run")
    procs.start(args, env={**dmlc, "DMLC_ROLE": "scheduler"})
    procs.start(args, env={**dmlc, "DMLC_ROLE": "server",
                           "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.perturb=1"})
    rc, _, err = procs.run(args, timeout=120, env={**dmlc, "DMLC_ROLE": "worker"})
    assert rc == DistributedError.exit_code, err[-2000:]
    assert err.startswith("nin-multi: error: --precision fp64: this MXNet parameter server rounds float64 to float32")
    assert mxnet_dist.MXNET_SERVER_TUNABLES in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_strip_workers_keeps_everything_else():
    assert strip_workers(["train", "--workers", "2", "--lr", "0.1", "--workers=3"]) == ["train", "--lr", "0.1"]


def test_a_port_in_use_gets_a_clear_message(sample_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "MASTER_PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "nin_multi", "train", "--backend", "torch", "--workers", "2",
                               "--data-dir", str(sample_dir), "--out", str(tmp_path / "run")], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == DistributedError.exit_code
    assert done.stderr.strip() == (f"nin-multi: error: port {port} on 127.0.0.1 (torchrun's rendezvous) is in use "
                                   f"by another program: choose a free port with MASTER_PORT, or stop the program "
                                   f"that holds it")
    assert not (tmp_path / "run").exists()


# -- real engines ------------------------------------------------------------------------------------
def recipe(sample_dir, **kw):
    """The learning recipe (mini net at 28x28, He init, lr 0.05, batch 32) without dropout: 21 steps, the
    last one of 19 examples (shares of 10 and 9)."""
    return dict(dict(variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32, subset=659,
                     test_subset=100, epochs=1, dropout=0.0, data_dir=str(sample_dir)), **kw)


#: Two workers compute each step's gradient as two half-batch gradients added: one process's arithmetic
#: up to rounding. In fp64 that rounding stays at 1e-17..1e-15. In fp32 how far it grows depends on the
#: dynamics: the learning recipe above (He init, lr 0.05) first collapses to the 2.30 plateau, where any
#: difference is amplified (one PyTorch process adding two half-batch gradients ends 2.4e-4 away from the
#: whole-batch step after 21 steps, the same as two workers), and so does the chapter's (Xavier, lr 0.1)
#: for TensorFlow's draw of the weights (1.4e-4). At a tenth of the chapter's rate, rounding is not
#: amplified (measured, 2 workers vs 1 process after 21 steps: PyTorch 1.1e-8, TensorFlow 5.1e-8) while a
#: wrong gradient convention still shows: a gradient twice too large moves the weights 3.4e-4 away.
TOLERANCE = {"fp64": 1e-10, "fp32": 1e-5}
METRIC_TOLERANCE = {"fp64": (0.0, 1e-10), "fp32": (0.0, 1e-5)}  # (accuracy, absolute; loss, relative)


def fp32_recipe(sample_dir, **kw):
    """The chapter's init (Xavier) at a tenth of its learning rate on the mini net, no dropout: see TOLERANCE."""
    return recipe(sample_dir, **dict(dict(init="xavier", lr=0.01, precision="fp32"), **kw))


def cli_args(backend_name, cfg: dict, out) -> list:
    """A switch (``nesterov``) is given when true, left out when false."""
    options = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in cfg.items() if v is not False]
    return ["train", "--backend", backend_name, *options, "--out", str(out), "--no-progress"]


class Processes:
    """``nin-multi`` in a process group of its own, killed with everything it started on failure."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen([sys.executable, "-m", "nin_multi", *args], cwd=ROOT, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def run(self, args, timeout=TIMEOUT, **kw):
        p = self.start(args, **kw)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def kill_all(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


@pytest.fixture
def parallel(backend):
    """The backends with a data-parallel engine; the others are skipped with the reason."""
    if not capabilities(backend.NAME).data_parallel:
        pytest.skip(f"the {backend.NAME} backend has no data-parallel engine")
    return backend


@pytest.fixture
def procs():
    p = Processes()
    yield p
    p.kill_all()


def read_weights(path) -> dict:
    return load_weights(path)[1]


def relative_difference(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over every parameter of the model."""
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in b)
    return (num / sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for k in b)) ** 0.5


def check_same_training(run: Path, one: Path, precision: str, what: str) -> None:
    """The weights and every epoch's metrics of a distributed run equal one process's."""
    diff = relative_difference(read_weights(run / "weights.safetensors"), read_weights(one / "weights.safetensors"))
    print(f"{what}, {precision}: relative weight difference from one process {diff:.2e}")
    assert diff < TOLERANCE[precision]
    acc, loss = METRIC_TOLERANCE[precision]
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (run, one)]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]]
    for two, single in zip(*rows):
        for key in ("test_acc", "train_acc"):
            assert two[key] == pytest.approx(single[key], abs=acc), key
        for key in ("test_loss", "train_loss"):
            assert two[key] == pytest.approx(single[key], rel=loss), key


@pytest.mark.slow
def test_two_workers_equal_one_process_in_fp32(parallel, sample_dir, tmp_path, procs):
    backend = parallel
    cfg = fp32_recipe(sample_dir)
    train(TrainConfig(backend=backend.NAME, out=str(tmp_path / "one"), progress=False, **cfg), log=quiet)
    rc, out, err = procs.run([*cli_args(backend.NAME, cfg, tmp_path / "two"), "--workers", "2"])
    assert rc == 0, err[-3000:]
    assert "x 2 workers" in out and "16 per worker" in out
    check_same_training(tmp_path / "two", tmp_path / "one", "fp32", f"{backend.NAME}: 2 workers, 21 steps")
    # The same files (the TensorBoard event file's name holds its process's time, host and pid).
    files = [sorted(p.name.split(".")[0] if p.name.startswith("events.out.tfevents.") else p.name
                    for p in (tmp_path / d).iterdir()) for d in ("two", "one")]
    assert files[0] == files[1] and files[0].count("events") == 1


def _environ(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(e.decode(errors="replace").split("=", 1) for e in f.read().split(b"\0") if b"=" in e)
    except OSError:
        return {}


def _worker_to_kill(launcher_pid: int):
    """A worker that is not rank 0 (MXNet's scheduler assigns ranks: any worker), found by its environment;
    the python process itself, not the ``timeout`` or shell around it."""
    for pid in descendants(launcher_pid):
        env = _environ(pid)
        if "nin_multi" in open(f"/proc/{pid}/cmdline").read() and (
                env.get("RANK") == "1" or env.get("DMLC_ROLE") == "worker" or '"index": 1' in env.get("TF_CONFIG", "")
                or env.get("JAX_PROCESS_ID") == "1"):
            return pid
    return None


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_and_it_resumes_exactly(parallel, sample_dir, tmp_path, procs):
    """Two epochs of 11 steps on two workers, one of them SIGKILLed after the first checkpoint, resumed on
    two workers: the launcher ends every process with one line (no traceback), and the resumed run ends
    with one uninterrupted process's weights and metrics (fp64: within 1e-10)."""
    backend = parallel
    cfg = recipe(sample_dir, precision="fp64", epochs=2, subset=352)  # 2 x 11 steps, the last of 32
    args = [*cli_args(backend.NAME, cfg, tmp_path / "run"), "--workers", "2"]
    p = procs.start(args)
    first = tmp_path / "run" / "checkpoints" / "epoch-0001.npz"
    deadline = time.monotonic() + TIMEOUT
    while not first.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = _worker_to_kill(p.pid)
    assert victim is not None and p.poll() is None, p.communicate()[1][-3000:]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - killed < 30  # the launcher stops every process at once
    assert p.returncode == DistributedError.exit_code
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("nin-multi: error: worker ") and " was killed by SIGKILL, so the 2-worker " in last, err
    assert f"continue with --resume {tmp_path / 'run'} --workers 2" in last
    rc, out, err = procs.run(["train", "--resume", str(tmp_path / "run"), "--workers", "2", "--no-progress"])
    assert rc == 0, err[-3000:]
    assert "resuming after epoch" in out
    train(TrainConfig(backend=backend.NAME, out=str(tmp_path / "one"), progress=False, **cfg), log=quiet)
    check_same_training(tmp_path / "run", tmp_path / "one", "fp64",
                        f"{backend.NAME}: 2 workers, killed and resumed, 2 x 11 steps")


def test_without_a_launcher_a_lone_worker_gives_up_within_the_timeout(sample_dir, tmp_path, procs):
    """Worker 0 of two whose partner never comes: the engine's own bound, not the launcher's teardown."""
    port = host.free_ports(1)[0]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "NIN_MULTI_DIST_TIMEOUT": "5"}
    t0 = time.monotonic()
    rc, _, err = procs.run(cli_args("torch", recipe(sample_dir), tmp_path / "run"), timeout=120, env=env)
    assert time.monotonic() - t0 < 60
    assert rc == DistributedError.exit_code, err[-2000:]
    assert err.startswith("nin-multi: error: worker 0 could not join the gloo process group at 127.0.0.1:")


@pytest.mark.slow
def test_two_workers_with_the_fast_recipes_optimizer_equal_one_process_and_resume_exactly(parallel, sample_dir,
                                                                                          tmp_path, procs):
    """Every engine steps the backend's own Trainer: with the fast recipe's optimizer (Nesterov momentum,
    weight decay, warm-up and linear decay, label smoothing) two workers leave one process's weights
    (fp64, relative 1e-9), log every step's rate as ``lr_at(step)`` exactly, and a run resumed after its
    first epoch on two workers continues the schedule and the momentum where they stopped. 2 x 3 steps,
    the last of each epoch 8 examples (shares of 4)."""
    backend = parallel
    cfg = recipe(sample_dir, precision="fp64", epochs=2, subset=72, test_subset=32, **FAST_OPTIMIZER)
    one = TrainConfig(backend=backend.NAME, out=str(tmp_path / "one"), progress=False, **cfg)
    train(one, log=quiet)
    settings = optim.from_config(one, 3)
    rates = [(t + 1, f32(settings.lr_at(t))) for t in range(6)]
    rc, out, err = procs.run([*cli_args(backend.NAME, cfg, tmp_path / "two"), "--workers", "2"])
    assert rc == 0, err[-3000:]
    assert "x 2 workers" in out
    check_same_training(tmp_path / "two", tmp_path / "one", "fp64", f"{backend.NAME}: 2 workers, fast optimizer")
    assert read_events(tmp_path / "two")["step/learning_rate"] == rates
    for name in (WEIGHTS, "checkpoints/epoch-0002.npz"):  # back to the end of the first epoch
        (tmp_path / "two" / name).unlink()
    rc, out, err = procs.run(["train", "--resume", str(tmp_path / "two"), "--workers", "2", "--no-progress"])
    assert rc == 0, err[-3000:]
    assert "resuming after epoch 1" in out
    check_same_training(tmp_path / "two", tmp_path / "one", "fp64", f"{backend.NAME}: 2 workers, resumed")
    assert read_events(tmp_path / "two")["step/learning_rate"] == rates


@pytest.mark.slow
def test_two_workers_train_in_bf16_as_one_process_does(parallel, sample_dir, tmp_path, procs):
    """Every precision one process has trains on workers: bf16 (mixed precision, float32 weights) on two
    workers ends near one process's weights. Measured after these 5 steps at a tenth of the chapter's rate
    on an AVX2 CPU (bf16 emulated): relative 5.0e-6 (PyTorch), 7.9e-6 (TensorFlow), 1.7e-5 (JAX); the
    bound leaves room for other CPUs' bf16 kernels."""
    from nin_multi.precision import unsupported

    backend = parallel
    why = unsupported(backend.NAME, "bf16", "cpu")
    if why is not None:
        pytest.skip(f"{backend.NAME}: bf16 {why}")
    cfg = fp32_recipe(sample_dir, precision="bf16", subset=160)  # 5 steps of 32, shares of 16
    train(TrainConfig(backend=backend.NAME, out=str(tmp_path / "one"), progress=False, **cfg), log=quiet)
    rc, out, err = procs.run([*cli_args(backend.NAME, cfg, tmp_path / "two"), "--workers", "2"])
    assert rc == 0, err[-3000:]
    assert "x 2 workers" in out and ", bf16;" in out
    assert json.loads((tmp_path / "two" / "config.json").read_text())["precision"] == "bf16"
    diff = relative_difference(read_weights(tmp_path / "two" / WEIGHTS), read_weights(tmp_path / "one" / WEIGHTS))
    print(f"{backend.NAME}: 2 workers in bf16, 5 steps: relative weight difference from one process {diff:.2e}")
    assert diff < 1e-4


def test_the_workers_share_the_cores_unless_told_otherwise(monkeypatch, capsys, sample_dir, tmp_path):
    """``--workers N`` gives every framework's workers ``OMP_NUM_THREADS`` = cores // N (a user's own value
    is kept), and a framework asked for no thread count computes with it: two workers that each took every
    core would fight over them."""
    from nin_multi import backends as registry
    from nin_multi import machine
    from nin_multi.cli import main
    from nin_multi.distributed import Launch

    seen = []

    class FakeDist:
        @staticmethod
        def start_workers(launch, workers, command, env):
            seen.append(env.get("OMP_NUM_THREADS"))
            return []

    monkeypatch.setattr(registry, "companion", lambda name, part: FakeDist)
    monkeypatch.setattr(Launch, "start", lambda *a, **k: pytest.fail("a process was started"))
    monkeypatch.setattr(machine, "usable_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for workers in ("2", "3", "16"):
        assert main(["train", "--variant", "mini", "--resize", "28", "--precision", "fp32", "--batch-size", "48",
                     "--data-dir", str(sample_dir), "--out", str(tmp_path / "run"), "--workers", workers]) == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert main(["train", "--variant", "mini", "--resize", "28", "--precision", "fp32", "--data-dir",
                 str(sample_dir), "--out", str(tmp_path / "run"), "--workers", "2"]) == 0
    assert seen == ["4", "2", "1", "5"]
    assert machine.default_threads({"OMP_NUM_THREADS": "3"}) == 3 and machine.default_threads({}) == 8


@pytest.mark.parametrize("name", ["torch", "tensorflow"])
def test_a_framework_asked_for_no_thread_count_takes_omp_num_threads(name):
    load_companion(name, "dist")  # skips, or fails under CI, without the framework
    code = (f"from nin_multi.backends import get_backend; b = get_backend({name!r}); b.configure(None, 0); "
            + ("import torch; print(torch.get_num_threads())" if name == "torch" else
               "import tensorflow as tf; print(tf.config.threading.get_intra_op_parallelism_threads())"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1"
