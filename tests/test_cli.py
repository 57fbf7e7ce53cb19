"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing lost.

Each row is an input a user may really type; the table of errors in docs/errors.md is this list.
"""
import gzip
import os
import re
import shutil
import subprocess
import sys

import pytest

import nin_multi
from nin_multi import backends
from nin_multi.cli import main
from nin_multi.spec import chapter_spec
from nin_multi.weights import save_weights

from conftest import ROOT
from reference import random_weights


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def train_args(sample_dir, out, *extra):
    return ["train", "--backend", "torch", "--data-dir", str(sample_dir), "--epochs", "1", "--resize", "67",
            "--subset", "32", "--test-subset", "16", "--batch-size", "16", "--out", str(out), "--no-progress",
            *extra]


@pytest.mark.parametrize("extra, message", [
    (["--backend", "caffe"], "unknown backend 'caffe'; choose one of: torch, tensorflow, mxnet"),
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--batch-size", "-5"], "--batch-size must be a positive integer, got -5"),
    (["--lr", "0"], "--lr must be a positive number, got 0.0"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--lr", "50"], "far too large"),
    (["--resize", "0"], "--resize must be a positive integer"),
    (["--resize", "66"], "too small for this network: the output of layer 'pool3' would be 0x0"),
    (["--subset", "0"], "--subset must be a positive integer"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--threads", "0"], "--threads must be a positive integer"),
    (["--in-channels", "2"], "the network takes 2 input channels but Fashion-MNIST images have 1"),
    (["--recipe", "d2l-3rd-edition"], "unknown recipe 'd2l-3rd-edition'; choose one of: d2l-1st-edition"),
    (["--variant", "ninnet", "--resize", "416"], "would output (40,) per image, not 10 class scores"),
    (["--num-classes", "5"], "the network has 5 outputs but Fashion-MNIST has 10 classes"),
])
def test_bad_training_options(sample_dir, tmp_path, capsys, extra, message):
    code, err = run_cli(train_args(sample_dir, tmp_path / "run", *extra), capsys)
    assert code == 2
    assert message in err and err.startswith("nin-multi: error:") and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("value", ["ten", "1.5"])
def test_non_numeric_epochs(capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", value])
    assert e.value.code == 2
    assert f"invalid int value: '{value}'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"nin-multi {nin_multi.__version__}\n"
    done = subprocess.run([sys.executable, "-m", "nin_multi", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == f"nin-multi {nin_multi.__version__}\n", done.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+", nin_multi.__version__)


def test_missing_framework_names_the_extra(monkeypatch, capsys):
    from nin_multi import interpreters

    monkeypatch.setitem(backends._REGISTRY, "mxnet",
                        ("nin_multi.backends.mxnet_absent", "mxnet_absent_for_test", "mxnet"))
    monkeypatch.setattr(interpreters, "NO_WHEELS", {})  # a Python MXNet has wheels for (else: test_interpreters)
    code, err = run_cli(["summary", "--backend", "gluon"], capsys)
    assert code == 2 and "pip install 'nin-multi[mxnet]'" in err


def test_data_directory_problems(sample_dir, tmp_path, capsys):
    code, err = run_cli(train_args(tmp_path / "nowhere", tmp_path / "run"), capsys)
    assert code == 2 and "does not exist" in err
    partial = tmp_path / "partial"
    shutil.copytree(sample_dir, partial)
    (partial / "train-labels-idx1-ubyte.gz").unlink()
    code, err = run_cli(train_args(partial, tmp_path / "run"), capsys)
    assert code == 2 and "missing train-labels-idx1-ubyte.gz" in err
    (partial / "train-labels-idx1-ubyte.gz").write_bytes(b"<html>rate limited</html>")
    code, err = run_cli(train_args(partial, tmp_path / "run"), capsys)
    assert code == 2 and "not a valid gzip file" in err
    raw = gzip.decompress((sample_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    (partial / "train-labels-idx1-ubyte.gz").write_bytes((sample_dir / "train-labels-idx1-ubyte.gz").read_bytes())
    (partial / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-784]))
    code, err = run_cli(train_args(partial, tmp_path / "run"), capsys)
    assert code == 2 and "truncated" in err


def test_existing_run_directory_is_not_overwritten(sample_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("precious")
    code, err = run_cli(train_args(sample_dir, out), capsys)
    assert code == 2 and "--overwrite" in err and "--resume" in err
    assert (out / "metrics.csv").read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so no unwritable directory exists")
def test_unwritable_output_directory(sample_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = run_cli(train_args(sample_dir, locked / "run"), capsys)
    assert code == 2 and "cannot write" in err


def test_output_path_that_is_a_file(sample_dir, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = run_cli(train_args(sample_dir, f / "run"), capsys)
    assert code == 2 and "cannot write to run directory" in err


def test_resume_of_something_that_is_not_a_run(tmp_path, capsys):
    code, err = run_cli(["train", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "not a run directory" in err


def test_weights_for_another_network_are_refused(tmp_path, capsys):
    spec3 = chapter_spec(in_channels=3)
    save_weights(tmp_path / "rgb.npz", spec3, random_weights(spec3))
    from nin_multi.weights import load_weights
    from nin_multi.errors import WeightsError
    with pytest.raises(WeightsError, match="in_channels is 3 in the file but 1 here"):
        load_weights(tmp_path / "rgb.npz", chapter_spec())
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    code, err = run_cli(["convert", "--backend", "torch", "--weights", str(tmp_path / "junk.npz"),
                         "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and "not a nin_multi weights file" in err
    code, err = run_cli(["convert", "--backend", "tensorflow", "--weights", str(tmp_path / "rgb.npz"),
                         "--out", str(tmp_path / "x.h5")], capsys)
    assert code == 2 and "must end in .weights.h5" in err


def test_wrong_shape_in_weights_file_names_the_entry(tmp_path):
    from nin_multi.errors import WeightsError
    from nin_multi.weights import check_weights
    spec = chapter_spec()
    w = random_weights(spec)
    w["nin2.conv0.weight"] = w["nin2.conv0.weight"].transpose(0, 1, 3, 2)[:, :, :4]
    with pytest.raises(WeightsError, match=r"nin2.conv0.weight has shape \(256, 96, 4, 5\)"):
        check_weights(spec, w)


# -- the size weights were trained at ---------------------------------------------------------------------
def result(size: int, images: int = 32) -> str:
    """evaluate's result line at ``size``, as a pattern (the scores of random weights are not the point)."""
    return rf"test loss \d+\.\d{{4}}, test acc \d\.\d{{4}} on {images} images \(torch, [^,]+, {size}x{size}, fp32\)"


