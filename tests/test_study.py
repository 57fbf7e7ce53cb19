"""``nin-multi study``: the stuck test and the dead-channel count on constructed inputs (exact), the class
channels' death seen in every backend's logits, the tables the command writes on a tiny setting (columns,
row counts, mean and sd), a rerun that continues, and the one-line errors."""
import json
import re
import shlex
import statistics

import numpy as np
import pytest

from nin_multi.cli import main
from nin_multi.errors import ConfigError
from nin_multi.spec import NiNBlock, make_spec
from nin_multi.study import (LN10, CollapseSetup, class_conv, dead_channels, dead_per_conv, is_stuck, mean_sd,
                             parse_cases, seed_table_rows)

from conftest import ROOT, load


# -- the stuck test and the dead channels, exact -----------------------------------------------------------
def test_is_stuck_reads_the_mean_of_the_last_steps():
    assert LN10 == pytest.approx(2.302585, abs=1e-6)
    losses = [2.9, 1.2, LN10 + 0.004, LN10 - 0.006, LN10 + 0.005]
    assert is_stuck(losses, window=3, tolerance=0.01)      # mean of the last three: ln 10 + 0.001
    assert not is_stuck(losses, window=3, tolerance=0.0005)
    assert not is_stuck(losses, window=5, tolerance=0.01)  # the early 2.9 and 1.2 pull the mean off
    assert is_stuck([LN10] * 4, window=4, tolerance=1e-12)
    assert not is_stuck([LN10] * 3 + [LN10 - 0.05], window=1, tolerance=0.01)
    with pytest.raises(ConfigError, match="needs 6 steps, the run made 5"):
        is_stuck(losses, window=6, tolerance=0.01)


def test_dead_channels_are_zero_everywhere_on_every_image():
    a = np.ones((3, 5, 2, 2))
    a[:, 1] = 0.0                 # dead
    a[:, 3] = 0.0
    a[2, 3, 1, 1] = 1e-30         # alive at one position of one image: not dead
    a[:, 4, :, :] = 0.0           # dead
    assert dead_channels(a) == [1, 4]
    assert dead_channels(np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])) == [0, 2]  # (N, C) too
    assert dead_channels(np.zeros((1, 10))) == list(range(10))
    assert dead_channels(np.ones((4, 10))) == []


def constructed(spec, dead: dict):
    """Every weight 0 and every bias 1, except the biases of the channels in ``dead`` ({conv: [channels]}),
    which are -1: each ReLU output is then exactly 1 or 0 and the dead channels are known."""
    w = {}
    for name, shape in spec.weight_shapes().items():
        if name.endswith(".bias"):
            b = np.ones(shape, np.float32)
            b[dead.get(name[:-len(".bias")], [])] = -1.0
            w[name] = b
        else:
            w[name] = np.zeros(shape, np.float32)
    return w


def test_dead_per_conv_counts_every_layer_exactly():
    spec = make_spec("chapter")
    dead = {"nin1.conv0": [5], "nin2.conv2": [0, 255], "nin3.conv1": [7], "nin4.conv2": [3, 7]}
    x = np.random.default_rng(0).random((4, 1, 67, 67))
    got = dead_per_conv(spec, constructed(spec, dead), x)
    convs = [c.name for b in spec.layers if isinstance(b, NiNBlock) for c in b.convs]
    assert list(got) == convs and len(convs) == 12
    assert got == {c: dead.get(c, []) for c in convs}
    assert class_conv(spec) == "nin4.conv2"


def test_a_dead_class_channel_is_a_zero_logit_in_every_backend(trainable_backend):
    """The logits are the global average of the class channels' ReLU outputs, so the dead channels the
    study counts in NumPy are the classes whose score is 0 on every image, in each framework."""
    b = trainable_backend
    spec = make_spec("chapter", dropout=0.0)
    weights = constructed(spec, {"nin4.conv2": [2, 9]})
    model = b.build_model(spec)
    b.set_weights(model, spec, weights)
    x = np.random.default_rng(1).random((3, 1, 67, 67)).astype(np.float32)
    logits = np.asarray(b.forward(model, x if b.LAYOUT == "NCHW" else x.transpose(0, 2, 3, 1)))
    assert logits.shape == (3, 10)
    assert dead_channels(logits) == [2, 9] == dead_per_conv(spec, weights, x)["nin4.conv2"]
    assert np.all(logits[:, [0, 1, 3, 4, 5, 6, 7, 8]] == 1.0)


