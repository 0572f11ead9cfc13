"""`instance move` on the nomad runtime (the stand-in Nomad, two nodes sharing the fleet root): alice
moves from node-a to node-b with her data, players reach her there through Caddy, and a move the
daemon dies in (SIGKILL right after the move was accepted) is finished by the next `up`."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.edge_client import https, local_ca
from tests.support.fleets import NOMAD_TOKEN, make_fleet
from tests.support.harness import BIN, FleetHarness, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _probe(h: FleetHarness, host: str, **params: str) -> dict[str, Any]:
    """The instance's test hook, asked the way a player reaches it: through Caddy, by its hostname."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    answer = https(h.settings().edge.https_port, host, f"/-/__probe?{query}", local_ca(h.root))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _nomad(h: FleetHarness) -> httpx.Client:
    return httpx.Client(base_url=h.nomad.url, headers={"X-Nomad-Token": NOMAD_TOKEN}, timeout=10)


def _placed(h: FleetHarness, name: str) -> dict[str, Any]:
    """Where Nomad has the instance: its job's node, its live allocations, its service, its volumes."""
    job = h.nomad.jobs.get(f"fvtt-{name}")
    with _nomad(h) as nomad:
        services = [s for s in nomad.get("/v1/service/fvtt-instance").json() if f"instance={name}" in s["Tags"]]
        volumes = {(v["Name"], v["NodeID"]) for v in nomad.get("/v1/volumes", params={"type": "host"}).json()
                   if v["Name"].startswith(f"fvtt-{name}-")}
    return {"node": job["Constraints"][0]["RTarget"] if job else None,
            "allocs": [a["NodeID"] for a in h.nomad.allocations.values()
                       if a["JobID"] == f"fvtt-{name}" and a["ClientStatus"] in ("pending", "running")],
            "addresses": [s["Address"] for s in services], "volumes": volumes}


def _running_on(h: FleetHarness, name: str, node_id: str, address: str) -> dict[str, Any] | None:
    """Where Nomad has it (as `_placed`), once it runs on that node alone and the fleet says running."""
    now = _placed(h, name)
    alone = now["allocs"] == [node_id] and now["addresses"] == [address]
    return now if alone and h.instance(name)["state"] == "running" else None


def _events(h: FleetHarness, name: str, action: str) -> list[str]:
    with sqlite3.connect(h.root / "state" / "fleet.sqlite") as db:
        return [m for (m,) in db.execute("SELECT message FROM events WHERE target = ? AND action = ? ORDER BY id",
                                         (name, action))]


def test_an_instance_moves_to_another_node_with_its_data_and_a_move_cut_short_is_finished_by_the_next_up(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path, runtime="nomad")
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        node_a, node_b = h.nomad.node_id("node-a"), h.nomad.node_id("node-b")
        h.cli("instance", "create", "alice", "--release", "13.345", "--node", "node-a")
        alice = h.wait_state("alice", "running", timeout=60)
        host = alice["host"]
        assert _probe(h, host, write="marker.txt")["write"]["marker.txt"]["ok"]
        marker = _probe(h, host, read="marker.txt")["read"]["marker.txt"]
        assert marker["ok"] and marker["bytes"] > 0
        assert _placed(h, "alice")["addresses"] == ["127.0.0.1"]

        refused = h.cli("instance", "move", "alice", "--node", "node-x", check=False)
        assert refused.code != 0 and "the nomad runtime has no node named 'node-x'" in refused.err
        assert "the ready nodes are: node-a, node-b" in refused.err
        assert "already on node node-a" in h.cli("instance", "move", "alice", "--node", "node-a").out

        moved = h.cli("instance", "move", "alice", "--node", "node-b")
        assert "alice moved from node node-a to node node-b: running there" in moved.out, moved.out
        assert h.instance("alice")["state"] == "running" and h.instance("alice")["node"] == "node-b"
        placed = _placed(h, "alice")
        assert placed["node"] == node_b and placed["allocs"] == [node_b] and placed["addresses"] == ["127.0.0.2"]
        assert placed["volumes"] == {("fvtt-alice-data", node_b), ("fvtt-alice-install", node_b)}
        # Players reach her on node-b, with her data as it was.
        assert _probe(h, host, read="marker.txt")["read"]["marker.txt"] == marker
        assert _events(h, "alice", "instance.move") == ["node-a -> node-b"]
        assert "node-a -> node-b" in _events(h, "alice", "instance.moved")

        # Back to node-a, and the daemon is killed as soon as the move is accepted, before it runs there.
        mover = subprocess.Popen([str(BIN), "--config", str(h.config), "instance", "move", "alice", "--node",
                                  "node-a"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: len(_events(h, "alice", "instance.move")) == 2, 60, "the move to be accepted",
                       interval=0.01)
            h.daemons[-1].send_signal(signal.SIGKILL)
            h.daemons[-1].wait(10)
        finally:
            mover.wait(30)
        assert mover.returncode != 0  # its daemon died under it
        cut_short = _placed(h, "alice")
        assert cut_short["allocs"] != [node_a], cut_short  # not running on node-a yet
        assert h.instance("alice")["node"] == "node-a"  # what was asked is kept

        h.up()
        placed = wait_until(lambda: _running_on(h, "alice", node_a, "127.0.0.1"), 90, "alice to run on node-a")
        assert placed["node"] == node_a
        assert placed["volumes"] == {("fvtt-alice-data", node_a), ("fvtt-alice-install", node_a)}
        assert _events(h, "alice", "instance.move") == ["node-a -> node-b", "node-b -> node-a"]
        deadline = time.monotonic() + 30
        while True:  # the edge follows the new address
            try:
                if _probe(h, host, read="marker.txt")["read"]["marker.txt"] == marker:
                    break
            except AssertionError:
                pass
            assert time.monotonic() < deadline, "alice was not reachable on node-a through Caddy"
            time.sleep(0.2)
        assert len([a for a in h.nomad.allocations.values()
                    if a["JobID"] == "fvtt-alice" and a["ClientStatus"] == "running"]) == 1

        # Killed a moment earlier still: the move is stored, its task still runs on the old node (the
        # daemon died before stopping it). The next `up` re-attaches, sees the data is not where the
        # instance is to run, and restarts it: its start moves it.
        h.daemons[-1].send_signal(signal.SIGKILL)
        h.daemons[-1].wait(10)
        h.sql("UPDATE instances SET node = 'node-b' WHERE name = 'alice'")
        assert _placed(h, "alice")["allocs"] == [node_a]
        h.up()
        placed = wait_until(lambda: _running_on(h, "alice", node_b, "127.0.0.2"), 90, "alice to run on node-b")
        assert placed["volumes"] == {("fvtt-alice-data", node_b), ("fvtt-alice-install", node_b)}
        with sqlite3.connect(h.root / "state" / "fleet.sqlite") as db:
            last = [a for (a,) in db.execute("SELECT action FROM events WHERE target = 'alice' ORDER BY id")]
        after = last[len(last) - 1 - last[::-1].index("instance.reattach"):]
        assert "instance.restart" in after and "instance.moved" in after, after
    finally:
        h.tear_down()
