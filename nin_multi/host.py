"""The ports of this machine: which are free, and one message for a port another program holds.

A leaf module (it imports nothing of the driver): the data-parallel launchers in ``backends/*_dist.py``
and the driver use it alike.
"""
from __future__ import annotations

import socket

from .errors import DistributedError


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
