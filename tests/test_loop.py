"""The one epoch loop: its hooks, its step counting and rates, its time to accuracy, and that every command
that trains runs through it."""
import dataclasses

import numpy as np
import pytest

import nin_multi.reproduce.runner  # noqa: F401  (loaded before the spies: the commands must find the loop at call time)
from nin_multi import loop, optim, sweep
from nin_multi.config import TrainConfig
from nin_multi.data import FashionMNIST, epoch_order
from nin_multi.train import time_to_accuracy_lines

from conftest import load


class Scripted:
    """A Trainer whose test accuracy follows a script, one value per epoch (its training does nothing)."""

    def __init__(self, accuracies):
        self.accuracies, self.epoch, self.rates = list(accuracies), 0, []

    def train_step(self, x, y, lr, total=None):
        self.rates.append(lr)
        return 2.0 * len(y), len(y) // 2

    def eval_step(self, x, y):
        return 1.0 * len(y), round(self.accuracies[self.epoch] * len(y))


def tiny(n_train=70, n_test=10) -> FashionMNIST:
    rng = np.random.default_rng(0)
    return FashionMNIST(rng.integers(0, 255, (n_train, 28, 28), np.uint8), rng.integers(0, 10, n_train, np.uint8),
                        rng.integers(0, 255, (n_test, 28, 28), np.uint8), rng.integers(0, 10, n_test, np.uint8), "test")


CFG = TrainConfig(epochs=3, batch_size=32, resize=28, lr=0.1, momentum=0.9, schedule="linear", warmup_epochs=1,
                  progress=False)


def test_fit_takes_each_step_at_the_schedules_rate_and_calls_the_hooks_in_order():
    trainer = Scripted([0.1, 0.5, 0.9])
    steps, epochs = [], []

    def after_epoch(row, step):
        trainer.epoch = min(trainer.epoch + 1, 2)
        epochs.append((row["epoch"], step))

    rows = loop.fit(trainer, tiny(), CFG, "NCHW", on_step=lambda *a: steps.append(a), on_epoch=[after_epoch])
    settings = optim.from_config(CFG, 3)  # 70 images in batches of 32: 32, 32, 6
    expected = [settings.lr_at(t) for t in range(9)]
    assert trainer.rates == expected and [s[2] for s in steps] == expected
    assert [s[0] for s in steps] == list(range(1, 10)) and {s[1] for s in steps} == {2.0}
    assert epochs == [(1, 3), (2, 6), (3, 9)]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["test_acc"] for r in rows] == [0.1, 0.5, 0.9]
    assert all(r["train_loss"] == 2.0 and r["test_loss"] == 1.0 for r in rows)
    walls = [r["wall_seconds"] for r in rows]
    assert walls == sorted(walls) and walls[0] > 0


def test_fit_resumes_at_the_checkpoints_step_and_wall_time():
    trainer = Scripted([0.2, 0.2, 0.2])
    steps = []
    rows = loop.fit(trainer, tiny(), CFG, "NCHW", start=2, step=7, elapsed=100.0,
                    on_step=lambda *a: steps.append(a[0]))
    assert [r["epoch"] for r in rows] == [3] and steps == [8, 9, 10]
    assert trainer.rates == [optim.from_config(CFG, 3).lr_at(t) for t in (7, 8, 9)]
    assert rows[0]["wall_seconds"] >= 100.0


def test_fit_hands_the_given_order_to_every_epoch(monkeypatch):
    seen = []
    real = loop.train_epoch
    monkeypatch.setattr(loop, "train_epoch",
                        lambda *a, order=None, **k: seen.append(order) or real(*a, order=order, **k))
    loop.fit(Scripted([0, 0, 0]), tiny(), CFG, "NCHW", order_of=lambda e: epoch_order(70, 5, e))
    assert len(seen) == 3
    for e, o in enumerate(seen):
        np.testing.assert_array_equal(o, epoch_order(70, 5, e))


def test_time_to_accuracy_is_the_first_epoch_at_the_target():
    rows = [{"epoch": 1, "test_acc": 0.7, "wall_seconds": 10.0}, {"epoch": 2, "test_acc": 0.81, "wall_seconds": 20.0},
            {"epoch": 3, "test_acc": 0.85, "wall_seconds": 30.0}, {"epoch": 4, "test_acc": 0.85, "wall_seconds": 40.0}]
    assert loop.reached(rows, 0.8)["epoch"] == 2 and loop.reached(rows, 0.9) is None
    assert loop.best(rows)["epoch"] == 3 and loop.best([]) is None

    class Fast:
        name, target = "fast", 0.8

    assert time_to_accuracy_lines(rows, Fast()) == [
        "best test acc 0.850 at epoch 3, after 30.0 s of training (train and test passes)",
        "test acc 0.8 (the fast recipe's target) reached at epoch 2, after 20.0 s"]
    assert time_to_accuracy_lines(rows[:1], Fast())[1] == \
        "test acc 0.8 (the fast recipe's target) not reached in 10.0 s"


def test_sweep_times_its_target_through_the_loop(monkeypatch):
    """sweep's time to a validation accuracy is the loop's ``reached``, on the loop's own wall clock."""
    calls = []
    rows = [{"epoch": 1, "train_loss": 1.0, "test_acc": 0.5, "wall_seconds": 3.0},
            {"epoch": 2, "train_loss": 0.5, "test_acc": 0.75, "wall_seconds": 6.0}]

    def fake_fit(trainer, ds, cfg, layout, **kw):
        calls.append(kw)
        for r in rows:
            for hook in kw["on_epoch"]:
                hook(r, 0)
        return rows

    monkeypatch.setattr(loop, "fit", fake_fit)
    printed = []
    got = sweep.time_to_accuracy(load("torch"), dataclasses.replace(CFG, variant="mini"), tiny(), 0.7, printed.append)
    assert len(calls) == 1 and calls[0]["eval_desc"] == "validation"
    assert (got["epoch_reached"], got["seconds_to_target"], got["val_acc"]) == (2, 6.0, [0.5, 0.75])
    assert printed == ["  epoch 1: train loss 1.000, validation acc 0.500, 3.0 s",
                       "  epoch 2: train loss 0.500, validation acc 0.750, 6.0 s"]


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_train_and_reproduce_run_their_epochs_through_the_loop(command, sample_dir, tmp_path, monkeypatch):
    from nin_multi.cli import main

    calls = []
    real = loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    common = ["--data-dir", str(sample_dir), "--variant", "mini", "--resize", "28", "--subset", "64", "--test-subset",
              "32", "--epochs", "1", "--batch-size", "32", "--no-progress", "--out", str(tmp_path / "run")]
    if command == "train":
        load("torch")
        assert main(["train", "--backend", "torch", "--precision", "fp32", *common]) == 0
        assert calls == ["NCHW"]
    else:
        names = [n for n in ("torch", "jax") if load(n)]
        assert main(["reproduce", "--backends", ",".join(names), "--in-process", *common]) == 0
        assert calls == [load(n).LAYOUT for n in names]
