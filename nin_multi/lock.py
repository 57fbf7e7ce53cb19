"""One process per run directory: an advisory lock on a lock file inside it.

The lock is filelock's primitive (``flock`` on POSIX, ``LockFileEx`` on Windows) on a descriptor this
module opens itself. Both belong to the open file, so the kernel drops the lock when the holder exits in
any way (a crash, ``kill -9``, a preempted node): a stale lock file never blocks the next run, and no
pid-liveness guess is needed. The file holds the holder's pid, host and start time, for the refusal
message only; it is opened without following a symbolic link, so a link planted at its name is refused
instead of emptying the file it points to.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from pathlib import Path

from filelock import lock_descriptor, unlock_descriptor

from .errors import RunBusyError, RunDirError

LOCK = ".nin-multi.lock"
#: Refuses a symbolic link at the last component (ELOOP) where the platform has the flag; elsewhere
#: ``_open`` checks with ``lstat`` first.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.fd = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``RunBusyError`` naming the holder; ``RunDirError`` for a planted link;
        ``OSError`` if the directory cannot be written."""
        while True:
            fd = _open(self.path)
            try:
                locked = lock_descriptor(fd, blocking=False)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = _describe(fd)
                os.close(fd)
                raise RunBusyError(
                    f"run directory {self.path.parent} is in use by another nin-multi process ({holder}); "
                    f"wait for it to finish or stop it, or choose another --out")
            # The holder we waited on may have removed the file on release: a lock on that unlinked file
            # would guard nothing, so take the lock again on the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, info)
        except OSError:
            pass  # the holder's description is a courtesy; the lock is the lock
        self.fd = fd
        return self

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self.fd), os.lstat(self.path)):
                os.unlink(self.path)  # while still holding it, so no one else has it yet
        except OSError:
            pass
        try:
            unlock_descriptor(self.fd)
        except OSError:
            pass  # closing the descriptor drops it anyway
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _open(path: Path) -> int:
    """The lock file, created if absent, never through a link: a link (or anything but a regular file)
    at its name is refused with the one line that says what to remove."""
    if not NOFOLLOW and path.is_symlink():
        raise _planted(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise _planted(path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise _planted(path, "is not a regular file" if not stat.S_ISREG(st.st_mode) else
                       "has another name (a hard link)")
    return fd


def _planted(path: Path, what: str = "is a symbolic link") -> RunDirError:
    return RunDirError(f"{path} {what}, which nin-multi never writes through (it did not create it): remove it, "
                       f"or choose another --out")


def _describe(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
