"""The fleet's systemd unit as `service install` renders it, checked by systemd's own tools (verify with
no warning; the exposure score of `security --offline=yes`), the secrets it hands over, and the install
and uninstall plans carried out against a stand-in systemctl. The unit's life under a real systemd
(start, restart re-attaching, stop, uninstall) is the VM lane's (vm/guest/scenarios/test_systemd.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.credentials import use_loaded_credentials
from foundry_fleet.deploy.service_install import install_plan, uninstall_plan, unit_spec_for
from foundry_fleet.deploy.systemd_unit import UNIT_NAME, render_unit, shared_settings
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.services.daemon_exit import request_stop_instances, take_stop_request
from foundry_fleet.services.init import init_fleet

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="needs systemd-analyze (Debian's systemd package)")
# The command the README promises, and the score recorded in bench/RESULTS.md.
EXPOSURE_TARGET = 5.0


def _fleet(tmp_path: Path, *appended: str, storage: str = "directory", runtime: str = "local",
           discord: tuple[str, ...] = ()) -> Path:
    """A fleet made by `init`, with `discord` keys set in its [discord] table and `appended` lines at the end."""
    path = init_fleet(tmp_path / "fleet root", None, None, None, None, "directory", False, runtime=runtime,
                      runtimes=["local", "podman", "nomad"])
    text = path.read_text()
    if storage == "zfs":  # as `storage init --zfs` sets it, without a pool: the unit needs none to be rendered
        text = text.replace('driver = "directory"\n# zfs_base = "tank/foundry"', 'driver = "zfs"\nzfs_base = "tank/fleet"')
    assert "\n[discord]\n" in text
    path.write_text(text.replace("\n[discord]\n", "\n[discord]\n" + "".join(f"{k}\n" for k in discord), 1)
                    + "".join(f"{line}\n" for line in appended))
    return path


def _unit(config_path: Path, leave_running: bool = True) -> str:
    return render_unit(unit_spec_for(load_config(config_path), config_path, leave_running))


def _analyze(tmp_path: Path, text: str, *verb: str) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / "units" / UNIT_NAME
    unit.parent.mkdir(exist_ok=True)
    unit.write_text(text)
    return subprocess.run(["systemd-analyze", *verb, str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)


def _exposure(tmp_path: Path, text: str) -> float:
    report = _analyze(tmp_path, text, "security", "--offline=yes")
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", report.stdout)
    assert found, report.stdout + report.stderr
    return float(found.group(1))


def _lines(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def test_the_unit_runs_up_with_the_fleets_config_and_every_shared_setting(tmp_path: Path) -> None:
    config = _fleet(tmp_path)
    unit = _unit(config)
    beside_python = Path(sys.executable).parent / "foundry-fleet"
    # The root has a space in it: quoted as systemd splits ExecStart=.
    assert _lines(unit, "ExecStart") == [f"{beside_python} --config '{config}' up --leave-running"]
    assert "--leave-running" not in _unit(config, leave_running=False)
    assert _lines(unit, "ExecReload") == ["/bin/kill -HUP $MAINPID"]  # the daemon reloads fleet.toml on SIGHUP
    for key, value in shared_settings().items():
        assert _lines(unit, key) == (value if isinstance(value, list) else [value]), key
    assert _lines(unit, "ReadWritePaths") == [f'"{config.parent}"', "-/run/xtables.lock"]
    assert _lines(unit, "StateDirectory") == ["foundry-fleet"]
    assert not _lines(unit, "LoadCredential") and _lines(unit, "Wants") == ["network-online.target"]


@needs_systemd_analyze
@pytest.mark.parametrize("storage, runtime", [("directory", "local"), ("zfs", "local"), ("directory", "podman")])
def test_systemd_analyze_verify_finds_nothing_to_warn_about(tmp_path: Path, storage: str, runtime: str) -> None:
    secret = tmp_path / "discord-token"
    secret.write_text("x")
    secret.chmod(0o600)
    unit = _unit(_fleet(tmp_path, discord=(f'token_file = "{secret}"',), storage=storage, runtime=runtime))
    checked = _analyze(tmp_path, unit, "verify")
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr


@needs_systemd_analyze
def test_the_exposure_score_is_within_the_target_and_a_plain_unit_scores_worse(tmp_path: Path) -> None:
    unit = _unit(_fleet(tmp_path))
    hardened = _exposure(tmp_path, unit)
    plain = _exposure(tmp_path, "\n".join(line for line in unit.splitlines()
                                          if line.startswith(("[", "ExecStart=", "Description=", "WantedBy="))) + "\n")
    assert hardened <= EXPOSURE_TARGET, f"exposure {hardened} (plain unit: {plain})"
    assert plain > 9.0  # the same daemon without the sandbox: what the settings are worth


@needs_systemd_analyze
def test_the_podman_runtime_adds_what_podman_needs_and_no_more(tmp_path: Path) -> None:
    local = _unit(_fleet(tmp_path / "a"))
    podman = _unit(_fleet(tmp_path / "b", runtime="podman"))
    added = set(podman.splitlines()) - set(local.splitlines())
    assert {line.split("=", 1)[0] for line in added} == {"ExecStart", "ReadWritePaths", "CapabilityBoundingSet",
                                                        "RuntimeDirectory", "RuntimeDirectoryPreserve",
                                                        "ProtectKernelTunables"}, added
    assert "CapabilityBoundingSet=CAP_MKNOD" in added
    assert "ProtectKernelTunables=no" in added  # after the shared "yes": the last one counts
    assert _exposure(tmp_path, podman) <= _exposure(tmp_path, local) + 0.3


def test_zfs_storage_starts_after_the_pools_are_imported_and_mounted(tmp_path: Path) -> None:
    unit = _unit(_fleet(tmp_path, storage="zfs"))
    assert _lines(unit, "After") == ["network-online.target zfs-import.target zfs-mount.service"]
    assert _lines(unit, "Wants") == ["network-online.target zfs-import.target zfs-mount.service"]


def test_each_secret_is_loaded_as_a_credential_under_its_fixed_name(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    config = _fleet(tmp_path, "[[backups.destinations]]", 'name = "offsite"', 'target = "/srv/restic"',
                    'plan = "1d=>1h"', f'password_file = "{secrets_dir}/restic"',
                    discord=(f'token_file = "{secrets_dir}/bot"', 'client_id = "123456789012345678"',
                             f'client_secret_file = "{secrets_dir}/oauth"'))
    assert _lines(_unit(config), "LoadCredential") == [
        f"discord-client-secret:{secrets_dir}/oauth", f"discord-token:{secrets_dir}/bot",
        f"restic-password-offsite:{secrets_dir}/restic"]


def test_under_the_unit_the_loader_reads_systemds_copy_of_a_secret(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "discord-token").write_text("token")
    raw = {"discord": {"token_file": "/etc/fleet/bot", "client_secret_file": "/etc/fleet/oauth"},
           "nomad": {"token_file": None}}
    use_loaded_credentials(raw, {"CREDENTIALS_DIRECTORY": str(credentials)})
    # The token has a credential; the client secret has none (stays as configured); nothing is invented.
    assert raw == {"discord": {"token_file": str(credentials / "discord-token"), "client_secret_file": "/etc/fleet/oauth"},
                   "nomad": {"token_file": None}}
    use_loaded_credentials(untouched := {"discord": {"token_file": "/etc/fleet/bot"}}, {})
    assert untouched == {"discord": {"token_file": "/etc/fleet/bot"}}


def test_load_config_takes_the_credential_when_the_unit_gave_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = _fleet(tmp_path, discord=('token_file = "/nonexistent/bot"',))
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "discord-token").write_text("token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert load_config(config).discord.token_file == tmp_path / "creds" / "discord-token"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert load_config(config).discord.token_file == Path("/nonexistent/bot")


class StandInSystemctl:
    """Records the commands the plans run; `active` says what `systemctl is-active` answers."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.ran: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.ran.append(tuple(argv))
        if tuple(argv[:2]) == ("systemctl", "is-active"):
            if not self.active:
                raise ExternalFailure("inactive")
            return "active\n"
        if argv[0] == "journalctl":
            return "foundry-fleet: [edge] http_port 80 is taken\n"
        return ""


