"""The guest is the kind of host users run: systemd as PID 1, cgroup v2 only, OpenZFS; and the fleet
installs on it from its wheel."""

from __future__ import annotations

from pathlib import Path

from lanekit import install_wheel, run


def test_systemd_is_pid_1_and_the_system_is_running() -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    # Booted: the lane's own unit (a service like any other) is the one running these scenarios.
    state = run("systemctl", "is-system-running", "--wait", check=False, timeout=600).stdout.strip()
    assert state == "running", run("systemctl", "--failed", "--no-pager").stdout


def test_cgroup_v2_alone_is_mounted_with_every_controller() -> None:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert [m[2] for m in mounts if m[1] == "/sys/fs/cgroup"] == ["cgroup2"]
    assert not [m for m in mounts if m[2] == "cgroup"], "a cgroup v1 hierarchy is mounted too"
    controllers = set(Path("/sys/fs/cgroup/cgroup.controllers").read_text().split())
    assert {"cpu", "memory", "pids", "io"} <= controllers


def test_openzfs_2_is_loaded() -> None:
    version = run("zfs", "version").stdout
    assert "zfs-kmod-2." in version, version


def test_the_wheel_installs_and_the_command_runs() -> None:
    fleet = install_wheel()
    out = run(str(fleet), "--help").stdout
    assert "Host Foundry Virtual Tabletop" in out
