"""``nin-multi bench`` end to end on a tiny setting: it runs, prints its table and writes JSON with the
expected keys; its peer paths compute the default path's function. Speeds are never asserted (they depend
on the machine and on whatever else runs on it)."""
import argparse
import inspect
import json
import math

import numpy as np
import pytest

from nin_multi import backends
from nin_multi import bench
from nin_multi.cli import bench as bench_command
from nin_multi.bench import figures, protocol, worker
from nin_multi import data
from nin_multi import machine
from nin_multi.errors import ConfigError, NinMultiError
from nin_multi.spec import make_spec

from conftest import SELECTED, load

# tiny: the GEMM probe at n=128 and an epoch of 2 batches of 8 + 1 of 4; --no-fast: no compile time
TINY = ["--resize", "67", "--batch-size", "8", "--steps", "1", "--warmup", "1", "--gemm-size", "128",
        "--gemm-repeats", "2", "--epoch-images", "20"]
ROW_KEYS = {"backend", "path", "precision", "layout", "description", "train_img_s", "infer_img_s", "train_step_s",
            "infer_step_s", "train_steps_s", "infer_steps_s", "first_train_step_s", "ratio_train", "ratio_infer",
            "ratio_train_range", "ratio_infer_range", "best_peer", "ratio_best_peer_train", "ratio_best_peer_infer",
            "train_gflops", "infer_gflops", "gemm_gflops", "gemm_fraction_train", "gemm_fraction_infer", "error"}


def parse(*argv):
    """The bench's own parser, as ``nin-multi`` registers it."""
    parser = argparse.ArgumentParser()
    bench_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def installed_selected():
    names = [n for n in backends.installed() if n in SELECTED and backends.can_train(n)]  # bench trains
    if not names:
        pytest.skip("no selected backend is installed")
    return names


