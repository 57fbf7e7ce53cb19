"""What a user's mistake or a shared machine can do to files, each produced for real: links planted in a run
folder pointing outside it, a folder of someone's files given to --overwrite, a live training beside an
overwriting reproduce. Each asserts the one line the user sees, the exit status, and that every file
outside the run is byte-identical afterwards (hostile files: test_hostile_files.py).

One torch run of the ``mini`` net at 28x28 (2 epochs, 64 images) is trained once per module; each test
works on a copy of it.
"""
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from nin_multi import exercises, run as run_mod
from nin_multi.reproduce import report as reproduce_report
from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.errors import RunDirError
from nin_multi.fileio import TEMPORARY, write_json
from nin_multi.lock import LOCK
from nin_multi.run import prepare_dir
from nin_multi.train import train

from conftest import ROOT, load

RUN_ARGS = ["--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05", "--batch-size", "32",
            "--subset", "64", "--test-subset", "32", "--threads", "1", "--no-progress"]
ADDRESS_SPACE = 4 << 30  # the victim commands run under ulimit -v of 4 GiB


def quiet(*_):
    pass


def train_mini(sample_dir, out):
    """A finished 2-epoch torch run of the mini net: checkpoints, metrics, config, plot, weights."""
    backend = load("torch")
    cfg = TrainConfig(backend=backend.NAME, variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32,
                      subset=64, test_subset=32, threads=1, epochs=2, data_dir=str(sample_dir), out=str(out),
                      progress=False)
    train(cfg, log=quiet)
    return out


@pytest.fixture(scope="module")
def torch_run(sample_dir, tmp_path_factory):
    return train_mini(sample_dir, tmp_path_factory.mktemp("safety") / "run")


