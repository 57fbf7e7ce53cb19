"""Which Python runs each backend, and the worker processes that run a backend there.

A backend runs in the current interpreter unless ``NIN_MULTI_PYTHON_<BACKEND>`` names another. MXNet
1.9.1 needs numpy<2, which has no wheels for Python 3.13 and later: an environment on a current Python
binds MXNet to an environment of its own on Python 3.10-3.12 (``NIN_MULTI_PYTHON_MXNET=.venv-mxnet/bin/python``)
and every command reaches it through a process there.

Commands that use several frameworks run each one in a worker process of its own, bound or not, so that
what a framework sets for its whole process (MXNet's mixed precision, JAX's float64 switch, thread pools,
the order of imports) cannot reach another framework. A worker speaks one protocol, the bench's and
reproduce's alike: tagged JSON lines on its stdout (``emit``; anything else there is a framework's noise),
and, for a worker that takes several requests, JSON lines on its stdin. Its stderr passes through to the
user (progress bars, a framework's warnings) and its last lines name a crash.

The checkout that runs this module is put first on the worker's ``PYTHONPATH``, so the worker runs the
same code; the bound interpreter brings the framework and the project's dependencies
(``pip install -e '.[mxnet]'`` there).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from .errors import InterpreterError, NinMultiError, WorkerError
from . import errors as _errors

PREFIX = "NIN_MULTI_PYTHON_"
MIN_PYTHON = (3, 10)  # pyproject's requires-python
TAG = "@@nin-multi "  # prefix of a worker's protocol lines on stdout
ROOT = str(Path(__file__).resolve().parents[1])  # where ``nin_multi`` (and, in a checkout, ``backends``) live
PROBE_TIMEOUT = 120.0  # seconds: a first import on a cold disk can be slow; a hung interpreter is not
#: Where an extra installs nothing because its framework has no wheels: (backend, from this Python on).
NO_WHEELS = {"mxnet": (3, 13)}


def variable(name: str) -> str:
    """``NIN_MULTI_PYTHON_MXNET`` for ``mxnet`` (canonical names only)."""
    return PREFIX + name.upper()


def bound(name: str, env=None) -> Optional[str]:
    """The interpreter bound to a backend, or None where it runs in the current one (unset or empty)."""
    value = (os.environ if env is None else env).get(variable(name), "").strip()
    return value or None


def python_for(name: str) -> str:
    return bound(name) or sys.executable


def worker_env(unbind: tuple = ()) -> dict:
    """The environment of a worker: this checkout first on ``PYTHONPATH``; ``unbind``: backends whose
    binding the worker must not follow again (it is that interpreter)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ROOT
    for name in unbind:
        env.pop(variable(name), None)
    return env


#: Its version first, in a form Python 2 runs too, so that a too-old interpreter is named as such.
_PROBE = ("import json, sys; sys.stdout.write(json.dumps({'version': list(sys.version_info[:3])}) + '\\n'); "
          "sys.stdout.flush(); import importlib.util, nin_multi; "
          "print(json.dumps({'nin_multi': nin_multi.__version__, 'has': importlib.util.find_spec(sys.argv[1]) "
          "is not None}))")


