"""The fleet's daemon as an operator runs it: a systemd unit on a cgroup v2 host. A restart re-attaches
the running instances; a stop stops them or leaves them, as the unit's `up` was told."""

from __future__ import annotations

from pathlib import Path

from lanekit import FLEET, cgroup_of, new_fleet, pid_alive, release_zip, run, serves, systemd_unit, wait_until

def _fleet_with_an_instance(leave_running: bool):
    fleet = new_fleet(Path("/srv/fleet-leave" if leave_running else "/srv/fleet-stop"))
    fleet.cli("release", "add", str(release_zip()))
    systemd_unit("foundry-fleet", f"{FLEET} --config {fleet.config} up" + (" --leave-running" if leave_running else ""),
                 Restart="on-failure")
    run("systemctl", "start", "foundry-fleet")
    fleet.wait_for_daemon()
    fleet.cli("instance", "create", "alice", "--release", "12.331")
    shown = fleet.wait_state("alice", "running")
    wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge")
    return fleet, shown


def _stop_and_forget() -> None:
    run("systemctl", "stop", "foundry-fleet", check=False)
    Path("/etc/systemd/system/foundry-fleet.service").unlink(missing_ok=True)
    run("systemctl", "daemon-reload")


def test_a_restart_by_systemd_re_attaches_the_running_instance() -> None:
    fleet, shown = _fleet_with_an_instance(leave_running=True)
    try:
        pid = shown["pid"]
        # The instance runs in a control group of its own, not in the daemon's.
        assert cgroup_of(pid) != cgroup_of(int(run("systemctl", "show", "-P", "MainPID", "foundry-fleet").stdout))
        run("systemctl", "restart", "foundry-fleet")
        assert run("systemctl", "is-active", "foundry-fleet").stdout.strip() == "active"
        again = fleet.wait_state("alice", "running")
        assert again["pid"] == pid and pid_alive(pid), f"the instance was restarted, not re-attached: {again}"
        assert again["restarts"] == shown["restarts"]
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge after the restart")
        # Stopped with --leave-running: the instance goes on, for the next start to adopt.
        run("systemctl", "stop", "foundry-fleet")
        assert pid_alive(pid)
        run("systemctl", "start", "foundry-fleet")
        assert fleet.wait_state("alice", "running")["pid"] == pid
    finally:
        run("systemctl", "start", "foundry-fleet", check=False)
        fleet.cli("instance", "stop", "alice", check=False)
        _stop_and_forget()
        run("pkill", "-f", str(fleet.root), check=False)  # an edge the leave-running stop left


def test_a_stop_by_systemd_stops_the_instances_and_a_start_brings_them_back() -> None:
    fleet, shown = _fleet_with_an_instance(leave_running=False)
    try:
        pid, group = shown["pid"], cgroup_of(shown["pid"])
        run("systemctl", "stop", "foundry-fleet")
        assert not pid_alive(pid), "the instance outlived a daemon told to stop it"
        assert not group.exists(), f"its control group {group} was left behind"
        assert run("systemctl", "is-failed", "foundry-fleet", check=False).stdout.strip() == "inactive"
        run("systemctl", "start", "foundry-fleet")
        back = fleet.wait_state("alice", "running")
        assert back["pid"] != pid
        wait_until(lambda: serves(fleet.root, "alice.localhost"), 120, "alice through the edge after the start")
    finally:
        _stop_and_forget()
