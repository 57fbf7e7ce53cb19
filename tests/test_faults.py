"""Faults during a run, each produced for real: damaged checkpoints and run files, failed writes (a
file-size limit, a full file system), a second process on one run directory, SIGTERM to a training
process, a run continued in another framework. Each asserts the one-line message, the exit status,
and that the files that existed before are byte-identical afterwards (or, where the run continues,
what it rewrote from what).

One torch run of the ``mini`` net at 28x28 (3 epochs, 64 images) is trained once per module; each
test works on a copy of it.
"""
import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.errors import DamagedFileError, WriteError
from nin_multi.fileio import atomic_write, write_text
from nin_multi.lock import LOCK, RunLock
from nin_multi.run import progress
from nin_multi.train import train
from nin_multi.weights import read_weights_file

from conftest import ROOT, load

RUN_ARGS = ["--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05", "--batch-size", "32",
            "--subset", "64", "--test-subset", "32", "--threads", "1"]
TIMEOUT = 240


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def torch_run(sample_dir, tmp_path_factory):
    """A finished 3-epoch torch run: three checkpoints, metrics, config, plot, weights."""
    backend = load("torch")
    out = tmp_path_factory.mktemp("faults") / "run"
    cfg = TrainConfig(backend=backend.NAME, variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32,
                      subset=64, test_subset=32, threads=1, epochs=3, data_dir=str(sample_dir), out=str(out),
                      progress=False)
    train(cfg, log=quiet)
    return out


