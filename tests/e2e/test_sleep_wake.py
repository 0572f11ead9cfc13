"""Idle instances sleep and wake on the first visit: real daemon, real Caddy, real stand-in Foundry."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.api.client import ControlClient
from tests.support.edge_client import https, local_ca, wss
from tests.support.fleets import make_fleet
from tests.support.harness import BIN, FleetHarness, wait_until
from tests.support.offline import create_offline
from tests.support.podman import podman_missing

pytestmark = pytest.mark.e2e

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
REFRESH = re.compile(r"<meta http-equiv=refresh content='0; url=([^']+)'>")


@pytest.fixture
def sleepy(tmp_path: Path, release_zips: dict[str, Path]) -> Iterator[FleetHarness]:
    """A fleet whose instances sleep after 2 s without players or visits, up, holding release 13.345."""
    h = make_fleet(tmp_path, **{'idle_after = "60min"': 'idle_after = "2s"'})
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        yield h
    finally:
        h.tear_down()


def _edge(h: FleetHarness) -> tuple[int, Path]:
    return h.settings().edge.https_port, local_ca(h.root)


def _events(client: ControlClient, name: str, action: str) -> list[dict]:
    return [e for e in client.events(target=name, limit=500) if e["action"] == action]


def _loads(client: ControlClient) -> int:
    return client.status()["edge"]["config_loads"]


def test_an_idle_instance_sleeps_and_the_first_visit_lands_in_foundry(sleepy: FleetHarness) -> None:
    client = ControlClient(sleepy.socket)
    port, ca = _edge(sleepy)
    assert client.create_instance(name="alice", release="13.345")["instance"]["state"] == "running"
    assert https(port, "alice.localhost", "/-/api/status", ca).status_code == 200
    loads_awake = _loads(client)

    asleep = sleepy.wait_state("alice", "sleeping", 15)
    assert asleep["desired"] == "running" and asleep["pid"] is None and asleep["sleeps_after"] == 2
    assert asleep["restarts"] == 0 and "idle for 2s" in asleep["state_reason"]
    (slept,) = _events(client, "alice", "instance.sleep")
    assert slept["outcome"] == "ok"
    assert not _events(client, "alice", "instance.crashed") and not _events(client, "alice", "instance.stopped")
    shown = sleepy.cli("instance", "list").out
    assert re.search(r"alice\s.*sleeping\s.*asleep", shown), shown
    wait_until(lambda: client.status()["edge"]["in_sync"], 10, "the edge to route alice to the wake handler")

    # Programs and websockets are told to come back; they do not get a page.
    plain = https(port, "alice.localhost", "/-/api/status", ca, headers={"Accept": "application/json"})
    assert plain.status_code == 503 and plain.headers["retry-after"].isdigit()
    assert "text/html" not in plain.headers["content-type"]
    sleepy.wait_state("alice", "running", 20)  # that request woke it
    alice_again = sleepy.wait_state("alice", "sleeping", 15)
    assert alice_again["restarts"] == 0

    # A browser: the waiting page at once, which refreshes (no script) to the wait, which lands in Foundry.
    spawned = len(_events(client, "alice", "instance.spawn"))
    loads_asleep = _loads(client)
    started = time.monotonic()
    page = https(port, "alice.localhost", "/-/game?tab=chat", ca, headers=HTML)
    assert page.status_code == 503 and "Starting your table" in page.text, page.text
    assert "<script" not in page.text and page.headers["cache-control"] == "no-store"
    (wait_url,) = REFRESH.findall(page.text)
    assert wait_url == "/wake/wait?to=/-/game%3Ftab%3Dchat"
    landed = https(port, "alice.localhost", wait_url, ca, headers=HTML, timeout=30)
    assert landed.status_code == 303 and landed.headers["location"] == "/-/game?tab=chat"
    foundry = https(port, "alice.localhost", "/-/", ca, headers=HTML)
    assert foundry.status_code == 200 and "Foundry Virtual Tabletop" in foundry.text
    woke_in = time.monotonic() - started
    assert len(_events(client, "alice", "instance.spawn")) == spawned + 1
    (_first, wake) = _events(client, "alice", "instance.wake")[-2:]
    assert wake["actor"] == "visitor" and wake["outcome"] == "ok"
    # Falling asleep and waking up: two configs loaded, no more (sleeping and starting route alike).
    assert _loads(client) - loads_asleep == 1, (loads_awake, loads_asleep, _loads(client))
    assert woke_in < 15


@pytest.mark.parametrize("runtime", ["podman", "nomad"])
def test_a_sleep_wake_cycle_on_the_other_runtimes(runtime: str, tmp_path: Path, release_zips: dict[str, Path]) -> None:
    """A container (podman) or a Nomad job sleeps and wakes like a local process: stopped for good while
    asleep, started again by a visit, and the visitor lands in Foundry at its new address."""
    if runtime == "podman" and (missing := podman_missing()) is not None:
        pytest.skip(str(missing))
    h = make_fleet(tmp_path, runtime=runtime, **{'idle_after = "60min"': 'idle_after = "2s"'})
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        client = ControlClient(h.socket)
        port, ca = _edge(h)
        assert client.create_instance(name="hal", release="13.345")["instance"]["state"] == "running"
        h.wait_state("hal", "sleeping", 20)
        if runtime == "podman":
            assert not [c for c in h.containers("hal") if c.state == "running"]
        page = https(port, "hal.localhost", "/-/", ca, headers=HTML)
        assert page.status_code == 503 and "Starting your table" in page.text
        (wait_url,) = REFRESH.findall(page.text)
        landed = https(port, "hal.localhost", wait_url, ca, headers=HTML, timeout=60)
        assert landed.status_code == 303 and landed.headers["location"] == "/-/"
        foundry = https(port, "hal.localhost", "/-/", ca, headers=HTML)
        assert foundry.status_code == 200 and "Foundry Virtual Tabletop" in foundry.text
        assert h.instance("hal")["restarts"] == 0
    finally:
        h.tear_down()


def test_a_connected_player_keeps_it_awake_and_leaving_lets_it_sleep(sleepy: FleetHarness) -> None:
    client = ControlClient(sleepy.socket)
    port, ca = _edge(sleepy)
    client.create_instance(name="bob", release="13.345")
    with wss(port, "bob.localhost", "/-/socket.io/?EIO=4&transport=websocket", ca) as ws:
        ws.send("ping")
        time.sleep(6)  # three times its idle time
        assert sleepy.instance("bob")["state"] == "running"
        assert https(port, "bob.localhost", "/-/api/status", ca).json()["users"] == 1
        ws.send("still here")
    sleepy.wait_state("bob", "sleeping", 15)


def test_visits_at_once_start_it_once_and_a_start_command_wakes_it_too(sleepy: FleetHarness) -> None:
    client = ControlClient(sleepy.socket)
    port, ca = _edge(sleepy)
    client.create_instance(name="carol", release="13.345")
    sleepy.wait_state("carol", "sleeping", 15)
    spawned = len(_events(client, "carol", "instance.spawn"))
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        pages = list(pool.map(lambda _i: https(port, "carol.localhost", "/-/", ca, headers=HTML), range(12)))
    assert all(p.status_code == 503 and "Starting your table" in p.text for p in pages)
    sleepy.wait_state("carol", "running", 20)
    assert len(_events(client, "carol", "instance.spawn")) == spawned + 1
    assert len(_events(client, "carol", "instance.wake")) == 1

    sleepy.wait_state("carol", "sleeping", 15)
    out = sleepy.cli("instance", "start", "carol").out
    assert "carol: running" in out
    # Its own setting: off keeps it awake whatever the fleet says.
    assert "sleeps_after off idle (its own)" in sleepy.cli("instance", "set", "carol", "--idle-after", "off").out
    time.sleep(4)
    assert sleepy.instance("carol")["state"] == "running"
    sleepy.cli("instance", "set", "carol", "--idle-after", "fleet")
    sleepy.wait_state("carol", "sleeping", 15)
    # A restart of a sleeping instance wakes it (nothing runs to restart).
    assert "carol: running" in sleepy.cli("instance", "restart", "carol").out
    assert sleepy.instance("carol")["restarts"] == 0


def test_suspended_and_stopped_never_wake_a_failed_one_says_why_and_a_restart_keeps_sleepers_asleep(
        sleepy: FleetHarness) -> None:
    client = ControlClient(sleepy.socket)
    port, ca = _edge(sleepy)
    for name in ("dave", "erin", "fay"):
        client.create_instance(name=name, release="13.345")
    for name in ("dave", "erin", "fay"):
        sleepy.wait_state(name, "sleeping", 15)
    client.suspend("dave", "unpaid")
    assert sleepy.instance("dave")["state"] == "stopped"
    client.action("erin", "stop")
    assert sleepy.instance("erin")["state"] == "stopped"
    for name in ("dave", "erin"):
        page = https(port, f"{name}.localhost", "/-/", ca, headers=HTML)
        assert page.status_code == 503 and "Starting" not in page.text and "unpaid" not in page.text
    time.sleep(1)
    assert sleepy.instance("dave")["state"] == "stopped" and sleepy.instance("erin")["state"] == "stopped"

    # The fleet restarts: a sleeping instance stays asleep (and is not counted lost or stopped).
    sleepy.stop_daemons()
    sleepy.up()
    client = ControlClient(sleepy.socket)
    time.sleep(2)
    assert sleepy.instance("fay")["state"] == "sleeping"
    assert https(port, "fay.localhost", "/-/", ca, headers=HTML).status_code == 503
    sleepy.wait_state("fay", "running", 20)

    # A failed instance: its page says why, and a visit does not start it.
    (sleepy.root / "instances" / "fay" / "data" / "crash-on-start").write_text("")
    client.action("fay", "restart", wait=False)
    sleepy.wait_state("fay", "failed", 30)
    page = https(port, "fay.localhost", "/-/", ca, headers=HTML)
    assert page.status_code == 503 and "could not start: it crashed again each time" in page.text
    assert "exited" not in page.text and str(sleepy.root) not in page.text  # the fleet's own words stay inside
    assert "http-equiv=refresh" not in page.text


def test_a_wake_the_host_has_no_memory_for_is_refused_and_the_admins_are_told(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path, **{'idle_after = "60min"': 'idle_after = "2s"',
                                "wake_reserve_mb = 256": "wake_reserve_mb = 100000000"})
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        client = ControlClient(h.socket)
        port, ca = _edge(h)
        client.create_instance(name="gus", release="13.345")
        h.wait_state("gus", "sleeping", 15)
        page = https(port, "gus.localhost", "/-/", ca, headers=HTML)
        assert page.status_code == 503 and "no memory free" in page.text
        time.sleep(1)
        assert h.instance("gus")["state"] == "sleeping"
        (refused,) = _events(client, "gus", "instance.wake")
        assert refused["outcome"] == "refused" and "the host is full" in refused["message"]
        # No bot here: status updates go to the daemon's log (wrapped by its console, hence the words alone).
        wait_until(lambda: "was not woken for a visitor" in h.daemon_log(), 15, "the status update")
        r = h.cli("instance", "start", "gus", check=False)
        assert r.code != 0 and "the host is full" in r.err
        assert h.instance("gus")["state"] == "sleeping"
    finally:
        h.tear_down()


def test_status_sums_up_sleepers_and_reads_at_80_columns(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    """A stopped fleet holding sleepers, as the daemon left them (states are the last recorded)."""
    fleet.cli("release", "add", str(release_zips["node"]))
    for name in ("alice", "bob-the-long-name", "carol", "dave"):
        create_offline(fleet, name)
    fleet.sql("UPDATE instances SET state = 'sleeping', desired = 'running' WHERE name IN (?, ?)",
              "bob-the-long-name", "carol")
    fleet.sql("UPDATE instances SET state = 'running', desired = 'running', idle_since = ? WHERE name = 'alice'",
              time.time() - 600)
    fleet.sql("UPDATE instances SET idle_after = 0 WHERE name = 'dave'")  # its own: off

    shown = subprocess.run([str(BIN), "--config", str(fleet.config), "status"], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}, check=True).stdout
    lines = shown.splitlines()
    assert "4 instances: 1 running, 2 sleeping, 1 stopped" in lines, shown
    assert all(len(line) <= 80 for line in lines), shown
    assert re.search(r"bob-the-long-name\s.*sleeping\s.*asleep", shown), shown
    assert re.search(r"alice\s.*running\s.*in (49|50)min", shown), shown
    assert "…" not in shown, shown
    assert "not shown at this width: release, restarts, port, pid" in " ".join(
        shown.split())
    # The daemon is down: its figures are dashes, said once.
    assert shown.count("only the running daemon knows") == 1 and re.search(r"alice\s+running\s+–", shown), shown

    data = fleet.cli("status", "--json").json()
    by_name = {i["name"]: i for i in data["instances"]}
    assert by_name["alice"]["sleeps_after"] == 3600 and by_name["alice"]["idle_since"] is not None
    assert by_name["carol"]["sleeps_after"] == 3600 and by_name["carol"]["idle_after_own"] is False
    assert by_name["dave"]["sleeps_after"] is None and by_name["dave"]["idle_after_own"] is True