def test_uninstall_asks_the_daemon_to_stop_the_instances_then_disables_and_removes_the_unit(tmp_path: Path) -> None:
    config = load_config(_fleet(tmp_path))
    unit = tmp_path / "units" / UNIT_NAME
    unit.parent.mkdir()
    unit.write_text("[Service]\n")
    systemctl = StandInSystemctl(active=True)
    steps = uninstall_plan(config, unit_dir=unit.parent, runner=systemctl)
    assert not (config.paths.run / "stop-instances-on-exit").exists(), "a plan must change nothing"
    for step in steps:
        step.action()
    assert take_stop_request(config.paths), "the daemon was not asked to stop the instances"
    assert [c for c in systemctl.ran if c[1] != "is-active"] == [
        ("systemctl", "disable", "--now", UNIT_NAME), ("systemctl", "daemon-reload")]
    assert not unit.exists() and config.root.is_dir()
    assert "keep the fleet's data" in steps[-1].description


def test_uninstall_of_a_fleet_without_a_unit_changes_nothing(tmp_path: Path) -> None:
    config = load_config(_fleet(tmp_path))
    steps = uninstall_plan(config, unit_dir=tmp_path, runner=StandInSystemctl(active=False))
    assert [s.description for s in steps] == [f"nothing else: {tmp_path / UNIT_NAME} is not there"]


