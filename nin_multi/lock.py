"""One process per run directory: an advisory ``flock`` on a lock file inside it.

``flock`` belongs to the open file, so the kernel drops it when the holder exits in any way (a crash,
``kill -9``, a preempted node): a stale lock file never blocks the next run, and no pid-liveness guess
is needed. The file holds the holder's pid, host and start time, for the refusal message only.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import RunBusyError

LOCK = ".nin-multi.lock"


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.fd = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``RunBusyError`` naming the holder; ``OSError`` if the directory cannot
        be written."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(fd)
                os.close(fd)
                raise RunBusyError(
                    f"run directory {self.path.parent} is in use by another nin-multi process ({holder}); "
                    f"wait for it to finish or stop it, or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            # The holder we waited on may have removed the file on release: a lock on that unlinked file
            # would guard nothing, so take the lock again on the file now at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError:
            pass  # the holder's description is a courtesy; the flock is the lock
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it, so no one else has it yet
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _describe(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