@lru_cache(maxsize=None)
def check(name: str, framework: str, extra: str) -> str:
    """The interpreter bound to ``name``, checked: it runs, is Python 3.10 or later, imports this project
    (the same version) and has the framework. Anything else is one line saying what to do."""
    from . import __version__

    python = bound(name)
    where = f"${variable(name)}={python}"
    install = f"{python} -m pip install -e '{ROOT}[{extra}]'"
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise InterpreterError(f"{where} is not an executable file: make that environment (README) or unset "
                               f"{variable(name)} to use this Python")
    try:
        done = subprocess.run([python, "-c", _PROBE, framework], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT, env=worker_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InterpreterError(f"{where} did not answer within {PROBE_TIMEOUT:g} s: it hangs") from None
    except OSError as e:
        raise InterpreterError(f"{where} cannot be started ({e.strerror or e}): point it at a Python "
                               f"interpreter") from None
    answers = []
    for line in done.stdout.splitlines():
        try:
            answers.append(json.loads(line))
        except ValueError:
            continue
    version = tuple(next((a["version"] for a in answers if isinstance(a, dict) and "version" in a), ()))
    last = ([ln.strip() for ln in done.stderr.splitlines() if ln.strip()] or ["no output"])[-1][:200]
    if not version:
        raise InterpreterError(f"{where} is not a Python interpreter that runs ({last})")
    if version[:2] < MIN_PYTHON:
        raise InterpreterError(f"{where} is Python {'.'.join(map(str, version))}, too old for this project "
                               f"(it needs {'.'.join(map(str, MIN_PYTHON))} or later)")
    info = next((a for a in answers if isinstance(a, dict) and "nin_multi" in a), None)
    if done.returncode != 0 or info is None:
        raise InterpreterError(f"{where} cannot import this project ({last}): install it there with {install}")
    if info["nin_multi"] != __version__:
        raise InterpreterError(f"{where} runs nin-multi {info['nin_multi']}, this is {__version__}: "
                               f"reinstall it there with {install}")
    if not info["has"]:
        since = NO_WHEELS.get(name)
        if since and version[:2] >= since:
            raise InterpreterError(f"{where} is Python {version[0]}.{version[1]}, for which {framework} has no "
                                   f"release: bind an environment on Python 3.10-{since[0]}.{since[1] - 1} (README)")
        raise InterpreterError(f"{where} has no {framework}: install it there with {install}")
    return python


def emit(event: str, **fields) -> None:
    """One protocol line on stdout: what a worker reports to the process that started it."""
    print(TAG + json.dumps({"event": event, **fields}, default=float), flush=True)


def parse(line: str) -> Optional[dict]:
    """A protocol line's event, or None for anything else a worker's framework printed."""
    return json.loads(line[len(TAG):]) if line.startswith(TAG) else None


def error_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def failure_event(e: BaseException) -> dict:
    """A user error as it crosses the protocol: its message, class and exit status, so the process that
    started the worker raises it again as if it had happened there."""
    if isinstance(e, NinMultiError):
        return {"error": str(e), "kind": type(e).__name__, "exit_code": e.exit_code, "user": True}
    return {"error": error_text(e), "user": False}


def raise_failure(e: dict, what: str):
    """Raise a worker's reported failure here: a user error with its own message and exit status; a bug
    as a ``WorkerError`` naming it (its traceback is on the worker's stderr, above)."""
    if e.get("user"):
        cls = getattr(_errors, e.get("kind", ""), None)
        try:
            err = cls(e["error"]) if isinstance(cls, type) and issubclass(cls, NinMultiError) else None
        except TypeError:
            err = None
        err = err or NinMultiError(e["error"])
        err.exit_code = e.get("exit_code", err.exit_code)
        raise err
    raise WorkerError(f"{what} failed: {e['error']}")


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Worker:
    """One backend's worker process, ``python -m MODULE ARGS`` on the backend's interpreter: requests as
    JSON lines on its stdin, events back as protocol lines. Used as a context manager, it is ended (its
    stdin closed, then stopped) however the block ends."""

    def __init__(self, name: str, module: str, args=(), log: Callable[[str], None] = print,
                 python: Optional[str] = None):
        self.name, self.log = name, log
        self.python = python or python_for(name)
        self.tail: deque[str] = deque(maxlen=20)  # the worker's last stderr lines: what a crash said
        cmd = [self.python, "-m", module, *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=worker_env(unbind=(name,)), text=True, bufsize=1)
        self._drain = threading.Thread(target=self._pass_stderr, daemon=True)
        self._drain.start()

    def _pass_stderr(self) -> None:
        """The worker's stderr to ours as it comes (progress bars end their lines with \\r, so chunks, not
        lines), its last lines kept."""
        fd, pending = self.proc.stderr.fileno(), ""
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            text = chunk.decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            pending += text
            *lines, pending = pending.replace("\r", "\n").split("\n")
            self.tail.extend(ln for ln in lines if ln.strip())
        if pending.strip():
            self.tail.append(pending)

    def request(self, op: str, **fields) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.died()

    def wait_for(self, *events: str) -> dict:
        """The next event of one of these kinds; ``log`` events are logged on the way, a reported failure
        is raised here, and a worker that ends first is a ``WorkerError``."""
        for line in self.proc.stdout:
            e = parse(line)
            if e is None:
                continue
            if e["event"] == "log":
                self.log(e["message"])
            elif e["event"] == "failure":
                raise_failure(e, f"the {self.name} worker ({self.python})")
            elif e["event"] in events:
                return e
        self.died()

    def died(self):
        self.proc.wait()
        self._drain.join(timeout=5)
        last = self.tail[-1].strip()[:200] if self.tail else "no output"
        raise WorkerError(f"the {self.name} worker ({self.python}) {describe_exit(self.proc.returncode)} "
                          f"before it finished: {last}")

    def close(self, timeout: float = 30.0) -> None:
        """Ask the worker to end (its stdin closed), then stop it if it does not."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stdin):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.proc.poll() is None:
            self.proc.kill()  # the command failed or was interrupted: nothing the worker does is wanted
        self.close()
        return False


def delegate(name: str, argv: list, framework: str, extra: str) -> int:
    """Run this whole command (``argv``, as typed) in the interpreter bound to ``name``, with its stdin,
    stdout and stderr: the same run folder, messages and exit status as if it ran here. A signal that
    stops this process (SIGTERM, SIGHUP; Ctrl-C reaches both) is passed on, and its exit status is then
    the command's."""
    python = check(name, framework, extra)
    env = worker_env(unbind=(name,))
    proc = subprocess.Popen([python, "-m", "nin_multi", *argv], env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt as stop:  # Ctrl-C (the child has it too) or Terminated (SIGTERM, SIGHUP)
        signum = getattr(stop, "exit_code", 130) - 128
        if proc.poll() is None:
            try:
                proc.send_signal(signum if signum != 2 else signal.SIGINT)
            except OSError:
                pass
        code = proc.wait()
    if code < 0:
        raise WorkerError(f"the {name} interpreter ({python}) {describe_exit(code)} during the command; "
                          f"what it wrote before stays where it is")
    return code
