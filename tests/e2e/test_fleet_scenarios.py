"""The whole path through the CLI: init, up, release add, instance create, supervision, re-attach.

Real daemon, real node processes (the stand-in Foundry), real bubblewrap, cgroups and uids.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import stat
import time
from pathlib import Path

import httpx
import pytest

from foundry_fleet.domain.admin_key import verify_admin_password
from tests.support.harness import FleetHarness, pids_with_arg, wait_until

pytestmark = pytest.mark.e2e
LICENSE = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"


def create(fleet: FleetHarness, name: str, version: str, *extra: str) -> dict:
    result = fleet.cli("instance", "create", name, "--release", version, "--json", *extra)
    return result.json()


def test_create_run_isolate_crash_and_reattach(fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path) -> None:
    added = fleet.cli("release", "add", str(release_zips["node"]))
    assert "13.345" in added.out
    fleet.up()

    password_file = tmp_path / "pw"
    password_file.write_text("correct horse battery\n")
    license_file = tmp_path / "license"
    license_file.write_text(LICENSE + "\n")
    created = create(fleet, "alice", "13.345", "--license-file", str(license_file), "--owner", "123456789012345678",
                     "--admin-password-file", str(password_file))
    inst = created["instance"]
    assert created["admin_password"] is None  # chosen by the admin, so never echoed back
    assert inst["state"] == "running", inst
    port = inst["port"]
    https_port = int(fleet.config.read_text().split("https_port = ")[1].split()[0])
    assert inst["url"] == f"https://alice.localhost:{https_port}/-/"
    status = fleet.get(port, "/-/api/status").json()
    assert status["version"] == "13.345"

    # Foundry's files, written for the edge.
    config = Path(inst["data_dir"]) / "Config"
    options = json.loads((config / "options.json").read_text())
    assert options["routePrefix"] == "-" and options["port"] == port and options["hostname"] == "alice.localhost"
    assert options["proxySSL"] is True and options["proxyPort"] == https_port and options["upnp"] is False
    assert options["dataPath"] == inst["data_dir"]
    assert json.loads((config / "license.json").read_text()) == {"license": "ABCDEFGHIJKLMNOPQRSTUVWX"}
    assert verify_admin_password("correct horse battery", (config / "admin.txt").read_text())
    for secret in ("license.json", "admin.txt"):
        assert stat.S_IMODE((config / secret).stat().st_mode) == 0o600

    # Isolation, as the instance itself sees it.
    (fleet.root / "shared" / "map.webp").write_bytes(b"shared asset")
    bob = create(fleet, "bob", "13.345")["instance"]
    assert bob["port"] != port
    probe = fleet.probe(port, read="Data/shared/map.webp", write="Data/shared/evil.txt", list=bob["data_dir"])
    assert probe["read"]["Data/shared/map.webp"]["ok"], probe
    assert probe["write"]["Data/shared/evil.txt"]["code"] == "EROFS", probe
    assert not probe["list"][bob["data_dir"]]["ok"], "another tenant's data must be invisible"
    assert not (fleet.root / "shared" / "evil.txt").exists()
    if os.geteuid() == 0:
        assert probe["uid"] == inst["uid"] and probe["uid"] != bob["uid"] and probe["uid"] >= 200000
    assert probe["pid"] != inst["pid"]  # inside its own pid namespace

    # Kill the server: it is back within seconds, with a new pid.
    old_pid = inst["pid"]
    assert pids_with_arg(f"--port={port}") == [old_pid]
    os.kill(old_pid, signal.SIGKILL)
    back = wait_until(lambda: (r := fleet.instance("alice"))["state"] == "running" and r["pid"] != old_pid and r,
                      15, "alice to come back")
    assert back["restarts"] == 1
    assert fleet.get(port, "/-/api/status").status_code == 200

    # The control plane dies hard: the instance keeps running, and the next `up` re-attaches.
    before = fleet.instance("alice")
    fleet.daemons[-1].send_signal(signal.SIGKILL)
    fleet.daemons[-1].wait()
    assert fleet.get(port, "/-/api/status").status_code == 200
    fleet.up()
    after = fleet.wait_state("alice", "running")
    assert after["pid"] == before["pid"]
    assert after["restarts"] == before["restarts"]
    time.sleep(1.0)
    assert pids_with_arg(f"--port={port}") == [before["pid"]], "re-attached, not started twice"
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["action"] == "instance.reattach" for e in events)
    created_by = [e["actor"] for e in events if e["action"] == "instance.create"]
    assert created_by == [f"cli:{getpass.getuser()}"]  # the CLI's user, not the daemon that did the work

    # A crash loop ends in `failed`, with an event saying so.
    Path(inst["data_dir"], "crash-on-start").touch()
    fleet.get(port, "/-/__crash?code=9")
    failed = fleet.wait_state("alice", "failed", timeout=30)
    assert "crash loop" in failed["state_reason"]
    assert pids_with_arg(f"--port={port}") == []
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["action"] == "instance.failed" and e["outcome"] == "failed" for e in events)
    # Bob never noticed.
    assert fleet.get(bob["port"], "/-/api/status").status_code == 200

    # Fixed and started again by hand.
    Path(inst["data_dir"], "crash-on-start").unlink()
    started = fleet.cli("instance", "start", "alice", "--json").json()
    assert started["state"] == "running"


def test_second_daemon_is_refused_naming_the_first(fleet: FleetHarness) -> None:
    first = fleet.up()
    r = fleet.cli("up", check=False, timeout=30)
    assert r.code != 0
    assert "already running" in r.err and f"pid {first.pid}" in r.err


@pytest.mark.parametrize("layout", ["linux", "legacy", "wrapped"])
def test_every_layout_runs(fleet: FleetHarness, release_zips: dict[str, Path], layout: str) -> None:
    version = fleet.cli("release", "add", str(release_zips[layout])).out.split("release ")[1].split()[0]
    fleet.up()
    inst = create(fleet, "gm", version)["instance"]
    assert inst["state"] == "running", inst
    assert fleet.get(inst["port"], "/-/api/status").json()["version"] == version


def test_stop_start_restart_delete(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    created = create(fleet, "carol", "13.345")
    inst = created["instance"]
    password = created["admin_password"]
    assert password and len(password) >= 20
    admin_txt = Path(inst["data_dir"], "Config", "admin.txt").read_text()
    assert verify_admin_password(password, admin_txt)
    assert password not in fleet.cli("instance", "show", "carol").out

    stopped = fleet.cli("instance", "stop", "carol", "--json").json()
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    assert pids_with_arg(f"--port={inst['port']}") == []
    with pytest.raises(httpx.ConnectError):
        fleet.get(inst["port"], "/-/api/status")

    started = fleet.cli("instance", "start", "carol", "--json").json()
    assert started["state"] == "running"
    restarted = fleet.cli("instance", "restart", "carol", "--json").json()
    assert restarted["state"] == "running" and restarted["pid"] != started["pid"]

    log = fleet.cli("instance", "logs", "carol").out
    assert "listening on port" in log

    Path(inst["data_dir"], "Data", "world.db").write_text("precious")
    deleted = fleet.cli("instance", "delete", "carol")
    assert "data kept at" in deleted.out
    kept = Path(deleted.out.split("data kept at ")[1].strip())
    assert (kept / "data" / "Data" / "world.db").read_text() == "precious"
    assert pids_with_arg(f"--port={inst['port']}") == []
    assert fleet.cli("instance", "show", "carol", check=False).code == 3

    again = create(fleet, "carol", "13.345")["instance"]
    assert not Path(again["data_dir"], "Data", "world.db").exists()
    fleet.cli("instance", "delete", "carol", "--purge", "--yes")
    assert not Path(again["data_dir"]).exists()


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
    fleet.up()
    assert create(fleet, "dave", "13.345", "--no-start")["instance"]["state"] == "stopped"
    fleet.cli("instance", "start", "dave")
    fleet.wait_state("dave", "running")


def test_control_api_socket_and_schema(fleet: FleetHarness) -> None:
    fleet.up()
    assert stat.S_IMODE(fleet.socket.stat().st_mode) == 0o600
    schema = fleet.cli("api-schema").json()
    assert "/v1/instances/{name}/start" in schema["paths"]
    status = fleet.cli("status", "--json").json()
    assert status["daemon"]["running"] is True
    names = {c["name"] for c in status["capabilities"]}
    assert {"sandbox", "firewall"} <= names
