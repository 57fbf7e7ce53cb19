"""Durable file writes: every file the project writes goes through ``atomic_write``.

A file is written to a temporary name in its own directory, flushed and fsynced, renamed over the
destination (``os.replace``, atomic on POSIX), and the directory is fsynced so the rename itself
survives a power cut (the sequence TFDS and write-file-atomic use). A reader or a crash sees the old
file or the new one, never half of one. A write that fails (disk full, file-size limit, I/O error, no
permission, read-only file system) removes its temporary file, leaves the destination as it was, and
raises one ``WriteError`` that names the file and the cause.

Nothing is written through a symbolic link: temporary files are created exclusively (``O_EXCL``, which
refuses any existing name, a dangling link included), and the rename replaces a link planted at the
destination instead of writing into the file it points to. A replaced file keeps its mode (a ``chmod 600``
survives the next save); a new one gets the user's umask, as ``open`` gives it.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import secrets
import stat
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import RunDirError, WriteError

CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file-size limit (ulimit -f) or the file system",
    errno.EIO: "input/output error (a failing disk or network file system)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
#: What ``fsync`` of a directory raises on file systems that do not support it: not a failure.
_DIR_SYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EISDIR}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0)
#: The names of the temporary files ``atomic_write``, ``atomic_path`` and ``writable`` create: what a
#: killed process can leave behind, and the only names ``sweep_temporaries`` removes.
TEMPORARY = re.compile(r"(\..+\.\d+-[0-9a-f]{8}\.tmp|\.tmp-\d+-[0-9a-f]{8}-.+|\.write-test-\d+-[0-9a-f]{8})\Z")


def cause(e: OSError) -> str:
    return CAUSES.get(e.errno, e.strerror or str(e))


def write_error(path, e: OSError) -> WriteError:
    return WriteError(f"could not write {path}: {cause(e)}; the file was left as it was", path=path, errno=e.errno)


class _Checked:
    """The temporary file as writers see it: an ``OSError`` from any of its methods (``write``, or a
    buffered ``flush``/``seek``) becomes a ``WriteError`` right where it happens, so the error from a
    library's write (NumPy's zip, Matplotlib's PNG) cannot be mistaken for one of the caller's own (a
    network read during a download). ``fileno`` is hidden so that Pillow writes through ``write`` too
    instead of behind our back on the descriptor."""

    def __init__(self, f, path):
        self._f, self._path = f, path

    def fileno(self):
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name):
        attr = getattr(self._f, name)
        if not callable(attr):
            return attr

        def checked(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except io.UnsupportedOperation:
                raise
            except OSError as e:
                raise write_error(self._path, e) from None
        return checked


@contextmanager
def atomic_write(path, text: bool = False, newline=None):
    """``with atomic_write(path) as f: f.write(...)``: the file appears complete when the block ends
    without an exception, and not at all (the old one stays) when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, _EXCL, 0o666)  # 0o666: the umask decides, as open()
    except OSError as e:
        raise write_error(path, e) from None
    f = None
    try:
        f = open(fd, "w" if text else "wb", newline=newline, encoding="utf-8" if text else None)
        yield _Checked(f, path)
        try:
            f.flush()
            _keep_mode(path, tmp, fd)
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from None
    except BaseException:
        if f is not None and not f.closed:
            with suppress(OSError):
                f.close()
        _discard(tmp)
        raise
    sync_dir(path.parent)


@contextmanager
def atomic_path(path):
    """For writers that want a path, not a file (a framework's own ``save``): ``with atomic_path(dest) as
    tmp: save(tmp)``. The temporary name ends like ``dest`` (Keras insists on ``.weights.h5``); it is
    fsynced and renamed over ``dest`` only if the block succeeds. An ``OSError`` in the block becomes a
    ``WriteError``."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    try:
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW)
            try:
                _keep_mode(path, tmp, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from None
    except BaseException:
        _discard(tmp)
        raise
    sync_dir(path.parent)


def _keep_mode(dest: Path, tmp: Path, fd: int) -> None:
    """A file that is replaced keeps its permission bits (not a link's: a link is replaced, not read)."""
    try:
        st = os.lstat(dest)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        if hasattr(os, "fchmod"):
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        else:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))


def no_follow(path, flags: int) -> int:
    """An ``opener`` for ``open()``: a symbolic link at ``path`` is refused (ELOOP), not written through."""
    return os.open(path, flags | _NOFOLLOW, 0o666)


def writable(directory) -> None:
    """Raise ``OSError`` unless a file can be created in ``directory``: an exclusively created probe with
    a fresh name, so a link planted in the directory is never written through."""
    probe = Path(directory) / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
    os.close(os.open(probe, _EXCL, 0o600))
    os.unlink(probe)


def real_dir(path, create: bool = True) -> Path:
    """``path`` as a directory of the run that is not a symbolic link (``mkdir`` and every write below it
    would follow one into another folder): created if absent, refused in one line if it is a link or a file."""
    path = Path(path)
    if create:
        try:
            path.mkdir(exist_ok=True)
        except FileExistsError:
            pass  # a file or a link at the name: refused below
        except OSError as e:
            raise write_error(path, e) from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(st.st_mode):
        raise RunDirError(f"{path} is a symbolic link, which nin-multi never writes through (it did not create "
                          f"it): remove it, or choose another --out")
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"{path} exists and is not a directory: remove it, or choose another --out")
    return path


def sweep_temporaries(directory) -> list[str]:
    """Remove the temporary files a killed writer left in ``directory`` (regular files with this module's
    temporary names only; call it under the run's lock, when no writer of this run is alive). Returns
    their names."""
    swept = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return swept
    for e in entries:
        if TEMPORARY.match(e.name) and e.is_file(follow_symlinks=False):
            with suppress(OSError):
                os.unlink(e.path)
                swept.append(e.name)
    return swept


def _discard(tmp: Path) -> None:
    """Remove a temporary file a failed write leaves; its own failure must not hide the first one."""
    with suppress(OSError):
        os.unlink(tmp)


def sync_dir(path) -> None:
    """Make a rename in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _DIR_SYNC_UNSUPPORTED:
            raise write_error(path, e) from None
    finally:
        os.close(fd)


def write_text(path, text: str) -> None:
    with atomic_write(path, text=True) as f:
        f.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path, rows: list[dict], fields=None) -> None:
    """``fields`` default: every key of every row, in the order first seen."""
    fields = list(fields or dict.fromkeys(k for r in rows for k in r))
    with atomic_write(path, text=True, newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def save_figure(fig, dest, **kwargs) -> None:
    """``fig.savefig`` through ``atomic_write``; the format from the file name."""
    dest = Path(dest)
    with atomic_write(dest) as f:
        fig.savefig(f, format=dest.suffix.lstrip(".") or "png", **kwargs)
