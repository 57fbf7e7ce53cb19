"""``reproduce``: every installed backend trained from one start (NumPy-drawn weights, one example order)."""
import csv
import json
import re

import numpy as np
import pytest

import nin_multi.reproduce as reproduce_mod
from nin_multi import backends
import nin_multi.loop as loop_mod
import nin_multi.reproduce.runner as runner_mod
from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.data import batches, epoch_order
from nin_multi.errors import ConfigError
from nin_multi.reproduce import parse_seeds, step_drift, step_table
from nin_multi.spec import chapter_spec, make_spec
from nin_multi.stats import mean_std, welch
from nin_multi.weights import RECORDED, TrainedAt, initial_weights, load_weights, trained_at

from conftest import TRAINABLE, load

# -- measured drift (2 CPU cores; mini at 28x28, 256 train / 100 test images, batch 32, lr 0.05, He init,
# dropout off, fp32: 8 SGD steps per epoch), largest difference between torch, tensorflow and mxnet over
# seeds 0-9:
#   before training (identical weights): test loss 1.2e-6 absolute (5e-7 relative), test accuracy 0 images
#   epoch 1: train loss 1.5e-3 relative (seed 0: 1.2e-4), test loss 4.3e-3, test accuracy 4 of 100 images
#   epoch 2: train loss 4.6e-3 relative (seed 0: 1.3e-3), test loss 1.3e-2, test accuracy 11 of 100 images
# The drift is not gradual rounding: each step a few activations lie within rounding (~1e-7) of ReLU's
# kink, the frameworks take different branches there, and that step's gradient differs by ~1e-3 relative
# (measured: one ReLU input of 147,456 in nin3.conv1 flips sign between fp32 and fp64 on the first batch).
# SGD then amplifies it, fastest on the loss plateau (2.30) where these first epochs sit.
# Tolerances, with margin over the worst seed (the CPU's instruction set and thread count change the
# summation order, so another machine draws another sample of this drift):
BEFORE_TRAINING_RTOL = 1e-5   # 20x the measured 5e-7: anything above is a different start, not rounding
TRAIN_LOSS_RTOL = 2e-2        # 4x the worst seed's 4.6e-3 at epoch 2
TEST_LOSS_ATOL = 5e-2         # 4x the worst seed's 1.3e-2
# Test accuracy is compared before training only (equal, or within one image for a near tie): on the plateau
# the predicted class hinges on logit differences as small as this drift, and one class flipping moves
# ~10 of 100 test images at once (seed 2, epoch 2), so no honest bound of "one image" holds afterwards.


def installed_backends():
    names = []
    for name in TRAINABLE:  # reproduce trains: the inference-only onnx takes no part
        try:
            names.append(load(name).NAME)
        except pytest.skip.Exception:
            continue
    if len(names) < 2:
        pytest.skip(f"reproduce compares frameworks: needs at least two installed backends, has {names}")
    return names


def test_initial_weights_follow_the_spec_init():
    spec = chapter_spec()
    w = initial_weights(spec, "xavier", seed=0)
    assert set(w) == set(spec.weight_shapes())
    assert all(w[k].shape == s and w[k].dtype == np.float32 for k, s in spec.weight_shapes().items())
    k = w["nin2.conv0.weight"]  # 256 x 96 x 5 x 5: fan_in 96*25, fan_out 256*25
    bound = np.sqrt(6 / (96 * 25 + 256 * 25))
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
    np.testing.assert_allclose(k.std(), bound / np.sqrt(3), rtol=0.02)
    assert all(not w[n].any() for n in w if n.endswith(".bias"))
    he = initial_weights(spec, "kaiming", seed=0)["nin2.conv0.weight"]
    np.testing.assert_allclose(he.std(), np.sqrt(2 / (96 * 25)), rtol=0.02)
    np.testing.assert_array_equal(initial_weights(spec, "xavier", 0)["nin1.conv0.weight"], w["nin1.conv0.weight"])
    assert not np.array_equal(initial_weights(spec, "xavier", 1)["nin1.conv0.weight"], w["nin1.conv0.weight"])
    dense = initial_weights(make_spec("fc-head", image_size=96), "xavier", 0)["fc1.weight"]  # (in, out)
    assert np.abs(dense).max() <= np.sqrt(6 / sum(dense.shape))


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(300, seed=4, epoch=1)
    assert sorted(a) == list(range(300))
    np.testing.assert_array_equal(a, epoch_order(300, 4, 1))
    assert not np.array_equal(a, epoch_order(300, 4, 2)) and not np.array_equal(a, epoch_order(300, 5, 1))
    # It is the order train's shuffled batches follow by default: reproduce's curves are train's.
    images, labels = np.zeros((300, 2, 2), np.uint8), np.arange(300)
    seen = np.concatenate([y for _, y in batches(images, labels, 64, 2, "NCHW", shuffle=True, seed=4, epoch=1)])
    np.testing.assert_array_equal(seen, a)


