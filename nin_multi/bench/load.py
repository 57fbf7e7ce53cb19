"""What else the machine did while a worker ran, and a worker's own memory: timings taken while other
processes use more than a few percent of the CPU are slowed by them, the more so with every core in use."""
from __future__ import annotations

import resource
import sys
import time

import psutil


def cpu_counters(own: bool = False) -> tuple[float, float, float | None]:
    """(wall clock, CPU seconds of finished children, or with ``own`` of this process, CPU seconds busy
    machine-wide or None): bench's workers are children, the sweep trains in its own process."""
    try:
        t = psutil.cpu_times()
        idle = sum(getattr(t, k, 0.0) for k in ("idle", "iowait", "guest", "guest_nice"))  # guest: within user
        busy = sum(t) - idle
    except (psutil.Error, OSError):
        busy = None
    mine = psutil.Process().cpu_times()
    spent = mine.user + mine.system if own else mine.children_user + mine.children_system
    return time.perf_counter(), spent, busy


def others_share(before, after) -> float | None:
    """Share of the machine's CPU time that other processes used between two ``cpu_counters()``."""
    if before[2] is None or after[2] is None:
        return None
    wall = after[0] - before[0]
    others = (after[2] - before[2]) - (after[1] - before[1])
    return max(0.0, others / (wall * (psutil.cpu_count() or 1))) if wall > 0 else None


def rss_mb() -> tuple[float, float | None]:
    """(peak RSS, current RSS) of this process in MB. psutil has no peak on Linux; the kernel's
    ``ru_maxrss`` is it (kilobytes, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    try:
        current = psutil.Process().memory_info().rss / 2 ** 20
    except (psutil.Error, OSError):
        current = None
    return peak, current
