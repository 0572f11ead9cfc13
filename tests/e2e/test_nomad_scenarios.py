"""The local runtime's end-to-end scenarios, on the nomad runtime: one fleet for the module whose
instances are Nomad jobs (a stand-in Nomad with two nodes on 127.0.0.1 and 127.0.0.2, exec task
driver), players through real Caddy.

The scenarios in which how an instance is run plays a part are the local runtime's own test functions,
imported: pytest collects them here too, where `running` and `upgrades` are this module's nomad fleet;
they reach a server at the address the fleet recorded, the node and port Nomad chose. Not imported:
those the runtime takes no part in (refusals before anything runs, the admin password, the backup
plans and listings: they run on the local fleet already), those that read the fleet's own pids (on
nomad the fleet records none) and the crash loop (Nomad applies the crash policy); their nomad
versions are below, with what only Nomad shows: a killed server restarted by Nomad in its
allocation, the daemon killed and re-attached without a second allocation (also while Nomad is
away), Nomad away for a while, stop/start/restart and a restore as allocations, a provisioning
failure in the task's own words, a stray job purged at `up`, a deleted instance's job purged,
`nomad render` against what Nomad holds, and an instance on the podman task driver. Placement,
pinning and a node going away are in test_nomad_nodes.py.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_fleet_scenarios import (  # noqa: F401 (collected here, on nomad)
    Running,
    create,
    create_alice_and_bob,
    test_an_instance_cannot_see_another_tenants_data,
    test_an_instance_reads_shared_assets_but_cannot_write_them,
    test_an_instance_runs_in_its_own_pid_namespace,
    test_create_answers_with_a_running_instance_behind_the_edge,
    test_delete_keeps_the_data_aside_and_a_new_instance_of_that_name_starts_empty,
    test_each_instance_runs_as_its_own_uid,
    test_events_name_the_cli_user_who_asked_not_the_daemon_that_did_it,
    test_every_layout_runs,
    test_foundrys_files_are_written_for_the_edge_and_secrets_are_private,
    test_logs_show_the_servers_output,
)
from tests.e2e.test_upgrade_scenarios import (  # noqa: F401 (collected here, on nomad)
    broken_release,
    test_an_upgrade_to_a_healthy_release_is_kept_after_a_snapshot,
    test_an_upgrade_to_a_release_that_does_not_start_is_rolled_back_data_and_all,
)
from tests.support.edge_client import wss
from tests.support.fleets import NOMAD_TOKEN, make_fleet, set_section
from tests.support.harness import FleetHarness, pids_with_arg, wait_until
from tests.support.nomad_fleet import (
    actions, allocations, edge, live_allocation, none_live, served_through_the_edge, version_through_the_edge,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[Running]:
    """One nomad fleet for the module, up, holding 13.345, 13.347 and the broken 13.400, with alice
    (licence, owner, chosen password) and bob running; each other test makes its own instances."""
    tmp = tmp_path_factory.mktemp("nomad-scenarios")
    fleet = make_fleet(tmp, runtime="nomad")
    try:
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.cli("release", "add", str(release_zips["wrapped"]))  # 13.347
        fleet.cli("release", "add", str(broken_release(tmp)))  # 13.400
        fleet.up()
        yield create_alice_and_bob(fleet, tmp)
    finally:
        fleet.tear_down()


@pytest.fixture(scope="module")
def upgrades(running: Running) -> FleetHarness:
    return running.fleet


def server_pids(fleet: FleetHarness, name: str) -> list[int]:
    """Host pids of the node servers started for the instance's port (the one Nomad gave it)."""
    return pids_with_arg(f"--port={fleet.served_port(name)}")


# --- supervision, as Nomad does it ----------------------------------------------------------------------------


def test_a_killed_server_is_restarted_by_nomad_in_its_allocation_and_served_again(running: Running) -> None:
    fleet = running.fleet
    running.alice_running()
    alloc = live_allocation(fleet, "alice")
    (pid,) = server_pids(fleet, "alice")
    os.kill(pid, signal.SIGKILL)
    back = wait_until(lambda: (p := server_pids(fleet, "alice")) and p != [pid] and p, 15, "a new server")
    assert len(back) == 1
    served_through_the_edge(fleet, "alice")
    assert live_allocation(fleet, "alice")["ID"] == alloc["ID"], "restarted in place, not rescheduled"
    restarted = fleet.nomad.allocations[alloc["ID"]]["TaskStates"]["foundry"]
    assert restarted["Restarts"] >= 1 and restarted["State"] == "running"
    assert fleet.instance("alice")["state"] == "running"


