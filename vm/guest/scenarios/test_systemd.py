"""The fleet's daemon as an operator runs it: installed from the wheel, its unit written, enabled and
started by `foundry-fleet service install`, on a cgroup v2 host under the unit's sandbox. A restart
re-attaches the running instances and keeps the edge; a stop stops them or leaves them, as installed;
`service uninstall` stops everything and removes the unit, keeping the data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lanekit import (FLEET, Fleet, cgroup_of, new_fleet, pid_alive, print_daemon_report, release_zip, run, serves,
                     trace, wait_until, zfs_pool)

UNIT = "foundry-fleet.service"
UNIT_FILE = Path("/etc/systemd/system") / UNIT


def _caddy_pid(fleet: Fleet) -> int:
    return int((fleet.root / "edge" / "caddy.pid").read_text().split()[0])


def _main_pid() -> int:
    return int(run("systemctl", "show", "-P", "MainPID", UNIT).stdout)


@contextmanager
def _installed(fleet: Fleet, *install_args: str) -> Iterator[None]:
    """`service install` for the block; its journal and the instances' logs in the report when it fails,
    and the unit gone after it whatever happened."""
    try:
        out = fleet.cli("service", "install", "--root", str(fleet.root), *install_args).stdout
        trace(out)
        yield
    except BaseException:
        print_daemon_report(fleet, UNIT, 300)
        raise
    finally:
        if UNIT_FILE.exists():
            fleet.cli("service", "uninstall", "--root", str(fleet.root), check=False)
        run("pkill", "-f", str(fleet.root), check=False)  # whatever a failed scenario left behind


def _with_alice(fleet: Fleet) -> dict:
    fleet.cli("instance", "create", "alice", "--release", "12.331")
    shown = fleet.wait_state("alice", "running")
    wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge")
    return shown


def test_service_install_runs_the_fleet_a_restart_re_attaches_and_uninstall_stops_everything() -> None:
    fleet = new_fleet(Path("/srv/fleet-service"))
    fleet.cli("release", "add", str(release_zip()))

    plan = fleet.cli("service", "install", "--root", str(fleet.root), "--dry-run").stdout
    assert "dry run: nothing was changed" in plan and str(UNIT_FILE) in plan, plan
    assert not UNIT_FILE.exists()

    with _installed(fleet):
        unit = UNIT_FILE.read_text()
        assert f"ExecStart={FLEET} --config {fleet.config} up --leave-running" in unit, unit
        verified = run("systemd-analyze", "verify", str(UNIT_FILE))
        assert not (verified.stdout + verified.stderr).strip(), verified
        assert run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
        assert run("systemctl", "is-active", UNIT).stdout.strip() == "active"

        shown = _with_alice(fleet)
        pid, caddy = shown["pid"], _caddy_pid(fleet)
        # The instance and the edge live in groups of their own, not in the service's, which a restart ends.
        service_group = cgroup_of(_main_pid())
        assert cgroup_of(pid) != service_group and cgroup_of(caddy) != service_group
        # The sandbox holds: the daemon sees the system read-only, with its own root writable.
        daemon_view = run("nsenter", "-t", str(_main_pid()), "-m", "--", "findmnt", "-no", "OPTIONS", "-T", "/usr").stdout
        assert daemon_view.startswith("ro"), daemon_view

        run("systemctl", "restart", UNIT)
        fleet.wait_for_daemon()
        again = fleet.wait_state("alice", "running")
        assert again["pid"] == pid and pid_alive(pid), f"the instance was restarted, not re-attached: {again}"
        assert again["restarts"] == shown["restarts"]
        assert _caddy_pid(fleet) == caddy and pid_alive(caddy), "the edge did not outlive the restart"
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge after the restart")

        fleet.cli("service", "uninstall", "--root", str(fleet.root))
        assert not UNIT_FILE.exists()
        assert run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
        assert not pid_alive(pid), "the instance outlived the uninstalled service"
        assert not pid_alive(caddy), "the edge outlived the uninstalled service"
        assert (fleet.root / "instances" / "alice" / "data").is_dir(), "uninstall must keep the data"


def test_a_service_installed_to_stop_instances_stops_them_and_a_start_brings_them_back() -> None:
    fleet = new_fleet(Path("/srv/fleet-stop"))
    fleet.cli("release", "add", str(release_zip()))
    with _installed(fleet, "--stop-instances"):
        shown = _with_alice(fleet)
        pid, group = shown["pid"], cgroup_of(shown["pid"])
        run("systemctl", "stop", UNIT)
        assert not pid_alive(pid), "the instance outlived a daemon told to stop it"
        assert not group.exists(), f"its control group {group} was left behind"
        assert run("systemctl", "is-failed", UNIT, check=False).stdout.strip() == "inactive"
        run("systemctl", "start", UNIT)
        back = fleet.wait_state("alice", "running")
        assert back["pid"] != pid
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge after the start")


def test_under_the_service_zfs_datasets_are_mounted_where_the_host_sees_them_across_restarts() -> None:
    """The unit's sandbox is a mount namespace of its own: datasets the daemon creates and mounts must
    still be the host's (an operator's shell, the next daemon after a restart), not the namespace's."""
    zfs_pool("svc", mib=16 * 1024)  # sparse; doctor calls a pool with under 2 GiB free nearly full
    fleet = new_fleet(Path("/srv/fleet-service-zfs"))
    fleet.cli("storage", "init", "--zfs", "svc/fleet")
    fleet.cli("release", "add", str(release_zip()))

    def mounted_on_the_host(name: str) -> str:
        return run("findmnt", "-no", "SOURCE", str(fleet.root / "instances" / name / "data"),
                   check=False).stdout.strip()

    with _installed(fleet):
        alice = _with_alice(fleet)
        assert mounted_on_the_host("alice") == "svc/fleet/instances/alice/data"
        run("systemctl", "restart", UNIT)
        fleet.wait_for_daemon()
        assert fleet.wait_state("alice", "running")["pid"] == alice["pid"]
        fleet.cli("instance", "create", "bob", "--release", "12.331")
        fleet.wait_state("bob", "running")
        assert mounted_on_the_host("bob") == "svc/fleet/instances/bob/data"
        wait_until(lambda: serves(fleet.root, "bob.localhost"), 120, "bob through the edge")

        # What an operator checks after going live: doctor on a systemd host with cgroup v2 and OpenZFS.
        report = json.loads(fleet.cli("doctor", "--json", check=False).stdout)
        checks = {c["name"]: c for c in report["checks"]}
        for name in ("sandbox (bubblewrap)", "cgroups", "iptables"):
            assert checks[name]["status"] == "pass", checks[name]
        assert "cgroup v2" in checks["cgroups"]["detail"], checks["cgroups"]
        pool = [c for name, c in checks.items() if name.startswith("zfs pool svc")]
        assert [c["status"] for c in pool] == ["pass"], pool


def test_the_podman_runtime_runs_its_instances_under_the_service() -> None:
    """The unit's additions for Podman (CAP_MKNOD, writable tunables, its networks' definitions, its
    and the OCI runtime's state under /run) are what a rootful Podman with crun needs under the sandbox."""
    fleet = new_fleet(Path("/srv/fleet-service-podman"), "--runtime", "podman")
    fleet.cli("release", "add", str(release_zip()))
    with _installed(fleet):
        unit = UNIT_FILE.read_text()
        assert "CapabilityBoundingSet=CAP_MKNOD" in unit and "ProtectKernelTunables=no" in unit, unit
        fleet.cli("instance", "create", "alice", "--release", "12.331", timeout=1200)
        fleet.wait_state("alice", "running", timeout=600)
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge")