def test_mean_and_sample_sd():
    assert mean_sd([0.8, 0.9, 1.0]) == (pytest.approx(0.9), pytest.approx(0.1))
    assert mean_sd([0.5]) == (0.5, None)
    rows = [{"variant": v, "seed": s, "params": p, "test_acc": a, "train_seconds": t, "precision": "fp32"}
            for v, s, p, a, t in [("chapter", 0, 10, 0.8, 10.0), ("chapter", 1, 10, 0.7, 14.0),
                                  ("no-1x1", 0, 5, 0.6, 6.0), ("no-1x1", 1, 5, 0.9, 6.0), ("fc-head", 0, 7, 0.5, 9.0)]]
    s = {r["variant"]: r for r in seed_table_rows(rows, ["chapter", "no-1x1", "fc-head", "one-1x1"])}
    assert list(s) == ["chapter", "no-1x1", "fc-head"]  # a variant with no finished run has no row
    assert s["no-1x1"]["acc_mean"] == pytest.approx(0.75)
    assert s["no-1x1"]["acc_sd"] == pytest.approx(statistics.stdev([0.6, 0.9]))
    assert s["no-1x1"]["ratio"] == pytest.approx(12 / 24)
    assert s["fc-head"]["ratio"] == pytest.approx(9 / 10)  # over the seeds both finished
    assert s["fc-head"]["acc_sd"] is None


