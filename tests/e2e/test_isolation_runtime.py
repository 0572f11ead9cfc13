"""A hostile tenant against the runtime's isolation: network namespaces, port squatting, seccomp.

Every attack runs from inside a real instance (the stand-in's `__shell` hook runs a script as the
tenant's code would, as its uid, in its sandbox) of a real fleet driven through the CLI: real
bubblewrap, slirp4netns, Caddy and node.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from foundry_fleet.runtime import procfs
from foundry_fleet.runtime.base import TaskHandle
from foundry_fleet.runtime.local_task import LocalTask
from tests.support.edge_client import https, local_ca, wss
from tests.support.harness import FleetHarness, pids_with_arg, wait_until
from tests.support.foundry_standin import SOCKET_PATH, STATUS_PATH, run_in_instance
from tests.support.ports import host_address, port_is_free
from tests.drivers.test_runtime_local import veth_namespace

IS_ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces, uids, the sandbox as root)"),
]
PYTHON = "/usr/bin/python3"  # the system's, as the sandbox shows it (the host may prefer another)


# ----------------------------------------------------------------------------- helpers


def running_fleet(fleet: FleetHarness, release_zips: dict[str, Path], *names: str) -> dict[str, dict]:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    made = {}
    for name in names:
        inst = fleet.cli("instance", "create", name, "--release", "13.345", "--json").json()["instance"]
        assert inst["state"] == "running", inst
        made[name] = inst
    return made


def shell(port: int, script: str, timeout: float = 30) -> dict:
    return run_in_instance(port, script, timeout=timeout)


def python_inside(port: int, code: str, timeout: float = 30) -> dict:
    """Run a Python script inside the instance; its last stdout line is JSON."""
    result = shell(port, f"{PYTHON} - <<'PY'\n{textwrap.dedent(code)}\nPY", timeout=timeout)
    assert result["code"] == 0, result
    return json.loads(result["stdout"].strip().splitlines()[-1])


def forwarders_of(fleet: FleetHarness, name: str) -> list[int]:
    """Live slirp4netns processes serving `name`, found by their API socket under the fleet's run/net."""
    flag = f"--api-socket={fleet.root / 'run' / 'net' / name}."
    return [pid for pid in procfs.all_pids()
            if any(a.startswith(flag) for a in procfs.cmdline(pid)) and procfs.is_alive(pid)]


def recorded_task(fleet: FleetHarness, name: str) -> LocalTask | None:
    """The processes of the task the fleet recorded for `name`, as the local driver reads its handle."""
    db = sqlite3.connect(fleet.root / "state" / "fleet.sqlite")
    try:
        (raw,) = db.execute("SELECT task FROM instances WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return LocalTask.of(TaskHandle.from_dict(json.loads(raw))) if raw else None


class Listener:
    """A TCP listener on the host that records what each connection sends."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, port))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.received.append(conn.recv(100))
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def loopback_listener() -> Iterator[Listener]:
    listener = Listener("127.0.0.1")
    yield listener
    listener.close()


CONNECT = """
import json, socket
results = {{}}
for label, host, port in {targets!r}:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"from-inside")
        results[label] = "connected"
    except OSError as e:
        results[label] = type(e).__name__