@pytest.mark.slow
def test_bench_end_to_end(tmp_path, capsys):
    names = installed_selected()
    out = tmp_path / "out"
    out.mkdir()  # a directory: bench.json goes inside
    args = parse(*TINY, "--no-fast", "--backends", ",".join(names), "--precision", "fp32,bf16", "--json", str(out))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "bench.json").read_text())
    assert f"wrote {out / 'bench.json'}" in printed

    assert set(report) == {"settings", "environment", "results", "pipeline", "memory", "targets", "machine",
                           "epochs", "accuracy"}
    assert report["accuracy"] == [] and "time to accuracy" not in printed  # only with --time-to-accuracy
    s = report["settings"]
    assert s["backends"] == names and s["precisions"] == ["fp32", "bf16"]
    assert (s["gemm_size"], s["gemm_repeats"], s["epoch_images"], s["fast"]) == (128, 2, 20, False)
    rows = report["results"]
    for name in names:
        mine = [(r["path"], r["precision"]) for r in rows if r["backend"] == name]
        assert mine == [("chapter", "fp32"), ("default", "fp32"), ("default", "bf16")]
    for r in rows:
        assert set(r) == ROW_KEYS
        if r["error"] is None:  # a path may fail on some machine; it is then an error string, not a crash
            assert r["train_img_s"] > 0 and r["infer_img_s"] > 0 and len(r["train_steps_s"]) == 1
            assert r["ratio_train"] > 0 and r["first_train_step_s"] > 0
            low, high = r["ratio_train_range"]
            assert 0 < low <= high
        else:
            assert isinstance(r["error"], str) and r["error"]
        if r["path"] == "chapter" and r["error"] is None:
            assert r["ratio_train"] == pytest.approx(1.0)
    # the chapter's plain code must run everywhere: it is what every ratio is measured against
    assert all(r["error"] is None for r in rows if r["path"] == "chapter"), rows

    # the machine: CPU, instruction sets, a GEMM rate per framework and precision, the best of each
    m = report["machine"]
    assert m["cpu"]["model"] and set(m["cpu"]["isa"]) == {name for name, _ in machine.ISA_FLAGS}
    assert {(e["framework"], e["precision"]) for e in m["gemm"]} == {(n, p) for n in names for p in ("fp32", "bf16")}
    for e in m["gemm"]:
        assert e["n"] == 128
        if e["error"] is None:
            assert len(e["seconds"]) == 2 and e["gflops"] == pytest.approx(2 * 128 ** 3 / min(e["seconds"]) / 1e9)
    fp32 = [e["gflops"] for e in m["gemm"] if e["precision"] == "fp32" and e["gflops"]]
    assert fp32 and m["gemm_best"]["fp32"]["gflops"] == max(fp32)
    spec = make_spec("chapter", image_size=67)
    assert m["flops_per_step"]["train"] == 3 * m["flops_per_step"]["infer"] == \
        3 * 2 * sum(i.macs for i in spec.walk(67)) * 8

    # GFLOP/s of each path and its fraction of the GEMM rate at its precision; vs the best peer
    for r in rows:
        if r["error"]:
            continue
        assert r["train_gflops"] == pytest.approx(m["flops_per_step"]["train"] / r["train_step_s"] / 1e9)
        assert r["infer_gflops"] == pytest.approx(m["flops_per_step"]["infer"] / r["infer_step_s"] / 1e9)
        best = m["gemm_best"].get(r["precision"])
        if best:
            assert r["gemm_gflops"] == best["gflops"] > 0
            assert r["gemm_fraction_train"] == pytest.approx(r["train_gflops"] / best["gflops"])
            assert r["gemm_fraction_train"] > 0
        peers = [c for c in rows if c["backend"] == r["backend"] and c["error"] is None
                 and (c["path"] == "chapter" or (backends.companion(c["backend"], "bench").FAST_IS_DEFAULT
                                                 and c["path"] == "default" and c["precision"] == "fp32"))]
        top = max(peers, key=lambda c: c["train_img_s"])
        assert r["best_peer"] == f"{top['path']} {top['precision']}"
        assert r["ratio_best_peer_train"] == pytest.approx(r["train_img_s"] / top["train_img_s"])

    # end to end: two epochs per default path, each split into its parts, against the step rate
    assert [(e["backend"], e["precision"]) for e in report["epochs"]] == \
        [(n, p) for n in names for p in ("fp32", "bf16")]
    for e in report["epochs"]:
        step = next(r for r in rows if (r["backend"], r["path"], r["precision"]) ==
                    (e["backend"], "default", e["precision"]))
        if e["error"] or step["error"]:
            continue
        assert e["images"] == 20 and e["step_img_s"] == step["train_img_s"]
        assert [ep["prefetch"] for ep in e["epochs"]] == [True, True, False]  # the last without the data thread
        for ep in e["epochs"]:
            assert ep["step_slowdown"] == pytest.approx(ep["steady_step_s"] / step["train_step_s"])
            assert ep["ratio_to_own_steps"] == pytest.approx(ep["img_s"] * ep["steady_step_s"] / 8)
            assert ep["steps"] == len(ep["step_seconds"]) == 3 and ep["img_s"] == pytest.approx(20 / ep["seconds"])
            assert ep["ratio_to_step"] == pytest.approx(ep["img_s"] / step["train_img_s"])
            assert ep["outside_steps_s"] == pytest.approx(ep["seconds"] - sum(ep["step_seconds"]))
            assert all(math.isfinite(ep[k]) for k in ("first_step_excess_s", "last_step_excess_s"))

    layouts = {load(n).LAYOUT for n in names}
    assert {p["layout"] for p in report["pipeline"]} == layouts
    for p in report["pipeline"]:
        assert p["img_s"] > 0 and all(v >= 0 for v in p["share_of_train_step"].values())
    assert [m["backend"] for m in report["memory"]] == names
    for m in report["memory"]:
        assert len(m["chunks"]) == 3 and all(c["max_rss_mb"] > 0 for c in m["chunks"])
        assert isinstance(m["within_target"], bool)
    names_of_targets = [t["name"] for t in report["targets"]]
    assert any("pipeline" in n for n in names_of_targets)
    assert any("GEMM rate" in n for n in names_of_targets) and any("best peer" in n for n in names_of_targets)
    assert sum("step rate" in n for n in names_of_targets) == len(report["epochs"])
    assert all(t["met"] in (True, False, None) and t["detail"] for t in report["targets"])

    # the table: the machine lines, one line per row, then the pipeline, epoch and memory lines, the targets
    assert "CPU: " in printed and "GEMM fp32: " in printed and "devices: " in printed
    for name in names:
        assert sum(line.startswith(name + " ") for line in printed.splitlines()) == 3
        assert f"epoch {name} fp32 (20 images: 2 batches of 8 + 1 of 4" in printed
    assert "\n  first " in printed and "\n  later " in printed and "\n  no prefetch " in printed
    assert "train img/s" in printed and "vs peer" in printed and "% GEMM" in printed
    assert f"first training step, s (tracing or compiling included): {names[0]} chapter fp32 " in printed
    assert all(f"pipeline {layout}" in printed for layout in layouts)
    assert f"memory {names[0]}" in printed and "\ntargets\n" in printed