@needs_systemd_analyze
def test_install_writes_the_verified_unit_and_reports_a_service_that_does_not_come_up(tmp_path: Path) -> None:
    config_path = _fleet(tmp_path)
    config = load_config(config_path)
    systemctl = StandInSystemctl(active=False)  # the service fails at once
    steps = install_plan(config, config_path, True, unit_dir=tmp_path, runner=systemctl)
    assert not (tmp_path / UNIT_NAME).exists()
    for step in steps[:-1]:
        step.action()
    assert (tmp_path / UNIT_NAME).read_text() == _unit(config_path)
    assert oct((tmp_path / UNIT_NAME).stat().st_mode & 0o777) == "0o644"
    with pytest.raises(ExternalFailure) as failed:
        steps[-1].action()
    assert "did not come up" in failed.value.message and "http_port 80 is taken" in failed.value.message
    assert ("systemctl", "enable", UNIT_NAME) in systemctl.ran and ("systemctl", "restart", UNIT_NAME) in systemctl.ran
    # Installed again unchanged: the unit is kept, not rewritten.
    again = install_plan(config, config_path, True, unit_dir=tmp_path, runner=systemctl)
    assert again[1].description.startswith(f"keep {tmp_path / UNIT_NAME}")


def test_a_stop_request_is_used_once(tmp_path: Path) -> None:
    config = load_config(_fleet(tmp_path))
    assert not take_stop_request(config.paths)
    request_stop_instances(config.paths)
    assert take_stop_request(config.paths) and not take_stop_request(config.paths)


def test_service_install_dry_run_shows_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    config = _fleet(tmp_path)
    shown = subprocess.run([sys.executable, "-m", "foundry_fleet", "service", "install", "--root", str(config.parent),
                            "--dry-run"], capture_output=True, text=True, timeout=60, check=False,
                           env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert f"write /etc/systemd/system/{UNIT_NAME} (runs {config}" in shown.stdout
    assert shown.stdout.rstrip().endswith("dry run: nothing was changed")


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="needs a host without systemd running")
def test_service_install_without_systemd_says_so(tmp_path: Path) -> None:
    config = _fleet(tmp_path)
    refused = subprocess.run([sys.executable, "-m", "foundry_fleet", "service", "install", "--root",
                              str(config.parent)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    said = refused.stdout + refused.stderr
    assert ("systemd is not running on this host" in said) if os.geteuid() == 0 else ("need root" in said), said
