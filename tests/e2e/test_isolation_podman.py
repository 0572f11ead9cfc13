"""A hostile tenant against the podman runtime's isolation (issue 10, item 6).

Every attack is JavaScript run from inside a real container (the stand-in's `__node` hook runs a
program in a child of the server's own node, as the tenant's code would: same uid, same container;
the image holds node and nothing else) of a real fleet on the podman runtime, driven through the
CLI: real podman, runc, Caddy and node. Two tenants, alice (the attacker) and bob (the neighbour),
share one fleet for the module, with small limits so the fork bomb and the memory hog reach them
quickly.

What an instance may write: its data (`/data`, but not `/data/Data/shared`) and the container's own
memory-backed mounts (`/tmp`, `/dev/shm`; `/var/tmp`, `/run` or `/dev/mqueue` would pass too), which
count against its memory limit and are gone with the container. Nothing else, and nothing another
instance or the host sees.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.edge_client import https, local_ca
from tests.support.fleets import make_fleet
from tests.support.foundry_standin import STATUS_PATH, run_node_in_instance
from tests.support.ports import host_address
from tests.support.harness import FleetHarness, wait_until
from tests.support.podman import podman_missing

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(podman_missing() is not None, reason=str(podman_missing()))]

MEMORY_MB = 256
PIDS = 64
INIT_NAMES = {"catatonit", "podman-init", "tini", "tini-static", "docker-init"}  # what --init may run as PID 1


# ----------------------------------------------------------------------------- the fleet


def fleet_podman_socket(fleet: FleetHarness) -> Path:
    """The podman API socket the fleet uses: the configured one, else the one it starts."""
    configured = getattr(getattr(fleet.settings(), "podman", None), "socket", None)
    return Path(configured) if configured else fleet.root / "run" / "podman" / "podman.sock"


@dataclass
class Tenant:
    name: str
    port: int
    uid: int
    data_dir: Path

    def js(self, program: str, timeout: float = 30) -> dict:
        """Run `program` (after the PRELUDE) inside the instance; it prints one JSON line, returned."""
        result = run_node_in_instance(self.port, PRELUDE + textwrap.dedent(program), timeout=timeout)
        assert result["code"] == 0, result
        return json.loads(result["stdout"].strip().splitlines()[-1])


@dataclass
class PodmanFleet:
    fleet: FleetHarness
    alice: Tenant
    bob: Tenant

    def through_edge(self, tenant: Tenant) -> int:
        https_port = self.fleet.settings().edge.https_port
        return https(https_port, f"{tenant.name}.localhost", STATUS_PATH, local_ca(self.fleet.root)).status_code

    def edge_answers(self, tenant: Tenant) -> bool:
        try:
            return self.through_edge(tenant) == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="module")
def podman_fleet(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[PodmanFleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("podman-isolation"), runtime="podman", **{
        "memory_mb = 2048": f"memory_mb = {MEMORY_MB}",
        "pids = 512": f"pids = {PIDS}",
    })
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        tenants = {}
        for name in ("alice", "bob"):
            made = fleet.cli("instance", "create", name, "--release", "13.345", "--json").json()["instance"]
            assert made["state"] in ("running", "starting"), made
            tenants[name] = Tenant(name, made["port"], made["uid"], Path(made["data_dir"]))
        for name in tenants:
            # (Seen once on a loaded machine: create answered while the first health check was still due.)
            fleet.wait_state(name, "running")
        yield PodmanFleet(fleet, tenants["alice"], tenants["bob"])
    finally:
        fleet.tear_down()  # the fleet's containers too


# ----------------------------------------------------------------------------- JavaScript run inside


PRELUDE = r"""
const fs = require('fs');
const net = require('net');
const out = (value) => console.log(JSON.stringify(value));
const attempt = (fn) => { try { fn(); return 'ok'; } catch (e) { return e.code || String(e); } };
const read = (p) => attempt(() => fs.readFileSync(p));
const list = (p) => attempt(() => fs.readdirSync(p));
const write = (p) => attempt(() => {
  let target = p;
  try { if (fs.statSync(p).isDirectory()) target = p.replace(/\/$/, '') + '/.probe-' + process.pid; } catch (e) {}
  fs.writeFileSync(target, 'x');
  if (target !== p) fs.unlinkSync(target);
});
const connect = (options, ms = 1500) => new Promise((resolve) => {
  const s = net.connect(options);
  const done = (r) => { clearTimeout(t); s.destroy(); resolve(r); };
  const t = setTimeout(() => done('timeout'), ms);
  s.on('connect', () => done('connected'));
  s.on('error', (e) => done(e.code || String(e)));
});
const status = () => Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').trim().split('\n')
  .map((l) => l.split(':\t')).map(([k, v]) => [k, v.trim()]));
