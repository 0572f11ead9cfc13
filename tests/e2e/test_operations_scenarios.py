"""Operations around a running fleet: logs, limits, the firewall, and instances lost while the daemon was down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cgroups import fleet_firewall_chain, groups_under
from tests.support.offline import create_offline
from tests.support.harness import BIN, FleetHarness, OutputReader, pids_with_arg, sigint_as_in_a_terminal, wait_until

pytestmark = pytest.mark.e2e
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (cgroups, iptables)")


def test_logs_follow_shows_new_lines(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    inst = fleet.cli("instance", "create", "erin", "--release", "13.345", "--json").json()["instance"]
    follower = subprocess.Popen(
        [str(BIN), "--config", str(fleet.config), "instance", "logs", "erin", "--follow", "-n", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal,
    )
    try:
        out = OutputReader(follower)
        wait_until(lambda: out.lines, 10, "the tail of the log")  # printed: it follows from here on
        marker = f"marker-{time.monotonic_ns()}"
        fleet.get(inst["port"], f"/-/api/status?{marker}")
        wait_until(lambda: marker in out.text(), 10, "the new line to be followed")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)


@needs_root
def test_limits_and_firewall_are_applied(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    fleet.cli("instance", "create", "frank", "--release", "13.345")
    parent, chain = fleet.cgroup_parent, fleet_firewall_chain(fleet.cgroup_parent)
    group = Path(f"/sys/fs/cgroup/memory/{parent}/frank")
    assert int((group / "memory.limit_in_bytes").read_text()) == 512 * 2**20  # [limits] memory_mb in the test config
    inst = fleet.instance("frank")
    assert str(inst["pid"]) in (group / "cgroup.procs").read_text().split()
    assert int(Path(f"/sys/fs/cgroup/pids/{parent}/frank/pids.max").read_text()) == 512
    rules = subprocess.run(["iptables", "-S", chain], capture_output=True, text=True).stdout
    low = int(fleet.config.read_text().split("port_range = [")[1].split(",")[0])
    assert f"--dport {low}:{low + 49}" in rules and "-j DROP" in rules and "! -i lo" in rules
    # A clean shutdown stops the instances and takes the chain away with them.
    fleet.stop_daemons()
    assert subprocess.run(["iptables", "-S", chain], capture_output=True).returncode != 0
    assert pids_with_arg(f"--port={inst['port']}") == []


@needs_root
def test_a_torn_down_test_fleet_leaves_no_control_group(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    fleet.cli("instance", "create", "gina", "--release", "13.345")
    made = groups_under(fleet.cgroup_parent)
    assert Path(f"/sys/fs/cgroup/memory/{fleet.cgroup_parent}/gina") in made  # where the daemon put it
    fleet.tear_down()
    assert groups_under(fleet.cgroup_parent) == []


def test_an_instance_lost_while_the_daemon_was_down_is_started_again(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    inst = fleet.cli("instance", "create", "gina", "--release", "13.345", "--json").json()["instance"]
    fleet.daemons[-1].send_signal(signal.SIGKILL)
    fleet.daemons[-1].wait()
    os.kill(inst["pid"], signal.SIGKILL)
    wait_until(lambda: pids_with_arg(f"--port={inst['port']}") == [], 10, "the instance to die")
    fleet.up()
    back = fleet.wait_state("gina", "running")
    assert back["pid"] != inst["pid"]
    assert pids_with_arg(f"--port={inst['port']}") == [back["pid"]]
    actions = [e["action"] for e in fleet.cli("events", "--instance", "gina", "--json").json()]
    assert "instance.lost" in actions


def test_daemon_shutdown_leave_running_keeps_instances_for_the_next_up(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up("--leave-running")
    inst = fleet.cli("instance", "create", "hank", "--release", "13.345", "--json").json()["instance"]
    fleet.stop_daemons()  # SIGTERM
    assert pids_with_arg(f"--port={inst['port']}") == [inst["pid"]]
    fleet.up()
    assert fleet.wait_state("hank", "running")["pid"] == inst["pid"]


def test_an_unrecorded_process_is_cleared_before_the_instance_starts(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    """The daemon died between spawning a server and recording it: the stray must not hold the port."""
    from tests.support.foundry_standin import spawn_standin

    fleet.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(fleet, "ivan")["instance"]
    entry = Path(inst["install_dir"]) / "main.js"
    stray = spawn_standin(entry, inst["port"], Path(inst["data_dir"]), stdout_path=fleet.root / "stray.log")
    wait_until(lambda: pids_with_arg(f"--port={inst['port']}"), 10, "the stray to run")
    fleet.sql("update instances set state = 'starting', desired = 'running' where name = 'ivan'")
    fleet.up()
    back = fleet.wait_state("ivan", "running")
    assert stray.wait(10) is not None
    assert pids_with_arg(f"--port={inst['port']}") == [back["pid"]]
    actions = [e["action"] for e in fleet.cli("events", "--instance", "ivan", "--json").json()]
    assert "instance.strays" in actions


def test_an_interrupted_delete_is_finished_without_losing_data(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(fleet, "jane")["instance"]
    Path(inst["data_dir"], "Data", "world.db").write_text("keep me")
    fleet.sql("update instances set desired = 'deleted' where name = 'jane'")  # then the deleter died
    fleet.up()
    assert fleet.cli("instance", "show", "jane", check=False).code == 3
    kept = list((fleet.root / "archive").glob("jane-*/data/Data/world.db"))
    assert [p.read_text() for p in kept] == ["keep me"]


def test_files_without_an_instance_are_never_adopted(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    orphan = fleet.root / "instances" / "kim" / "data"
    orphan.mkdir(parents=True)
    (orphan / "secret.txt").write_text("someone else's")
    r = fleet.cli("instance", "create", "kim", "--release", "13.345", check=False)
    assert r.code == 4 and "belongs to no instance" in r.err
    assert (orphan / "secret.txt").read_text() == "someone else's"
