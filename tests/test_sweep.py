"""``nin-multi sweep``: tuning on a validation split of the training images (never the test images), the
settings it tries, and what it records per setting."""
import json

import numpy as np
import pytest

from nin_multi import sweep
from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.data import load_fashion_mnist
from nin_multi.precision import unsupported

from conftest import load


def test_validation_split_is_the_last_tenth_of_the_training_images(sample_dir):
    ds = load_fashion_mnist(sample_dir)
    split = sweep.validation_split(ds)
    assert (len(split.train_images), len(split.test_images)) == (3099, 344) == (len(ds.train_images) - 344, 344)
    np.testing.assert_array_equal(split.test_images, ds.train_images[-344:])
    np.testing.assert_array_equal(split.train_labels, ds.train_labels[:3099])
    assert not any(np.array_equal(ds.test_images[0], im) for im in split.test_images)  # no test image in it


def test_settings_one_factor_at_a_time_or_a_grid():
    base = {"resize": 67, "batch_size": 32, "lr": 0.02, "epochs": 10, "precision": "fp32"}
    one = sweep.settings_around(base, {"lr": [0.01, 0.02, 0.04], "resize": [96]})
    assert one[0] == base and len(one) == 4  # the base's own value is not measured twice
    assert {(s["lr"], s["resize"]) for s in one} == {(0.02, 67), (0.01, 67), (0.04, 67), (0.02, 96)}
    grid = sweep.settings_around(base, {"lr": [0.01, 0.04], "batch_size": [32, 64]}, grid=True)
    assert len(grid) == 4
    assert {(s["lr"], s["batch_size"]) for s in grid} == {(0.01, 32), (0.01, 64), (0.04, 32), (0.04, 64)}


@pytest.mark.slow
def test_time_to_accuracy_records_the_curve_and_the_cpu(sample_dir):
    torch_backend = load("torch")
    ds = sweep.validation_split(load_fashion_mnist(sample_dir).subset(320))
    cfg = TrainConfig(variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32, epochs=2, momentum=0.9,
                      schedule="linear", warmup_epochs=0.5, progress=False)
    row = sweep.time_to_accuracy(torch_backend, cfg, ds, 0.0, log=lambda *_: None)
    assert row["epoch_reached"] == 1 and len(row["val_acc"]) == 2 and row["best_val_acc"] == max(row["val_acc"])
    assert 0 < row["seconds_to_target"] <= row["wall_seconds"] and row["cpu_seconds"] > 0
    assert row["others_cpu_share"] is None or 0 <= row["others_cpu_share"] <= 1
    text = sweep.table([{**row, **{k: getattr(cfg, k) for k in sweep.FACTORS}}], 0.0)
    assert text.splitlines()[2].startswith(f"| {cfg.init} | 28 | 32 | 0.05 | 2 | fp32 | ")


def test_table_puts_the_fastest_first_and_the_misses_last():
    common = {"init": "kaiming-identity", "resize": 67, "batch_size": 32, "epochs": 10, "precision": "fp32",
              "nesterov": True, "seed": 0, "best_val_acc": 0.8,
              "wall_seconds": 100.0, "cpu_seconds": 90.0, "others_cpu_share": 0.5}
    rows = [{**common, "lr": 0.01, "seconds_to_target": None, "epoch_reached": None},
            {**common, "lr": 0.02, "seconds_to_target": 80.0, "epoch_reached": 8},
            {**common, "lr": 0.04, "seconds_to_target": 60.0, "epoch_reached": 6}]
    lines = sweep.table(rows, 0.8).splitlines()
    assert [line.split("|")[4].strip() for line in lines[2:]] == ["0.04", "0.02", "0.01"]
    assert "| fp32 | yes | 0 | 60.0 (6) |" in lines[2] and "not reached" in lines[4] and "50%" in lines[2]


@pytest.mark.parametrize("argv, message", [
    (["--target", "2"], "--target must be an accuracy in"),
    (["--backend", "onnx"], "onnx is inference-only"),
    (["--resize", "40"], "too small"),
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--init", "kaiming,he"], "--init must be one of xavier, kaiming, kaiming-identity, got 'he'"),
])
def test_bad_sweep_options_are_one_line(argv, message, capsys, tmp_path):
    code = main(["sweep", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("nin-multi: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_mxnet_is_not_swept_over_two_precisions_in_one_process(capsys, tmp_path):
    """Its bf16 stays on for the process, so an fp32 row after a bf16 one would be bf16 too. Where MXNet has
    no bf16 kernels for this CPU, its bf16 is refused first. Either way before any data or training."""
    load("mxnet")
    code = main(["sweep", "--backend", "mxnet", "--precision", "fp32,bf16", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not (tmp_path / "out").exists()
    if unsupported("mxnet", "bf16") is not None:
        assert err.startswith("nin-multi: error: --precision bf16 needs a CPU with AVX-512 BF16 or AMX in mxnet")
    else:
        assert err.endswith("so one sweep cannot compare bf16 and fp32: sweep each precision in a command of its "
                            "own (--grid --precision bf16, then fp32)")
    assert not (tmp_path / "out").exists()


def test_a_value_that_is_not_yes_or_no_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--nesterov", "yes,maybe"])
    assert e.value.code == 2 and "expected comma-separated yes/no values, got 'yes,maybe'" in capsys.readouterr().err


def test_sweep_writes_rows_as_they_come(sample_dir, tmp_path, monkeypatch, capsys):
    """The command end to end, with the measurement itself replaced (it trains for minutes)."""
    monkeypatch.setattr(sweep, "time_to_accuracy", lambda backend, cfg, ds, target, log: {
        "epoch_reached": 1, "seconds_to_target": cfg.lr * 100, "best_val_acc": 0.9, "final_val_acc": 0.9,
        "val_acc": [0.9], "wall_seconds": 5.0, "cpu_seconds": 4.0, "others_cpu_share": 0.0})
    load("torch")
    code = main(["sweep", "--data-dir", str(sample_dir), "--lr", "0.02,0.04", "--nesterov", "no", "--seed", "0,3",
                 "--init", "kaiming", "--out", str(tmp_path / "s")])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "s" / "sweep.jsonl").read_text().splitlines()]
    assert [(r["init"], r["lr"], r["nesterov"], r["seed"]) for r in rows] == \
        [("kaiming-identity", 0.01, True, 0), ("kaiming", 0.01, True, 0), ("kaiming-identity", 0.02, True, 0),
         ("kaiming-identity", 0.04, True, 0), ("kaiming-identity", 0.01, False, 0), ("kaiming-identity", 0.01, True, 3)]
    assert all(r["resize"] == 67 for r in rows)
    table = (tmp_path / "s" / "sweep.md").read_text()
    assert table.splitlines()[2].startswith("| kaiming-identity | 67 | 32 | 0.01 |")
    assert "3099 training and 344 validation" in capsys.readouterr().out