def test_the_daemon_killed_and_started_again_reattaches_without_a_second_allocation(running: Running) -> None:
    """Players stay connected through it all: Nomad keeps running what it runs."""
    fleet = running.fleet
    before = running.alice_running()
    alloc = live_allocation(fleet, "alice")
    address = fleet.address("alice")
    https_port, ca = edge(fleet)
    with wss(https_port, "alice.localhost", "/-/socket.io/", ca) as ws:
        fleet.daemons[-1].send_signal(signal.SIGKILL)
        fleet.daemons[-1].wait()
        assert httpx.get(f"http://{address}/-/api/status", timeout=5).status_code == 200
        ws.send("players stay connected")
        assert ws.recv(timeout=5) == "players stay connected"
        fleet.up()
        after = fleet.wait_state("alice", "running")
        time.sleep(1.0)  # deliberately: a few supervision rounds, in which a second start would show
        ws.send("and after the daemon is back")
        assert ws.recv(timeout=5) == "and after the daemon is back"
    assert after["restarts"] == before["restarts"]
    assert [a["ID"] for a in allocations(fleet, "alice")] == [alloc["ID"]], "re-attached, not placed twice"
    assert fleet.address("alice") == address
    assert "instance.reattach" in actions(fleet, "alice")
    served_through_the_edge(fleet, "alice")


def test_nomad_away_for_a_while_keeps_desired_state_and_the_instance_comes_back(running: Running) -> None:
    """Nomad unreachable: nothing is marked failed or forgotten; what Nomad runs keeps serving players,
    a stop asked meanwhile is not lost, and once Nomad answers again the fleet catches up."""
    fleet = running.fleet
    running.alice_running()
    create(fleet, "nadia", "13.345")
    alloc = live_allocation(fleet, "alice")
    fleet.nomad.pause()
    try:
        time.sleep(2.0)  # deliberately: several health rounds and blocking-query retries while Nomad is away
        served_through_the_edge(fleet, "alice")
        shown = fleet.instance("alice")
        assert shown["desired"] == "running" and shown["state"] != "failed", shown
        status = fleet.cli("status", "--json").json()
        assert status["daemon"]["running"] is True
    finally:
        fleet.nomad.resume()
    fleet.wait_state("alice", "running", timeout=30)
    assert [a["ID"] for a in allocations(fleet, "alice")] == [alloc["ID"]], "nothing started twice"
    served_through_the_edge(fleet, "alice")
    # And it works again as before: nadia stops and starts.
    assert fleet.cli("instance", "stop", "nadia", "--json").json()["state"] == "stopped"
    assert fleet.cli("instance", "start", "nadia", "--json").json()["state"] == "running"
    served_through_the_edge(fleet, "nadia")
    fleet.cli("instance", "delete", "nadia", "--purge", "--yes")


def test_a_start_while_nomad_is_away_waits_without_failing_and_happens_when_it_is_back(running: Running) -> None:
    fleet = running.fleet
    create(fleet, "olga", "13.345", "--no-start")
    fleet.nomad.pause()
    try:
        started = fleet.cli("instance", "start", "olga", "--json", check=False)
        shown = started.json()
        assert shown["desired"] == "running" and shown["state"] == "starting", shown
        assert shown["state_reason"].startswith("waiting for the runtime ("), shown
        time.sleep(1.5)  # deliberately: more tries than the test fleet's crash loop allows
        shown = fleet.instance("olga")
        assert shown["state"] == "starting" and shown["restarts"] == 0, shown
    finally:
        fleet.nomad.resume()
    fleet.wait_state("olga", "running", timeout=30)
    live_allocation(fleet, "olga")
    served_through_the_edge(fleet, "olga")
    fleet.cli("instance", "delete", "olga", "--purge", "--yes")


