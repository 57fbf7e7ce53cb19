"""Where the data-parallel engines listen, and that their processes end with the launcher that started them.

None of the engines authenticates its peers: PyTorch's store and gloo take any connection, TensorFlow's
gRPC worker runs any graph it is sent (file reads and writes included), MXNet's parameter server
unpickles what it receives. So ``--workers`` keeps every listening socket on loopback: PyTorch's store is
bound where it is told (``master_listen_fd``), gloo and MXNet's ps-lite bind the address they are given.
TensorFlow cannot be told: ``GrpcServer::Init`` (tensorflow/core/distributed_runtime/rpc/
grpc_server_lib.cc) listens on ``0.0.0.0:<port>`` whatever the cluster says. On Linux its workers are
therefore started in a private network namespace whose only interface is loopback; where that is not
possible, a machine with any other interface refuses to start them unless the user allows the network.

Processes started by a launcher are tied to it with ``PR_SET_PDEATHSIG`` (Linux): a launcher killed by
SIGKILL takes them with it, where no handler of its own could run.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import struct
import sys
from typing import Callable, Optional

from .errors import DistributedError

ALLOW_ENV = "NIN_MULTI_ALLOW_NETWORK"
#: Set in the environment of processes started inside ``private_network()``: they know they are isolated.
PRIVATE_ENV = "NIN_MULTI_PRIVATE_NETWORK"
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def network_allowed(env=None) -> bool:
    """Whether ``env`` (the process's environment by default) allows the network: the documented
    alternative to ``--allow-network``, read where a run's ``Context`` is made (``cluster.from_env``)."""
    env = os.environ if env is None else env
    return env.get(ALLOW_ENV, "") not in ("", "0")


def exposed_addresses() -> list[str]:
    """This machine's addresses other than loopback: where a socket bound to every interface is reachable."""
    import psutil

    found = [a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family in (socket.AF_INET, socket.AF_INET6)]
    return sorted({a for a in found if not ipaddress.ip_address(a).is_loopback})


def refuse_unbound(engine: str, what: str, allowed: bool, env=None) -> None:
    """Refuse to start an engine that listens on every interface, on a machine reachable from a network,
    unless the user allowed it (``allowed``: ``--allow-network``, or its variable, as the run's ``Context``
    or the launcher has it) or it runs in the launcher's private network (``env``'s ``PRIVATE_ENV``)."""
    if allowed or (os.environ if env is None else env).get(PRIVATE_ENV) == "1":
        return
    exposed = exposed_addresses()
    if exposed:
        shown = ", ".join(exposed[:3]) + (f" and {len(exposed) - 3} more" if len(exposed) > 3 else "")
        raise DistributedError(f"{engine} listens on every interface of this machine ({shown}) and {what}, "
                               f"without authentication: pass --allow-network (or set {ALLOW_ENV}=1) only if "
                               f"every machine on those networks is trusted")


# -- Linux: a private network namespace, and children that die with their parent ----------------------
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def private_network_available() -> bool:
    """Whether this process may create a network namespace (root, or unprivileged user namespaces): tried
    in a forked child, which exits at once."""
    if not sys.platform.startswith("linux"):
        return False
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            flags = _CLONE_NEWNET | (0 if os.geteuid() == 0 else _CLONE_NEWUSER)
            os._exit(0 if _libc().unshare(flags) == 0 else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def new_private_network() -> None:
    """In a child before ``exec``: a new network namespace (and, unprivileged, the user namespace that
    allows it, mapping this user to itself as root), with its loopback interface up. Its only interface."""
    libc, uid, gid = _libc(), os.geteuid(), os.getegid()
    flags = _CLONE_NEWNET | (0 if uid == 0 else _CLONE_NEWUSER)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if uid != 0:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    _loopback_up()


def join_private_network(pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that enters the namespaces ``pid`` created with ``new_private_network``."""
    def join():
        libc = _libc()
        kinds = ("net",) if os.geteuid() == 0 else ("user", "net")
        for kind in kinds:
            fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
            try:
                if libc.setns(fd, 0) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {kind}")
            finally:
                os.close(fd)
    return join


def _loopback_up() -> None:
    import fcntl  # Linux only, like the namespace itself

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def die_with_parent(parent: Optional[int] = None) -> None:
    """This process gets SIGKILL when its parent dies (Linux; elsewhere nothing). ``parent``: the pid it
    must still have, so that a parent that died before the call is noticed."""
    if not sys.platform.startswith("linux"):
        return
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def preexec(*steps: Optional[Callable[[], None]]) -> Callable[[], None]:
    """One ``preexec_fn``: die with the launcher, then each step."""
    parent = os.getpid()

    def run():
        die_with_parent(parent)
        for step in steps:
            if step is not None:
                step()
    return run


def loopback_interface() -> str:
    """The name of the loopback interface (lo on Linux, lo0 on macOS), for gloo's GLOO_SOCKET_IFNAME."""
    names = [n for _, n in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((n for n in ("lo", "lo0") if n in names), "lo")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` alone, for an engine that takes a bound socket instead
    of binding every interface itself (PyTorch's ``TCPStore(master_listen_fd=...)``)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    s = socket.socket(family, kind, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(address)
        s.listen(128)
    except OSError as e:
        s.close()
        raise DistributedError(f"could not listen on {host}:{port}: {e.strerror or e}; choose another port "
                               f"or address") from None
    return s