def test_needs_two_backends(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), progress=False)
    with pytest.raises(ConfigError, match="at least two backends"):
        reproduce_mod.reproduce(cfg, ["torch", "pytorch"])
    assert not (tmp_path / "run").exists()


def test_backends_agree_from_one_start(sample_dir, tmp_path, capsys, monkeypatch):
    names = installed_backends()
    orders, plots = [], []
    real_train_epoch, real_plot = loop_mod.train_epoch, runner_mod.plot_curves

    def spy_train_epoch(trainer, ds, cfg, layout, epoch, order=None, **kwargs):
        orders.append((cfg.backend, epoch, np.array(order)))
        return real_train_epoch(trainer, ds, cfg, layout, epoch, order=order, **kwargs)

    def spy_plot(histories, dest, title=""):
        plots.append((list(histories), dest))
        return real_plot(histories, dest, title)

    monkeypatch.setattr(loop_mod, "train_epoch", spy_train_epoch)  # the one loop's, which reproduce runs
    monkeypatch.setattr(runner_mod, "plot_curves", spy_plot)
    out = tmp_path / "repro"
    code = main(["reproduce", "--backends", ",".join(names), "--data-dir", str(sample_dir), "--variant", "mini",
                 "--resize", "28", "--subset", "256", "--test-subset", "100", "--epochs", "2", "--batch-size",
                 "32", "--lr", "0.05", "--init", "kaiming", "--seed", "0", "--no-dropout", "--out", str(out),
                 "--no-progress", "--in-process"])  # in this process, where the spies see every call
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "reproduce.json").read_text())

    # One example order per epoch, handed to every backend.
    for epoch in (0, 1):
        got = [(b, o) for b, e, o in orders if e == epoch]
        assert [b for b, _ in got] == names
        for _, o in got:
            np.testing.assert_array_equal(o, epoch_order(256, 0, epoch))
    # One set of initial weights, saved: NumPy's He normal for this spec and seed.
    spec, start = load_weights(out / "initial_weights.safetensors")
    expected = initial_weights(spec, "kaiming", 0)
    for k in expected:
        np.testing.assert_array_equal(start[k], expected[k])

    # Before training every backend evaluates the same weights: the same function, to rounding.
    initial = report["initial"]
    ref = initial[names[0]]
    for name in names[1:]:
        np.testing.assert_allclose(initial[name]["test_loss"], ref["test_loss"], rtol=BEFORE_TRAINING_RTOL)
        assert abs(initial[name]["test_acc"] - ref["test_acc"]) * 100 <= 1, (name, initial)
    # After each epoch: training losses and test losses within the measured drift (see the top).
    histories = {n: [json.loads(line) for line in (out / n / "metrics.jsonl").read_text().splitlines()]
                 for n in names}
    for epoch in range(2):
        losses = [histories[n][epoch]["train_loss"] for n in names]
        test_losses = [histories[n][epoch]["test_loss"] for n in names]
        assert max(losses) - min(losses) <= TRAIN_LOSS_RTOL * min(losses), (epoch, losses)
        assert max(test_losses) - min(test_losses) <= TEST_LOSS_ATOL, (epoch, test_losses)
        drift = report["drift"][epoch + 1]
        assert drift["epoch"] == epoch + 1
        assert drift["train_loss_diff"] == pytest.approx(max(losses) - min(losses))
    for n in names:  # it learns: below the initial test loss, and the second epoch below the first
        assert histories[n][1]["train_loss"] < histories[n][0]["train_loss"], histories[n]
        assert histories[n][1]["test_loss"] < initial[n]["test_loss"], (histories[n], initial[n])

    # The run directory: per-backend metrics, one overlaid plot, the table as CSV and JSON.
    assert plots and plots[-1] == (names, out / "curves.png")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for n in names:
        for f in ("metrics.jsonl", "metrics.csv", "curves.png", "config.json", "weights.safetensors"):
            assert (out / n / f).is_file(), (n, f)
        layout = backends.get_backend(n).LAYOUT  # each records the size and layout it was trained at
        assert trained_at(out / n / "weights.safetensors") == TrainedAt(28, RECORDED, layout, "fp32"), n
    with open(out / "backends.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["backend"] for r in rows] == names
    assert all(float(r["examples_per_sec"]) > 0 and 0 <= float(r["test_acc"]) <= 1 for r in rows)
    with open(out / "drift.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    assert [r["backend"] for r in report["backends"]] == names
    for n in names:
        assert n in printed
    assert "examples/sec" in printed and "largest difference between backends" in printed
    assert "different orders" in printed and "rounding" in printed and str(out / "curves.png") in printed

    # Every SGD step's loss per backend: 256 images in batches of 32 are 8 steps per epoch.
    with open(out / "steps.csv") as f:
        reader = csv.DictReader(f)
        pairs = [f"{a} vs {b}" for i, a in enumerate(names) for b in names[i + 1:]]
        assert reader.fieldnames == ["step", "epoch", "batch_size", *names, *pairs]
        steps = list(reader)
    assert [int(r["step"]) for r in steps] == list(range(1, 17))
    assert [int(r["epoch"]) for r in steps] == [1] * 8 + [2] * 8
    assert all(int(r["batch_size"]) == 32 for r in steps)
    for n in names:  # an epoch's step losses, weighted by batch size, average to its train_loss
        for epoch in (1, 2):
            rows = [r for r in steps if int(r["epoch"]) == epoch]
            weighted = sum(float(r[n]) * int(r["batch_size"]) for r in rows) / sum(int(r["batch_size"]) for r in rows)
            assert weighted == pytest.approx(histories[n][epoch - 1]["train_loss"], rel=1e-12), (n, epoch)
        assert report["steps"]["loss"][n] == [float(r[n]) for r in steps]
    for pair in pairs:
        a, b = pair.split(" vs ")
        for r in steps:
            assert float(r[pair]) == pytest.approx(abs(float(r[a]) - float(r[b])) / abs(float(r[b])), rel=1e-9, abs=0)
        sd = report["step_drift"]["pairs"][pair]
        assert len(sd["largest_per_epoch"]) == 2
        first = sd["first_step_above"]
        rel = [float(r[pair]) for r in steps]
        if first is None:
            assert max(rel) <= 1e-6
        else:
            assert rel[first - 1] > 1e-6 and max(rel[:first - 1], default=0) <= 1e-6
    assert (out / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert "first step > 1e-06" in printed and "largest in epoch 2" in printed and str(out / "drift.png") in printed


def test_fp64_starts_from_the_fp32_start():
    spec = make_spec("mini", image_size=28)
    w32, w64 = initial_weights(spec, "kaiming", 3), initial_weights(spec, "kaiming", 3, dtype="float64")
    for k in w32:
        assert w32[k].dtype == np.float32 and w64[k].dtype == np.float64
        np.testing.assert_array_equal(w64[k], w32[k].astype(np.float64))


def _table(losses, epochs=2):
    """A made-up steps table: len(losses[name]) / epochs steps of batch 32 per epoch."""
    n_steps = len(next(iter(losses.values())))
    return step_table(losses, n_train=32 * n_steps // epochs, batch_size=32, epochs=epochs)


def test_first_separation_step_on_made_up_trajectories():
    base = np.linspace(2.3, 1.0, 8)
    table = _table({"torch": base,
                    "tensorflow": base * (1 + np.array([0, 1e-8, 5e-7, 1e-6, 2e-6, 1e-7, 1e-3, 1e-2])),
                    "mxnet": base * (1 + 1e-10)})
    assert table["step"] == list(range(1, 9)) and table["epoch"] == [1] * 4 + [2] * 4
    sd = step_drift(table)
    tt, tm, fm = (sd["pairs"][p] for p in ("torch vs tensorflow", "torch vs mxnet", "tensorflow vs mxnet"))
    # 1e-6 exactly is not above the threshold; step 5's 2e-6 is, in epoch 2.
    assert tt["first_step_above"] == 5 and tt["first_epoch_above"] == 2
    assert tt["largest_per_epoch"] == pytest.approx([1e-6 / (1 + 1e-6), 1e-2 / (1 + 1e-2)], rel=1e-6)
    assert tm["first_step_above"] is None and tm["first_epoch_above"] is None
    assert max(tm["largest_per_epoch"]) == pytest.approx(1e-10, rel=1e-5)
    assert fm["first_step_above"] == 5
    assert not sd["all_within_agreement"] and sd["largest"] == max(tt["largest"], tm["largest"], fm["largest"])
    assert sd["pairs"][sd["largest_pair"]]["largest"] == sd["largest"]
    together = step_drift(_table({"torch": base, "mxnet": base * (1 + 5e-10)}))
    assert together["all_within_agreement"] and together["pairs"]["torch vs mxnet"]["first_step_above"] is None
    lines = reproduce_mod.format_step_drift(together)
    assert "never" in lines[2] and lines[-1].startswith("every pair within 1e-09") and "yes" in lines[-1]
    assert "5.0e-10" in "\n".join(lines)
    # The last batch of an epoch may be smaller: 70 images in batches of 32 are 32, 32 and 6.
    odd = step_table({"torch": [1.0] * 6, "mxnet": [1.0] * 6}, n_train=70, batch_size=32, epochs=2)
    assert odd["batch_size"] == [32, 32, 6, 32, 32, 6] and odd["epoch"] == [1, 1, 1, 2, 2, 2]
    assert odd["rel_diff"]["torch vs mxnet"] == [0.0] * 6


def test_seeds_are_distinct_non_negative_integers():
    assert parse_seeds("0,1, 2,3,4") == [0, 1, 2, 3, 4] and parse_seeds("7") == [7] and parse_seeds([3, 1]) == [3, 1]
    for bad in ("", "0,x", "-1,2", "1.5"):
        with pytest.raises(ConfigError, match="--seeds must be comma-separated non-negative integers"):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="seed 1 more than once"):
        parse_seeds("0,1,1")


def test_bad_seeds_leave_nothing_behind(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "--seeds", "0,0", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nin-multi: error: --seeds lists seed 0 more than once") and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_seeds_table_and_plot_agree_with_the_per_seed_runs(sample_dir, tmp_path, capsys):
    names = installed_backends()
    out = tmp_path / "seeds"
    code = main(["reproduce", "--backends", ",".join(names), "--seeds", "3,5", "--data-dir", str(sample_dir),
                 "--variant", "mini", "--resize", "28", "--subset", "64", "--test-subset", "50", "--epochs", "1",
                 "--batch-size", "32", "--lr", "0.05", "--init", "kaiming", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "reproduce.json").read_text())
    assert report["seeds"] == [3, 5] and report["backends"] == names

    # Each seed is a whole single-start run of its own, from that seed's NumPy start.
    finals = {}
    for seed in (3, 5):
        sub = out / f"seed-{seed}"
        spec, start = load_weights(sub / "initial_weights.safetensors")
        expected = initial_weights(spec, "kaiming", seed)["nin1.conv0.weight"]
        np.testing.assert_array_equal(start["nin1.conv0.weight"], expected)
        for f in ("reproduce.json", "steps.csv", "drift.png", "curves.png", "backends.csv"):
            assert (sub / f).is_file(), (seed, f)
        for n in names:
            finals[seed, n] = json.loads((sub / n / "metrics.jsonl").read_text().splitlines()[-1])
            assert json.loads((sub / n / "config.json").read_text())["seed"] == seed

    # The seeds table: one row per seed and backend, the per-seed runs' final numbers.
    with open(out / "seeds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["seed"]), r["backend"]) for r in rows] == [(s, n) for s in (3, 5) for n in names]
    for r in rows:
        for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(r[k]) == pytest.approx(finals[int(r["seed"]), r["backend"]][k], rel=1e-12)
    stats = report["statistics"]
    for n in names:
        for k in ("test_acc", "test_loss"):
            mean, std = mean_std([finals[s, n][k] for s in (3, 5)])
            assert stats["summary"][n][f"{k}_mean"] == pytest.approx(mean, rel=1e-12)
            assert stats["summary"][n][f"{k}_std"] == pytest.approx(std, rel=1e-12, abs=1e-15)
    assert len(stats["welch"]) == 2 * len(names) * (len(names) - 1) // 2 and stats["tests"] == len(stats["welch"])
    for t in stats["welch"]:
        a, b = t["pair"].split(" vs ")
        w = welch([finals[s, a][t["metric"]] for s in (3, 5)], [finals[s, b][t["metric"]] for s in (3, 5)])
        assert t["p"] == pytest.approx(w.p, rel=1e-12) and 0 <= t["p"] <= 1
        assert t["difference"] == pytest.approx(w.difference, rel=1e-12, abs=1e-15)
        assert t["significant"] is (t["p"] < 0.05 / len(stats["welch"]))  # a JSON boolean, Bonferroni-corrected
    assert (out / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    assert "Welch's t-test" in printed and "± " in printed and str(out / "seeds.png") in printed
    assert "seed-to-seed noise" in report["conclusion"][0] or "do NOT train the same" in report["conclusion"][0]
    assert "2 seeds can and cannot say" in printed


@pytest.mark.slow
def test_fp64_reproduce_is_one_trajectory_from_the_fp32_start(sample_dir, tmp_path, capsys):
    """reproduce's fp64 plumbing (the trajectories themselves over a whole epoch: tests/test_fp64.py): the
    start saved as float64 and equal to the fp32 start, float64 final weights, every step within 1e-9."""
    names = installed_backends()
    out = tmp_path / "fp64"
    assert main(["reproduce", "--precision", "fp64", "--backends", ",".join(names), "--data-dir", str(sample_dir),
                 "--variant", "mini", "--resize", "28", "--subset", "96", "--test-subset", "50", "--epochs", "1",
                 "--batch-size", "32", "--lr", "0.05", "--init", "kaiming", "--no-dropout", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    spec, start = load_weights(out / "initial_weights.safetensors")
    for k, v in initial_weights(spec, "kaiming", 0).items():
        assert start[k].dtype == np.float64 and np.array_equal(start[k], v.astype(np.float64)), k
    for n in names:
        _, final = load_weights(out / n / "weights.safetensors")
        assert {v.dtype for v in final.values()} == {np.dtype(np.float64)}, n
    report = json.loads((out / "reproduce.json").read_text())
    sd = report["step_drift"]
    assert sd["steps"] == 3 and sd["all_within_agreement"] and sd["largest"] <= 1e-9
    assert all(p["first_step_above"] is None for p in sd["pairs"].values())
    assert all(v <= 1e-9 for v in report["final_weights_rel_diff"].values())
    assert "every pair within 1e-09 at every step of every epoch: yes" in printed and "never" in printed
    assert "In float64" in printed

    # Each framework ran in a worker process of its own; in one process the same training gives the same
    # reports, byte for byte but for the timings and the folder's name.
    inside = tmp_path / "fp64-in-process"
    assert main(["reproduce", "--precision", "fp64", "--backends", ",".join(names), "--data-dir", str(sample_dir),
                 "--variant", "mini", "--resize", "28", "--subset", "96", "--test-subset", "50", "--epochs", "1",
                 "--batch-size", "32", "--lr", "0.05", "--init", "kaiming", "--no-dropout", "--out", str(inside),
                 "--no-progress", "--in-process"]) == 0
    printed_inside = capsys.readouterr().out
    assert (inside / "steps.csv").read_bytes() == (out / "steps.csv").read_bytes()
    assert (inside / "drift.csv").read_bytes() == (out / "drift.csv").read_bytes()
    assert _untimed(json.loads((inside / "reproduce.json").read_text())) == _untimed(report)
    assert _untimed_lines(printed_inside, inside) == _untimed_lines(printed, out)
    for n in names:
        _, a = load_weights(out / n / "weights.safetensors")
        _, b = load_weights(inside / n / "weights.safetensors")
        assert all(np.array_equal(a[k], b[k]) for k in a), n


def _untimed(report):
    """A report less what depends on the clock (speeds, seconds) and where it was written."""
    if isinstance(report, dict):
        timed = ("examples_per_sec", "train_seconds", "seconds", "out")
        return {k: _untimed(v) for k, v in report.items() if k not in timed}
    if isinstance(report, list):
        return [_untimed(v) for v in report]
    return report


def _untimed_lines(printed: str, out) -> list:
    return [re.sub(r"[\d.]+ examples/sec|\s+[\d.]+$", "", line).replace(str(out), "OUT")
            for line in printed.splitlines()]


def _per_seed(shift, noise=0.01, seeds=5):
    """Made-up final results of torch, tensorflow and mxnet over ``seeds`` starts, torch's accuracy shifted."""
    rng = np.random.default_rng(1)
    return [{"seed": s, "dir": f"seed-{s}",
             "final": {n: {"test_acc": 0.5 + shift * (n == "torch") + noise * rng.standard_normal(),
                           "test_loss": 1.0 + noise * rng.standard_normal(), "train_loss": 1.0, "train_acc": 0.5}
                       for n in ("torch", "tensorflow", "mxnet")}} for s in range(seeds)]


def test_seeds_verdict_in_each_regime(tmp_path):
    """The conclusion's three verdicts from made-up seeds: a real difference, one that passes only an
    uncorrected level, none; and the seeds report prints the table rows they rest on."""
    names, cfg = ["torch", "tensorflow", "mxnet"], TrainConfig()
    for shift, says in ((0.3, "do NOT train the same"), (0.0, "seed-to-seed noise")):
        st = reproduce_mod.seed_statistics(_per_seed(shift), names)
        conclusion = reproduce_mod.report.seeds_conclusion(st, names, 100, cfg)
        assert says in conclusion[0] and st["any_significant"] is (shift > 0)
        assert conclusion[1].startswith("What 5 seeds can and cannot say") and "of 100 test images" in conclusion[1]
        if shift:
            assert "torch vs tensorflow test acc differs by +0." in conclusion[0]
            assert "torch vs mxnet test acc differs by +0." in conclusion[0]
    # p between the corrected (0.05 / 6) and the uncorrected level: named, with the chance of such a p.
    nominal = {**st, "welch": [{**t, "p": 0.02 if i == 0 else 0.5, "significant": False}
                               for i, t in enumerate(st["welch"])]}
    text = reproduce_mod.report.seeds_conclusion(nominal, names, 100, cfg)[0]
    assert "torch vs tensorflow (test acc, p 0.02) would pass an uncorrected 0.05" in text and "about 26%" in text
    report = {"statistics": st, "backends": names, "seeds": list(range(5)), "n_test": 100,
              "conclusion": ["verdict"], "per_seed": _per_seed(0.0)}
    lines = reproduce_mod.format_seeds_report(report, tmp_path).splitlines()
    assert lines[1].startswith("final test accuracy and loss over 5 seeds (0, 1, 2, 3, 4)")
    row = next(line for line in lines if line.startswith("torch "))
    assert f"{st['summary']['torch']['test_acc_mean']:.4f} ± {st['summary']['torch']['test_acc_std']:.4f}" in row
    assert len([line for line in lines if " vs " in line and "test " in line]) == 6 and "verdict" in lines
