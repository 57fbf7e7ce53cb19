"""Downloads within a size cap and an overall deadline.

A mirror that streams without end, or a server that trickles one byte a minute (each read then beats
any per-read timeout), would otherwise fill the disk or hang the command forever. ``Guarded`` wraps a
pooch downloader (or any callable of pooch's downloader signature): the file it writes is capped at
``max_bytes`` and the whole download, retries included, ends at its deadline, in one line.
"""
from __future__ import annotations

import threading
import time

from .errors import DataError

#: Fashion-MNIST's largest file is 26,421,880 bytes; a mirror sending more than this is not sending it.
MAX_DOWNLOAD_BYTES = 64 << 20
#: Seconds for one file, retries included: 26 MB at 100 kB/s takes under five minutes.
DOWNLOAD_DEADLINE = 600.0


class DownloadRefused(DataError):
    pass


class _Capped:
    """The file a downloader writes, refusing bytes beyond the cap or after the deadline."""

    def __init__(self, f, url: str, max_bytes: int, deadline: float, seconds: float):
        self.f, self.url, self.max_bytes, self.written = f, url, max_bytes, 0
        self.deadline, self.seconds = deadline, seconds

    def write(self, chunk: bytes) -> int:
        self.written += len(chunk)
        if self.written > self.max_bytes:
            raise DownloadRefused(f"{self.url} sent more than {self.max_bytes:,} bytes, more than the file it "
                                  f"should be; stopped")
        if time.monotonic() > self.deadline:
            raise _late(self.url, self.seconds)
        return self.f.write(chunk)

    def flush(self) -> None:
        self.f.flush()


def _late(url: str, seconds: float) -> DownloadRefused:
    return DownloadRefused(f"{url} did not arrive within {seconds:g} s; stopped")


class Guarded:
    """``Guarded(pooch.HTTPDownloader(...))``: the same downloader, each file capped, and one deadline
    for every attempt it makes from the moment it is made (make one per file)."""

    def __init__(self, inner, max_bytes: int = MAX_DOWNLOAD_BYTES, seconds: float = DOWNLOAD_DEADLINE):
        self.inner, self.max_bytes, self.seconds = inner, max_bytes, seconds
        self.deadline = time.monotonic() + seconds

    def __call__(self, url, output_file, pooch, check_only=False):
        if check_only:
            return self.inner(url, output_file, pooch, check_only=True)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _late(url, self.seconds)
        with open(output_file, "w+b") as f:
            capped = _Capped(f, url, self.max_bytes, self.deadline, self.seconds)
            return within(lambda: self.inner(url, capped, pooch), left, url, self.seconds)


def within(fn, left: float, what: str, seconds: float):
    """``fn()`` in a helper thread, given up after ``left`` seconds (of a deadline of ``seconds``): a read
    blocked on a trickling server cannot hold the command past it (the thread ends at its next write or
    read timeout)."""
    result, error = [], []

    def run():
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller
            error.append(e)

    t = threading.Thread(target=run, daemon=True, name="nin-multi-download")
    t.start()
    t.join(left)
    if t.is_alive():
        raise _late(what, seconds)
    if error:
        raise error[0]
    return result[0] if result else None
