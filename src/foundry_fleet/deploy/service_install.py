"""`foundry-fleet service install|uninstall`: the fleet as a systemd service, shown as a plan of steps
before any is taken.

A step is a description a person reads and an action; `--dry-run` prints the descriptions only. The
unit is checked by `systemd-analyze verify` before it is written, so a unit systemd would warn about
never replaces a working one. Uninstalling stops the instances with the service (nothing of the fleet
keeps running once its service is gone) and keeps the fleet's data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.config import FleetConfig
from foundry_fleet.credentials import configured_secrets
from foundry_fleet.deploy.systemd_unit import UNIT_NAME, UnitSpec, fleet_unit_spec, render_unit
from foundry_fleet.domain.errors import ExternalFailure, InvalidInput, Unsupported
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.services.daemon_exit import request_stop_instances

UNIT_DIR = Path("/etc/systemd/system")
_COMMAND_SECONDS = 120.0

Runner = Callable[[Sequence[str]], str]  # runs a command, returns its output; ExternalFailure on failure


def run_command(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=_COMMAND_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExternalFailure(f"{' '.join(argv)} failed: {e}", "see the message above") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ExternalFailure(f"{' '.join(argv)} failed: {' | '.join(said) or f'exit {done.returncode}'}",
                              f"journalctl -u {UNIT_NAME} -n 50 shows the service's own log")
    return done.stdout


@dataclass(frozen=True)
class Step:
    description: str
    action: Callable[[], None]


def _command_step(runner: Runner, *argv: str) -> Step:
    def act() -> None:
        runner(argv)

    return Step(" ".join(argv), act)


def fleet_executable() -> Path:
    """The foundry-fleet of this installation (a venv or pipx: beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "foundry-fleet"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("foundry-fleet")
    if found is None:
        raise Unsupported("no foundry-fleet executable found beside this Python or on PATH",
                          "install foundry-fleet with pip or pipx, then run service install from it")
    return Path(found).resolve()


def unit_spec_for(config: FleetConfig, config_path: Path, leave_running: bool) -> UnitSpec:
    return fleet_unit_spec(fleet_executable(), config_path.resolve(), config.root, config.paths.releases,
                           leave_running, config.storage.driver, config.runtime.driver,
                           configured_secrets(config.model_dump()))


def check_can_install(config: FleetConfig) -> None:
    """Refuse where a unit could not run: not root, no systemd, or a fleet daemon running outside it."""
    from foundry_fleet.services.daemon_lock import DaemonLock

    if os.geteuid() != 0:
        raise InvalidInput("service install and uninstall need root (they write to /etc/systemd/system)",
                           "run it with sudo, or add --dry-run to see the plan")
    if not Path("/run/systemd/system").is_dir():
        raise Unsupported("systemd is not running on this host (no /run/systemd/system)",
                          "run `foundry-fleet up` under the host's own service manager instead")
    lock = DaemonLock(config.paths.daemon_lock)
    if lock.is_held() and not _active():
        holder = lock.holder() or {}
        raise InvalidInput(f"a fleet daemon already runs for {config.root} outside systemd (pid {holder.get('pid')})",
                           "stop it (Ctrl-C, or SIGTERM to that pid), then install the service")


def _active(runner: Runner = run_command) -> bool:
    try:
        return runner(["systemctl", "is-active", UNIT_NAME]).strip() == "active"
    except ExternalFailure:
        return False


def verify_unit(text: str, runner: Runner = run_command) -> None:
    """`systemd-analyze verify` on the unit: any warning refuses it."""
    with tempfile.TemporaryDirectory(prefix="foundry-fleet-unit-") as tmp:
        path = Path(tmp, UNIT_NAME)
        path.write_text(text)
        try:
            done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                                  timeout=_COMMAND_SECONDS, check=False)
        except FileNotFoundError:
            raise Unsupported("systemd-analyze is missing", "install systemd (it comes with it)") from None
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        if done.returncode != 0 or said:
            raise ExternalFailure(f"systemd-analyze verify refused the unit: {' | '.join(said[-5:])}",
                                  "report this: the unit foundry-fleet renders should always pass")


def install_plan(config: FleetConfig, config_path: Path, leave_running: bool, unit_dir: Path = UNIT_DIR,
                 runner: Runner = run_command) -> list[Step]:
    spec = unit_spec_for(config, config_path, leave_running)
    text = render_unit(spec)
    unit = unit_dir / UNIT_NAME
    missing = [p for p in spec.writable if not p.exists()]
    existing = unit.read_text() if unit.exists() else None
    writes = "keep" if existing == text else ("replace" if existing is not None else "write")
    exit_mode = "leaves the instances running for the next start" if leave_running else "stops the instances"
    return [
        Step("check the unit with systemd-analyze verify", lambda: verify_unit(text)),
        *([Step(f"make {', '.join(map(str, missing))} (the unit mounts them writable: they must exist)",
                lambda: _make_directories(missing))] if missing else []),
        Step(f"{writes} {unit} (runs {config_path.resolve()}; a stop {exit_mode})",
             lambda: None if existing == text else write_atomic(unit, text, 0o644)),
        _command_step(runner, "systemctl", "daemon-reload"),
        _command_step(runner, "systemctl", "enable", UNIT_NAME),
        Step(f"systemctl restart {UNIT_NAME}, and wait until the fleet answers",
             lambda: _restart_and_wait(config, runner)),
    ]


def _make_directories(paths: list[Path]) -> None:
    for path in paths:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)


def _restart_and_wait(config: FleetConfig, runner: Runner, timeout: float = 120.0) -> None:
    from foundry_fleet.services.daemon_lock import DaemonLock

    runner(["systemctl", "restart", UNIT_NAME])
    deadline = time.monotonic() + timeout
    lock = DaemonLock(config.paths.daemon_lock)
    while time.monotonic() < deadline:
        if not _active(runner):
            break
        if lock.is_held() and config.paths.socket.exists():
            return
        time.sleep(0.5)
    log = runner(["journalctl", "-u", UNIT_NAME, "-n", "15", "--no-pager", "-o", "cat"]).strip().splitlines()
    raise ExternalFailure(f"{UNIT_NAME} did not come up: {' | '.join(log[-8:])}",
                          f"journalctl -u {UNIT_NAME} shows all of it; fix that, then run service install again")


def uninstall_plan(config: FleetConfig, unit_dir: Path = UNIT_DIR, runner: Runner = run_command) -> list[Step]:
    unit = unit_dir / UNIT_NAME
    steps = []
    if _active(runner):
        steps.append(Step("ask the daemon to stop the instances as it exits (even where it leaves them running "
                          "on a restart)", lambda: request_stop_instances(config.paths)))
    if not unit.exists():
        return steps + [Step(f"nothing else: {unit} is not there", lambda: None)]
    return steps + [
        _command_step(runner, "systemctl", "disable", "--now", UNIT_NAME),
        Step(f"remove {unit}", lambda: unit.unlink(missing_ok=True)),
        _command_step(runner, "systemctl", "daemon-reload"),
        Step(f"keep the fleet's data in {config.root} (remove it yourself once you no longer need it)", lambda: None),
    ]
