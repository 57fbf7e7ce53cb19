"""What a user's mistake, a shared machine or a hostile file can do, each produced for real: links planted
in a run folder pointing outside it, a folder of someone's files given to --overwrite, crafted weights
files, headers and gzip bombs read under an address-space limit. Each asserts the one line the user sees,
the exit status, and that every file outside the run is byte-identical afterwards.

One torch run of the ``mini`` net at 28x28 (2 epochs, 64 images) is trained once per module; each test
works on a copy of it.
"""
import gzip
import io
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
import zipfile

import numpy as np
import pytest

from nin_multi import exercises, run as run_mod
from nin_multi.reproduce import report as reproduce_report
from nin_multi.cli import main
from nin_multi.config import TrainConfig
from nin_multi.errors import RunDirError
from nin_multi.fileio import TEMPORARY, write_json
from nin_multi.lock import LOCK
from nin_multi.run import prepare_dir
from nin_multi.spec import make_spec
from nin_multi.train import train
from nin_multi.weights import read_weights_file, save_weights

from conftest import ROOT, SAMPLE_DIR, load

RUN_ARGS = ["--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05", "--batch-size", "32",
            "--subset", "64", "--test-subset", "32", "--threads", "1", "--no-progress"]
ADDRESS_SPACE = 4 << 30  # the victim commands run under ulimit -v of 4 GiB


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    if not (SAMPLE_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the Fashion-MNIST sample is not at {SAMPLE_DIR}")
    backend = load("torch")
    out = tmp_path_factory.mktemp("safety") / "run"
    cfg = TrainConfig(backend=backend.NAME, variant="mini", resize=28, init="kaiming", lr=0.05, batch_size=32,
                      subset=64, test_subset=32, threads=1, epochs=2, data_dir=str(SAMPLE_DIR), out=str(out),
                      progress=False)
    train(cfg, log=quiet)
    return out


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
def test_a_lock_file_linked_outside_is_refused_not_emptied(run, outside, capsys):
    (run / LOCK).symlink_to(outside / "thesis.tex")
    before = snapshot(outside)
    for args in (["train", "--resume", str(run), "--no-progress"],
                 ["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(SAMPLE_DIR), "--out", str(run),
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
def test_overwrite_refuses_a_folder_of_someone_s_files(outside, capsys, monkeypatch):
    """``--out .`` or ``--out ~`` with --overwrite: the folder is not a run, and nothing in it is touched."""
    (outside / "projects").mkdir()
    (outside / "projects" / "config.json").write_text("{}")
    before = snapshot(outside)
    monkeypatch.chdir(outside)
    for out in (".", str(outside)):
        code, _, err = cli(["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(SAMPLE_DIR),
                            "--out", out, "--overwrite"], capsys)
        assert code == 2
        assert one_line(err) == (f"--overwrite refuses {out}: it holds '.bashrc', 'epoch-0001.npz', 'thesis.tex', "
                                 f"which no nin-multi run wrote; nin-multi only removes what its own runs wrote. "
                                 f"Choose another --out, or move those files away yourself")
        assert snapshot(outside) == before and not (outside / LOCK).exists()


def test_overwrite_refuses_a_run_holding_a_file_no_run_wrote(run, capsys):
    (run / "notes.txt").write_text("lr 0.05 looked best")
    before = snapshot(run)
    code, _, err = cli(["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(SAMPLE_DIR), "--out", str(run),
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
             if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z_]+\.(json|jsonl|csv|png|npz)", v)}
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


# -- hostile weights files --------------------------------------------------------------------------------
def members_of(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def npy_bytes(array=None, header=None, data=b"") -> bytes:
    """An .npy member: a real array, or a header that claims whatever ``header`` says over ``data``."""
    f = io.BytesIO()
    if header is None:
        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return f.getvalue()


def write_members(path, members: dict) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def with_header(members: dict, edit) -> dict:
    header = json.loads(str(np.load(io.BytesIO(members["__header__.npy"]))))
    text = edit(header)
    return {**members, "__header__.npy": npy_bytes(np.array(text if isinstance(text, str) else json.dumps(header)))}


def set_padding(header):
    header["spec"]["layers"][0]["convs"][0]["padding"] = 2000


def set_type(header):
    header["spec"]["layers"][0]["type"] = "Transformer"


def nested(header):
    return json.dumps({**header, "meta": {}})[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"


def nth_weight(members):
    return next(n for n in members if n.endswith(".weight.npy"))


HOSTILE = {
    "an 8 TiB member": (
        lambda m: {**m, nth_weight(m): npy_bytes(header={"descr": "<f8", "fortran_order": False,
                                                         "shape": (1 << 40,)}, data=b"\0" * 8)},
        "member {name!r} claims a (1099511627776,) float64 array (8,796,093,022,208 bytes) in 8 bytes"),
    "a header without its spec": (
        lambda m: with_header(m, lambda h: h.pop("spec")), "its header holds no network description (spec)"),
    "deeply nested JSON": (
        lambda m: with_header(m, nested), "its header nests 100001 levels deep, more than the 32 allowed"),
    "an unknown layer type": (
        lambda m: with_header(m, set_type),
        "its network has a layer of unknown type 'Transformer' (known: NiNBlock, MaxPool, Dropout, "
        "ChannelDropout, AvgPool, GlobalAvgPool, Flatten, Dense)"),
    "a padding of 2,000": (
        lambda m: with_header(m, set_padding),
        "Conv 'nin1.conv0' of its network has padding = 2000, not an integer from 0 to 63"),
    "a state member of 8 TiB": (
        lambda m: {**m, "state.torch_rng.npy": npy_bytes(header={"descr": "|u1", "fortran_order": False,
                                                                 "shape": (1 << 43,)}, data=b"")},
        "member 'state.torch_rng.npy' claims a (8796093022208,) uint8 array (8,796,093,022,208 bytes) in 0 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_weights_file_is_one_line_under_ulimit(case, torch_run, tmp_path):
    members = members_of(torch_run / "weights.npz")
    craft, why = HOSTILE[case]
    path = tmp_path / "weights.npz"
    write_members(path, craft(members))
    data = path.read_bytes()
    code, _, err = victim(["evaluate", "--backend", "torch", "--weights", str(path), "--resize", "28",
                           "--data-dir", str(SAMPLE_DIR), "--no-progress"])
    assert code == 2
    why = why.format(name=nth_weight(members))
    assert one_line(err) == f"{path} is damaged or not a nin_multi weights file ({why})"
    assert path.read_bytes() == data


def test_a_plain_npy_given_as_weights_is_one_line(tmp_path, capsys):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((3, 3), np.float32))
    code, _, err = cli(["convert", "--backend", "torch", "--weights", str(path), "--out", str(tmp_path / "w.pt")],
                       capsys)
    assert code == 2
    assert one_line(err) == (f"{path} is damaged or not a nin_multi weights file (a single NumPy .npy array, not "
                             f"an .npz of weights with their network)")
    assert not (tmp_path / "w.pt").exists()


def test_a_checkpoint_with_a_hostile_spec_is_skipped_on_resume(run, capsys):
    ck = run / "checkpoints" / "epoch-0002.npz"
    write_members(ck, with_header(members_of(ck), set_padding))
    code, out, err = cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert ("skipped damaged checkpoint epoch-0002.npz (Conv 'nin1.conv0' of its network has padding = 2000, not an "
            "integer from 0 to 63)") in out
    assert "resuming after epoch 1" in out
    read_weights_file(ck)  # written again, intact


def test_a_size_beyond_the_machine_s_memory_is_refused_before_allocating(torch_run, capsys):
    code, _, err = cli(["evaluate", "--backend", "torch", "--weights", str(torch_run / "weights.npz"),
                        "--resize", "8192", "--batch-size", "512", "--data-dir", str(SAMPLE_DIR), "--no-progress"],
                       capsys)
    assert code == 2
    assert re.fullmatch(r"at 8192x8192 with a batch of 512 this network needs at least [\d,.]+ GiB for one forward "
                        r"pass, more than this machine's [\d,.]+ GiB of memory: use a smaller --resize or "
                        r"--batch-size", one_line(err)), err


def test_the_files_this_project_writes_still_read_back(tmp_path):
    for variant in ("chapter", "ninnet", "fc-head", "nin-19"):
        spec = make_spec(variant, in_channels=3 if variant == "ninnet" else 1)
        weights = {k: np.zeros(s, np.float32) for k, s in spec.weight_shapes().items()}
        save_weights(tmp_path / "w.npz", spec, weights, state={"torch_rng": np.zeros(5056, np.uint8)})
        got_spec, got, _, state = read_weights_file(tmp_path / "w.npz")
        assert got_spec == spec and set(got) == set(weights) and state["torch_rng"].shape == (5056,)


# -- IDX files --------------------------------------------------------------------------------------------
def gzip_bomb(path, header: bytes, gib: int) -> None:
    """``gib`` GiB of zeros after an IDX header, in a few MiB: one member of 64 MiB of zeros repeated
    (concatenated gzip members are one stream to every gzip reader)."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(gib * 16):
            f.write(member)


def test_a_gzip_bomb_posing_as_idx_is_one_line_under_ulimit(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SAMPLE_DIR / name, data / name)
    bomb = data / "train-images-idx3-ubyte.gz"
    header = (2051).to_bytes(4, "big") + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    gzip_bomb(bomb, header, gib=6)  # 6 GiB decompressed, beyond the 4 GiB address space
    assert bomb.stat().st_size < 8 << 20
    before = snapshot(data)
    code, _, err = victim(["train", "--backend", "torch", *RUN_ARGS, "--data-dir", str(data),
                           "--out", str(tmp_path / "run")])
    assert code == 2
    assert one_line(err) == (f"{bomb}: more bytes, but its header promises [100, 28, 28] items = 78416 bytes "
                             f"(trailing data)")
    assert snapshot(data) == before


def test_an_idx_header_promising_more_than_any_fashion_mnist_file_is_refused(tmp_path):
    from nin_multi.data import read_idx
    from nin_multi.errors import DataError

    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress((2051).to_bytes(4, "big") + (1 << 30).to_bytes(4, "big")
                                   + (28).to_bytes(4, "big") * 2))
    with pytest.raises(DataError, match=r"its header promises \[1073741824, 28, 28\] items = 841,813,590,032 "
                       r"bytes, more than any Fashion-MNIST file \(470,400,160 bytes at most\)"):
        read_idx(path)


# -- a live training beside an overwriting reproduce ------------------------------------------------------
@pytest.mark.slow
def test_reproduce_overwrite_beside_a_live_training_is_refused_and_deletes_nothing(tmp_path):
    if not (SAMPLE_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the Fashion-MNIST sample is not at {SAMPLE_DIR}")
    load("torch"), load("jax")
    out = tmp_path / "run"
    trainer = subprocess.Popen([sys.executable, "-m", "nin_multi", "train", "--backend", "torch", *RUN_ARGS,
                                "--epochs", "1000", "--data-dir", str(SAMPLE_DIR), "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "epoch-0002.npz").exists():
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.stderr.read()
            time.sleep(0.2)
        os.kill(trainer.pid, signal.SIGSTOP)  # SIGSTOP: it writes nothing while reproduce runs, so the snapshot holds
        before = snapshot(out)
        p = subprocess.run([sys.executable, "-m", "nin_multi", "reproduce", "--backends", "torch,jax",
                            *RUN_ARGS[:-1], "--epochs", "1", "--data-dir", str(SAMPLE_DIR), "--out", str(out),
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
