"""A backend bound to an interpreter of its own (``NIN_MULTI_PYTHON_<BACKEND>``): a one-framework command
runs whole there, a cross-framework one runs that backend's worker there, and a missing, broken or
too-old interpreter, or a worker that dies, is one line with its exit status.

The "other interpreter" here is a shell script that logs how it was called and runs this Python, so
each test can tell that the command really went through it; the CI's second environment binds MXNet to
another Python for real (``.ci/run``)."""
import json
import os
import stat
import subprocess
import sys

import pytest

from nin_multi import backends, interpreters
from nin_multi.cli import main

from conftest import ROOT, TRAINABLE, load
from test_reproduce import installed_backends


def wrapper(tmp_path, body: str = "", name: str = "python-wrapper"):
    """An executable that logs its arguments to ``calls.log``, runs ``body`` (shell), then this Python."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'calls.log'}\n{body}\nexec {sys.executable} \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_python(tmp_path, stdout: str, code: int = 0, name: str = "fake-python"):
    """An executable that answers the interpreter probe with ``stdout`` and exits with ``code``."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\ncat <<'END'\n{stdout}\nEND\nexit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(tmp_path):
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    """Each test binds its own interpreters: no cached verdict from another test, no binding from outside."""
    check = interpreters.check
    check.cache_clear()
    for name in backends.ORDER:
        monkeypatch.delenv(interpreters.variable(name), raising=False)
    yield
    check.cache_clear()


def tiny_train(out, *extra):
    return ["train", "--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05", "--batch-size", "16",
            "--epochs", "1", "--subset", "32", "--test-subset", "16", "--out", str(out), "--no-progress", *extra]