def test_the_daemon_started_while_nomad_is_away_keeps_the_instances_and_reattaches_when_it_is_back(
        running: Running) -> None:
    """The daemon killed while Nomad is away, and started again before Nomad is back: nothing is
    marked failed or started twice; players stay served; once Nomad answers, the fleet re-attaches."""
    fleet = running.fleet
    before = running.alice_running()
    alloc = live_allocation(fleet, "alice")
    fleet.nomad.pause()
    try:
        fleet.daemons[-1].send_signal(signal.SIGKILL)
        fleet.daemons[-1].wait()
        fleet.up()
        time.sleep(2.0)  # deliberately: the daemon's first rounds, with Nomad away
        for name in ("alice", "bob"):
            shown = fleet.instance(name)
            assert shown["desired"] == "running" and shown["state"] != "failed", shown
        served_through_the_edge(fleet, "alice")
    finally:
        fleet.nomad.resume()
    after = fleet.wait_state("alice", "running", timeout=30)
    fleet.wait_state("bob", "running", timeout=30)
    assert after["restarts"] == before["restarts"]
    assert [a["ID"] for a in allocations(fleet, "alice")] == [alloc["ID"]], "re-attached, not placed twice"
    served_through_the_edge(fleet, "alice")
    served_through_the_edge(fleet, "bob")


def test_a_crash_loop_ends_in_failed_when_nomad_gives_up_leaving_the_neighbour_alone(running: Running) -> None:
    """Nomad's restart policy is the fleet's crash policy: once Nomad gives up the instance is failed, not
    started again by the fleet, until started by hand."""
    fleet = running.fleet
    inst = create(fleet, "paul", "13.345")["instance"]
    port = fleet.served_port("paul")
    crash_marker = Path(inst["data_dir"], "crash-on-start")
    crash_marker.touch()
    try:
        fleet.get_from("paul", "/-/__crash?code=9")
        failed = fleet.wait_state("paul", "failed", timeout=30)
        # As many restarts as the fleet's own crash policy allows (crash_loop_count = 3), by Nomad.
        assert "Nomad gave up after 3 restarts" in failed["state_reason"], failed
        assert pids_with_arg(f"--port={port}") == []
        assert allocations(fleet, "paul")[-1]["ClientStatus"] == "failed"
        assert none_live(fleet, "paul")
        assert "instance.failed" in actions(fleet, "paul")
        served_through_the_edge(fleet, "bob")  # bob never noticed
    finally:
        crash_marker.unlink()
    started = fleet.cli("instance", "start", "paul", "--json").json()
    assert started["state"] == "running"
    assert live_allocation(fleet, "paul")
    served_through_the_edge(fleet, "paul")
    fleet.cli("instance", "delete", "paul", "--purge", "--yes")


# --- power, restore, delete as allocations -------------------------------------------------------------------


def test_stop_start_and_restart(running: Running) -> None:
    fleet = running.fleet
    create(fleet, "erin", "13.345")
    first = live_allocation(fleet, "erin")
    address = fleet.address("erin")
    stopped = fleet.cli("instance", "stop", "erin", "--json").json()
    assert stopped["state"] == "stopped"
    assert none_live(fleet, "erin")
    assert pids_with_arg(f"--port={address.rsplit(':', 1)[1]}") == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{address}/-/api/status", timeout=5)
    assert version_through_the_edge(fleet, "erin") is None
    started = fleet.cli("instance", "start", "erin", "--json").json()
    assert started["state"] == "running"
    second = live_allocation(fleet, "erin")
    served_through_the_edge(fleet, "erin")
    restarted = fleet.cli("instance", "restart", "erin", "--json").json()
    assert restarted["state"] == "running"
    third = live_allocation(fleet, "erin")
    assert len({first["ID"], second["ID"], third["ID"]}) == 3
    served_through_the_edge(fleet, "erin")
    fleet.cli("instance", "delete", "erin", "--purge", "--yes")