"""


def host_pids_of(tenant: Tenant) -> list[int]:
    """Host pids of the tenant's node server (its uid, `--dataPath=/data` as the container sees it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            uid = int((entry / "status").read_text().split("\nUid:\t", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
        if uid == tenant.uid and argv[0].endswith(b"node") and b"--dataPath=/data" in argv:
            found.append(int(entry.name))
    return found


def server_pid(tenant: Tenant) -> int:
    pids = wait_until(lambda: host_pids_of(tenant), 20, f"{tenant.name}'s server on the host")
    assert len(pids) == 1, pids
    return pids[0]


def cgroup_dir(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise AssertionError(f"pid {pid} is in no {controller} cgroup")


def oom_kills_in(memory_group: Path) -> int:
    """How many processes the kernel killed for reaching this memory cgroup's limit."""
    fields = dict(line.split() for line in (memory_group / "memory.oom_control").read_text().splitlines())
    return int(fields["oom_kill"])


def oom_kills_of(pid: int) -> list[str]:
    kernel = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    return [line for line in kernel.splitlines() if f"Killed process {pid} (" in line]


# ----------------------------------------------------------------------------- who it runs as


def test_it_runs_as_its_own_unprivileged_uid_without_capabilities_or_new_privileges(
    podman_fleet: PodmanFleet,
) -> None:
    alice, bob = podman_fleet.alice, podman_fleet.bob
    seen = alice.js("""
        const s = status();
        out({uid: s.Uid, gid: s.Gid, caps: [s.CapInh, s.CapPrm, s.CapEff, s.CapBnd, s.CapAmb],
             noNewPrivs: s.NoNewPrivs, seccomp: s.Seccomp, setuid: attempt(() => process.setuid(0)),
             setgid: attempt(() => process.setgid(0)), groups: process.getgroups()});
    """)
    assert alice.uid not in (0, None) and alice.uid != bob.uid
    assert alice.data_dir.stat().st_uid == alice.uid  # the data's owner, as the contract says
    assert seen["uid"].split() == [str(alice.uid)] * 4, seen  # real, effective, saved, filesystem
    assert seen["gid"].split()[0] != "0" and "0" not in seen["gid"].split(), seen
    assert 0 not in seen["groups"], seen
    assert seen["caps"] == ["0000000000000000"] * 5, seen
    assert seen["noNewPrivs"] == "1", seen
    assert seen["seccomp"] == "2", seen  # a filter is loaded
    assert seen["setuid"] == "EPERM" and seen["setgid"] == "EPERM", seen


# ----------------------------------------------------------------------------- what it writes


def test_it_writes_its_data_and_its_own_tmpfs_only(podman_fleet: PodmanFleet) -> None:
    alice, bob = podman_fleet.alice, podman_fleet.bob
    release = alice.js("out(fs.readdirSync('/foundry'))")
    assert "main.js" in release and "package.json" in release, release
    marker = f"alice-was-here-{os.getpid()}"
    seen = alice.js(f"""
        const targets = ['/foundry/main.js', '/foundry/new.js', '/foundry', '/data/Data/shared',
                         '/data/Data/shared/new.txt', '/', '/new', '/etc/passwd', '/etc', '/usr/bin', '/usr/lib',
                         '/sys/fs/cgroup', '/proc/sys/kernel/hostname', '/var', '/data/..'];
        const result = {{}};
        for (const p of targets) result[p] = write(p);
        result.chmodRelease = attempt(() => fs.chmodSync('/foundry/main.js', 0o777));
        result.moveShared = attempt(() => fs.renameSync('/data/Data/shared', '/data/Data/moved'));
        result.removeShared = attempt(() => fs.rmdirSync('/data/Data/shared'));
        result.ownData = write('/data/Data/alice.txt');
        fs.writeFileSync('/data/Data/alice.txt', 'mine');
        fs.writeFileSync('/tmp/{marker}', 'in my tmpfs');
        fs.writeFileSync('/dev/shm/{marker}', 'in my shared memory');
        // Every mount it can write to, found by trying each one.
        const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\\n').map((l) => {{
          const [pre, post] = l.split(' - ');
          return {{point: pre.split(' ')[4], type: post.split(' ')[0]}};
        }});
        result.writable = mounts.filter((m) => write(m.point) === 'ok')
          .map((m) => ({{...m, directory: fs.statSync(m.point).isDirectory()}}));
        out(result);
    """)
    writable = seen.pop("writable")
    assert seen.pop("ownData") == "ok"
    assert (alice.data_dir / "Data" / "alice.txt").read_text() == "mine"  # the host's copy of its data
    # Refused by the mounts themselves (read-only), not only by file modes a root-owned tree happens
    # to have: the release and the shared assets are hard links and directories the host writes.
    assert seen.pop("/sys/fs/cgroup") in ("EROFS", "EACCES")  # (a root-owned tmpfs holding ro mounts)
    assert seen.pop("moveShared") == seen.pop("removeShared") == "EBUSY"  # a mount point stays put
    assert seen == dict.fromkeys(seen, "EROFS"), seen
    # Its data, and the container's own memory-backed mounts (private, in its memory limit, gone with
    # it): no host directory. (What else takes a write is a device such as /dev/null, bound over the
    # /proc files podman masks.)
    directories = {m["point"]: m["type"] for m in writable if m["directory"]}
    assert directories.pop("/data", None) is not None, writable
    assert set(directories) <= {"/tmp", "/var/tmp", "/run", "/dev/shm", "/dev/mqueue"}, writable
    assert set(directories.values()) <= {"tmpfs", "mqueue"}, writable
    # What it wrote in /tmp and /dev/shm is its own: neither the host nor bob sees it.
    assert not (Path("/tmp") / marker).exists() and not (Path("/dev/shm") / marker).exists()
    assert bob.js(f"out([read('/tmp/{marker}'), read('/dev/shm/{marker}')])") == ["ENOENT", "ENOENT"]
    assert not (podman_fleet.fleet.root / "shared" / "new.txt").exists()
    assert (podman_fleet.fleet.root / "shared").is_dir()


# ----------------------------------------------------------------------------- what it reads


def test_it_reaches_neither_its_neighbour_nor_the_fleets_files_and_sockets(podman_fleet: PodmanFleet) -> None:
    alice, bob, fleet = podman_fleet.alice, podman_fleet.bob, podman_fleet.fleet
    root = fleet.root
    secrets = sorted(str(p) for p in (root / "state").glob("*.key"))
    certificates = sorted(str(p) for p in (root / "edge").rglob("*") if p.suffix in (".key", ".crt", ".pem"))
    sockets = sorted({str(p) for p in (root / "run").rglob("*") if p.is_socket()}
                     | {str(fleet_podman_socket(fleet)), str(fleet.socket)}
                     | {str(p) for p in [Path("/run/podman/podman.sock")] if p.exists()})  # the host's own
    assert secrets and certificates and str(fleet.socket) in sockets  # (so the checks below check something)
    files = [str(bob.data_dir / "Config" / "options.json"), str(bob.data_dir / "Config" / "admin.txt"),
             str(bob.data_dir), str(root / "fleet.toml"), str(root / "state" / "fleet.sqlite"), *secrets,
             *certificates]
    for path in files + sockets:
        assert Path(path).exists(), path  # on the host
    seen = alice.js(f"""
        const files = {json.dumps(files)};
        const sockets = {json.dumps(sockets)};
        const result = {{files: {{}}, sockets: {{}}, mountinfo: fs.readFileSync('/proc/self/mountinfo', 'utf8')}};
        for (const p of files) {{
          // Directly, and through the roots /proc offers (its own, its init's).
          result.files[p] = [read(p), list(p), read('/proc/self/root' + p), read('/proc/1/root' + p)];
        }}
        (async () => {{
          for (const p of sockets) result.sockets[p] = await connect({{path: p}});
          // Where bob's data would be, guessed from where its own lives on the host.
          const own = result.mountinfo.split('\\n').map((l) => l.split(' ')).find((f) => f[4] === '/data');
          result.ownHostPath = own ? own[3] : null;
          out(result);
        }})();
    """)
    # Not there at all (not merely unreadable by its uid: file modes alone would say EACCES).
    for path, outcomes in seen["files"].items():
        assert outcomes == ["ENOENT"] * 4, (path, outcomes)
    for path, outcome in seen["sockets"].items():
        assert outcome == "ENOENT", (path, outcome)
    # Bob's data directory is nowhere in alice's mounts, and the path next to its own leads nowhere.
    assert str(bob.data_dir) not in seen["mountinfo"] and "/bob/" not in seen["mountinfo"]
    if seen["ownHostPath"]:
        guessed = seen["ownHostPath"].replace("/alice/", "/bob/")
        assert alice.js(f"out([read('{guessed}/Config/options.json'), list('{guessed}')])") == ["ENOENT", "ENOENT"]


# ----------------------------------------------------------------------------- what it sees


def test_it_sees_only_its_own_processes(podman_fleet: PodmanFleet) -> None:
    alice = podman_fleet.alice
    seen = alice.js("""
        const procs = {};
        for (const pid of fs.readdirSync('/proc').filter((n) => /^\\d+$/.test(n))) {
          try { procs[pid] = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\\0').filter(Boolean); }
          catch (e) { procs[pid] = e.code; }
        }
        out({procs, self: process.pid, parent: process.ppid});
    """)
    procs = {int(pid): argv for pid, argv in seen["procs"].items()}
    host_count = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit())
    assert host_count > 20  # the host runs many (the daemon, Caddy, bob's container, ...)
    # The init, the server and this program: nothing of the host's, nor of bob's container.
    assert len(procs) <= 4, procs
    assert Path(procs[1][0]).name in INIT_NAMES, procs
    assert procs[seen["self"]][1] == "-e", procs
    assert "--dataPath=/data" in procs[seen["parent"]], procs
    for argv in procs.values():
        assert not any("foundry-fleet" in a or "caddy" in a or "conmon" in a for a in argv), procs