def test_bench_fast_path_row(tmp_path, capsys):
    """A framework's one-switch fast path gets a row and counts among the peers (Gluon's hybridize():
    no compile time, so this runs in the quick suite; torch.compile and XLA are in the slow tests below)."""
    if "mxnet" not in installed_selected():
        pytest.skip("needs MXNet")
    args = parse(*TINY, "--backends", "mxnet", "--chunks", "0", "--gemm-size", "0", "--epoch-images", "0",
                 "--json", str(tmp_path / "b.json"))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "b.json").read_text())
    rows = report["results"]
    assert [(r["path"], r["precision"]) for r in rows] == [("chapter", "fp32"), ("fast", "fp32"), ("default", "fp32")]
    assert all(r["error"] is None for r in rows), rows
    top = max(rows[:2], key=lambda r: r["train_img_s"])
    assert rows[2]["best_peer"] == f"{top['path']} fp32"
    assert rows[2]["ratio_best_peer_train"] == pytest.approx(rows[2]["train_img_s"] / top["train_img_s"])
    assert all(r["gemm_fraction_train"] is None for r in rows)  # no GEMM probe: no fraction, no crash
    assert report["machine"]["gemm"] == [] and report["epochs"] == []
    assert "mxnet       fast     Gluon hybridize()" in printed and "GEMM: not measured" in printed


def test_a_failing_path_is_an_error_row(tmp_path, capsys):
    """fp16 on a CPU: TensorFlow's and MXNet's Trainers refuse it; the chapter path still runs."""
    names = [n for n in installed_selected() if n in ("tensorflow", "mxnet")]
    if not names:
        pytest.skip("needs TensorFlow or MXNet")
    name = names[-1]
    args = parse(*TINY, "--no-fast", "--backends", name, "--precision", "fp16", "--chunks", "0", "--gemm-size", "0",
                 "--epoch-images", "0", "--json", str(tmp_path / "b.json"))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "b.json").read_text())
    if report["environment"].get(f"{name}_device") != "cpu":
        pytest.skip("fp16 runs on a GPU")
    rows = report["results"]
    assert [(r["path"], r["precision"]) for r in rows] == [("chapter", "fp32"), ("default", "fp16")]
    assert rows[0]["error"] is None and "needs a GPU" in rows[1]["error"]
    # and what bench says when no GPU is there: every figure is the CPU's
    assert "no GPU found: every figure is the CPU's" in printed
    assert "error: ConfigError" in printed


def test_a_worker_that_cannot_start_is_reported(tmp_path):
    """A backend the worker cannot load becomes error rows (here without starting any framework)."""
    s = bench_command.settings(parse(*TINY, "--backends", "torch", "--chunks", "0"))
    s["backends"] = ["caffe"]
    report = bench.run_bench(s, log=lambda msg: None)
    assert [(r["path"], r["error"] is not None) for r in report["results"]] == \
        [("chapter", True), ("fast", True), ("default", True)]
    assert "unknown backend 'caffe'" in report["results"][0]["error"]
    assert report["pipeline"] == [] and "targets" in report


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp8"], "--precision takes a comma-separated list"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--warmup", "-1"], "--warmup must be a non-negative integer"),
    (["--resize", "66"], "too small for this network"),
    (["--backends", "caffe"], "unknown backend 'caffe'"),
    (["--gemm-size", "-1"], "--gemm-size must be a non-negative integer"),
    (["--gemm-repeats", "0"], "--gemm-repeats must be a positive integer"),
    (["--epoch-images", "-5"], "--epoch-images must be a non-negative integer"),
])
def test_bad_options(argv, message):
    with pytest.raises(NinMultiError, match=message):
        bench_command.settings(parse(*argv))


def test_precisions_run_fp32_first():
    s = bench_command.settings(parse("--precision", "bf16,fp32,bf16", "--backends", "torch"))
    assert s["precisions"] == ["fp32", "bf16"]
    assert s["epoch_images"] == 4 * 64 + 32 and s["gemm_size"] == 2048 and s["fast"] is True  # the defaults
    with pytest.raises(ConfigError):
        bench_command.settings(parse("--precision", "", "--backends", "torch"))


