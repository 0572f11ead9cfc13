"""What the guest's scenarios share: the fleet as a user installs and drives it (its CLI, as root),
and waiting for what takes a while on an emulated machine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SHARE = Path(os.environ.get("LANE", "/lane"))
VENV = Path("/opt/foundry-fleet")
FLEET = VENV / "bin" / "foundry-fleet"
T = TypeVar("T")


def trace(line: str) -> None:
    """One line in out/trace.log, which the host can read while the guest is still running."""
    with (SHARE / "out" / "trace.log").open("a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def run(*argv: str, check: bool = True, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        trace(f"{' '.join(argv)[:200]} -> timed out after {timeout:.0f} s")
        raise
    trace(f"{' '.join(argv)[:200]} -> {proc.returncode} ({time.monotonic() - started:.1f} s)")
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def install_wheel() -> Path:
    """`pip install` of the fleet's wheel into the image's venv, as a user installs it (the venv already
    holds its dependencies: the guest has no network)."""
    if not FLEET.exists():
        wheels = sorted((SHARE / "wheels").glob("foundry_fleet-*.whl"))
        assert len(wheels) == 1, f"expected one fleet wheel in the share, found {wheels}"
        run(str(VENV / "bin" / "pip"), "install", "--no-index", "--find-links", str(SHARE / "wheels"),
            str(wheels[0]), timeout=900)
    return FLEET


def release_zip(generation: int = 12) -> Path:
    found = sorted((SHARE / "releases").glob(f"FoundryVTT-node-{generation}.*.zip"))
    assert found, f"no stand-in release of generation {generation} in the share"
    return found[0]


@dataclass
class Fleet:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "fleet.toml"

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(str(FLEET), "--config", str(self.config), *args, check=check, timeout=timeout,
                   env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def edit(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, f"{old!r} is not in fleet.toml"
        self.config.write_text(text.replace(old, new, 1))

    def wait_for_daemon(self, timeout: float = 300) -> None:
        wait_until(lambda: (self.root / "run" / "control.sock").exists(), timeout, "the daemon's control socket")

    def instance(self, name: str) -> dict[str, Any]:
        return self.json("instance", "show", name)

    def wait_state(self, name: str, state: str, timeout: float = 300) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            shown = self.instance(name)
            if shown["state"] == "failed" and state != "failed":  # not worth waiting for: say why at once
                raise AssertionError(f"{name} failed while waiting for {state}: {shown}")
            return shown if shown["state"] == state else None
        return wait_until(check, timeout, f"{name} to be {state}", interval=2)


def new_fleet(root: Path, *init_args: str, **edits: str) -> Fleet:
    """`foundry-fleet init` at `root`, then the edits (old text -> new text) to its fleet.toml."""
    install_wheel()
    run(str(FLEET), "init", "--root", str(root), *init_args)
    fleet = Fleet(root)
    for old, new in edits.items():
        fleet.edit(old, new)
    return fleet


def edge_get(fleet_root: Path, host: str, path: str, port: int = 8443, timeout: float = 30) -> Any:
    """GET through the edge as a browser would: HTTPS to loopback with `host` as SNI, trusting the
    fleet's local CA."""
    import ssl

    import httpx

    ca = fleet_root / "edge" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=timeout) as client:
        return client.get(f"https://127.0.0.1:{port}{path}", headers={"Host": host},
                          extensions={"sni_hostname": host})


def serves(fleet_root: Path, host: str) -> bool:
    try:
        return edge_get(fleet_root, host, "/-/api/status").status_code == 200
    except Exception:  # noqa: BLE001 - not answering yet, in any of the ways a starting edge fails
        return False


def zfs_pool(name: str, mib: int = 1024) -> None:
    """A pool on a sparse file: real OpenZFS on a scratch vdev."""
    vdev = Path(f"/var/tmp/{name}.img")
    with vdev.open("wb") as f:
        f.truncate(mib * 1024 * 1024)
    run("zpool", "create", "-f", name, str(vdev))


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def cgroup_of(pid: int) -> Path:
    """The cgroup v2 directory `pid` is in."""
    line = Path(f"/proc/{pid}/cgroup").read_text().strip()
    assert line.startswith("0::"), f"not on a cgroup v2 host: {line}"
    return Path("/sys/fs/cgroup") / line[3:].lstrip("/")


def in_instance(shown: dict[str, Any], script: str, timeout: float = 120, node: bool = False) -> dict[str, Any]:
    """Run `script` inside the instance as its server's own code would (the stand-in's __shell, or
    __node for a JS program): {code, signal, stdout, stderr}."""
    import httpx

    hook, field = ("__node", "program") if node else ("__shell", "script")
    r = httpx.post(f"http://{shown['address']}/-/{hook}", json={field: script, "timeoutMs": int(timeout * 1000)},
                   timeout=timeout + 30)
    r.raise_for_status()
    return r.json()


def journal(unit: str, lines: int = 150) -> str:
    return run("journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines), "-u", unit, check=False).stdout


def print_daemon_report(fleet: Fleet, unit: str, lines: int = 150) -> None:
    """The daemon's journal and the tail of each instance's log, for the report of a failed scenario."""
    print(f"--- journal of {unit}:\n{journal(unit, lines)}")
    for log in sorted(fleet.root.glob("logs/instances/*/foundry.log")):
        print(f"--- {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))


@contextmanager
def daemon(fleet: Fleet, unit: str, *up_args: str) -> Iterator[None]:
    """The fleet's daemon as a transient systemd service while the block runs, stopped after it; when
    the block fails, the daemon's journal goes with the report."""
    run("systemd-run", f"--unit={unit}", "--collect", "--property=Restart=no",
        str(FLEET), "--config", str(fleet.config), "up", *up_args)
    try:
        fleet.wait_for_daemon()
        yield
    except BaseException:
        print_daemon_report(fleet, unit)
        raise
    finally:
        run("systemctl", "stop", unit, check=False, timeout=300)
