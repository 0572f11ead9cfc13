"""The whole path through the CLI: init, up, release add, instance create, supervision, re-attach.

Real daemon, real node processes (the stand-in Foundry), real bubblewrap, cgroups and uids. Most tests
share one running fleet per module (`running`): each makes the instances it needs under its own names,
or uses the two tenants made once (alice and bob) and leaves them running as it found them.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.admin_key import verify_admin_password
from tests.support.fleets import make_fleet
from tests.support.harness import BIN, FleetHarness, pids_with_arg, wait_until

pytestmark = pytest.mark.e2e
LICENSE = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"
ADMIN_PASSWORD = "correct horse battery"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (instances as their own uids)")


def create(fleet: FleetHarness, name: str, version: str, *extra: str) -> dict:
    result = fleet.cli("instance", "create", name, "--release", version, "--json", *extra)
    return result.json()


@dataclass
class Running:
    """One fleet for the module, up, with alice (licence, owner, chosen password) and bob."""

    fleet: FleetHarness
    created: dict  # what `instance create alice --json` answered
    bob: dict

    @property
    def alice(self) -> dict:
        return self.created["instance"]

    def alice_running(self) -> dict:
        return self.fleet.wait_state("alice", "running")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("fleet-scenarios")
    fleet = make_fleet(tmp)
    try:
        added = fleet.cli("release", "add", str(release_zips["node"]))
        assert "13.345" in added.out
        fleet.up()
        yield create_alice_and_bob(fleet, tmp)
    finally:
        fleet.tear_down()


def create_alice_and_bob(fleet: FleetHarness, tmp: Path) -> Running:
    """On a running fleet with 13.345 cached: alice with a licence, an owner and a chosen admin password
    (from files in `tmp`), a shared asset, and bob with nothing of his own."""
    password_file = tmp / "pw"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    license_file = tmp / "license"
    license_file.write_text(LICENSE + "\n")
    created = create(fleet, "alice", "13.345", "--license-file", str(license_file),
                     "--owner", "123456789012345678", "--admin-password-file", str(password_file))
    (fleet.root / "shared" / "map.webp").write_bytes(b"shared asset")
    bob = create(fleet, "bob", "13.345")["instance"]
    return Running(fleet, created, bob)


# --- create -----------------------------------------------------------------------------------------


def test_create_answers_with_a_running_instance_behind_the_edge(running: Running) -> None:
    inst = running.alice
    assert running.created["admin_password"] is None  # chosen by the admin, so never echoed back
    assert inst["state"] == "running", inst
    https_port = running.fleet.settings().edge.https_port
    assert inst["url"] == f"https://alice.localhost:{https_port}/-/"
    assert running.fleet.get_from("alice", "/-/api/status").json()["version"] == "13.345"
    assert running.bob["port"] != inst["port"]


def test_foundrys_files_are_written_for_the_edge_and_secrets_are_private(running: Running) -> None:
    inst = running.alice
    data = Path(inst["data_dir"])
    https_port = running.fleet.settings().edge.https_port
    options = json.loads((data / instance_layout.OPTIONS).read_text())
    assert options["routePrefix"] == "-" and options["port"] == inst["port"]
    assert options["hostname"] == "alice.localhost"
    assert options["proxySSL"] is True and options["proxyPort"] == https_port and options["upnp"] is False
    assert options["dataPath"] == inst["data_dir"]
    assert json.loads((data / instance_layout.LICENSE).read_text()) == {"license": "ABCDEFGHIJKLMNOPQRSTUVWX"}
    assert verify_admin_password(ADMIN_PASSWORD, (data / instance_layout.ADMIN_PASSWORD).read_text())
    for secret in (instance_layout.LICENSE, instance_layout.ADMIN_PASSWORD):
        assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600


def test_a_generated_admin_password_is_shown_once_and_only_its_hash_kept(running: Running) -> None:
    created = create(running.fleet, "carol", "13.345")
    password = created["admin_password"]
    assert password and len(password) >= 20
    admin_txt = Path(created["instance"]["data_dir"], instance_layout.ADMIN_PASSWORD).read_text()
    assert verify_admin_password(password, admin_txt) and password not in admin_txt
    assert password not in running.fleet.cli("instance", "show", "carol").out
    running.fleet.cli("instance", "delete", "carol", "--purge", "--yes")


@pytest.mark.parametrize("layout", ["linux", "legacy", "wrapped"])
def test_every_layout_runs(running: Running, release_zips: dict[str, Path], layout: str) -> None:
    fleet = running.fleet
    version = fleet.cli("release", "add", str(release_zips[layout])).out.split("release ")[1].split()[0]
    inst = create(fleet, f"gm-{layout}", version)["instance"]
    assert inst["state"] == "running", inst
    assert fleet.get_from(f"gm-{layout}", "/-/api/status").json()["version"] == version
    fleet.cli("instance", "delete", f"gm-{layout}", "--purge", "--yes")


# --- isolation, as the instance itself sees it --------------------------------------------------------


def test_an_instance_reads_shared_assets_but_cannot_write_them(running: Running) -> None:
    running.alice_running()
    probe = running.fleet.probe_instance("alice", read="Data/shared/map.webp", write="Data/shared/evil.txt")
    assert probe["read"]["Data/shared/map.webp"]["ok"], probe
    assert probe["write"]["Data/shared/evil.txt"]["code"] == "EROFS", probe
    assert not (running.fleet.root / "shared" / "evil.txt").exists()


def test_an_instance_cannot_see_another_tenants_data(running: Running) -> None:
    running.alice_running()
    probe = running.fleet.probe_instance("alice", list=running.bob["data_dir"])
    assert not probe["list"][running.bob["data_dir"]]["ok"], "another tenant's data must be invisible"


def test_an_instance_runs_in_its_own_pid_namespace(running: Running) -> None:
    alice = running.alice_running()
    assert running.fleet.probe_instance("alice")["pid"] != alice["pid"]


@needs_root
def test_each_instance_runs_as_its_own_uid(running: Running) -> None:
    alice = running.alice_running()
    probe = running.fleet.probe_instance("alice")
    assert probe["uid"] == alice["uid"] and probe["uid"] != running.bob["uid"] and probe["uid"] >= 200000


# --- supervision ------------------------------------------------------------------------------------------


def test_a_killed_server_is_back_within_seconds_with_a_new_pid(running: Running) -> None:
    fleet = running.fleet
    before = running.alice_running()
    port = before["port"]
    assert pids_with_arg(f"--port={port}") == [before["pid"]]
    os.kill(before["pid"], signal.SIGKILL)
    back = wait_until(lambda: (r := fleet.instance("alice"))["state"] == "running" and r["pid"] != before["pid"]
                      and r, 15, "alice to come back")
    assert back["restarts"] == before["restarts"] + 1
    assert fleet.get(port, "/-/api/status").status_code == 200


def test_after_the_daemon_is_killed_the_next_up_reattaches_instead_of_starting_twice(running: Running) -> None:
    fleet = running.fleet
    before = running.alice_running()
    port = before["port"]
    fleet.daemons[-1].send_signal(signal.SIGKILL)
    fleet.daemons[-1].wait()
    assert fleet.get(port, "/-/api/status").status_code == 200  # the instance outlives the control plane
    fleet.up()
    after = fleet.wait_state("alice", "running")
    assert after["pid"] == before["pid"]
    assert after["restarts"] == before["restarts"]
    time.sleep(1.0)  # deliberately: a few supervision rounds, in which a second start would show
    assert pids_with_arg(f"--port={port}") == [before["pid"]], "re-attached, not started twice"
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["action"] == "instance.reattach" for e in events)


def test_a_stop_asked_for_while_the_daemon_starts_is_carried_out_once_it_has(running: Running) -> None:
    """`systemctl stop` right after a restart: the daemon, still starting, was not told to leave the
    instances running, so it must stop them, not die by the signal with them left behind."""
    fleet = running.fleet
    alice = running.alice_running()["pid"]
    fleet.daemons[-1].send_signal(signal.SIGKILL)
    fleet.daemons[-1].wait()
    log_path = fleet.root / "daemon-starting.log"
    with log_path.open("wb") as log:
        starting = subprocess.Popen([str(BIN), "--config", str(fleet.config), "up"], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    fleet.daemons.append(starting)
    # Its runtime is open (it reports what it found) and it has yet to answer on its control socket.
    wait_until(lambda: "available:" in log_path.read_text(errors="replace") or starting.poll() is not None, 30,
               "the daemon to be part-way through its start")
    assert not fleet.answers(), "the daemon was up already: this asks nothing of a stop during the start"
    starting.send_signal(signal.SIGTERM)
    assert starting.wait(60) == 0, log_path.read_text(errors="replace")
    said = log_path.read_text(errors="replace")
    assert "shutting down (stopping instances)" in said, said
    assert not os.path.exists(f"/proc/{alice}"), "the instance outlived a daemon told to stop it"
    # Still wanted running: the next start brings them back, for the tests after this one.
    fleet.up()
    for name in ("alice", "bob"):
        fleet.wait_state(name, "running")


def test_events_name_the_cli_user_who_asked_not_the_daemon_that_did_it(running: Running) -> None:
    events = running.fleet.cli("events", "--instance", "alice", "--json").json()
    created_by = [e["actor"] for e in events if e["action"] == "instance.create"]
    assert created_by == [f"cli:{getpass.getuser()}"]


def test_a_crash_loop_ends_in_failed_leaving_the_neighbour_alone_until_started_by_hand(running: Running) -> None:
    fleet = running.fleet
    alice = running.alice_running()
    port = fleet.served_port("alice")
    crash_marker = Path(alice["data_dir"], "crash-on-start")
    crash_marker.touch()
    try:
        fleet.get_from("alice", "/-/__crash?code=9")
        failed = fleet.wait_state("alice", "failed", timeout=30)
        assert "crash loop" in failed["state_reason"]
        assert pids_with_arg(f"--port={port}") == []
        events = fleet.cli("events", "--instance", "alice", "--json").json()
        assert any(e["action"] == "instance.failed" and e["outcome"] == "failed" for e in events)
        assert fleet.get_from("bob", "/-/api/status").status_code == 200  # bob never noticed
    finally:
        crash_marker.unlink()
    # Fixed, and started again by hand.
    started = fleet.cli("instance", "start", "alice", "--json").json()
    assert started["state"] == "running"


# --- power, logs, delete ------------------------------------------------------------------------------------


def test_stop_start_and_restart(running: Running) -> None:
    fleet = running.fleet
    inst = create(fleet, "erin", "13.345")["instance"]
    stopped = fleet.cli("instance", "stop", "erin", "--json").json()
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    assert pids_with_arg(f"--port={inst['port']}") == []
    with pytest.raises(httpx.ConnectError):
        fleet.get(inst["port"], "/-/api/status")
    started = fleet.cli("instance", "start", "erin", "--json").json()
    assert started["state"] == "running"
    restarted = fleet.cli("instance", "restart", "erin", "--json").json()
    assert restarted["state"] == "running" and restarted["pid"] != started["pid"]
    fleet.cli("instance", "delete", "erin", "--purge", "--yes")


def test_logs_show_the_servers_output(running: Running) -> None:
    fleet = running.fleet
    marker = f"marker-{time.monotonic_ns()}"
    fleet.get_from("bob", f"/-/api/status?{marker}")  # the server logs each request it answers
    wait_until(lambda: marker in fleet.cli("instance", "logs", "bob", "-n", "50").out, 10, "the request in the log")


def test_delete_keeps_the_data_aside_and_a_new_instance_of_that_name_starts_empty(running: Running) -> None:
    fleet = running.fleet
    inst = create(fleet, "frank", "13.345")["instance"]
    served_port = fleet.served_port("frank")
    Path(inst["data_dir"], "Data", "world.db").write_text("precious")
    deleted = fleet.cli("instance", "delete", "frank", "--yes")
    assert "data kept at" in deleted.out
    kept = Path(deleted.out.split("data kept at ")[1].strip())
    assert (kept / "data" / "Data" / "world.db").read_text() == "precious"
    assert pids_with_arg(f"--port={served_port}") == []
    assert fleet.cli("instance", "show", "frank", check=False).code == 3
    again = create(fleet, "frank", "13.345")["instance"]
    assert not Path(again["data_dir"], "Data", "world.db").exists()
    fleet.cli("instance", "delete", "frank", "--purge", "--yes")
    assert not Path(again["data_dir"]).exists()


# --- the daemon ---------------------------------------------------------------------------------------------


def test_second_daemon_is_refused_naming_the_first(running: Running) -> None:
    first = running.fleet.daemons[-1]
    r = running.fleet.cli("up", check=False, timeout=30)
    assert r.code != 0
    assert "already running" in r.err and f"pid {first.pid}" in r.err


def test_control_api_socket_and_schema(running: Running) -> None:
    fleet = running.fleet
    assert stat.S_IMODE(fleet.socket.stat().st_mode) == 0o600
    schema = fleet.cli("api-schema").json()
    assert "/v1/instances/{name}/start" in schema["paths"]
    status = fleet.cli("status", "--json").json()
    assert status["daemon"]["running"] is True
    names = {c["name"] for c in status["capabilities"]}
    assert {"sandbox", "firewall"} <= names
    # The runtime block: the driver, what it offers, and its own health lines as the daemon found them.
    runtime = status["runtime"]
    assert (runtime["driver"], runtime["isolation"], runtime["limits"], runtime["needs_image"]) == \
        ("local", "bubblewrap", True, False)
    assert {"sandbox", "firewall"} <= {line["name"] for line in runtime["health"]} <= names
    assert "storage" not in {line["name"] for line in runtime["health"]} and runtime["images"] is None
    # Its nodes: this host alone, with its free memory (which moves between two reads).
    (node,) = runtime["nodes"]
    assert (node["address"], node["healthy"], node["status"]) == ("127.0.0.1", True, "ready")
    assert node["instances"] >= 2 and node["free_memory_mb"] > 0 and runtime["nodes_problem"] is None
    shown = fleet.cli("runtime", "show", "--json").json()
    assert {k: v for k, v in shown.items() if k != "nodes"} == {k: v for k, v in runtime.items() if k != "nodes"}
    # With the daemon running the runtime is not switched: it holds the old driver's tasks.
    refused = fleet.cli("runtime", "set", "podman", check=False)
    said = " ".join(refused.err.split())  # as one line, however the terminal wrapped it
    assert refused.code == 4 and "daemon is running" in said and "stop the instances" in said, said
    assert "foundry-fleet instance stop alice" in said, said
    assert 'driver = "local"' in fleet.config.read_text()


def test_commands_that_need_the_daemon_say_so(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))  # releases are the host's: no daemon needed
    # Every operation on an instance goes through the daemon: without it, one message and nothing done.
    for args in (["instance", "create", "dave", "--release", "13.345"], ["instance", "start", "dave"],
                 ["instance", "stop", "dave"], ["instance", "restart", "dave"],
                 ["instance", "upgrade", "dave", "--release", "13.345"], ["instance", "suspend", "dave"],
                 ["instance", "resume", "dave"], ["instance", "delete", "dave", "--purge"],
                 ["instance", "hosts", "dave", "games.example.org"], ["backup", "now", "dave"],
                 ["backup", "plan", "dave", "2d=>1h"], ["backup", "restore", "dave", "manual-x"]):
        r = fleet.cli(*args, check=False)
        assert r.code == 6, (args, r.code, r.err)
        assert "daemon is not running" in r.err and "foundry-fleet up" in r.err, (args, r.err)
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) <= 4, (args, r.err)
    assert fleet.cli("instance", "list", "--json").json() == []  # reads say what was last recorded
    status = fleet.cli("status", "--json").json()
    assert status["daemon"]["running"] is False
    assert status["runtime"]["driver"] == "local" and status["runtime"]["health"] is None  # unknown without it
    assert "health on this host: unknown" in fleet.cli("status").out
    fleet.up()
    assert create(fleet, "dave", "13.345", "--no-start")["instance"]["state"] == "stopped"
    fleet.cli("instance", "start", "dave")
    fleet.wait_state("dave", "running")