def test_targets_from_a_synthetic_report():
    """The verdicts and the per-round spread, on made-up step times (seconds per step of 64 images)."""
    def row(path, precision, train):
        step = sorted(train)[len(train) // 2]
        return protocol.row("torch", path, precision, train_img_s=64 / step, infer_img_s=64.0, train_step_s=step,
                            infer_step_s=1.0, train_steps_s=train, infer_steps_s=[1.0] * len(train))

    rows = [row("chapter", "fp32", [3.0, 3.0, 3.3]), row("fast", "fp32", [2.1, 2.0, 2.0]),
            row("default", "fp32", [2.0, 1.9, 2.4]), row("default", "bf16", [0.8, 0.8, 0.75])]
    flops = {"train": 64e9, "infer": 1e9}
    for r in rows:  # what run_bench adds
        figures.derive(r, rows, flops, {"fp32": {"gflops": 40.0}, "bf16": {"gflops": 200.0}})
    assert rows[2]["ratio_train_range"] == pytest.approx([3.3 / 2.4, 3.0 / 1.9])
    report = {"settings": {"backends": ["torch"], "resize": 224, "precisions": ["fp32", "bf16"]}, "results": rows,
              "pipeline": [{"layout": "NCHW", "share_of_train_step": {"torch fp32": 0.01}}], "memory": []}
    targets = {t["name"]: t for t in bench.evaluate_targets(report)}
    peer = targets["torch: default fp32 training >= 1x the best peer of its framework"]
    # medians: fast 2.0 s, default 2.0 s: 1.00x, met; single rounds 2.0/2.4 = 0.83x to 2.0/1.9 = 1.05x
    assert peer["met"] is True and peer["detail"].startswith("1.00x the fast fp32 path (32.0 vs 32.0 img/s")
    assert "rounds 0.83-1.05x; the rounds straddle the target" in peer["detail"]
    gemm = targets["fastest fp32 training path >= 70% of the machine's fp32 GEMM rate"]
    assert gemm["met"] is True and "32 of 40 GFLOP/s (80%)" in gemm["detail"]
    bf16 = targets["fastest bf16 training path >= 70% of the machine's bf16 GEMM rate"]
    assert bf16["met"] is False and "80 of 200 GFLOP/s (40%)" in bf16["detail"]
    assert not any("chapter's code" in name for name in targets)  # issue 7's targets, retired with its references


# -- the peer paths compute the default path's function -------------------------------------------------
SLOW_PEERS = {("torch", "fast"), ("tensorflow", "fast")}  # torch.compile and XLA compile for 10-60 s each
#: every framework's peer paths (``PEERS`` of its bench module; test_bench_modules_offer_the_same_names checks)
PEER_PATHS = {"torch": ("chapter", "fast"), "tensorflow": ("chapter", "fast"), "mxnet": ("chapter", "fast"),
              "jax": ("chapter",)}
PEER_CASES = [pytest.param(name, path, marks=[pytest.mark.slow] if (name, path) in SLOW_PEERS else [],
                           id=f"{name}-{path}")
              for name, paths in PEER_PATHS.items() for path in paths]


@pytest.mark.parametrize("name, path", PEER_CASES)
def test_peer_path_computes_the_default_function(name, path):
    """From the same start weights, on the same batch (mini net at 28x28, dropout off so no random masks
    differ), a peer path and the backend's Trainer report the same loss and count at the first step, the
    same loss at the second (after one SGD update) and at evaluation, and end with the same weights."""
    backend = load(name)
    backend.configure(None, 0)
    spec = make_spec("mini", dropout=0.0)
    rng = np.random.default_rng(0)
    x = data.to_float_batch(rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), 28, backend.LAYOUT)
    y = rng.integers(0, 10, 8).astype(np.int64)
    ref_model, peer_model = backend.build_model(spec, seed=0), backend.build_model(spec, seed=0)
    start = backend.get_weights(ref_model, spec)
    assert all(np.array_equal(start[k], v) for k, v in backend.get_weights(peer_model, spec).items())
    companion = backends.companion(name, "bench")
    ref = worker.make_path_step(backend, companion, ref_model, "default", "fp32")
    peer = worker.make_path_step(backend, companion, peer_model, path, "fp32")
    for step in range(2):
        (ref_loss, ref_correct), (peer_loss, peer_correct) = ref.train_step(x, y), peer.train_step(x, y)
        assert peer_loss == pytest.approx(ref_loss, rel=1e-5), step
        assert peer_correct == ref_correct
    assert peer.eval_step(x, y)[0] == pytest.approx(ref.eval_step(x, y)[0], rel=1e-5)
    moved = backend.get_weights(ref_model, spec)
    assert any(not np.allclose(moved[k], start[k]) for k in start)  # the steps did update the weights
    for k, v in backend.get_weights(peer_model, spec).items():
        np.testing.assert_allclose(v, moved[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", [n for n in backends.ORDER if backends.can_train(n)])
def test_bench_modules_offer_the_same_names(name):
    """Every trainable backend has a bench module with the same names, so the bench loop never asks
    which framework it runs: the same constants and functions, the same peer paths as PEER_PATHS."""
    load(name)
    module = backends.companion(name, "bench")
    assert isinstance(module.FAST_IS_DEFAULT, bool) and isinstance(module.LOWER_PRECISIONS_ALONE, bool)
    assert tuple(module.PEERS) == PEER_PATHS[name]
    assert "fast" not in module.PEERS or not module.FAST_IS_DEFAULT  # a fast path of its own, or the Trainer is it
    assert set(module.DESCRIPTIONS) == set(module.PEERS) | {"default"} and all(module.DESCRIPTIONS.values())
    for function, arity in (("gemm", 2), ("sync", 1), ("version", 0), ("environment", 0)):
        assert callable(getattr(module, function)), function
        assert len(inspect.signature(getattr(module, function)).parameters) == arity, function
    assert module.version() and isinstance(module.environment(), dict)
    model = load(name).build_model(make_spec("mini"), seed=0)
    module.sync(model)()  # waits for the model's pending work (nothing pending here)


def test_peer_paths_are_fp32_only():
    backend = load("torch")
    model = backend.build_model(make_spec("mini"), seed=0)
    with pytest.raises(ConfigError, match="the chapter path runs in fp32 only"):
        worker.make_path_step(backend, backends.companion("torch", "bench"), model, "chapter", "bf16")


def test_derived_figures_from_a_synthetic_report():
    """GFLOP/s from the step time, its fraction of the GEMM rate at the row's precision, the best peer."""
    def row(path, precision, seconds):
        return protocol.row("torch", path, precision, train_img_s=64 / seconds, infer_img_s=128 / seconds,
                            train_step_s=seconds, infer_step_s=seconds / 2, train_steps_s=[seconds],
                            infer_steps_s=[seconds / 2])

    rows = [row("chapter", "fp32", 4.0), row("fast", "fp32", 2.0), row("default", "fp32", 2.5),
            row("default", "bf16", 1.0), row("default", "fp16", 1.0)]
    flops = {"train": 300e9, "infer": 100e9}
    best = machine.best_gemm([{"framework": "torch", "precision": "fp32", "gflops": 200.0, "op": "mm", "n": 8},
                              {"framework": "tf", "precision": "fp32", "gflops": 250.0, "op": "mm", "n": 8},
                              {"framework": "torch", "precision": "bf16", "gflops": None, "op": "mm", "n": 8},
                              {"framework": "tf", "precision": "bf16", "gflops": 600.0, "op": "mm", "n": 8}])
    assert best["fp32"]["framework"] == "tf" and best["bf16"]["gflops"] == 600.0 and "fp16" not in best
    for r in rows:
        figures.derive(r, rows, flops, best)
    chapter, fast, default, bf16, fp16 = rows
    assert default["train_gflops"] == pytest.approx(120.0) and default["infer_gflops"] == pytest.approx(80.0)
    assert default["gemm_fraction_train"] == pytest.approx(120 / 250) and default["gemm_gflops"] == 250.0
    assert bf16["gemm_fraction_train"] == pytest.approx(300 / 600)
    assert fp16["gemm_fraction_train"] is None and fp16["train_gflops"] == pytest.approx(300.0)
    assert default["best_peer"] == "fast fp32" and default["ratio_best_peer_train"] == pytest.approx(0.8)
    assert chapter["ratio_best_peer_train"] == pytest.approx(0.5) and default["ratio_train"] == pytest.approx(1.6)
    report = {"settings": {"backends": ["torch"], "precisions": ["fp32", "bf16"], "resize": 224},
              "results": rows, "pipeline": [], "memory": [],
              "epochs": [{"backend": "torch", "precision": "fp32", "error": None,
                          "epochs": [{"ratio_to_step": 0.5, "first_step_excess_s": 3.0},
                                     {"ratio_to_step": 0.95, "ratio_to_own_steps": 0.97, "first_step_excess_s": 0.0},
                                     {"ratio_to_step": 0.2, "first_step_excess_s": 0.0, "prefetch": False}]}]}
    targets = {t["name"]: t for t in bench.evaluate_targets(report)}
    assert targets["torch: default fp32 training >= 1x the best peer of its framework"]["met"] is False
    gemm = targets["fastest bf16 training path >= 70% of the machine's bf16 GEMM rate"]
    assert gemm["met"] is False and "300 of 600 GFLOP/s (50%)" in gemm["detail"]
    epoch = targets["torch fp32: an epoch's throughput (after the first) within 10% of the step rate"]
    assert epoch["met"] is True and "0.95x (vs the step rate 0.95x, vs its own steps 0.97x; first epoch 0.50x" \
        in epoch["detail"]  # the no-prefetch epoch is a diagnosis, not the target's


def test_torch_reuses_freed_memory_instead_of_faulting_it_in_again():
    """After ``configure()`` a freed 64 MiB tensor's pages serve the next one: glibc would otherwise map
    and unmap every block over 32 MiB, and a 224x224 training step page-faulted 1.4 GiB per step. In a
    subprocess, since the setting is process-wide."""
    import platform
    import subprocess
    import sys

    load("torch")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the malloc setting applies to glibc only")
    probe = ("import resource, torch\n"
             "from nin_multi import backends\n"
             "{configure}\n"
             "faults = []\n"
             "for _ in range(4):\n"
             "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "    t = torch.ones(16 * 2**20)\n"
             "    del t\n"
             "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
             "print(min(faults[1:]))\n")
    counts = {}
    for name, configure in (("plain", "torch.set_num_threads(1)"),
                            ("configured", "backends.get_backend('torch').configure(1)")):
        done = subprocess.run([sys.executable, "-c", probe.format(configure=configure)], capture_output=True,
                              text=True, timeout=120, check=True)
        counts[name] = int(done.stdout.split()[-1])
    assert counts["plain"] >= 16 * 2**20 * 4 // 4096 * 0.9, counts  # every page of 64 MiB, every time
    assert counts["configured"] < 100, counts


@pytest.mark.parametrize("target, reached", [(0.0, True), (1.0, False)])
def test_time_to_accuracy_trains_the_recipe_and_times_its_target(sample_dir, monkeypatch, capsys, target, reached):
    """``--time-to-accuracy`` runs ``train`` with the recipe in the worker; here a recipe small enough
    for a test (the mini net, 256 images, 2 epochs) stands in for ``fast``."""
    from nin_multi.bench import accuracy
    from nin_multi.recipes import Recipe

    load("torch")
    small = Recipe("fast", "a test's", {"variant": "mini", "resize": 28, "init": "kaiming", "lr": 0.05, "epochs": 2,
                                        "batch_size": 32, "subset": 256, "test_subset": 64, "momentum": 0.9,
                                        "schedule": "linear", "warmup_epochs": 0.5}, target=target)
    monkeypatch.setattr(accuracy, "get_recipe", lambda name: small)
    got = accuracy.measure_time_to_accuracy("torch", {"threads": None, "data_dir": str(sample_dir)})
    assert got["error"] is None and [e["epoch"] for e in got["epochs"]] == [1, 2]
    assert (got["seconds"] is not None) == reached and 0 < got["epochs"][-1]["wall_seconds"] < 300
    if reached:
        assert got["epoch"] == 1 and got["seconds"] == got["epochs"][0]["wall_seconds"]
    lines = accuracy.accuracy_lines({"accuracy": [got], "environment": {"others_cpu_share": {"torch": 0.25}}})
    assert lines[0].startswith(f"time to accuracy (fast recipe, test acc {target:g}")
    assert lines[1].split()[0] == "torch" and ("at epoch 1" if reached else "not reached in") in lines[1]
    assert lines[1].endswith("other processes 25% of the CPU")
