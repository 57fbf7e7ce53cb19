"""``nin-multi bench --workers N``: its refusals, its table and JSON from a canned result, how a run's
metrics become a row (a stand-in ``train`` that writes them, or fails), and one real two-worker PyTorch
run on a tiny subset. Speeds are never asserted, only their structure and the ratio's arithmetic."""
import json
import subprocess
import sys

import pytest

from nin_multi import backends, machine
from nin_multi.bench import scaling
from nin_multi.errors import ConfigError, DataError

from conftest import load
from test_bench import parse

CANNED_ENV = {"cpus": 2, "usable_cpus": 2, "cpu": {"model": "AMD EPYC", "isa": {"AVX2": True}}, "cpu_class": "AVX2",
              "isa_cap": None}


def _row(backend, workers, threads, rate, wall, others=0.02, error=None):
    return {"backend": backend, "workers": workers, "threads_per_worker": threads, "examples_per_sec": rate,
            "speedup": None, "wall_seconds": wall, "epoch_seconds": None, "train_loss": 1.5, "test_acc": 0.75,
            "others_cpu_share": others, "error": error}


def canned(monkeypatch, rows):
    """``run_scaling`` with every run replaced by the next of ``rows``."""
    it = iter(rows)
    monkeypatch.setattr(scaling, "_run", lambda name, s, k, log: next(it))
    monkeypatch.setattr(machine, "cpu_info", lambda: CANNED_ENV["cpu"])
    s = {"workers": 2, "backends": ["torch", "tensorflow"], "precision": "fp32", "subset": 3200, "cores": 2,
         "data_dir": "data"}
    return scaling.run_scaling(s, log=lambda msg: None)


@pytest.mark.parametrize("argv, error, says", [
    (["--workers", "1"], ConfigError, "--workers must be 2 or more"),
    (["--workers", "0"], ConfigError, "--workers must be 2 or more"),
    (["--workers", "2", "--precision", "auto"], ConfigError, "compares one precision"),
    (["--workers", "2", "--precision", "fp32,bf16"], ConfigError, "compares one precision"),
    (["--workers", "2", "--recipe", "fast"], ConfigError, "leave out --recipe"),
    (["--workers", "2", "--subset", "0"], ConfigError, "--subset must be a positive integer"),
    (["--workers", "2", "--threads", "0"], ConfigError, "--threads must be a positive integer"),
    (["--workers", "2", "--backends", "onnx"], ConfigError, "inference-only"),
    (["--workers", "2", "--data-dir", "no-such-dir"], DataError, "no-such-dir does not exist"),
    (["--workers", "2", "--subset", "3444"], ConfigError, "--subset 3444 is more than the 3443 training images"),
])
def test_bad_options_are_refused_before_any_run(sample_dir, tmp_path, monkeypatch, argv, error, says):
    monkeypatch.chdir(tmp_path)
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(sample_dir)]
    args = parse(*argv)
    with pytest.raises(error, match=says) as e:
        bench_settings(args)
    assert e.value.exit_code == 2


def bench_settings(args):
    from nin_multi.cli import bench as bench_command

    return bench_command.settings(args)


def test_a_backend_without_an_engine_is_named(sample_dir, monkeypatch):
    monkeypatch.setattr(backends, "data_parallel", lambda: ["torch"])
    with pytest.raises(ConfigError, match="tensorflow has no data-parallel engine: --workers measures torch"):
        bench_settings(parse("--workers", "2", "--backends", "torch,tensorflow", "--data-dir", str(sample_dir)))


def test_no_data_is_refused_without_downloading(tmp_path, monkeypatch):
    """No --data-dir and an empty cache: one line, not a download of 30 MB before the first run."""
    monkeypatch.delenv("NIN_MULTI_DATA_DIR", raising=False)
    monkeypatch.setenv("NIN_MULTI_CACHE_DIR", str(tmp_path))
    with pytest.raises(DataError, match="downloading is disabled"):
        bench_settings(parse("--workers", "2", "--backends", "torch"))


def test_the_command_refuses_in_one_line_with_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nin_multi", "bench", "--workers", "1", "--json", "out.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["nin-multi: error: --workers must be 2 or more (the one-process run "
                                                "is always measured beside it), got 1"]
    assert not (tmp_path / "out.json").exists()


def test_settings_share_out_the_cores(sample_dir):
    s = bench_settings(parse("--workers", "3", "--backends", "torch", "--threads", "7", "--data-dir",
                             str(sample_dir), "--subset", "64"))
    assert s == {"workers": 3, "backends": ["torch"], "precision": "fp32", "subset": 64, "cores": 7,
                 "data_dir": str(sample_dir.resolve())}
    assert [scaling.threads_per_worker(7, k) for k in (1, 2, 3, 8)] == [7, 3, 2, 1]