# One framework in the fast tier; the others train for ~15 s each, so they are in the slow one.
@pytest.mark.parametrize("name", [TRAINABLE[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in TRAINABLE[1:]])
def test_train_runs_whole_in_the_bound_interpreter(name, sample_dir, tmp_path):
    load(name)
    env = {**os.environ, interpreters.variable(name): str(wrapper(tmp_path))}
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nin_multi", *tiny_train(out, "--backend", name, "--data-dir", str(sample_dir))]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"on {name} (" in done.stdout and "epoch 1:" in done.stdout
    assert json.loads((out / "config.json").read_text())["backend"] == name
    assert (out / "weights.safetensors").is_file()
    trained = [c for c in calls(tmp_path) if c.startswith("-m nin_multi train")]
    assert len(trained) == 1 and f"--out {out}" in trained[0]  # the same argv, the same run folder
    # A user error in the bound interpreter: its own one line and exit status, nothing lost.
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    said = [ln for ln in again.stderr.splitlines() if ln.startswith("nin-multi:")]
    assert said == again.stderr.strip().splitlines()[-1:]
    assert "already holds files" in again.stderr and (out / "weights.safetensors").is_file()
    assert len([c for c in calls(tmp_path) if c.startswith("-m nin_multi train")]) == 2


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere" / "python", "is not an executable file"),
    (lambda p: fake_python(p, "oops", code=1), "is not a Python interpreter that runs"),
    (lambda p: fake_python(p, '{"version": [3, 8, 18]}', code=1), "is Python 3.8.18, too old for this project"),
    (lambda p: fake_python(p, '{"version": [3, 12, 1]}\n{"nin_multi": "0.0.1", "has": true}'),
     "runs nin-multi 0.0.1, this is"),
    (lambda p: fake_python(p, '{"version": [3, 12, 1]}', code=1), "cannot import this project"),
    (lambda p: fake_python(p, '{"version": [3, 13, 0]}\n{"nin_multi": "%s", "has": false}' % __import__(
        "nin_multi").__version__), "is Python 3.13, for which mxnet has no release"),
])
def test_a_bad_interpreter_is_one_line(tmp_path, capsys, monkeypatch, make, message):
    monkeypatch.setenv("NIN_MULTI_PYTHON_MXNET", str(make(tmp_path)))
    code = main(["summary", "--backend", "mxnet", "--variant", "mini", "--resize", "28"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("nin-multi: error: $NIN_MULTI_PYTHON_MXNET=") and err.count("\n") == 1


def test_a_bound_interpreter_without_the_framework_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "mxnet", ("nin_multi.backends.mxnet", "mxnet_absent_for_test", "mxnet"))
    monkeypatch.setenv("NIN_MULTI_PYTHON_MXNET", str(wrapper(tmp_path)))
    monkeypatch.setattr(interpreters, "NO_WHEELS", {})
    code = main(["summary", "--backend", "mxnet"])
    err = capsys.readouterr().err
    assert code == 2 and "has no mxnet_absent_for_test: install it there with" in err and "[mxnet]'" in err
    assert err.count("\n") == 1


def test_where_a_framework_has_no_wheels_the_message_says_how_to_bind_it(capsys, monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "mxnet", ("nin_multi.backends.mxnet", "mxnet_absent_for_test", "mxnet"))
    # as in a process that has not loaded it (an earlier test in this one may have)
    monkeypatch.delitem(sys.modules, "nin_multi.backends.mxnet", raising=False)
    monkeypatch.setattr(interpreters, "NO_WHEELS", {"mxnet": (3, sys.version_info[1])})
    code = main(["train", "--backend", "mxnet", "--lr", "0.05"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"has no release for Python 3.{sys.version_info[1]}" in err and "NIN_MULTI_PYTHON_MXNET" in err
    assert f"Python 3.10-3.{sys.version_info[1] - 1}" in err
    monkeypatch.setattr(interpreters, "NO_WHEELS", {})  # where it has wheels: the extra
    assert main(["train", "--backend", "mxnet"]) == 2
    assert "pip install 'nin-multi[mxnet]'" in capsys.readouterr().err


def two_trainable():
    return installed_backends()[:2]


def test_a_worker_that_dies_is_one_line_and_writes_nothing(sample_dir, tmp_path, capsys, monkeypatch):
    first, second = two_trainable()
    killer = wrapper(tmp_path, 'case "$*" in *reproduce.worker*) kill -9 $$;; esac')
    monkeypatch.setenv(interpreters.variable(second), str(killer))
    out = tmp_path / "repro"
    code = main(["reproduce", "--backends", f"{first},{second}", "--data-dir", str(sample_dir), "--variant", "mini",
                 "--resize", "28", "--subset", "32", "--epochs", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 4, err
    lines = [ln for ln in err.splitlines() if ln.startswith("nin-multi:")]
    assert lines == [f"nin-multi: error: the {second} worker ({killer}) was killed by SIGKILL before it finished: "
                     f"no output"]
    assert not out.exists()  # every worker loads its framework before anything is written
    assert any("nin_multi.reproduce.worker" in c for c in calls(tmp_path))


def test_a_command_handed_to_an_interpreter_that_dies_is_one_line(tmp_path, capsys, monkeypatch):
    name = TRAINABLE[0]
    killer = wrapper(tmp_path, 'case "$*" in "-m nin_multi train"*) kill -9 $$;; esac')
    monkeypatch.setenv(interpreters.variable(name), str(killer))
    monkeypatch.setattr(interpreters, "check", lambda *a: str(killer))  # the probe is not what is tested here
    code = main(tiny_train(tmp_path / "run", "--backend", name))
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1
    assert f"the {name} interpreter ({killer}) was killed by SIGKILL during the command" in err


def test_a_bound_backend_takes_part_where_none_are_named(monkeypatch):
    """``reproduce`` without --backends: every installed backend, and every one bound to an interpreter of
    its own (which need not have it installed here)."""
    monkeypatch.setattr(backends, "installed", lambda: ["torch"])
    monkeypatch.setenv("NIN_MULTI_PYTHON_MXNET", "/opt/elsewhere/bin/python")
    assert backends.select(None, trains=True, bound=True) == ["torch", "mxnet"]
    assert backends.select(None, trains=True) == ["torch"]  # the in-process API: only what is here