def test_a_restored_instance_runs_again_in_a_new_allocation_behind_the_edge(running: Running) -> None:
    fleet = running.fleet
    inst = create(fleet, "carol", "13.345")["instance"]
    world = Path(inst["data_dir"], "Data", "world.db")
    world.write_text("session 1")
    before = live_allocation(fleet, "carol")
    snap = fleet.cli("backup", "now", "carol", "--label", "before-session-2", "--json").json()
    world.write_text("session 2 went badly")
    assert "kept as snapshot safety-" in fleet.cli("backup", "restore", "carol", snap["name"], "--yes").out
    assert world.read_text() == "session 1"
    assert fleet.instance("carol")["state"] == "running"
    after = live_allocation(fleet, "carol")
    assert after["ID"] != before["ID"]
    assert len(server_pids(fleet, "carol")) == 1
    served_through_the_edge(fleet, "carol")
    assert "backup.restore" in actions(fleet, "carol")
    fleet.cli("instance", "delete", "carol", "--purge", "--yes")


def test_a_deleted_instance_has_its_job_purged_and_its_data_archived(running: Running) -> None:
    fleet = running.fleet
    inst = create(fleet, "gus", "13.345")["instance"]
    assert "fvtt-gus" in fleet.nomad.jobs
    Path(inst["data_dir"], "Data", "world.db").write_text("precious")
    deleted = fleet.cli("instance", "delete", "gus", "--yes")
    kept = Path(deleted.out.split("data kept at ")[1].strip())
    assert (kept / "data" / "Data" / "world.db").read_text() == "precious"
    assert "fvtt-gus" not in fleet.nomad.jobs
    assert none_live(fleet, "gus")
    assert version_through_the_edge(fleet, "gus") is None


# --- provisioning and strays -----------------------------------------------------------------------------------


def test_a_provisioning_failure_is_shown_with_the_tasks_own_message(running: Running) -> None:
    """The node lacks the release (its cache is the fleet's own here: its manifest is hidden for the
    while): the dispatched fvtt-provision fails, and the fleet says why in the node's words."""
    fleet = running.fleet
    manifest = fleet.root / "releases" / "versions" / "13.347.json"
    hidden = manifest.with_name("13.347.json.hidden")
    manifest.rename(hidden)
    try:
        answer = fleet.cli("instance", "create", "hugo", "--release", "13.347", "--json", check=False)
    finally:
        hidden.rename(manifest)
    assert answer.code == 7 and "hugo did not start" in answer.err, answer  # a failed start is no success
    made = answer.json()["instance"]
    assert made["state"] == "failed", made
    reason = made["state_reason"]
    assert reason.startswith("provisioning hugo on node node-") and " failed: error: release 13.347 is not in " \
        "this node's release cache " in reason, reason  # the node-side command's own stderr
    assert "fvtt-hugo" not in fleet.nomad.jobs  # nothing registered for a node that is not ready
    said = [e["message"] for e in fleet.cli("events", "--instance", "hugo", "--json").json()
            if e["action"] == "instance.start" and e["outcome"] == "failed"]
    assert said == [reason], said
    # The release back on the node, a start dispatches it again and the instance runs.
    assert fleet.cli("instance", "start", "hugo", "--json").json()["state"] == "running"
    served_through_the_edge(fleet, "hugo", "13.347")
    fleet.cli("instance", "delete", "hugo", "--purge", "--yes")


def test_a_stray_job_of_this_fleet_is_purged_at_up_and_another_fleets_job_is_left(running: Running) -> None:
    """The daemon killed, and the fleet's record of ghost gone (a state database restored from before
    ghost was made): ghost's job keeps running on Nomad, with this fleet's meta. The next `up` purges it.
    A job of another fleet, named like an instance, stays."""
    fleet = running.fleet
    create(fleet, "ghost", "13.345")
    live_allocation(fleet, "ghost")
    fleet.daemons[-1].send_signal(signal.SIGKILL)  # killed: what it runs keeps running
    fleet.daemons[-1].wait()
    fleet.sql("DELETE FROM instances WHERE name = ?", "ghost")
    foreign = copy.deepcopy(fleet.nomad.jobs["fvtt-bob"])
    for key in ("Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex", "ModifyIndex",
                "JobModifyIndex"):
        foreign.pop(key, None)
    foreign.update(ID="fvtt-zed", Name="fvtt-zed", Stop=True,  # stopped: it places nothing
                   Meta={**foreign["Meta"], "fvtt_fleet": "another-fleet", "fvtt_instance": "zed"})
    r = httpx.put(f"{fleet.nomad.url}/v1/jobs", json={"Job": foreign}, timeout=10,
                  headers={"X-Nomad-Token": NOMAD_TOKEN})
    assert r.status_code == 200, r.text
    fleet.up()
    wait_until(lambda: "fvtt-ghost" not in fleet.nomad.jobs, 15, "the stray job to be purged")
    assert none_live(fleet, "ghost")
    assert "fvtt-zed" in fleet.nomad.jobs and "fvtt-bob" in fleet.nomad.jobs
    reported = [e for e in fleet.cli("events", "--instance", "ghost", "--json").json()
                if e["action"] == "instance.strays"]
    assert len(reported) == 1 and "fvtt-ghost" in reported[0]["message"], reported
    fleet.wait_state("alice", "running")
    fleet.wait_state("bob", "running")
    served_through_the_edge(fleet, "bob")
    r = httpx.delete(f"{fleet.nomad.url}/v1/job/fvtt-zed", params={"purge": "true"}, timeout=10,
                     headers={"X-Nomad-Token": NOMAD_TOKEN})
    assert r.status_code == 200, r.text