def test_speedup_is_the_ratio_of_the_rates_and_a_failed_run_has_none(monkeypatch):
    report = canned(monkeypatch, [_row("torch", 1, 2, 300.0, 40.0), _row("torch", 2, 1, 270.0, 52.0),
                                  _row("tensorflow", 1, 2, 250.0, 60.0),
                                  _row("tensorflow", 2, 1, None, 9.0, error="train --workers 2 exited with "
                                                                            "status 4: worker 1 failed")])
    rates = [r["speedup"] for r in report["scaling"]]
    assert rates == [1.0, 270.0 / 300.0, None, None]
    assert set(report) == {"settings", "environment", "scaling"}


def test_table_and_json_from_a_canned_result(monkeypatch, tmp_path, capsys):
    report = canned(monkeypatch, [_row("torch", 1, 2, 300.0, 40.0), _row("torch", 2, 1, 270.0, 52.0, others=0.31),
                                  _row("tensorflow", 1, 2, 250.0, 60.0),
                                  _row("tensorflow", 2, 1, None, 9.0, error="train --workers 2 exited with "
                                                                            "status 4: worker 1 failed")])
    lines = scaling.format_scaling(report).splitlines()
    assert lines[0] == ("data-parallel speed-up at 2 workers (train --workers K, the fast recipe, fp32, 2 epochs of "
                        "3200 images at 67x67, global batch 32; the rate is epoch 2's)")
    assert lines[1].startswith("CPU: AMD EPYC, 2 CPUs; CPU class AVX2")
    assert lines[3].split() == ["backend", "workers", "threads/worker", "examples/s", "speed-up", "train", "loss",
                                "test", "acc", "wall", "s", "others'", "CPU"]
    assert set(lines[4]) == {"-"}
    assert [ln.split() for ln in lines[5:8]] == [
        ["torch", "1", "2", "300.0", "1.00x", "1.5000", "0.750", "40.0", "2%"],
        ["torch", "2", "1", "270.0", "0.90x", "1.5000", "0.750", "52.0", "31%"],
        ["tensorflow", "1", "2", "250.0", "-", "1.5000", "0.750", "60.0", "2%"]]
    assert lines[8].split()[:3] == ["tensorflow", "2", "1"]
    assert lines[8].endswith("error: train --workers 2 exited with status 4: worker 1 failed")
    assert lines[9].startswith("threads/worker: the 2 cores shared out") and len(lines) == 10

    from nin_multi.cli import bench as bench_command
    monkeypatch.setattr(bench_command, "settings", lambda a: report["settings"])
    monkeypatch.setattr(scaling, "run_scaling", lambda s: report)
    args = parse("--workers", "2", "--json", str(tmp_path))
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert printed == "\n".join(lines) + f"\nwrote {tmp_path / 'bench.json'}\n"
    assert json.loads((tmp_path / "bench.json").read_text()) == report


FAKE_TRAIN = """
import json, sys
from pathlib import Path
argv = sys.argv[1:]
out = Path(argv[argv.index("--out") + 1])
out.mkdir(parents=True)
rows = [{"epoch": 1, "test_acc": 0.3, "examples_per_sec": 100.0, "seconds": 9.0, "train_loss": 2.0},
        {"epoch": 2, "test_acc": 0.5, "examples_per_sec": 150.0 * int(argv[argv.index("--workers") + 1]),
         "seconds": 5.0, "train_loss": 1.25}]
(out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
Path(sys.argv[0]).with_suffix(".seen").open("a").write(json.dumps(argv) + "\\n")
"""


def fake_train(monkeypatch, tmp_path, script):
    """``train`` replaced by ``script``, which needs no framework: the runs go ahead where torch is not
    installed (CI's second environment)."""
    path = tmp_path / "fake_train.py"
    path.write_text(script)
    monkeypatch.setattr(backends, "check_interpreter", lambda name: sys.executable)
    real = scaling.command
    monkeypatch.setattr(scaling, "command", lambda python, s, name, k, threads, out: [
        sys.executable, str(path), *real(python, s, name, k, threads, out)[3:]])
    return path