@pytest.fixture
def run(torch_run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(torch_run, dest)
    return dest


@pytest.fixture
def outside(tmp_path):
    """A user's folder beside the run: what a planted link points at."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "thesis.tex").write_text("\\chapter{Results}\n")
    (d / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    (d / "epoch-0001.npz").write_bytes(b"the user's own file that happens to have a checkpoint's name")
    return d


def snapshot(directory) -> dict:
    return {str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


def cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def victim(args, **env):
    """A command in its own process under an address-space limit (``ulimit -v``): a file that makes it
    allocate what the file claims fails there with MemoryError instead of swapping the machine."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    p = subprocess.run([sys.executable, "-m", "nin_multi", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=240, preexec_fn=limit, env={**os.environ, **env})
    return p.returncode, p.stdout, p.stderr


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("nin-multi: error: "), err
    return err[len("nin-multi: error: "):-1]


# -- links planted in a run folder ------------------------------------------------------------------------
def test_a_lock_file_linked_outside_is_refused_not_emptied(sample_dir, run, outside, capsys):
    (run / LOCK).symlink_to(outside / "thesis.tex")
    before = snapshot(outside)
    for args in (["train", "--resume", str(run), "--no-progress"],
                 ["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(sample_dir), "--out", str(run),
                  "--overwrite"]):
        code, _, err = cli(args, capsys)
        assert code == 2
        assert one_line(err) == (f"{run / LOCK} is a symbolic link, which nin-multi never writes through (it did "
                                 f"not create it): remove it, or choose another --out")
        assert snapshot(outside) == before


def test_a_checkpoints_link_is_refused_and_nothing_is_written_or_pruned_there(run, outside, capsys):
    for ckpt in (run / "checkpoints").iterdir():
        shutil.copy(ckpt, outside / ckpt.name)  # what resume would prune if it followed the link
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    code, _, err = cli(["train", "--resume", str(run), "--epochs", "6", "--no-progress"], capsys)
    assert code == 2
    assert one_line(err) == (f"{run / 'checkpoints'} is a symbolic link, which nin-multi never writes through (it "
                             f"did not create it): remove it, or choose another --out")
    assert snapshot(outside) == before


def test_links_at_output_names_are_replaced_never_written_through(run, outside, capsys):
    """A resume rewrites metrics.csv, curves.png and config.json: links planted at those names are replaced
    by the new files, and what they pointed at is untouched; so is a link at the old probe's name."""
    for name, target in (("metrics.csv", ".bashrc"), ("curves.png", "thesis.tex"), (".write-test", ".bashrc")):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(outside / target)
    (run / "checkpoints" / "epoch-0000.npz").symlink_to(outside / "epoch-0001.npz")
    before = snapshot(outside)
    code, out, err = cli(["train", "--resume", str(run), "--epochs", "5", "--no-progress"], capsys)
    assert code == 0, err
    assert "resuming after epoch 2" in out
    assert snapshot(outside) == before
    assert not (run / "metrics.csv").is_symlink() and (run / "metrics.csv").read_text().count("\n") == 6
    assert not (run / "curves.png").is_symlink()
    # pruned to the newest three of the project's own checkpoints; the planted link is left alone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0000.npz", "epoch-0003.npz", "epoch-0004.npz", "epoch-0005.npz"]
    assert (run / "checkpoints" / "epoch-0000.npz").is_symlink()


def test_pruning_keeps_a_file_the_project_did_not_write(run, capsys):
    foreign = run / "checkpoints" / "epoch-0000.npz"
    foreign.write_bytes(b"a file someone copied in under a checkpoint's name")
    code, _, err = cli(["train", "--resume", str(run), "--epochs", "5", "--no-progress"], capsys)
    assert code == 0, err
    assert foreign.read_bytes() == b"a file someone copied in under a checkpoint's name"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch-0000.npz", "epoch-0003.npz", "epoch-0004.npz", "epoch-0005.npz"]


def test_resume_sweeps_the_temporary_files_a_killed_run_left(run, capsys):
    left = [run / ".metrics.csv.4242-0badc0de.tmp", run / ".tmp-4242-0badc0de-model.pt",
            run / "checkpoints" / ".epoch-0003.npz.4242-deadbeef.tmp"]
    for p in left:
        p.write_bytes(b"half a file")
    user = run / ".notes.tmp"
    user.write_text("not a name nin-multi gives its temporary files")
    code, _, err = cli(["train", "--resume", str(run), "--epochs", "3", "--no-progress"], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in left)
    assert user.read_text() == "not a name nin-multi gives its temporary files"
    assert [p.name for p in run.rglob("*") if TEMPORARY.match(p.name)] == []


# -- --overwrite ------------------------------------------------------------------------------------------
def test_overwrite_refuses_a_folder_of_someone_s_files(sample_dir, outside, capsys, monkeypatch):
    """``--out .`` or ``--out ~`` with --overwrite: the folder is not a run, and nothing in it is touched."""
    (outside / "projects").mkdir()
    (outside / "projects" / "config.json").write_text("{}")
    before = snapshot(outside)
    monkeypatch.chdir(outside)
    for out in (".", str(outside)):
        code, _, err = cli(["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(sample_dir),
                            "--out", out, "--overwrite"], capsys)
        assert code == 2
        assert one_line(err) == (f"--overwrite refuses {out}: it holds '.bashrc', 'epoch-0001.npz', 'thesis.tex', "
                                 f"which no nin-multi run wrote; nin-multi only removes what its own runs wrote. "
                                 f"Choose another --out, or move those files away yourself")
        assert snapshot(outside) == before and not (outside / LOCK).exists()


def test_overwrite_refuses_a_run_holding_a_file_no_run_wrote(sample_dir, run, capsys):
    (run / "notes.txt").write_text("lr 0.05 looked best")
    before = snapshot(run)
    code, _, err = cli(["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(sample_dir), "--out", str(run),
                        "--overwrite"], capsys)
    assert code == 2
    assert one_line(err) == (f"--overwrite refuses {run}: it holds 'notes.txt', which no nin-multi run wrote; "
                             f"nin-multi only removes what its own runs wrote. Choose another --out, or move those "
                             f"files away yourself")
    assert snapshot(run) == before


def test_overwrite_refuses_a_folder_of_project_names_that_is_no_run(tmp_path):
    (tmp_path / "metrics.csv").write_text("a user's own table\n")
    with pytest.raises(RunDirError, match=r"it is not a nin-multi run directory \(it has no config.json, "
                                          r"checkpoints/ or report\)"):
        prepare_dir(tmp_path, overwrite=True)
    assert (tmp_path / "metrics.csv").read_text() == "a user's own table\n"


def test_overwrite_replaces_a_run_and_its_sub_runs(run, tmp_path, capsys):
    """A reproduce-like folder: its report, a sub-run per framework, a killed write's temporary file."""
    parent = tmp_path / "repro"
    parent.mkdir()
    shutil.copytree(run, parent / "torch")
    shutil.copytree(run, parent / "seed-1" / "jax")
    write_json(parent / "reproduce.json", {"backends": ["torch", "jax"]})
    (parent / ".drift.png.77-0123abcd.tmp").write_bytes(b"")
    assert prepare_dir(parent, overwrite=True) == parent
    assert [p.name for p in parent.iterdir()] == [LOCK]
    run_mod.release_dir(parent)
    assert list(parent.iterdir()) == []


def test_every_output_name_of_the_commands_is_one_overwrite_may_remove():
    names = {v for mod in (reproduce_report, exercises, run_mod) for k, v in vars(mod).items()
             if k.isupper() and isinstance(v, str)
             and re.fullmatch(r"[a-z_]+\.(json|jsonl|csv|png|npz|safetensors)", v)}
    assert names and names <= run_mod.PROJECT_FILES, names - run_mod.PROJECT_FILES


# -- file modes -------------------------------------------------------------------------------------------
def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
        (tmp_path / "a.json").chmod(0o600)
        write_json(tmp_path / "a.json", {"x": 2})
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o600
        assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    finally:
        os.umask(old)


def test_the_driver_imports_without_fcntl():
    """The run lock is filelock's (LockFileEx on Windows): nothing in nin_multi imports fcntl itself."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import nin_multi.lock, nin_multi.run, nin_multi.train, nin_multi.cli\nprint('ok')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout == "ok\n", p.stderr


# -- a live training beside an overwriting reproduce ------------------------------------------------------
@pytest.mark.slow
def test_reproduce_overwrite_beside_a_live_training_is_refused_and_deletes_nothing(sample_dir, tmp_path):
    load("torch"), load("jax")
    out = tmp_path / "run"
    trainer = subprocess.Popen([sys.executable, "-m", "nin_multi", "train", "--backend", "torch", *RUN_ARGS,
                                "--epochs", "1000", "--data-dir", str(sample_dir), "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "epoch-0002.npz").exists():
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()
            time.sleep(0.2)
        os.kill(trainer.pid, signal.SIGSTOP)  # SIGSTOP: it writes nothing while reproduce runs, so the snapshot holds
        before = snapshot(out)
        p = subprocess.run([sys.executable, "-m", "nin_multi", "reproduce", "--backends", "torch,jax",
                            *RUN_ARGS[:-1], "--epochs", "1", "--data-dir", str(sample_dir), "--out", str(out),
                            "--overwrite", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert p.returncode == 2
        assert re.fullmatch(rf"run directory {re.escape(str(out))} is in use by another nin-multi process \(pid "
                            rf"{trainer.pid} on .+, since .+\); wait for it to finish or stop it, or choose another "
                            rf"--out", one_line(p.stderr)), p.stderr
        assert snapshot(out) == before
        os.kill(trainer.pid, signal.SIGCONT)
        assert trainer.poll() is None
    finally:
        trainer.kill()
        trainer.wait(timeout=30)
