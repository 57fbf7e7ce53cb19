"""Training on the real Fashion-MNIST sample, through the shared driver, for every backend."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from nin_multi import optim
from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.errors import TrainingDivergedError
from nin_multi.precision import unsupported
from nin_multi.recipes import FAST
from nin_multi.record import steps_done
from nin_multi.run import WEIGHTS
from nin_multi.train import resume, train, train_epoch
from nin_multi.weights import load_weights

from conftest import ROOT, load
from test_formats import f32, read_events
from test_spec import CHAPTER_NCHW

#: The fast recipe's optimizer: Nesterov momentum, weight decay, label smoothing, a rate that warms up
#: for an epoch and then decays linearly to the end.
FAST_OPTIMIZER = {k: FAST[k] for k in ("lr", "momentum", "nesterov", "weight_decay", "label_smoothing", "schedule",
                                       "warmup_epochs")}


def quiet(*_):
    pass


def mini_config(backend, sample_dir, out, **kw):
    """The learning signal. The chapter's recipe (Xavier, lr 0.1) can sit at loss 2.30 for a dozen
    epochs on this sample, and the chapter's net at 67-96 px did not reliably fit even a fixed batch in
    60 steps (measured). A narrow NiN on unresized 28x28 images with He init and lr 0.05 learns from
    the first epoch in every seed tried (train loss 1.0-1.5 and test accuracy 0.4-0.7 after 4 epochs),
    and costs seconds per epoch."""
    base = dict(backend=backend.NAME, variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32,
                epochs=4, data_dir=str(sample_dir), out=str(out), progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_learns_on_the_real_sample(trainable_backend, sample_dir, tmp_path):
    backend = trainable_backend
    _, history = train(mini_config(backend, sample_dir, tmp_path / "run"), log=quiet)
    losses = [r["train_loss"] for r in history]
    assert losses[0] < 2.4 and losses[-1] < 1.8, losses  # chance is ln 10 = 2.303
    assert max(r["test_acc"] for r in history) > 0.35, history  # chance is 0.10


@pytest.mark.slow
def test_bf16_training_still_learns(trainable_backend, sample_dir, tmp_path):
    """Where the framework can run bf16 on this CPU it learns; where it cannot (MXNet below AVX-512 BF16, or
    under an AVX2 cap) the run is refused before training in one line, never a traceback. 60 steps with the
    fast recipe's init and Nesterov momentum, since a CPU without bf16 hardware emulates it at ~1 s a step
    of the narrow network (fp32: 0.06 s); measured in fp32, train loss 2.23 -> 1.28 and test accuracy 0.63."""
    backend = trainable_backend
    cfg = mini_config(backend, sample_dir, tmp_path / "run", precision="bf16", init="kaiming-identity", lr=0.02,
                      momentum=0.9, nesterov=True, subset=640, test_subset=200, epochs=3)
    why = unsupported(backend.NAME, "bf16", backend.device())
    if why is not None:
        done = subprocess.run([sys.executable, "-m", "nin_multi", "train", "--backend", backend.NAME, "--precision",
                               "bf16", "--variant", "mini", "--resize", "28", "--data-dir", str(sample_dir),
                               "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith(f"nin-multi: error: --precision bf16 {why}; this is CPU class ")
        assert not (tmp_path / "run").exists()
        return
    if backend.NAME == "mxnet":
        # MXNet's AMP rewrites its operators for the whole process once on: train in a process of its
        # own, through the CLI, so the fp32 tests after this one still run in fp32.
        args = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.to_dict().items()
                if k in ("backend", "variant", "resize", "init", "lr", "batch_size", "epochs", "data_dir",
                         "out", "precision", "momentum", "subset", "test_subset")] + ["--nesterov"]
        done = subprocess.run([sys.executable, "-m", "nin_multi", "train", *args, "--no-progress"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    else:
        _, history = train(cfg, log=quiet)
    losses = [r["train_loss"] for r in history]  # measured in bf16: 2.19-2.24 -> 1.58-1.81 at the lowest
    assert min(losses[1:]) < losses[0] - 0.3, losses  # chance is ln 10 = 2.303
    assert max(r["test_acc"] for r in history) >= 0.3, history  # chance is 0.10


_AMP_THEN_FP32 = """
import backends.mxnet as m
from nin_multi.errors import ConfigError
from nin_multi.spec import make_spec
spec = make_spec("mini", image_size=28)
try:
    m.Trainer(m.build_model(spec, "kaiming"), 0.05, "bf16")
except ConfigError as e:  # no bf16 kernels for this CPU: refused before AMP is turned on
    print(e)
    raise SystemExit(0)
m.Trainer(m.build_model(spec, "kaiming"), 0.05, "bf16")  # the same precision again is what AMP computes
try:
    m.Trainer(m.build_model(spec, "kaiming"), 0.05, "fp32")
except ConfigError as e:
    print(e)