@pytest.fixture
def run(torch_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(torch_run, dest)
    return dest


def snapshot(directory) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def temporaries(directory) -> list:
    return [p.name for p in directory.rglob("*") if ".tmp" in p.name]


def cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def resume_args(run, *extra):
    return ["train", "--resume", str(run), "--no-progress", *extra]


def rewrite_member(path):
    """A valid zip whose first array no longer matches the checksum stored with it."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    name = next(k for k in arrays if k != "__header__")
    arrays[name] = arrays[name] + 1
    np.savez(path, **arrays)  # writes path (it already ends in .npz)


# -- damaged files ----------------------------------------------------------------------------------------
def test_damaged_newest_checkpoints_are_skipped_and_named(run, capsys):
    ck = run / "checkpoints"
    original = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    data = (ck / "epoch-0003.npz").read_bytes()
    (ck / "epoch-0003.npz").write_bytes(data[: len(data) // 2])  # truncated: a copy cut short
    rewrite_member(ck / "epoch-0002.npz")  # a valid zip with a changed array: only the checksum sees it
    intact = (ck / "epoch-0001.npz").read_bytes()
    code, out, err = cli(resume_args(run, "--epochs", "2"), capsys)
    assert code == 0, err
    assert ("skipped damaged checkpoint epoch-0003.npz (BadZipFile: File is not a zip file)" in out
            and "skipped damaged checkpoint epoch-0002.npz (its arrays do not match the checksum stored with them)"
            in out and "resuming after epoch 1" in out), out
    assert (ck / "epoch-0001.npz").read_bytes() == intact
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # epoch 2 trained again from epoch 1's checkpoint gives the same numbers as the first time (CPU)
    assert rows[1]["train_loss"] == original["train_loss"] and rows[1]["test_acc"] == original["test_acc"]
    read_weights_file(ck / "epoch-0002.npz")  # rewritten intact


def test_no_intact_checkpoint_is_refused(run, capsys):
    ck = run / "checkpoints"
    (ck / "epoch-0003.npz").write_bytes(b"")
    (ck / "epoch-0002.npz").write_bytes(b"<html>not a checkpoint</html>")
    rewrite_member(ck / "epoch-0001.npz")
    before = snapshot(run)
    code, out, err = cli(resume_args(run), capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"nin-multi: error: no intact checkpoint in {ck} to resume from: epoch-0003.npz "
                          f"(an empty file), epoch-0002.npz (not a zip archive: it begins with b'<html>no'), "), err
    assert "epoch-0001.npz (its arrays do not match the checksum stored with them)" in err
    assert f"Start the run again with --overwrite --out {run}" in err
    assert snapshot(run) == before


def test_damaged_config_json_is_named_and_the_checkpoint_holds_the_settings(run, capsys):
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text('{"backend": "torch", "epochs": 3, "batch_')
    before = snapshot(run)
    code, _, err = cli(resume_args(run), capsys)
    assert code == 2 and err.count("\n") == 1
    assert err == (f"nin-multi: error: {run / 'config.json'} is damaged (Unterminated string starting at: line 1 "
                   f"column 35 (char 34)): delete it to resume with the settings stored in the newest intact "
                   f"checkpoint\n")
    assert snapshot(run) == before
    (run / "config.json").unlink()  # what the message says to do
    code, out, err = cli(resume_args(run), capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text()) == {**saved, "out": str(run)}  # (a copied run)


def test_damaged_metrics_are_rewritten_from_the_checkpoint(run, capsys):
    rows = (run / "metrics.jsonl").read_text()
    checkpoints = {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")}
    (run / "metrics.jsonl").write_text(rows[: len(rows) - 40])  # the last line cut short
    code, out, err = cli(resume_args(run), capsys)
    assert code == 0, err
    assert re.search(rf"^{re.escape(str(run / 'metrics.jsonl'))} is damaged: line 3 is not JSON \([^)]+\); "
                     rf"rewriting it from epoch-0003.npz$", out, re.M), out
    assert (run / "metrics.jsonl").read_text() == rows
    assert {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")} == checkpoints


def test_weights_files_from_before_checksums_still_load(tmp_path, torch_run):
    """Files written before the header carried checksums have none: read as before (a ``weights.npz`` of
    that time: a checkpoint's arrays without its training state)."""
    with np.load(torch_run / "checkpoints" / "epoch-0003.npz") as f:
        arrays = {k: f[k] for k in f.files if not k.startswith("state.")}
    header = json.loads(str(arrays["__header__"]))
    del header["checksum"], header["header_checksum"]
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(tmp_path / "old.npz", **arrays)
    spec, weights, _, _ = read_weights_file(tmp_path / "old.npz")
    assert spec.num_params == sum(w.size for w in weights.values())
    with pytest.raises(DamagedFileError, match="is damaged or not a nin_multi weights file"):
        read_weights_file(torch_run / "metrics.jsonl")


def test_checkpoints_from_before_they_held_the_metrics_still_resume(run, capsys):
    """Older checkpoints have no checksum and no metrics: the resume reads metrics.jsonl, as it did."""
    for path in (run / "checkpoints").glob("*.npz"):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        header = json.loads(str(arrays["__header__"]))
        del header["checksum"], header["header_checksum"], header["meta"]["history"]
        arrays["__header__"] = np.array(json.dumps(header))
        np.savez(path, **arrays)
    rows = (run / "metrics.jsonl").read_text()
    code, out, err = cli(resume_args(run), capsys)
    assert code == 0 and "resuming after epoch 3" in out, err
    assert (run / "metrics.jsonl").read_text() == rows
    (run / "metrics.jsonl").write_text(rows.replace('"epoch": 2', '"epoch: 2'))
    before = snapshot(run)
    code, out, err = cli(resume_args(run), capsys)
    assert code == 2 and err == (f"nin-multi: error: {run / 'metrics.jsonl'} is damaged: line 2 is not JSON "
                                 f"(Expecting ':' delimiter at column 14); repair it, or delete it to resume "
                                 f"without the earlier epochs' metrics\n")
    assert snapshot(run) == before


# -- failed writes ----------------------------------------------------------------------------------------
def test_failed_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    """In this process: a file-size limit (Python ignores SIGXFSZ, so write() fails with EFBIG)."""
    dest = tmp_path / "report.json"
    dest.write_text("the previous version")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(WriteError) as e:
            write_text(dest, "x" * (256 * 1024))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(e.value) == (f"could not write {dest}: file too large for the file-size limit (ulimit -f) or "
                            f"the file system; the file was left as it was")
    assert e.value.errno == errno.EFBIG
    assert dest.read_text() == "the previous version" and os.listdir(tmp_path) == ["report.json"]
    with pytest.raises(KeyboardInterrupt):  # any exception in the block: no file, no temporary
        with atomic_write(tmp_path / "new.bin") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["report.json"]


def test_checkpoint_write_beyond_the_file_size_limit_ends_in_one_line(run):
    """A real training process under ``ulimit -f``: the next checkpoint does not fit."""
    limit = 200 * 1024  # metrics, config and the plot fit; a 600 KB checkpoint does not
    before = snapshot(run)

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run([sys.executable, "-m", "nin_multi", *resume_args(run, "--epochs", "4")], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=limited)
    ck = run / "checkpoints" / "epoch-0004.npz"
    assert p.returncode == 2, p.stderr
    assert p.stderr == (f"nin-multi: error: could not write {ck}: file too large for the file-size limit "
                        f"(ulimit -f) or the file system; the file was left as it was; the checkpoint of epoch 3 "
                        f"and the metrics up to it are in {run}: continue with nin-multi train --resume {run}\n")
    assert not ck.exists() and temporaries(run) == []
    after = snapshot(run)
    config = json.loads(after.pop("config.json"))  # the one file a resume rewrites before training
    # ... and the one it adds: the attempt's TensorBoard events (epoch 4's steps, which TensorBoard drops
    # when the run is resumed again from epoch 3).
    (added,) = [k for k in after if k not in before]
    assert added.startswith("events.out.tfevents.") and after.pop(added)
    assert config["epochs"] == 4 and after == {k: v for k, v in before.items() if k != "config.json"}


@pytest.mark.slow
def test_convert_beyond_the_file_size_limit_keeps_the_old_file(backend, torch_run, tmp_path, capsys):
    """``convert`` hands the framework a temporary path; its failure (PyTorch and MXNet raise their own
    errors, not OSError) is one line, and the previous file stays."""
    dest = tmp_path / ("model" + backend.NATIVE_SUFFIXES[0])
    dest.write_bytes(b"the previous export")
    args = ["convert", "--backend", backend.NAME, "--weights", str(torch_run / "weights.safetensors"),
            "--out", str(dest)]

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, resource.RLIM_INFINITY))

    p = subprocess.run([sys.executable, "-m", "nin_multi", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=TIMEOUT, preexec_fn=limited, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.splitlines()[-1]
    assert last.startswith(f"nin-multi: error: could not write {dest}: ") and "the file was left as it was" in last
    assert dest.read_bytes() == b"the previous export" and os.listdir(tmp_path) == [dest.name]
    assert main(args) == 0 and os.listdir(tmp_path) == [dest.name]  # no limit: written, no temporary left
    assert dest.stat().st_size > 100 * 1024


def test_full_file_system_ends_in_one_line(sample_dir, tmp_path, capsys):
    """ENOSPC for real: the run directory on a 1 MiB tmpfs (needs the right to mount; skipped without)."""
    load("torch")
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = mnt / "run"
        code, _, err = cli(["train", "--backend", "torch", *RUN_ARGS, "--epochs", "3", "--data-dir", str(sample_dir),
                            "--out", str(out), "--no-progress"], capsys)
        assert code == 2 and err.count("\n") == 1
        assert err == (f"nin-multi: error: could not write {out / 'checkpoints' / 'epoch-0002.npz'}: no space left "
                       f"on the device; the file was left as it was; the checkpoint of epoch 1 and the metrics up "
                       f"to it are in {out}: continue with nin-multi train --resume {out}\n")
        assert temporaries(out) == []
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
        read_weights_file(out / "checkpoints" / "epoch-0001.npz")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- one process per run directory ------------------------------------------------------------------------
HOLD = ("import sys, time; from nin_multi.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(120)")


def test_second_process_is_refused_and_a_killed_holder_does_not_block(sample_dir, run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(run)
        for args in (resume_args(run), ["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(sample_dir),
                                        "--out", str(run), "--overwrite", "--no-progress"]):
            code, _, err = cli(args, capsys)
            assert code == 2 and err.count("\n") == 1
            assert err.startswith(f"nin-multi: error: run directory {run} is in use by another nin-multi process "
                                  f"(pid {holder.pid} on "), err
            assert err.endswith("wait for it to finish or stop it, or choose another --out\n"), err
            assert snapshot(run) == before
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        holder.wait(timeout=30)
    assert (run / LOCK).is_file()
    code, out, err = cli(resume_args(run), capsys)
    assert code == 0, err
    assert not (run / LOCK).exists()  # released (and removed) at exit


def test_lock_is_exclusive_between_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with RunLock(tmp_path):
        pass


# -- SIGTERM ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig, status, how", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(sample_dir, tmp_path, capsys, sig, status, how):
    """A real training process, its output to pipes (so also: no progress-bar frames in a log)."""
    load("torch")
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "nin_multi", "train", "--backend", "torch", *RUN_ARGS,
                          "--epochs", "1000", "--data-dir", str(sample_dir), "--out", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoints" / "epoch-0002.npz").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate(timeout=30)
            time.sleep(0.05)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == status, stderr
    assert "\r" not in stdout + stderr and "Traceback" not in stderr
    m = re.fullmatch(rf"nin-multi: error: {how} during epoch (\d+); the checkpoint of epoch (\d+) "
                     r"and the metrics up to it are in (.*): continue with nin-multi train --resume (.*)\n", stderr)
    assert m and m[3] == m[4] == str(out), stderr
    done = int(m[2])
    assert int(m[1]) == done + 1 and done >= 2
    newest = sorted((out / "checkpoints").glob("epoch-*.npz"))[-1]
    assert newest.name == f"epoch-{done:04d}.npz"
    read_weights_file(newest)
    # stopped between the checkpoint and the metrics files at worst: the metrics never run ahead of it
    assert len((out / "metrics.jsonl").read_text().splitlines()) in (done - 1, done)
    assert temporaries(out) == [] and not (out / LOCK).exists()
    code, printed, err = cli(resume_args(out, "--epochs", str(done + 1)), capsys)
    assert code == 0, err
    assert f"resuming after epoch {done}" in printed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == done + 1


def default_sigint():
    """A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    """The SIGTERM tests show a log on a pipe holds no bar frames; here, a terminal still gets its bars."""
    master, replica = os.openpty()
    try:
        with open(replica, "w") as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            with progress(3, "epoch 1/1") as bar:
                assert not bar.disable
            monkeypatch.setattr(sys, "stderr", io.StringIO())
            with progress(3, "epoch 1/1") as bar:
                assert bar.disable
    finally:
        os.close(master)


# -- continue in another framework ------------------------------------------------------------------------
CONTINUE = """
import shutil, sys
from nin_multi.cli import main
run, backend, epochs, start_copy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
args = ["train", "--resume", run, "--backend", backend, "--no-progress", "--epochs"]
first = main(args + [str(epochs)])  # no epoch left to train: weights.safetensors is what the new backend loaded
shutil.copy(run + "/weights.safetensors", start_copy)
second = main(args + [str(epochs + 1)])  # one epoch in the new framework
others = sorted(m for m in ("torch", "tensorflow", "mxnet") if m in sys.modules and m != backend)
print("RESULT", first, second, others)
"""


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [("torch", "tensorflow"), ("tensorflow", "mxnet")])
def test_continue_in_another_framework_starts_from_the_checkpoint(sample_dir, tmp_path, source, target):
    """The source run is trained here; the continuation runs in a process of its own, which must not
    import any framework but its own."""
    load(target)
    run = tmp_path / "run"
    train(TrainConfig(backend=load(source).NAME, variant="mini", resize=28, init="kaiming", lr=0.05,
                      batch_size=32, subset=64, test_subset=32, threads=1, epochs=2, data_dir=str(sample_dir),
                      out=str(run), progress=False), log=quiet)
    checkpoint = run / "checkpoints" / "epoch-0002.npz"
    stdout, start = continue_in(run, target, tmp_path)
    assert (f"continuing a {source} run on {target} from {checkpoint.name}: the weights carry over exactly and "
            f"plain SGD keeps no optimizer state, but {source}'s random state does not, so the dropout masks "
            f"differ from an uninterrupted {source} run") in stdout
    _, expected, meta, _ = read_weights_file(checkpoint)
    assert meta["backend"] == source
    _, got, _, _ = read_weights_file(start)  # what the target's model held right after loading
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["backend"] for r in rows] == [source, source, target] and [r["epoch"] for r in rows] == [1, 2, 3]
    assert np.isfinite(rows[-1]["train_loss"])
    assert (run / "metrics.csv").read_text().splitlines()[0].split(",")[-2:] == ["backend", "wall_seconds"]
    assert read_weights_file(run / "checkpoints" / "epoch-0003.npz")[2]["backend"] == target
    assert json.loads((run / "config.json").read_text())["backend"] == target


def continue_in(run, backend, tmp_path):
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    start = tmp_path / f"start-{backend}.safetensors"
    p = subprocess.run([sys.executable, "-c", CONTINUE, str(run), backend, str(epochs), str(start)], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and "RESULT 0 0 []" in p.stdout, (p.stdout, p.stderr)
    return p.stdout, start
