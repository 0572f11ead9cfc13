"""Drive a real fleet the way a person does: the `foundry-fleet` command, a real daemon, real processes."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from foundry_fleet.domain import instance_layout
from foundry_fleet.services.exec_users import exec_user_name, remove_exec_user
from tests.support.cgroups import describe, fleet_cgroup_parent, remove_fleet_firewall, remove_groups
from tests.support.podman import Container, FleetPodman, uses_podman

BIN = Path(sys.executable).parent / "foundry-fleet"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def wait_until_async(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """`wait_until` for a test running on an event loop: the loop keeps running while it waits."""
    import asyncio

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class OutputReader:
    """Collects what a process writes to its stdout (a pipe), line by line, in a thread: a test waits
    for what it expects with `wait_until` instead of blocking on a read."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        import threading

        assert proc.stdout is not None
        self._stdout = proc.stdout
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line if isinstance(line, str) else line.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class FleetHarness:
    root: Path
    config: Path
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nomad: Any = None  # the stand-in Nomad (tests.support.nomad_standin) of a fleet on the nomad runtime

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> CliResult:
        p = subprocess.run(
            [str(BIN), "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        result = CliResult(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise AssertionError(f"foundry-fleet {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return result

    def settings(self) -> Any:
        """The fleet's configuration as the fleet reads it."""
        from foundry_fleet.config import load_config

        return load_config(self.config)

    def sql(self, statement: str, *params: object) -> None:
        """Change the state database directly, as a process dying half-way through would leave it."""
        import sqlite3

        db = sqlite3.connect(self.root / "state" / "fleet.sqlite")
        try:
            db.execute(statement, params)
            db.commit()
        finally:
            db.close()

    def edit_config(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new, 1))

    # the daemon ---------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.root / "run" / "control.sock"

    def up(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"daemon-{len(self.daemons)}.log", "wb")
        proc = subprocess.Popen(
            [str(BIN), "--config", str(self.config), "up", *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.daemons.append(proc)
        wait_until(lambda: self.answers() or proc.poll() is not None, 30, "the daemon's control socket")
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{self.daemon_log()}")
        return proc

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://x") as c:
                return c.get("/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def daemon_log(self, index: int = -1) -> str:
        logs = sorted(self.root.glob("daemon-*.log"))
        return logs[index].read_text(errors="replace") if logs else ""

    def stop_daemons(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def running(self) -> bool:
        return any(proc.poll() is None for proc in self.daemons)

    @property
    def cgroup_parent(self) -> str:
        return fleet_cgroup_parent(self.root.resolve())

    @property
    def fleet_id(self) -> str:
        """The fleet's id as its runtime names it (in container names and labels, cgroups, chains)."""
        return self.cgroup_parent.removeprefix("foundry-fleet-")

    def uses_podman(self) -> bool:
        return uses_podman(self.root, self.config)

    @property
    def podman(self) -> FleetPodman:
        return FleetPodman(self.fleet_id, self.root)

    def containers(self, instance: str | None = None) -> list[Container]:
        """The fleet's podman containers (running or not), or one instance's."""
        return self.podman.containers(instance)

    def tear_down(self) -> None:
        """Stop the daemons, end every process of the fleet (instances and Caddy, also those a test left
        running on purpose, and the podman service it started) and remove the fleet's containers, network
        and control groups. Fails when a group cannot be removed: a process of the fleet survived its test."""
        self.stop_daemons()
        if self.nomad is not None:
            # Its tasks are the fleet's instances: they stop with it (and their cgroups and forwarders go).
            self.nomad.stop()
            # Provisioning for the exec task driver made a system user per instance uid, as on a real node.
            for uid in self.exec_users():
                remove_exec_user(uid)
        if self.uses_podman():
            # Before the processes: a container's conmon and the fleet's podman service are among them.
            self.podman.remove_all()
        kill_processes_with(str(self.root))  # instances (--dataPath=...), Caddy (--config .../edge/...)
        left = remove_groups(self.cgroup_parent)
        assert not left, f"the fleet at {self.root} left control groups behind: {describe(left)}"
        # A daemon killed (or stopped leaving instances running) keeps its firewall chains, which keep
        # dropping outside connections to its port range: a later test drawing that block would fail.
        remove_fleet_firewall(self.cgroup_parent)

    def exec_users(self) -> list[int]:
        """The uids of the fvtt-u<uid> users on this host inside the fleet's uid block (the exec task
        driver's users that provisioning made for its instances)."""
        low, high = self.settings().instances.uid_range
        return sorted(u.pw_uid for u in pwd.getpwall()
                      if low <= u.pw_uid <= high and u.pw_name == exec_user_name(u.pw_uid))

    # instances ----------------------------------------------------------------------------

    def instance(self, name: str) -> dict[str, Any]:
        return self.cli("instance", "show", name, "--json").json()

    def wait_state(self, name: str, state: str, timeout: float = 30) -> dict[str, Any]:
        """The instance as `instance show --json` shows it once it is in `state`.

        While it is not, the daemon is asked in this process (one request on its control socket) rather
        than through a `foundry-fleet` process per look: on two cores each such process took a fifth of
        a second of CPU from the very fleet being waited for. The command is run once the daemon says
        `state`, and its answer is the one returned (and waited for, should it still differ)."""
        def check() -> dict[str, Any] | None:
            if self._daemon_state(name) not in (state, None):
                return None
            row = self.instance(name)
            return row if row["state"] == state else None

        return wait_until(check, timeout, f"{name} to be {state}", interval=0.1)

    def _daemon_state(self, name: str) -> str | None:
        """The instance's state as the running daemon answers it; None when no daemon answers (or the
        instance is unknown to it): the command then says what there is."""
        from foundry_fleet.api.client import ControlClient
        from foundry_fleet.domain.errors import FleetError

        client = ControlClient(self.socket, timeout=5, actor="test:harness")
        try:
            return str(client.get_instance(name)["state"])
        except FleetError:
            return None
        finally:
            client.close()

    def get(self, port: int, path: str, timeout: float = 5) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)

    def address(self, name: str) -> str:
        """Where the instance's server answers ("host:port"), as the fleet recorded it for the edge and
        its health checks. On local and podman that is the fleet's own port on loopback (checked here, so
        a scenario reading it is no weaker there); on nomad it is the node and the port Nomad chose."""
        shown = self.instance(name)
        address, port = shown["address"], shown["port"]
        assert address, f"{name} has no recorded address: {shown}"
        if self.nomad is None:
            assert address == f"127.0.0.1:{port}", f"{name} answers at {address}, not at its port {port}"
        return str(address)

    def served_port(self, name: str) -> int:
        """The port of `address(name)`: what the instance's server was started with (--port=)."""
        return int(self.address(name).rsplit(":", 1)[1])

    def get_from(self, name: str, path: str, timeout: float = 5) -> httpx.Response:
        """GET `path` from the instance's server itself, at its recorded address (not through the edge)."""
        return httpx.get(f"http://{self.address(name)}{path}", timeout=timeout)

    def probe_instance(self, name: str, **params: str) -> dict[str, Any]:
        """`probe` of the instance `name` at its recorded address."""
        r = self.get_from(name, "/-/__probe?" + "&".join(f"{k}={v}" for k, v in params.items()))
        r.raise_for_status()
        return r.json()

    def probe(self, port: int, **params: str) -> dict[str, Any]:
        r = self.get(port, "/-/__probe?" + "&".join(f"{k}={v}" for k, v in params.items()))
        r.raise_for_status()
        return r.json()


def sigint_as_in_a_terminal() -> None:
    """For Popen's preexec_fn: the child gets SIGINT's default handling, so Ctrl-C (SIGINT) reaches it as
    from a terminal, even when this test run was started as a background job, which ignores SIGINT and
    passes that on to every child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pids_with_arg(arg: str) -> list[int]:
    """Host pids of live node processes with `arg` as one of their arguments (e.g. --port=30001)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        if argv and argv[0].endswith(b"node") and arg.encode() in argv:
            found.append(int(entry.name))
    return found


def kill_processes_with(text: str) -> None:
    """SIGKILL every process whose command line contains `text` (test clean-up)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in argv:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def file_digests(tree: Path) -> dict[str, str]:
    """sha256 of every regular file under `tree` (live data, or a snapshot of it), by relative path.

    Left out: links (never followed), a directory snapshot's metadata file, `.zfs`, and `Data/shared`
    (the shared assets' mount point, not the tenant's data).
    """
    import hashlib

    out = {}
    for dirpath, dirnames, files in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)) and d != ".zfs"
                       and os.path.relpath(os.path.join(dirpath, d), tree) != str(instance_layout.SHARED_MOUNT)]
        for f in files:
            full = Path(dirpath, f)
            if f != ".snapshot.json" and not full.is_symlink():
                out[str(full.relative_to(tree))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


class Clock:
    """A clock a test moves by hand (services take `clock=`)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