print(json.dumps(results))
"""


# ----------------------------------------------------------------------------- attack 5: port squatting


def test_a_tenant_listening_on_a_stopped_neighbours_port_never_answers_for_it(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    made = running_fleet(fleet, release_zips, "alice", "bob")
    alice, bob = made["alice"]["port"], made["bob"]["port"]
    fleet.cli("instance", "stop", "bob")
    assert port_is_free(bob, "127.0.0.1")

    # Alice's code listens on bob's port with a fake status page, as the attack did.
    squatter = textwrap.dedent(f"""
        import http.server, json
        class Fake(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({{"active": True, "version": "squatter", "world": None, "users": 0}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        http.server.HTTPServer(("0.0.0.0", {bob}), Fake).serve_forever()
    """)
    (Path(made["alice"]["data_dir"]) / "squat.py").write_text(squatter)
    run_in_instance(alice, f"exec {PYTHON} squat.py", background=True)
    fake = python_inside(alice, f"""
        import json, time, urllib.request
        for _ in range(100):
            try:
                print(urllib.request.urlopen("http://127.0.0.1:{bob}{STATUS_PATH}", timeout=2).read().decode())
                break
            except OSError:
                time.sleep(0.05)
    """)
    assert fake["version"] == "squatter"  # it listens, in alice's own namespace
    # On the host the port stays free: nothing answers there while bob is stopped.
    assert port_is_free(bob, "127.0.0.1")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", bob), timeout=2).close()

    started = fleet.cli("instance", "start", "bob", "--json").json()
    assert started["state"] == "running", started
    # The fleet's health check, the edge and a direct request all reach bob's own server.
    real = fleet.get(bob, STATUS_PATH).json()
    assert real["version"] == "13.345", real
    probe = fleet.probe(bob)
    assert probe["dataPath"] == made["bob"]["data_dir"] and probe["uid"] == made["bob"]["uid"]
    https_port = fleet.settings().edge.https_port
    through_edge = https(https_port, "bob.localhost", "/-/__probe", local_ca(fleet.root),
                         headers={"Cookie": "session=players-secret"})
    assert through_edge.status_code == 200 and through_edge.json()["dataPath"] == made["bob"]["data_dir"]
    events = fleet.cli("events", "--instance", "bob", "--json").json()
    assert not [e for e in events if e["outcome"] == "failed"], events
    healthy = [e for e in events if e["action"] == "instance.healthy"]
    assert len(healthy) == 2  # after create, and after this start
    time.sleep(1.5)  # a few health checks later, bob is still the one answering
    assert fleet.instance("bob")["state"] == "running"
    assert fleet.get(bob, STATUS_PATH).json()["version"] == "13.345"
    # The squatter lives on, unheard outside alice's namespace.
    assert python_inside(alice, f"""
        import urllib.request
        print(urllib.request.urlopen("http://127.0.0.1:{bob}{STATUS_PATH}", timeout=2).read().decode())
    """)["version"] == "squatter"


# ----------------------------------------------------------------------------- attack 5: what an instance sees and reaches


def test_an_instance_sees_no_host_socket_and_reaches_only_the_outside(
    fleet: FleetHarness, release_zips: dict[str, Path], loopback_listener: Listener
) -> None:
    made = running_fleet(fleet, release_zips, "alice", "bob")
    alice, bob = made["alice"]["port"], made["bob"]["port"]
    settings = fleet.settings()
    web = settings.edge.web_port
    # Host services these checks look for (so the test fails if they were visible or reachable).
    host_listening = {web, bob, alice, settings.edge.https_port, loopback_listener.port}
    with socket.create_connection(("127.0.0.1", loopback_listener.port), timeout=2):
        pass  # reachable from the host itself
    with socket.create_connection(("127.0.0.1", web), timeout=2):
        pass

    listed = shell(alice, "ss -Htln")
    assert listed["code"] == 0, listed
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in listed["stdout"].splitlines() if line.strip()}
    assert ports == {alice}, listed["stdout"]  # only its own server
    proc_net = python_inside(alice, """
        import json
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = open(table).read().splitlines()[1:]
            except FileNotFoundError:
                continue
            for line in lines:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        print(json.dumps(sorted(ports)))
    """)
    assert proc_net == [alice], (proc_net, host_listening)

    targets = [
        ("fleet web port", "127.0.0.1", web),
        ("bob on loopback", "127.0.0.1", bob),
        ("host loopback listener", "127.0.0.1", loopback_listener.port),
        ("fleet web port via gateway", "10.0.2.2", web),
        ("bob via gateway", "10.0.2.2", bob),
        ("host loopback listener via gateway", "10.0.2.2", loopback_listener.port),
    ]
    outside = host_address()
    if outside is not None:
        # The forwarder listens on loopback only: the host's own address does not lead to bob either.
        targets.append(("bob via the host's address", outside, bob))
    reached = python_inside(alice, CONNECT.format(targets=targets), timeout=60)
    assert set(reached) == {label for label, _host, _port in targets}
    assert all(result != "connected" for result in reached.values()), reached
    assert b"from-inside" not in loopback_listener.received  # (the host's own check sent nothing)


class RemoteHost:
    """Another machine, as far as the host can tell: a network namespace behind a veth pair
    (198.18.<n>.1 on the host's end, 198.18.<n>.2 on its own), also answering on a link-local
    address the host routes to it (where a cloud's metadata service would be). A TCP server in it
    records what each connection sends."""

    PORT = 8080

    def __init__(self, namespace: str, host_ip: str, peer_ip: str, link_local: str) -> None:
        self.namespace, self.host_ip, self.peer_ip, self.link_local = namespace, host_ip, peer_ip, link_local
        code = textwrap.dedent(f"""
            import socket, sys
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", {self.PORT}))
            s.listen(8)
            print("ready", flush=True)
            while True:
                conn, _ = s.accept()
                with conn:
                    conn.settimeout(5)
                    try:
                        print(conn.getsockname()[0], conn.recv(100).decode(), flush=True)
                    except OSError:
                        pass
        """)
        self.server = subprocess.Popen(["ip", "netns", "exec", namespace, PYTHON, "-c", code],
                                       stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None and self.server.stdout.readline().strip() == "ready"

    def received(self) -> list[str]:
        self.server.kill()
        out, _ = self.server.communicate(timeout=10)
        return out.splitlines()


@pytest.fixture
def remote_host() -> Iterator[RemoteHost]:
    n = 1 + os.getpid() % 250
    host_ip, peer_ip, link_local = f"198.18.{n}.1", f"198.18.{n}.2", f"169.254.{n}.254"
    with veth_namespace("ffr", host_ip, peer_ip) as namespace:
        subprocess.run(["ip", "-n", namespace, "addr", "add", f"{link_local}/32", "dev", "lo"],
                       check=True, capture_output=True)
        # Gone with the veth pair.
        subprocess.run(["ip", "route", "add", f"{link_local}/32", "via", peer_ip], check=True, capture_output=True)
        remote = RemoteHost(namespace, host_ip, peer_ip, link_local)
        try:
            yield remote
        finally:
            remote.server.kill()
            remote.server.wait()


class UdpEcho:
    """A UDP server on the host that answers every datagram with its own bytes."""

    def __init__(self, address: str, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
                self.sock.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


EGRESS = """
import json, socket, time
results = {{}}
for label, host, port in {tcp!r}:
    begun = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(label.encode())
        results[label] = ["connected", 0]
    except OSError as e:
        results[label] = [type(e).__name__, round(time.monotonic() - begun, 2)]
for label, host, port in {udp!r}:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        try:
            s.sendto(b"query", (host, port))
            results[label] = [s.recv(512).decode(), 0]
        except OSError as e:
            results[label] = [type(e).__name__, 0]
print(json.dumps(results))
"""


@pytest.mark.skipif(host_address() is None, reason="needs a non-loopback address on the host")
def test_outbound_nat_reaches_other_machines_but_no_host_address_and_no_link_local_one(
    fleet: FleetHarness, release_zips: dict[str, Path], remote_host: RemoteHost
) -> None:
    # Foundry needs the outside (foundryvtt.com for licences and packages), so the NAT stays; but
    # what the instance dials, its forwarder dials from the host: the host's own services on its
    # other addresses (sshd, databases, exporters on 0.0.0.0) and the metadata service's link-local
    # address must stay out of reach, and fail at once rather than hang.
    made = running_fleet(fleet, release_zips, "alice")
    alice = made["alice"]["port"]
    address = host_address() or ""
    on_address, on_wildcard, on_veth = Listener(address), Listener("0.0.0.0"), Listener(remote_host.host_ip)
    tcp_dns = Listener(remote_host.host_ip, 53)
    udp_dns, udp_other = UdpEcho(remote_host.host_ip, 53), UdpEcho(remote_host.host_ip)
    remote = remote_host
    try:
        with socket.create_connection((address, on_wildcard.port), timeout=2):
            pass  # the host itself reaches it
        reached = python_inside(alice, EGRESS.format(
            tcp=[
                ("remote host", remote.peer_ip, remote.PORT),
                ("link-local address", remote.link_local, remote.PORT),
                ("cloud metadata", "169.254.169.254", 80),
                ("host's address", address, on_address.port),
                ("wildcard listener via the host's address", address, on_wildcard.port),
                ("wildcard listener via the host's other address", remote.host_ip, on_wildcard.port),
                ("host's other address", remote.host_ip, on_veth.port),
                ("dns over tcp on a host address", remote.host_ip, 53),
            ],
            udp=[
                ("dns on a host address", remote.host_ip, 53),
                ("other udp on a host address", remote.host_ip, udp_other.port),
            ],
        ), timeout=90)
    finally:
        for server in (on_address, on_wildcard, on_veth, tcp_dns, udp_dns, udp_other):
            server.close()
    assert reached.pop("remote host") == ["connected", 0]
    assert reached.pop("dns over tcp on a host address") == ["connected", 0]
    assert reached.pop("dns on a host address") == ["query", 0]
    assert reached.pop("other udp on a host address")[0] in ("TimeoutError", "ConnectionRefusedError")
    for label, (outcome, _seconds) in reached.items():
        # Refused by the forwarder's host (REJECT), not silently dropped: a drop would end in a
        # TimeoutError after the probe's 10 s, a refusal is a ConnectionRefusedError.
        assert outcome == "ConnectionRefusedError", (label, outcome)
    assert remote.received() == [f"{remote.peer_ip} remote host"]
    for listener in (on_address, on_wildcard, on_veth):
        assert not any(listener.received), listener.received  # (the host's own check sent nothing)


# ----------------------------------------------------------------------------- item 8: user namespaces, seccomp


def _syscall_numbers() -> dict[str, int]:
    import pyseccomp

    names = ("ptrace", "mount", "bpf", "keyctl", "perf_event_open", "clone3")
    return {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) for name in names}


ATTACKS = """
import ctypes, errno, json, os, struct, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {numbers!r}
results = {{}}

def outcome(ret):
    err = ctypes.get_errno()
    return "ok" if ret >= 0 else errno.errorcode.get(err, str(err))

def call(name, *args):
    ctypes.set_errno(0)
    return outcome(libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args]))

sibling = subprocess.Popen(["sleep", "30"])  # running once Popen returns (it waits for the exec)
results["ptrace_attach_sibling"] = call("ptrace", 16, sibling.pid, 0, 0)  # PTRACE_ATTACH
sibling.kill()
child = os.fork()
if child == 0:
    os._exit(0 if call("ptrace", 0, 0, 0, 0) == "ok" else 1)  # PTRACE_TRACEME
results["ptrace_traceme"] = "ok" if os.waitpid(child, 0)[1] == 0 else "refused"
os.makedirs("m", exist_ok=True)  # in the data directory, the instance's own
results["mount"] = call("mount", ctypes.c_char_p(b"none"), ctypes.c_char_p(b"m"), ctypes.c_char_p(b"tmpfs"), 0, 0)
attr = ctypes.create_string_buffer(struct.pack("IIII", 1, 4, 4, 1), 72)  # BPF_MAP_TYPE_HASH
results["bpf"] = call("bpf", 0, attr, 72)  # BPF_MAP_CREATE
results["keyctl"] = call("keyctl", 0, -3, 1)  # KEYCTL_GET_KEYRING_ID, the session keyring, create
pe = ctypes.create_string_buffer(128)
struct.pack_into("IIQ", pe, 0, 1, 128, 0)  # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_CPU_CLOCK
struct.pack_into("Q", pe, 40, (1 << 5) | (1 << 6))  # exclude_kernel, exclude_hv
results["perf_event_open"] = call("perf_event_open", pe, 0, -1, -1, 0)
results["clone3"] = call("clone3", 0, 0)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
results["seccomp_mode"] = status.get("Seccomp", "").strip()
print(json.dumps(results))
"""


def test_no_user_namespaces_and_no_dangerous_syscalls_inside_while_node_works(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    made = running_fleet(fleet, release_zips, "alice")
    port = made["alice"]["port"]

    for command in ("unshare -Ur true", "unshare -n true", "unshare -m true"):
        tried = shell(port, command)
        assert tried["code"] != 0 and "Operation not permitted" in tried["stderr"], (command, tried)
    results = python_inside(port, ATTACKS.format(numbers=_syscall_numbers()))
    assert results["seccomp_mode"] == "2", results  # a filter is loaded
    for attack in ("ptrace_attach_sibling", "mount", "bpf", "keyctl", "perf_event_open"):
        assert results[attack] == "EPERM", (attack, results)
    assert results["ptrace_traceme"] == "refused", results
    assert results["clone3"] == "ENOSYS", results  # so glibc falls back to clone

    # Node itself, its threads and its child processes work normally.
    threads = shell(port, "node -e 'const {Worker} = require(\"worker_threads\");"
                          " new Worker(\"require(`worker_threads`).parentPort.postMessage(6*7)\", {eval: true})"
                          ".on(\"message\", (m) => console.log(\"worker says \" + m))'")
    assert threads["code"] == 0 and "worker says 42" in threads["stdout"], threads
    assert fleet.get(port, STATUS_PATH).json()["version"] == "13.345"
    with ws_connect(f"ws://127.0.0.1:{port}{SOCKET_PATH}", open_timeout=10) as ws:
        ws.send("hello through the forwarder")
        assert ws.recv(timeout=10) == "hello through the forwarder"
    https_port = fleet.settings().edge.https_port
    with wss(https_port, "alice.localhost", SOCKET_PATH, local_ca(fleet.root)) as ws:
        ws.send("hello through the edge")
        assert ws.recv(timeout=10) == "hello through the edge"
        assert fleet.get(port, STATUS_PATH).json()["users"] == 1


# ----------------------------------------------------------------------------- the forwarder as part of the task


def test_reattach_after_kill_9_keeps_task_and_forwarder_and_a_stop_frees_the_port(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    made = running_fleet(fleet, release_zips, "alice")
    port = made["alice"]["port"]
    task = recorded_task(fleet, "alice")
    assert task is not None and task.net_pid is not None
    assert forwarders_of(fleet, "alice") == [task.net_pid]
    assert procfs.is_alive(task.net_pid, task.net_start)
    sock = Path(task.net_socket or "")
    assert sock.parent == fleet.root / "run" / "net" and sock.exists()
    assert (sock.parent.stat().st_mode & 0o777) == 0o700

    daemon = fleet.daemons[-1]
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    # Both outlive the control plane: players keep their way in.
    assert fleet.get(port, STATUS_PATH).status_code == 200
    assert procfs.is_alive(task.net_pid, task.net_start)
    # ... and the egress filter outlives it too: the host's services stay out of the NAT's reach.
    listener = Listener(host_address() or "127.0.0.1")
    target = [("host", listener.sock.getsockname()[0], listener.port)]
    try:
        assert python_inside(port, CONNECT.format(targets=target)) == {"host": "ConnectionRefusedError"}

        fleet.up()
        fleet.wait_state("alice", "running")
        # Loaded again by the new daemon before it re-attached alice: still holding.
        assert python_inside(port, CONNECT.format(targets=target)) == {"host": "ConnectionRefusedError"}
    finally:
        listener.close()
    assert listener.received == []

    after = fleet.wait_state("alice", "running")
    assert after["pid"] == made["alice"]["pid"]
    again = recorded_task(fleet, "alice")
    assert again is not None and (again.net_pid, again.net_start) == (task.net_pid, task.net_start)
    time.sleep(1.0)  # deliberately: health checks pass through the forwarder, which must stay the same one
    assert forwarders_of(fleet, "alice") == [task.net_pid]
    assert pids_with_arg(f"--port={port}") == [after["pid"]]
    events = [e["action"] for e in fleet.cli("events", "--instance", "alice", "--json").json()]
    assert "instance.reattach" in events and "instance.lost" not in events

    fleet.cli("instance", "stop", "alice")
    assert forwarders_of(fleet, "alice") == []
    assert not procfs.is_alive(task.net_pid, task.net_start)
    assert port_is_free(port, "127.0.0.1") and not sock.exists()


def test_a_dead_forwarder_ends_the_task_and_the_instance_comes_back_reachable(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    made = running_fleet(fleet, release_zips, "alice", "bob")
    port = made["alice"]["port"]
    first = recorded_task(fleet, "alice")
    assert first is not None and first.net_pid is not None
    os.kill(first.net_pid, signal.SIGKILL)

    def restarted() -> dict | None:
        row = fleet.instance("alice")
        return row if row["state"] == "running" and row["pid"] != made["alice"]["pid"] else None

    back = wait_until(restarted, 20, "alice to be restarted with a new forwarder")
    assert back["restarts"] == 1
    crashed = [e for e in fleet.cli("events", "--instance", "alice", "--json").json() if e["action"] == "instance.crashed"]
    assert crashed and "network forwarder" in crashed[-1]["message"], crashed
    second = recorded_task(fleet, "alice")
    assert second is not None and second.net_pid not in (None, first.net_pid)
    assert forwarders_of(fleet, "alice") == [second.net_pid]
    assert fleet.get(port, STATUS_PATH).json()["version"] == "13.345"
    # The old server went with its forwarder; bob never noticed.
    assert not procfs.is_alive(made["alice"]["pid"])
    assert fleet.instance("bob")["restarts"] == 0