def test_a_run_becomes_its_second_epochs_rate(monkeypatch, tmp_path):
    path = fake_train(monkeypatch, tmp_path, FAKE_TRAIN)
    s = {"workers": 2, "backends": ["torch"], "precision": "fp32", "subset": 64, "cores": 2, "data_dir": "d"}
    logged = []
    report = scaling.run_scaling(s, log=logged.append)
    one, two = report["scaling"]
    assert (one["examples_per_sec"], two["examples_per_sec"], two["speedup"]) == (150.0, 300.0, 2.0)
    assert (one["epoch_seconds"], one["train_loss"], one["test_acc"], one["threads_per_worker"],
            two["threads_per_worker"]) == (5.0, 1.25, 0.5, 2, 1)
    assert one["wall_seconds"] > 0 and one["error"] is None
    seen = [json.loads(ln) for ln in path.with_suffix(".seen").read_text().splitlines()]
    assert [a[a.index("--workers") + 1] for a in seen] == ["1", "2"]
    assert [a[a.index("--threads") + 1] for a in seen] == ["2", "1"]
    for a in seen:
        assert a[:2] == ["train", "--backend"] and a[a.index("--recipe") + 1] == "fast"
        assert a[a.index("--epochs") + 1] == "2" and a[a.index("--precision") + 1] == "fp32"
    assert logged[0] == "bench: torch, 1 worker x 2 threads: started"
    assert logged[3].startswith("bench: torch, 2 workers x 1 thread: 300.0 examples/sec in epoch 2, ")


def test_a_failing_run_is_its_rows_one_line_error(monkeypatch, tmp_path):
    fake_train(monkeypatch, tmp_path, "import sys\nprint('a warning first', file=sys.stderr)\n"
                                      "sys.exit('nin-multi: error: worker 1 exited with status 1, so it stopped')")
    s = {"workers": 2, "backends": ["torch"], "precision": "fp32", "subset": 64, "cores": 2, "data_dir": "d"}
    rows = scaling.run_scaling(s, log=lambda msg: None)["scaling"]
    assert [r["error"] for r in rows] == [
        f"train --workers {k} exited with status 1: worker 1 exited with status 1, so it stopped" for k in (1, 2)]
    assert all(r["examples_per_sec"] is None and r["speedup"] is None for r in rows)


@pytest.mark.slow
def test_two_torch_workers_end_to_end(sample_dir, tmp_path, capsys):
    """The real command: two rows from two real runs, positive rates, the speed-up their ratio exactly."""
    load("torch")
    args = parse("--workers", "2", "--backends", "torch", "--data-dir", str(sample_dir), "--subset", "64",
                 "--json", str(tmp_path / "b.json"))
    assert args.func(args) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    one, two = report["scaling"]
    cores = report["settings"]["cores"]
    assert [(r["backend"], r["workers"], r["threads_per_worker"], r["error"]) for r in (one, two)] == [
        ("torch", 1, cores, None), ("torch", 2, max(1, cores // 2), None)]
    assert one["examples_per_sec"] > 0 and two["examples_per_sec"] > 0
    assert two["speedup"] == two["examples_per_sec"] / one["examples_per_sec"] and one["speedup"] == 1.0
    assert one["wall_seconds"] > 0 and two["wall_seconds"] > 0
    printed = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in printed[5:7]] == [["torch", "1"], ["torch", "2"]]
    assert not list(tmp_path.glob("nin-multi-bench-workers-*"))  # the run directories were temporary


def test_nothing_stays_in_the_temporary_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(scaling.tempfile, "tempdir", str(tmp_path))
    fake_train(monkeypatch, tmp_path, FAKE_TRAIN)
    scaling.run_scaling({"workers": 2, "backends": ["torch"], "precision": "fp32", "subset": 64, "cores": 2,
                         "data_dir": "d"}, log=lambda msg: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_train.py", "fake_train.seen"]


def test_speed_page_quotes_the_stored_table():
    """docs/speed.md shows what docs/make_pictures.py stored from the command, line for line, and the stored
    file names no absolute path."""
    import re
    from conftest import ROOT

    record = (ROOT / "docs" / "img" / "workers-speedup.txt").read_text(encoding="utf-8")
    lines = record.splitlines()
    command = lines[0].split()
    assert command[:6] == ["$", "python", "-m", "nin_multi", "bench", "--workers"] and command[6] == "2"
    assert command[7] == "--data-dir" and not command[8].startswith(("/", "~"))  # the repository's relative path
    assert command[9:] == ["--json", "runs/workers-speedup/bench.json"]
    page = (ROOT / "docs" / "speed.md").read_text(encoding="utf-8")
    shown = re.search(r"## Several workers on one machine\n.*?```text\n(.*?)\n```", page, re.DOTALL)
    assert shown, "docs/speed.md quotes no table under 'Several workers on one machine'"
    assert [ln for ln in shown[1].splitlines() if ln] == [ln for ln in lines[1:] if ln and not ln.startswith("#")]
    assert not re.search(r"(^|[\s'\"(=])(/|~/)\w", record, re.MULTILINE)