# ----------------------------------------------------------------------------- what it reaches on the network


def listening(address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(16)  # the kernel completes connections without an accept: "connected" means reached
    return sock


ADDRESSES = r"""
const gateway = (() => {
  for (const line of fs.readFileSync('/proc/net/route', 'utf8').trim().split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f[1] === '00000000') return Buffer.from(f[2], 'hex').reverse().join('.');
  }
  return null;
})();
const own = Object.values(require('os').networkInterfaces()).flat()
  .filter((a) => a.family === 'IPv4' && !a.internal).map((a) => a.address);
"""


def test_it_reaches_no_host_service_and_not_its_neighbour(podman_fleet: PodmanFleet) -> None:
    alice, bob, fleet = podman_fleet.alice, podman_fleet.bob, podman_fleet.fleet
    settings = fleet.settings()
    on_loopback, on_wildcard = listening("127.0.0.1"), listening("0.0.0.0")
    try:
        bob_inside = bob.js(ADDRESSES + "out(own)")
        assert bob_inside, "bob's container has an address of its own"
        outside = host_address()
        targets = {
            "fleet web port": settings.edge.web_port,
            "bob's published port": bob.port,
            "a host service on loopback": on_loopback.getsockname()[1],
            "a host service on every address": on_wildcard.getsockname()[1],
        }
        with socket.create_connection(("127.0.0.1", settings.edge.web_port), timeout=2):
            pass  # the host itself reaches them
        seen = alice.js(ADDRESSES + f"""
            const targets = {json.dumps(targets)};
            const hosts = {{'its own loopback': '127.0.0.1', 'the gateway': gateway,
                           'the host address': {json.dumps(outside)}}};
            (async () => {{
              const result = {{gateway}};
              const tries = [];  // all at once: a dropped packet costs its timeout once
              for (const [where, host] of Object.entries(hosts)) {{
                if (!host) continue;
                for (const [what, port] of Object.entries(targets)) tries.push([`${{what}} via ${{where}}`, host, port]);
              }}
              for (const address of {json.dumps(bob_inside)}) tries.push([`bob's server at ${{address}}`, address, {bob.port}]);
              tries.push(['cloud metadata', '169.254.169.254', 80]);
              await Promise.all(tries.map(async ([label, host, port]) => {{ result[label] = await connect({{host, port}}); }}));
              out(result);
            }})();
        """, timeout=90)
    finally:
        on_loopback.close()
        on_wildcard.close()
    assert seen.pop("gateway"), "the container has a default route (its outbound NAT)"
    assert seen, seen
    for target, outcome in seen.items():
        assert outcome != "connected", (target, seen)
    # Players still come in through the edge.
    assert podman_fleet.through_edge(bob) == 200 and podman_fleet.through_edge(alice) == 200


# ----------------------------------------------------------------------------- limits


BOMB = r"""
const { spawn } = require('child_process');
const tally = { spawned: 0, errors: {}, exits: {} };
const kids = [];
const until = Date.now() + 2500;
const note = (table, key) => { table[key] = (table[key] || 0) + 1; };
function one() {
  if (Date.now() > until) {
    for (const c of kids) { try { c.kill('SIGKILL'); } catch (e) {} }
    // Written aside, then renamed: the test polls for the file and reads it as soon as it is there.
    fs.writeFileSync('/data/bomb.json.part', JSON.stringify(tally));
    fs.renameSync('/data/bomb.json.part', '/data/bomb.json');
    setTimeout(() => process.exit(0), 200);
    return;
  }
  try {
    const c = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e9)'], { stdio: 'ignore' });
    c.on('error', (e) => note(tally.errors, e.code));
    c.on('exit', (code, signal) => note(tally.exits, signal || String(code)));
    if (c.pid) { tally.spawned++; kids.push(c); }
  } catch (e) {
    note(tally.errors, e.code);
  }
  setTimeout(one, 5);
}
one();
"""


def test_a_fork_bomb_stops_at_the_pids_limit_and_its_neighbour_keeps_answering(podman_fleet: PodmanFleet) -> None:
    alice, bob = podman_fleet.alice, podman_fleet.bob
    bob_pid, bob_restarts = server_pid(bob), podman_fleet.fleet.instance("bob")["restarts"]
    group = cgroup_dir(server_pid(alice), "pids")
    assert int((group / "pids.max").read_text()) == PIDS
    refused_before = int((group / "pids.events").read_text().split()[1])
    result = alice.data_dir / "bomb.json"
    result.unlink(missing_ok=True)

    run_node_in_instance(alice.port, PRELUDE + BOMB, background=True)
    peak, answered, deadline = 0, 0, time.monotonic() + 30
    while not result.exists():  # the bomb goes on for 2.5 s, then writes what it saw
        peak = max(peak, int((group / "pids.current").read_text()))
        assert podman_fleet.through_edge(bob) == 200  # bob answers through the edge all along
        answered += 1
        assert time.monotonic() < deadline, "the bomb never finished"
    tally = json.loads(result.read_text())
    assert PIDS // 2 <= peak <= PIDS, (peak, tally)
    assert int((group / "pids.events").read_text().split()[1]) > refused_before, tally  # forks refused
    assert tally["errors"].get("EAGAIN", 0) + tally["exits"].get("SIGABRT", 0) > 0, tally
    assert answered >= 3
    assert server_pid(bob) == bob_pid and podman_fleet.fleet.instance("bob")["restarts"] == bob_restarts
    # Alice herself is still up (or back up) once the bomb is over.
    wait_until(lambda: podman_fleet.fleet.get(alice.port, STATUS_PATH).status_code == 200, 30, "alice to answer")


HOG = r"""
const kept = [];
for (;;) { const b = Buffer.allocUnsafe(16 << 20); b.fill(0xa5); kept.push(b); }
"""


def test_a_memory_hog_is_killed_at_the_memory_limit_and_its_neighbour_is_untouched(
    podman_fleet: PodmanFleet,
) -> None:
    alice, bob, fleet = podman_fleet.alice, podman_fleet.bob, podman_fleet.fleet
    bob_pid, bob_restarts = server_pid(bob), podman_fleet.fleet.instance("bob")["restarts"]
    alice_pid = server_pid(alice)
    memory = cgroup_dir(alice_pid, "memory")
    assert int((memory / "memory.limit_in_bytes").read_text()) == MEMORY_MB << 20
    restarts = fleet.instance("alice")["restarts"]
    kills_before = oom_kills_in(memory)

    # A hog the tenant starts is the biggest process in the container: the kernel kills it, not the
    # server, and not anything of bob's.
    hog = run_node_in_instance(alice.port, HOG, timeout=60)
    assert hog["signal"] == "SIGKILL" and hog["code"] is None, hog
    assert oom_kills_in(memory) == kills_before + 1  # by the kernel, for this container's limit
    assert server_pid(alice) == alice_pid

    # The server itself eating memory: killed at the limit, and the supervisor restarts it as a crash.
    with pytest.raises(httpx.HTTPError):
        fleet.get(alice.port, f"/-/__alloc?mb={MEMORY_MB * 2}", timeout=30)
    wait_until(lambda: oom_kills_of(alice_pid), 10, "the kernel's OOM kill of alice's server")

    def restarted() -> dict | None:
        row = fleet.instance("alice")
        return row if row["state"] == "running" and row["restarts"] > restarts else None

    wait_until(restarted, 30, "alice restarted after the OOM kill")
    crashed = [e for e in fleet.cli("events", "--instance", "alice", "--json").json()
               if e["action"] == "instance.crashed"]
    assert crashed, "the OOM kill is recorded as a crash"
    assert fleet.get(alice.port, STATUS_PATH).status_code == 200
    assert server_pid(alice) != alice_pid
    assert server_pid(bob) == bob_pid and fleet.instance("bob")["restarts"] == bob_restarts
    assert not oom_kills_of(bob_pid)
    # Through the edge too, once Caddy has taken in alice's restart (a reload may hang up on a request).
    wait_until(lambda: podman_fleet.edge_answers(bob), 10, "bob to answer through the edge")
