"""This machine as the frameworks see it: the cores a process may use and the ports free on it.

A leaf module (it imports nothing of the driver), so the backends and their data-parallel engines use it
too: one way of counting cores, one way of finding and checking ports.
"""
from __future__ import annotations

import os
import socket

from .errors import DistributedError


def usable_cores() -> int:
    """Cores this process may run on (taskset, cpusets, a container's CPU set), which ``os.cpu_count()``
    ignores: what "every core" means for a thread count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_port(host: str, port: int, what: str, env_var: str) -> None:
    """Refuse a local port another program holds, naming the variable that chooses another."""
    if host in ("127.0.0.1", "localhost") and port_in_use("127.0.0.1", port):
        raise DistributedError(f"port {port} on {host} ({what}) is in use by another program: choose a free "
                               f"port with {env_var}, or stop the program that holds it")


def free_ports(n: int) -> list[int]:
    """Ports the OS has free now (held together so that they differ); a tiny race with other programs."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
