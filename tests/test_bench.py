"""``nin-multi bench`` end to end on a tiny setting: it runs, prints its table and writes JSON with the
expected keys. Speeds are never asserted (they depend on the machine and on whatever else runs on it)."""
import argparse
import json

import pytest

from nin_multi import backends
from nin_multi import bench
from nin_multi.errors import ConfigError, NinMultiError

from conftest import SELECTED

TINY = ["--resize", "67", "--batch-size", "8", "--steps", "1", "--warmup", "1"]
ROW_KEYS = {"backend", "path", "precision", "layout", "description", "train_img_s", "infer_img_s", "train_step_s",
            "infer_step_s", "train_steps_s", "infer_steps_s", "ratio_train", "ratio_infer", "ratio_train_range",
            "ratio_infer_range", "error"}


def parse(*argv):
    """The bench's own parser, as ``nin-multi`` registers it (independent of cli.COMMAND_MODULES)."""
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def installed_selected():
    names = [n for n in backends.installed() if n in SELECTED and backends.can_train(n)]  # bench trains
    if not names:
        pytest.skip("no selected backend is installed")
    return names


def test_bench_end_to_end(tmp_path, capsys):
    names = installed_selected()
    out = tmp_path / "out"
    out.mkdir()  # a directory: bench.json goes inside
    args = parse(*TINY, "--backends", ",".join(names), "--precision", "fp32,bf16", "--json", str(out))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    assert f"wrote {out / 'bench.json'}" in printed

    assert set(report) == {"settings", "environment", "results", "pipeline", "memory", "targets"}
    assert report["settings"]["backends"] == names and report["settings"]["precisions"] == ["fp32", "bf16"]
    rows = report["results"]
    for name in names:
        mine = [(r["path"], r["precision"]) for r in rows if r["backend"] == name]
        assert mine == [("chapter", "fp32"), ("default", "fp32"), ("default", "bf16")]
    for r in rows:
        assert set(r) == ROW_KEYS
        if r["error"] is None:  # a path may fail on some machine; it is then an error string, not a crash
            assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and len(r["train_steps_s"]) == 1
            assert r["ratio_train"] > 0
            low, high = r["ratio_train_range"]
            assert 0 < low <= high
        else:
            assert isinstance(r["error"], str) and r["error"]
        if r["path"] == "chapter" and r["error"] is None:
            assert r["ratio_train"] == pytest.approx(1.0)
    # the chapter's plain code must run everywhere: it is what every ratio is measured against
    assert all(r["error"] is None for r in rows if r["path"] == "chapter"), rows

    layouts = {bench.LAYOUTS[n] for n in names}
    assert {p["layout"] for p in report["pipeline"]} == layouts
    for p in report["pipeline"]:
        assert p["img_s"] > 0 and all(v >= 0 for v in p["share_of_train_step"].values())
    assert [m["backend"] for m in report["memory"]] == names
    for m in report["memory"]:
        assert len(m["chunks"]) == 3 and all(c["max_rss_mb"] > 0 for c in m["chunks"])
        assert isinstance(m["within_target"], bool)
    assert any("pipeline" in t["name"] for t in report["targets"])
    assert all(t["met"] in (True, False, None) and t["detail"] for t in report["targets"])

    # the table: one line per row, then the pipeline and memory lines, then the targets
    for name in names:
        assert sum(line.startswith(name + " ") for line in printed.splitlines()) == 3
    assert "train img/s" in printed and all(f"pipeline {layout}" in printed for layout in layouts)
    assert f"memory {names[0]}" in printed and "\ntargets\n" in printed


def test_a_failing_path_is_an_error_row(tmp_path, capsys):
    """fp16 on a CPU: TensorFlow's and MXNet's Trainers refuse it; the chapter path still runs."""
    names = [n for n in installed_selected() if n in ("tensorflow", "mxnet")]
    if not names:
        pytest.skip("needs TensorFlow or MXNet")
    name = names[-1]
    args = parse(*TINY, "--backends", name, "--precision", "fp16", "--chunks", "0",
                 "--json", str(tmp_path / "b.json"))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "b.json").read_text())
    if report["environment"].get(f"{name}_device") != "cpu":
        pytest.skip("fp16 runs on a GPU")
    rows = report["results"]
    assert [(r["path"], r["precision"]) for r in rows] == [("chapter", "fp32"), ("default", "fp16")]
    assert rows[0]["error"] is None and "needs a GPU" in rows[1]["error"]
    assert "error: ConfigError" in printed


def test_a_worker_that_cannot_start_is_reported(tmp_path):
    """A backend the worker cannot load becomes error rows (here without starting any framework)."""
    s = bench._settings(parse(*TINY, "--backends", "torch", "--chunks", "0"))
    s["backends"] = ["caffe"]
    report = bench.run_bench(s, log=lambda msg: None)
    assert [(r["path"], r["error"] is not None) for r in report["results"]] == [("chapter", True), ("default", True)]
    assert "unknown backend 'caffe'" in report["results"][0]["error"]
    assert report["pipeline"] == [] and "targets" in report


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "--precision takes a comma-separated list"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--warmup", "-1"], "--warmup must be a non-negative integer"),
    (["--resize", "66"], "too small for this network"),
    (["--backends", "caffe"], "unknown backend 'caffe'"),
])
def test_bad_options(argv, message):
    with pytest.raises(NinMultiError, match=message):
        bench._settings(parse(*argv))


def test_precisions_run_fp32_first():
    s = bench._settings(parse("--precision", "bf16,fp32,bf16", "--backends", "torch"))
    assert s["precisions"] == ["fp32", "bf16"]
    with pytest.raises(ConfigError):
        bench._settings(parse("--precision", "", "--backends", "torch"))


def test_targets_from_a_synthetic_report():
    """The verdicts and the per-round spread, on made-up step times (seconds per step of 64 images)."""
    def row(path, precision, train):
        return bench._row("torch", path, precision, train_img_s=64 / sorted(train)[len(train) // 2],
                          infer_img_s=1.0, train_steps_s=train, infer_steps_s=[1.0] * len(train))

    rows = [row("chapter", "fp32", [3.0, 3.0, 3.3]), row("default", "fp32", [2.0, 1.9, 2.4]),
            row("default", "bf16", [0.8, 0.8, 0.75])]
    ref = rows[0]
    for r in rows:  # what run_bench adds
        r["ratio_train"] = r["train_img_s"] / ref["train_img_s"]
        r["ratio_train_range"] = bench._round_ratios(ref["train_steps_s"], r["train_steps_s"])
    assert rows[1]["ratio_train_range"] == pytest.approx([3.3 / 2.4, 3.0 / 1.9])
    report = {"settings": {"backends": ["torch"], "resize": 224}, "results": rows,
              "pipeline": [{"layout": "NCHW", "share_of_train_step": {"torch fp32": 0.01}}], "memory": []}
    targets = {t["name"].split(" training")[0]: t for t in bench.evaluate_targets(report)}
    fp32, bf16 = targets["torch: default fp32"], targets["torch: default bf16"]
    assert fp32["met"] is True and "1.50x" in fp32["detail"]  # 3.0 / 2.0 of the medians
    assert "rounds 1.38-1.58x; the rounds straddle the target" in fp32["detail"]
    assert bf16["met"] is False and "3.75x" in bf16["detail"]
    assert "rounds 3.75-4.40x; the rounds straddle" in bf16["detail"]