# -- the command, on a tiny setting ------------------------------------------------------------------------
def test_study_variants_writes_the_table_and_continues(sample_dir, tmp_path, capsys):
    load("torch")  # the command's default backend
    out = tmp_path / "seeds"
    args = ["study", "variants", "--variants", "no-1x1,chapter", "--seeds", "0,1", "--epochs", "1",
            "--subset", "32", "--test-subset", "32", "--threads", "1", "--data-dir", str(sample_dir),
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("] seed ") == 4 and "[4/4] seed 1, chapter: test acc" in printed
    rows = [json.loads(line) for line in (tmp_path / "seeds.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in rows] == [("no-1x1", 0), ("chapter", 0), ("no-1x1", 1), ("chapter", 1)]
    assert (tmp_path / "seeds.png").stat().st_size > 10_000
    lines = (tmp_path / "seeds.txt").read_text().splitlines()
    assert lines[0] == "$ python -m nin_multi " + shlex.join(args)
    assert lines[1].startswith("CPU class ") and "torch " in lines[1] and "numpy " in lines[1]
    head = lines.index(next(line for line in lines if line.startswith("variant ")))
    assert lines[head].split() == ["variant", "params", "runs", "test", "acc", "per", "seed", "train", "s", "x",
                                   "chapter", "precision"]
    table = lines[head + 1:]
    assert len(table) == 2
    for line, variant in zip(table, ["no-1x1", "chapter"]):
        f = line.split()
        mine = [r for r in rows if r["variant"] == variant]
        assert f[0] == variant and int(f[1].replace(",", "")) == make_spec(variant).num_params and f[2] == "2"
        accs = [r["test_acc"] for r in mine]
        assert float(f[3]) == pytest.approx(statistics.mean(accs), abs=5.01e-4)  # printed to 3 places
        assert f[4] == "+-" and float(f[5]) == pytest.approx(statistics.stdev(accs), abs=5.01e-4)
        assert f[6:8] == [f"{a:.3f}" for a in accs]
        assert float(f[8]) == pytest.approx(statistics.mean(r["train_seconds"] for r in mine), abs=0.0501)
        chapter = [r["train_seconds"] for r in rows if r["variant"] == "chapter"]
        ratio = sum(r["train_seconds"] for r in mine) / sum(chapter)
        assert float(f[9]) == pytest.approx(ratio, abs=0.00501) and f[10] == "fp32"
    assert "4 of 4 runs finished" in "\n".join(lines)

    before = (tmp_path / "seeds.jsonl").read_text()
    assert main(args) == 0  # the same command again: nothing left to train
    printed = capsys.readouterr().out
    assert "4 run(s) already in" in printed and "] seed " not in printed
    assert (tmp_path / "seeds.jsonl").read_text() == before


def test_study_refuses_rows_of_other_settings(tmp_path, capsys):
    out = tmp_path / "seeds"
    row = {"variant": "chapter", "seed": 0, "settings": {"epochs": 9}}
    (tmp_path / "seeds.jsonl").write_text(json.dumps(row) + "\n")
    before = (tmp_path / "seeds.jsonl").read_text()
    assert main(["study", "variants", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "--restart" in err[0]
    assert (tmp_path / "seeds.jsonl").read_text() == before
    (tmp_path / "seeds.jsonl").write_text("not json\n")
    assert main(["study", "variants", "--epochs", "1", "--out", str(out)]) == 2
    assert "line 1 is not a row of this study" in capsys.readouterr().err


def test_study_collapse_tiny(sample_dir, tmp_path, capsys):
    load("torch")  # the command's default backend
    out = tmp_path / "collapse"
    args = ["study", "collapse", "--seeds", "0,1", "--inits", "kaiming", "--lrs", "0.1", "--subset", "64",
            "--test-subset", "16", "--epochs", "1", "--window", "1", "--probe", "8", "--cross", "",
            "--threads", "1", "--data-dir", str(sample_dir), "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "collapse.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["init"], r["lr"], r["seed"]) for r in rows] == [
        ("main", "kaiming", 0.1, 0), ("main", "kaiming", 0.1, 1)]
    for r in rows:
        assert len(r["steps"]) == 1 and r["final_loss"] == r["steps"][-1]
        assert r["stuck"] == (abs(r["final_loss"] - LN10) <= 0.01)
        assert set(r["dead"]) == {c.name for c in make_spec("chapter").convs()}
        assert r["dead"]["nin4.conv2"] == len(r["dead_classes"])
        assert set(r["dead_start"]) == set(r["dead"])  # the same count at the start, from the NumPy draw
    text = (tmp_path / "collapse.txt").read_text().splitlines()
    assert text[0] == "$ python -m nin_multi " + shlex.join(args)
    summary = [line for line in text if line.startswith("kaiming ") and line.split()[2] == "2"]
    assert len(summary) == 1
    f = summary[0].split()
    assert f[:3] == ["kaiming", "0.1", "2"]
    assert f[3] == f"{sum(r['stuck'] for r in rows)}/2"
    assert f[-2:] == [f"{r['dead_start']['nin4.conv2']}->{len(r['dead_classes'])}" for r in rows]
    assert "2 of 2 runs finished" in "\n".join(text)
    assert (tmp_path / "collapse.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["variants", "--variants", "chapter,nope"], "unknown variant(s) nope"),
    (["variants", "--seeds", "0,x"], "--seeds must be comma-separated non-negative integers"),
    (["variants", "--seeds", "1,1"], "more than once"),
    (["variants", "--recipe", "nope"], "unknown recipe"),
    (["variants", "--backend", "onnx"], "inference-only"),
    (["variants", "--out", "no/such/folder/seeds"], "does not exist; create it first"),
    (["collapse", "--lrs", "0.1,-1"], "--lrs must be comma-separated positive numbers"),
    (["collapse", "--inits", "xavier,he"], "--inits must be comma-separated names"),
    (["collapse", "--cross", "0:0.1"], "--cross takes SEED:LR:INIT cases"),
    (["collapse", "--cross", "0:0.1:he"], "--cross case '0:0.1:he'"),
    (["collapse", "--cross", "", "--subset", "512", "--epochs", "1", "--window", "40"],
     "--window 40 is longer than the run (4 steps"),
    (["collapse", "--cross", "", "--tolerance", "0"], "--tolerance must be"),
    (["collapse", "--cross", "", "--subset", "2048", "--probe", "4096"],
     "--probe 4096 must be at most --subset 2048"),
    (["collapse", "--cross-subset", "4096"], "--cross-subset 4096 must be at most --subset 1024"),
    (["collapse", "--window", "5"], "--window 5 is longer than a framework case (4 steps"),
    (["collapse", "--cross", "", "--subset", "0"], "--subset must be a positive integer"),
])
def test_study_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["study"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nin-multi: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_parse_cases():
    assert parse_cases("0:0.1:kaiming, 3:0.05:xavier") == [(0, 0.1, "kaiming"), (3, 0.05, "xavier")]
    assert parse_cases("") == []
    assert CollapseSetup().steps() == 16 and CollapseSetup().cross().steps() == 4
    assert CollapseSetup(subset=1000, epochs=3).steps() == 24


def test_exercises_page_shows_the_stored_studies():
    """The page holds each stored table as the command wrote it, and the stored files name no machine's
    paths (the command is given relative to the repository)."""
    page = (ROOT / "docs" / "exercises.md").read_text(encoding="utf-8")
    for stem in ("exercises-seeds", "collapse"):
        text = (ROOT / "docs" / "img" / f"{stem}.txt").read_text(encoding="utf-8")
        assert text.startswith(f"$ python -m nin_multi study {'variants' if stem != 'collapse' else 'collapse'} ")
        assert text.strip() in page, f"docs/exercises.md does not show docs/img/{stem}.txt as stored"
        assert f"img/{stem}.png" in page and (ROOT / "docs" / "img" / f"{stem}.png").stat().st_size > 10_000
        for stored in (text, (ROOT / "docs" / "img" / f"{stem}.jsonl").read_text(encoding="utf-8")):
            assert not re.search(r"(?<![\w.])/(home|work|tmp|root|Users|private)/", stored)