"""


def test_an_mxnet_fp32_trainer_after_a_bf16_one_in_the_same_process_is_refused():
    """MXNet's AMP cannot be turned off: an fp32 Trainer after a bf16 one would train in bfloat16 while
    reporting fp32. Run in a process of its own, as it turns AMP on. On a CPU without MXNet's bf16 kernels
    the bf16 Trainer itself is refused, before AMP is on."""
    load("mxnet")
    done = subprocess.run([sys.executable, "-c", _AMP_THEN_FP32], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if unsupported("mxnet", "bf16") is not None:
        assert done.stdout.strip().splitlines()[-1].startswith("--precision bf16 needs a CPU with AVX-512 BF16 or "
                                                               "AMX in mxnet; this is CPU class ")
        return
    assert done.stdout.strip().splitlines()[-1] == (
        "MXNet computes in bf16 for the rest of this process (its AMP, turned on by an earlier bf16 run, cannot be "
        "turned off), so a fp32 run here would not be fp32: run it in a process of its own")


def test_cli_train_end_to_end(trainable_backend, sample_dir, tmp_path, capsys):
    backend = trainable_backend
    out = tmp_path / "run"
    code = main(["train", "--backend", backend.NAME, "--data-dir", str(sample_dir), "--epochs", "1",
                 "--resize", "67", "--subset", "64", "--test-subset", "32", "--batch-size", "32",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "examples/sec on" in printed and "test acc" in printed
    for f in ("metrics.csv", "metrics.jsonl", "curves.png", "config.json", "weights.safetensors",
              "checkpoints/epoch-0001.npz"):
        assert (out / f).is_file(), f
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and 0 <= row["test_acc"] <= 1
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    spec, weights = load_weights(out / "weights.safetensors")
    assert spec.num_params == 1_992_166


def test_cli_summary_prints_the_chapter_walk(backend, capsys):
    assert main(["summary", "--backend", backend.NAME]) == 0
    printed = capsys.readouterr().out
    for shape in CHAPTER_NCHW:
        expected = shape if backend.LAYOUT == "NCHW" or len(shape) == 2 else \
            (shape[0], shape[2], shape[3], shape[1])
        assert str(expected) in printed
    assert "1,992,166" in printed


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_resume_equals_uninterrupted(trainable_backend, sample_dir, tmp_path, precision):
    """Exact, not close: data order from (seed, epoch), restored dropout state, and in fp64 checkpoints
    that keep float64 (a float32 checkpoint would round the weights and the runs would part)."""
    backend = trainable_backend
    kw = dict(subset=192, test_subset=64, epochs=3, precision=precision)  # 3 x 6 steps
    _, straight = train(mini_config(backend, sample_dir, tmp_path / "a", **kw), log=quiet)
    train(mini_config(backend, sample_dir, tmp_path / "b", **{**kw, "epochs": 1}), log=quiet)
    _, resumed = resume(tmp_path / "b", epochs=3, log=quiet)
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
    assert [r["test_acc"] for r in resumed] == [r["test_acc"] for r in straight]
    _, wa = load_weights(tmp_path / "a" / "weights.safetensors")
    _, wb = load_weights(tmp_path / "b" / "weights.safetensors")
    for k in wa:
        assert wa[k].dtype == wb[k].dtype == ("float64" if precision == "fp64" else "float32")
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_non_finite_loss_stops_with_epoch_and_batch(sample_dir):
    from nin_multi.data import load_fashion_mnist

    class Exploding:
        calls = 0

        def train_step(self, x, y, lr, total=None):
            self.calls += 1
            return (float("nan") if self.calls == 3 else 2.3 * len(y)), 0

    ds = load_fashion_mnist(sample_dir).subset(200)
    cfg = TrainConfig(epochs=5, batch_size=32, resize=28, lr=0.1, progress=False)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 3.*--lr 0.05"):
        train_epoch(Exploding(), ds, cfg, "NCHW", epoch=1)


def test_the_step_is_read_from_the_checkpoint_or_an_older_ones_backend_counter():
    assert steps_done({"step": np.int64(7), "torch_updates": np.int64(3)}, 2, 3) == 7
    for old in ("torch_updates", "mx_step", "jax_step"):
        assert steps_done({old: np.int64(5)}, 2, 3) == 5
    assert steps_done({"optimizer.0": np.int64(9)}, 2, 3) == 6  # TensorFlow's kept none: the epochs' batches


def check_logged_rates(run, cfg: TrainConfig, steps_per_epoch: int) -> None:
    """Every step's ``step/learning_rate`` (TensorBoard's float32) is the schedule's rate of that step."""
    settings = optim.from_config(cfg, steps_per_epoch)
    expected = [(t + 1, f32(settings.lr_at(t))) for t in range(cfg.epochs * steps_per_epoch)]
    assert read_events(run)["step/learning_rate"] == expected
    assert len({v for _, v in expected}) > 2 and max(v for _, v in expected) == f32(cfg.lr)  # not a flat line


def test_the_logged_rate_is_the_schedules_at_every_step_and_a_resume_continues_it(
        trainable_backend, sample_dir, tmp_path):
    """The driver owns the step and the rate: with the fast recipe's optimizer the events hold the rate of
    every step as ``lr_at(step)`` gives it, and a run resumed after its first epoch continues the schedule
    where it stopped (the same rates, the same weights as the uninterrupted run: fp64, exact)."""
    backend = trainable_backend
    kw = dict(subset=128, test_subset=32, epochs=2, dropout=0.0, precision="fp64", **FAST_OPTIMIZER)  # 2 x 4 steps
    cfg = mini_config(backend, sample_dir, tmp_path / "a", **kw)
    train(cfg, log=quiet)
    check_logged_rates(tmp_path / "a", cfg, 4)
    train(mini_config(backend, sample_dir, tmp_path / "b", **kw), log=quiet)
    for name in (WEIGHTS, "checkpoints/epoch-0002.npz"):
        (tmp_path / "b" / name).unlink()
    resume(tmp_path / "b", log=quiet)
    check_logged_rates(tmp_path / "b", cfg, 4)
    _, wa = load_weights(tmp_path / "a" / WEIGHTS)
    _, wb = load_weights(tmp_path / "b" / WEIGHTS)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