# --- the job as rendered, against what Nomad holds ------------------------------------------------------------


def test_nomad_render_prints_the_job_nomad_holds(running: Running) -> None:
    """Every field the fleet sends is what Nomad holds for fvtt-alice (Nomad adds its defaults beside)."""
    fleet = running.fleet
    running.alice_running()
    rendered = fleet.cli("nomad", "render", "alice", "--format", "json").json()["Job"]
    held = fleet.nomad.jobs["fvtt-alice"]
    assert _differences(rendered, held) == []
    assert rendered["Constraints"] and held["Constraints"][0]["RTarget"] == live_allocation(fleet, "alice")["NodeID"]
    hcl = fleet.cli("nomad", "render", "alice", "--format", "hcl").out
    assert 'job "fvtt-alice"' in hcl


def _differences(sent: Any, held: Any, at: str = "Job") -> list[str]:
    """Where `held` differs from `sent` in what `sent` has (keys Nomad added are not differences)."""
    if isinstance(sent, dict):
        if not isinstance(held, dict):
            return [f"{at}: sent {sent!r}, held {held!r}"]
        return [d for key, value in sent.items()
                for d in (_differences(value, held[key], f"{at}.{key}") if key in held else [f"{at}.{key}: not held"])]
    if isinstance(sent, list):
        if not isinstance(held, list) or len(sent) != len(held):
            return [f"{at}: sent {sent!r}, held {held!r}"]
        return [d for i, (s, h) in enumerate(zip(sent, held, strict=True)) for d in _differences(s, h, f"{at}[{i}]")]
    return [] if sent == held else [f"{at}: sent {sent!r}, held {held!r}"]


# --- the podman task driver -----------------------------------------------------------------------------------


def test_an_instance_on_the_podman_task_driver_answers_through_the_edge(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    """[nomad] task_driver = "podman": the job's task runs the image the fleet builds from the host's node
    (nomad-driver-podman's config), and players reach it through Caddy like any other."""
    fleet = make_fleet(tmp_path, runtime="nomad")
    try:
        set_section(fleet, "nomad", {"task_driver": "podman"})
        fleet.cli("release", "add", str(release_zips["node"]))
        fleet.up()
        inst = create(fleet, "polly", "13.345")["instance"]
        assert inst["state"] == "running", inst
        task = fleet.nomad.jobs["fvtt-polly"]["TaskGroups"][0]["Tasks"][0]
        assert task["Driver"] == "podman", task
        assert task["Config"]["image"].startswith("localhost/foundry-fleet/node:"), task["Config"]
        assert task["Config"]["user"] == f"{inst['uid']}:{inst['uid']}", task["Config"]
        live_allocation(fleet, "polly")
        served_through_the_edge(fleet, "polly", timeout=20)
        https_port, ca = edge(fleet)
        with wss(https_port, "polly.localhost", "/-/socket.io/", ca) as ws:
            ws.send("hello from a player")
            assert ws.recv(timeout=5) == "hello from a player"
        assert fleet.probe_instance("polly")["uid"] == inst["uid"]
        fleet.cli("instance", "delete", "polly", "--purge", "--yes")
        assert "fvtt-polly" not in fleet.nomad.jobs
    finally:
        fleet.tear_down()
