"""Data-parallel workers listen only where they are told, end with their launcher, and a bad environment
value is one line before any process starts. Each engine is run for real: the listening sockets of every
process of a running ``--workers 2`` are read from /proc (Linux), the launcher is sent SIGTERM, SIGHUP and
SIGKILL, and two "hosts" on 127.0.0.2 and 127.0.0.3 train with the documented multi-node command lines.
"""
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nin_multi import isolation
from nin_multi.host import free_ports
from nin_multi.errors import DistributedError
from nin_multi.run import WEIGHTS
from nin_multi.weights import load_weights

from conftest import ROOT, descendants, load

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
TIMEOUT = 240
MINI = ["--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05", "--batch-size", "32",
        "--dropout", "0", "--threads", "1", "--no-progress"]


def nin_multi(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nin_multi", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of each TCP socket ``pid`` listens on, from its own network namespace's tables."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                raw, port = f[1].split(":")
                packed = bytes.fromhex(raw)
                if table == "tcp":
                    address = ipaddress.IPv4Address(packed[::-1])
                else:  # four little-endian 32-bit words
                    address = ipaddress.IPv6Address(b"".join(packed[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.append((str(address), int(port, 16)))
    return found


def interfaces(pid: int) -> list[str]:
    """The network interfaces of ``pid``'s network namespace."""
    return [line.split(":")[0].strip() for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]]


def wait_for(path: Path, p: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    """Until ``path`` exists; the run ending first, or ``timeout`` seconds, fail with its stderr."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.2)


def stop(p: subprocess.Popen) -> None:
    for pid in descendants(p.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.communicate()


# -- the environment --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value, message", [
    ("MASTER_PORT", "abc", "$MASTER_PORT must be a port number from 1 to 65535, got 'abc': correct it or unset it"),
    ("NIN_MULTI_DIST_TIMEOUT", "inf",
     "$NIN_MULTI_DIST_TIMEOUT must be seconds, above 0 and at most 604800, got 'inf': correct it or unset it"),
    ("MASTER_ADDR", "10.0.0.1;rm", "$MASTER_ADDR must be an IP address or a host name, got '10.0.0.1;rm': correct "
                                   "it or unset it"),
    ("DMLC_PS_ROOT_PORT", "0", "$DMLC_PS_ROOT_PORT must be a port number from 1 to 65535, got '0': correct it or "
                               "unset it"),
    ("WORLD_SIZE", "-2", "$WORLD_SIZE must be a positive integer, got '-2': correct it or unset it"),
])
def test_a_bad_environment_value_is_one_line_before_any_process_starts(name, value, message, tmp_path):
    p = nin_multi(["train", "--backend", "torch", "--workers", "2", *MINI, "--out", str(tmp_path / "run")],
                  env={**os.environ, name: value})
    _, err = p.communicate(timeout=120)
    assert p.returncode == DistributedError.exit_code
    assert err == f"nin-multi: error: {message}\n"
    assert not (tmp_path / "run").exists()


# -- listening sockets ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "tensorflow", "mxnet"])
def test_every_listening_socket_of_two_workers_is_on_loopback(name, sample_dir, tmp_path):
    """Every socket any process of a running ``--workers 2`` listens on is on loopback, or (TensorFlow, whose
    server binds every interface) in a network namespace whose only interface is loopback."""
    load(name)
    out = tmp_path / "run"
    p = nin_multi(["train", "--backend", name, "--workers", "2", *MINI, "--subset", "64", "--test-subset", "32",
                   "--epochs", "1000", "--data-dir", str(sample_dir), "--out", str(out)])
    try:
        wait_for(out / "checkpoints" / "epoch-0002.npz", p)  # every engine is up and has trained
        sockets = {pid: listening(pid) for pid in [p.pid, *descendants(p.pid)] if alive(pid)}
        assert sum(len(s) for s in sockets.values()) >= 2, sockets
        for pid, found in sockets.items():
            for address, port in found:
                if ipaddress.ip_address(address).is_loopback:
                    continue
                assert address in ("0.0.0.0", "::") and interfaces(pid) == ["lo"], (pid, address, port)
                assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        print(name, {pid: found for pid, found in sockets.items() if found})
    finally:
        stop(p)


def test_torch_store_binds_every_interface_unless_given_a_bound_socket():
    """The reproduction behind ``bind_store_where_told``: PyTorch's TCPStore, asked for 127.0.0.1, listens on
    ``[::]``; handed a socket bound to 127.0.0.1 (``master_listen_fd``), it listens there alone."""
    code = ("import datetime, json, os, socket, torch.distributed as d\n"
            "from nin_multi.isolation import listening_socket\n"
            "t = datetime.timedelta(seconds=5)\n"
            "a = d.TCPStore('127.0.0.1', 0, 1, True, t)\n"
            "s = listening_socket('127.0.0.1', 0)\n"
            "b = d.TCPStore('127.0.0.1', s.getsockname()[1], 1, True, t, master_listen_fd=s.detach())\n"
            "print(json.dumps([a.port, b.port]), flush=True)\n"
            "import time; time.sleep(30)\n")
    load("torch")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        default, bound = json.loads(p.stdout.readline())
        found = dict((port, address) for address, port in listening(p.pid))
        assert found == {default: "::", bound: "127.0.0.1"}
    finally:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_tensorflow_binds_every_interface_whatever_its_cluster_says():
    """The reproduction behind the private network: a TensorFlow server for a cluster on 127.0.0.1 listens
    on every interface (GrpcServer::Init binds "0.0.0.0:<port>")."""
    load("tensorflow")
    port = free_ports(1)[0]
    code = ("import tensorflow as tf, time\n"
            f"tf.distribute.Server({{'worker': ['127.0.0.1:{port}']}}, job_name='worker', task_index=0)\n"
            "print('up', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        assert p.stdout.readline() == "up\n"
        assert ("::", port) in listening(p.pid)
    finally:
        p.kill()
        p.wait()


def test_an_unbindable_engine_is_refused_on_a_networked_machine_unless_allowed(monkeypatch):
    monkeypatch.setattr(isolation, "exposed_addresses", lambda: ["192.0.2.2", "fd00::2"])
    with pytest.raises(DistributedError) as e:
        isolation.refuse_unbound("TensorFlow's gRPC worker", "runs any graph it is sent", False, env={})
    assert str(e.value) == ("TensorFlow's gRPC worker listens on every interface of this machine (192.0.2.2, "
                            "fd00::2) and runs any graph it is sent, without authentication: pass --allow-network "
                            "(or set NIN_MULTI_ALLOW_NETWORK=1) only if every machine on those networks is trusted")
    isolation.refuse_unbound("x", "y", True, env={})
    isolation.refuse_unbound("x", "y", False, env={isolation.PRIVATE_ENV: "1"})
    monkeypatch.setattr(isolation, "exposed_addresses", lambda: [])
    isolation.refuse_unbound("x", "y", False, env={})


def test_a_private_network_reaches_itself_and_nothing_else():
    if not isolation.private_network_available():
        pytest.skip("this machine allows no network namespace")
    serve = "import socket, time; s = socket.create_server(('::', 0), family=socket.AF_INET6, dualstack_ipv6=True); " \
            "print(s.getsockname()[1], flush=True); time.sleep(30)"
    connect = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)"
    server = subprocess.Popen([sys.executable, "-c", serve], stdout=subprocess.PIPE, text=True,
                              preexec_fn=isolation.preexec(isolation.new_private_network))
    try:
        port = server.stdout.readline().strip()
        assert interfaces(server.pid) == ["lo"]
        inside = subprocess.run([sys.executable, "-c", connect, port], capture_output=True,
                                preexec_fn=isolation.preexec(isolation.join_private_network(server.pid)))
        outside = subprocess.run([sys.executable, "-c", connect, port], capture_output=True)
        assert inside.returncode == 0 and outside.returncode != 0 and b"Connection refused" in outside.stderr
    finally:
        server.kill()
        server.wait()


# -- signals to the launcher ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, sig", [("torch", signal.SIGKILL), ("tensorflow", signal.SIGKILL),
                                       ("mxnet", signal.SIGKILL), ("torch", signal.SIGTERM),
                                       ("mxnet", signal.SIGHUP)])
def test_a_signalled_launcher_leaves_no_process_behind(name, sig, sample_dir, tmp_path):
    load(name)
    out = tmp_path / "run"
    p = nin_multi(["train", "--backend", name, "--workers", "2", *MINI, "--subset", "64", "--test-subset", "32",
                   "--epochs", "1000", "--data-dir", str(sample_dir), "--out", str(out)])
    try:
        wait_for(out / "checkpoints" / "epoch-0001.npz", p)
        started = descendants(p.pid)
        assert len(started) >= 2
        os.kill(p.pid, sig)
        _, err = p.communicate(timeout=60)
        deadline = time.monotonic() + 15
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in started if alive(pid)] == []
        if sig == signal.SIGKILL:
            assert p.returncode == -signal.SIGKILL
        else:
            assert p.returncode == DistributedError.exit_code and "Traceback" not in err
            assert err.strip().splitlines()[-1] == (f"nin-multi: error: {'stopped by ' + sig.name}; stopped all 2 "
                                                    f"workers; continue with --resume {out} --workers 2")
    finally:
        stop(p)


# -- two "hosts" on one machine ---------------------------------------------------------------------------
def documented_lines() -> dict:
    """The multi-node command lines of docs/safety.md, by engine (each line one process)."""
    text = (ROOT / "docs" / "safety.md").read_text()
    block = text.split("The multi-node command lines", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines, engine = {}, None
    for line in block.splitlines():
        if line.startswith("# "):
            engine = {"PyTorch": "torch", "TensorFlow": "tensorflow", "MXNet": "mxnet"}[line[2:].split(":")[0]]
        elif line.strip():
            lines.setdefault(engine, []).append(line)
    return lines


FP64_RECIPE = ["--batch-size", "32", "--variant", "mini", "--resize", "28", "--init", "kaiming", "--lr", "0.05",
               "--dropout", "0", "--subset", "352", "--test-subset", "100", "--epochs", "1", "--precision", "fp64",
               "--threads", "1", "--no-progress"]


def on_two_hosts(sample_dir, line: str, out: Path, ports: dict) -> str:
    """A documented line for the two addresses 127.0.0.2 and 127.0.0.3 of this machine: free ports, one
    process per node, the test's recipe and run folder."""
    line = line.replace("10.0.0.1", "127.0.0.2").replace("10.0.0.2", "127.0.0.3")
    for port, free in ports.items():
        line = line.replace(str(port), str(free))
    line = line.replace("--nproc-per-node 4", "--nproc-per-node 1")
    line = line.replace("--batch-size 512", " ".join(FP64_RECIPE) + f" --data-dir {sample_dir}")
    line = re.sub(r"/shared/runs/\w+", str(out), line)
    return line.replace("python -m", f"{sys.executable} -m")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "tensorflow", "mxnet"])
def test_two_hosts_on_two_loopback_addresses_train_to_one_process_s_weights(sample_dir, name, tmp_path):
    from nin_multi.config import TrainConfig
    from nin_multi.train import train

    load(name)
    lines = documented_lines()[name]
    out = tmp_path / "two"
    ports = dict(zip((29500, 20000, 20001, 9091), free_ports(4)))
    procs = [subprocess.Popen(["bash", "-c", on_two_hosts(sample_dir, line, out, ports)], cwd=ROOT,
                              start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for line in lines]
    workers = [p for p, line in zip(procs, lines) if "--out" in line]
    seen = {}
    try:
        deadline = time.monotonic() + 2 * TIMEOUT
        while any(p.poll() is None for p in workers) and time.monotonic() < deadline:
            for p in procs:
                for pid in [p.pid, *descendants(p.pid)]:
                    try:
                        seen.update({(pid, a, port): interfaces(pid) for a, port in listening(pid)})
                    except OSError:
                        pass
            time.sleep(0.5)
        results = [(p.wait(timeout=60), p.stderr.read()) for p in workers]
        assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    finally:
        for p in procs:
            stop(p)
    addresses = {a for _, a, _ in seen}
    print(name, sorted(addresses))
    assert seen
    if name == "tensorflow":  # its documented exposure: every interface, allowed by --allow-network
        assert addresses == {"::"}
    else:
        assert all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses
        assert addresses & {"127.0.0.2", "127.0.0.3"}
    one = tmp_path / "one"  # one process, the same recipe (FP64_RECIPE)
    train(TrainConfig(backend=name, out=str(one), progress=False, data_dir=str(sample_dir), variant="mini",
                      resize=28, init="kaiming", lr=0.05, dropout=0.0, batch_size=32, subset=352, test_subset=100,
                      epochs=1, precision="fp64", threads=1), log=lambda *_: None)
    a, b = (load_weights(d / WEIGHTS)[1] for d in (out, one))
    num = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in b)
    diff = (num / sum(float(np.sum(b[k] ** 2)) for k in b)) ** 0.5
    print(f"{name} on 127.0.0.2 + 127.0.0.3: relative weight difference from one process {diff:.1e}")
    assert diff < 1e-10


def test_an_unbindable_engine_started_by_hand_is_refused_without_allow_network(sample_dir, tmp_path):
    """A TensorFlow worker started by hand (TF_CONFIG) on a machine with a network interface: one line,
    before TensorFlow starts a server."""
    if not isolation.exposed_addresses():
        pytest.skip("this machine has no interface but loopback")
    line = on_two_hosts(sample_dir, documented_lines()["tensorflow"][0], tmp_path / "run", {20000: free_ports(1)[0]})
    p = subprocess.run(["bash", "-c", line.replace(" --allow-network", "")], cwd=ROOT, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == DistributedError.exit_code
    assert p.stderr.strip().splitlines()[-1].startswith(
        "nin-multi: error: TensorFlow's gRPC worker listens on every interface of this machine (")
    assert "Traceback" not in p.stderr