def evaluate_out(sample_dir, weights, capsys, *extra) -> list[str]:
    """The lines ``evaluate`` prints (stdout); it must succeed with nothing on stderr."""
    code = main(["evaluate", "--backend", "torch", "--weights", str(weights), "--data-dir", str(sample_dir),
                 "--test-subset", "32", "--batch-size", "32", "--threads", "1", "--no-progress", *extra])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    return out.splitlines()


@pytest.fixture
def mini_weights(tmp_path):
    """Random weights of the mini net, written as a run at 28x28 writes them, and as files from before
    weights recorded their size: with the run's settings in their meta, and without."""
    from nin_multi.spec import make_spec
    from nin_multi.weights import trained_entry

    spec = make_spec("mini")
    weights = random_weights(spec)
    paths = {"recorded": tmp_path / "weights.safetensors", "run settings": tmp_path / "old.npz",
             "default": tmp_path / "older.npz"}
    save_weights(paths["recorded"], spec, weights, meta={"config": {"resize": 28}},
                 trained=trained_entry(28, "NCHW", "fp32"))
    save_weights(paths["run settings"], spec, weights, meta={"backend": "torch", "config": {"resize": 28}})
    save_weights(paths["default"], spec, weights)
    return paths


def test_evaluate_takes_the_size_the_weights_were_trained_at(sample_dir, mini_weights, capsys):
    path = mini_weights["recorded"]
    lines = evaluate_out(sample_dir, path, capsys)
    assert len(lines) == 1 and re.fullmatch(result(28), lines[0]), lines  # no note
    assert evaluate_out(sample_dir, path, capsys, "--resize", "28") == lines  # the same as typing it
    lines = evaluate_out(sample_dir, path, capsys, "--resize", "32")
    assert lines[0] == "note: weights.safetensors was trained at 28x28; evaluating at 32x32 as --resize asks"
    assert len(lines) == 2 and re.fullmatch(result(32), lines[1]), lines


def test_evaluate_of_weights_that_do_not_record_their_size_says_where_it_came_from(sample_dir, mini_weights,
                                                                                   capsys):
    lines = evaluate_out(sample_dir, mini_weights["run settings"], capsys)
    assert lines[0] == ("note: old.npz does not record the size it was trained at; evaluating at 28x28, the "
                        "--resize of the run that wrote it")
    assert len(lines) == 2 and re.fullmatch(result(28), lines[1]), lines
    lines = evaluate_out(sample_dir, mini_weights["run settings"], capsys, "--resize", "32")
    assert lines[0] == ("note: old.npz was trained at 28x28 (the --resize of the run that wrote it); evaluating "
                        "at 32x32 as --resize asks")
    agreeing = evaluate_out(sample_dir, mini_weights["run settings"], capsys, "--resize", "28")
    assert agreeing == evaluate_out(sample_dir, mini_weights["recorded"], capsys)  # no note: the sizes agree
    lines = evaluate_out(sample_dir, mini_weights["default"], capsys, "--test-subset", "4", "--batch-size", "4")
    assert lines[0] == ("note: older.npz does not record the size it was trained at; evaluating at 224x224, the "
                        "chapter's default (pass --resize to choose another)")
    assert len(lines) == 2 and re.fullmatch(result(224, 4), lines[1]), lines
    lines = evaluate_out(sample_dir, mini_weights["default"], capsys, "--resize", "32")
    assert lines[0] == ("note: older.npz does not record the size it was trained at; evaluating at 32x32 as "
                        "--resize asks")
    assert len(lines) == 2 and re.fullmatch(result(32), lines[1]), lines


def test_summary_walks_a_weights_file_at_its_trained_size(mini_weights, capsys):
    assert main(["summary", "--backend", "torch", "--weights", str(mini_weights["recorded"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "NiN (mini) rendered by torch, input 1x28x28, layout NCHW, float32, weights weights.safetensors"
    assert out[-1] == "total parameters: 148,390 (spec: 148,390); multiply-adds per image: 10,613,024"
    assert main(["summary", "--backend", "torch", "--weights", str(mini_weights["recorded"]), "--resize", "32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "note: weights.safetensors was trained at 28x28; showing its shapes at 32x32 as --resize asks"
    assert out[1].startswith("NiN (mini) rendered by torch, input 1x32x32, ")
    code, err = run_cli(["summary", "--backend", "torch", "--weights", str(mini_weights["recorded"]),
                         "--resize", "3"], capsys)
    assert code == 2 and err.startswith("nin-multi: error: a 3x3 image is too small for this network"), err
