"""Two Nomad nodes under one fleet: where a new instance is placed and pinned, what `status` shows of
the nodes, and a node going away and coming back (its instance waits for it, then is routed to its
new address through Caddy).

The stand-in Nomad's node-a publishes tasks on 127.0.0.1, node-b on 127.0.0.2, 4096 MB each; every
instance asks 512 MB. The tests run in order on one fleet, each leaving it as the next expects.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_fleet_scenarios import create
from tests.support.fleets import fleet_up_with
from tests.support.harness import FleetHarness, wait_until
from tests.support.nomad_fleet import (
    actions, allocations, live_allocation, none_live, served_through_the_edge, version_through_the_edge,
)

pytestmark = pytest.mark.e2e
MEMORY_MB = 512  # [limits] memory_mb of the test fleets


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[FleetHarness]:
    yield from fleet_up_with(tmp_path_factory.mktemp("nomad-nodes"), "nomad", release_zips["node"])


def nodes(fleet: FleetHarness) -> dict[str, dict[str, Any]]:
    """The nodes as `status --json` shows them, by name."""
    runtime = fleet.cli("status", "--json").json()["runtime"]
    assert runtime["nodes_problem"] is None, runtime
    return {n["name"]: n for n in runtime["nodes"]}


def node_of(fleet: FleetHarness, name: str) -> str:
    """The name of the node the instance's allocation runs on."""
    node_id = live_allocation(fleet, name)["NodeID"]
    (found,) = [n for n in ("node-a", "node-b") if fleet.nomad.node_id(n) == node_id]
    return found


def pinned_to(fleet: FleetHarness, name: str) -> str:
    """The node ID the instance's job is constrained to."""
    (constraint,) = fleet.nomad.jobs[f"fvtt-{name}"]["Constraints"]
    assert (constraint["LTarget"], constraint["Operand"]) == ("${node.unique.id}", "="), constraint
    return str(constraint["RTarget"])


def test_a_new_instance_lands_on_the_node_with_the_most_free_memory_and_is_pinned_there(cluster: FleetHarness) -> None:
    fleet = cluster
    create(fleet, "alice", "13.345")
    first = node_of(fleet, "alice")
    assert pinned_to(fleet, "alice") == fleet.nomad.node_id(first)
    free = {name: n["free_memory_mb"] for name, n in nodes(fleet).items()}
    other = "node-b" if first == "node-a" else "node-a"
    assert free[other] > free[first], free  # alice's memory is taken on her node
    create(fleet, "bob", "13.345")
    assert node_of(fleet, "bob") == other
    assert pinned_to(fleet, "bob") == fleet.nomad.node_id(other)
    # Each answers on its own node's address, through the edge.
    assert fleet.address("alice").startswith(fleet.nomad.node_address(first) + ":")
    assert fleet.address("bob").startswith(fleet.nomad.node_address(other) + ":")
    served_through_the_edge(fleet, "alice")
    served_through_the_edge(fleet, "bob")


def test_status_shows_both_nodes(cluster: FleetHarness) -> None:
    fleet = cluster
    shown = nodes(fleet)
    assert set(shown) == {"node-a", "node-b"}
    for name, node in shown.items():
        assert (node["address"], node["healthy"], node["status"]) == \
            (fleet.nomad.node_address(name), True, "ready"), node
        assert node["instances"] == 1 and node["free_memory_mb"] == 4096 - MEMORY_MB, node
    text = fleet.cli("status").out
    assert "node node-a (127.0.0.1): healthy, 1 instance, free memory 3584 MB, home fleet" in text, text
    assert "node node-b (127.0.0.2): healthy, 1 instance, free memory 3584 MB, home fleet" in text, text


def test_a_node_going_away_leaves_its_instance_waiting_for_it_and_the_edge_follows_it_back(
        cluster: FleetHarness) -> None:
    """alice's node goes down: her allocation is lost and not placed on the other node (her data is on
    hers), and she is not marked failed. A new instance meanwhile goes to the healthy node. When her
    node is back Nomad places her there again, on another port (her old one is taken meanwhile), and the
    edge routes players to the new address."""
    fleet = cluster
    home = node_of(fleet, "alice")
    elsewhere = "node-b" if home == "node-a" else "node-a"
    before = fleet.address("alice")
    lost = live_allocation(fleet, "alice")
    fleet.nomad.set_node_down(home)
    wait_until(lambda: fleet.nomad.allocations[lost["ID"]]["ClientStatus"] == "lost", 10, "the allocation lost")
    port = int(before.rsplit(":", 1)[1])
    with _taken(fleet.nomad.node_address(home), port):
        try:
            shown = nodes(fleet)[home]
            assert (shown["healthy"], shown["status"]) == (False, "down"), shown
            assert none_live(fleet, "alice")
            assert version_through_the_edge(fleet, "alice") is None
            alice = fleet.instance("alice")
            assert alice["desired"] == "running" and alice["state"] != "failed", alice
            create(fleet, "carol", "13.345")
            assert node_of(fleet, "carol") == elsewhere  # the only healthy node
            served_through_the_edge(fleet, "bob" if node_of(fleet, "bob") == elsewhere else "carol")
            assert fleet.instance("alice")["state"] != "failed"
        finally:
            fleet.nomad.set_node_up(home)
        wait_until(lambda: fleet.address("alice") != before, 15, "alice's new address")
        after = fleet.address("alice")
        served_through_the_edge(fleet, "alice")
    assert after.startswith(fleet.nomad.node_address(home) + ":") and after != before
    back = live_allocation(fleet, "alice")
    assert back["ID"] != lost["ID"] and back["NodeID"] == fleet.nomad.node_id(home)
    assert {a["NodeID"] for a in allocations(fleet, "alice")} == {fleet.nomad.node_id(home)}, "never elsewhere"
    assert fleet.instance("alice")["state"] == "running"
    moved = [e for e in fleet.cli("events", "--instance", "alice", "--json").json() if e["action"] == "instance.moved"]
    assert len(moved) == 1 and moved[0]["message"] == f"moved from {before} to {after}", moved
    assert "instance.failed" not in actions(fleet, "alice")
    assert nodes(fleet)[home]["healthy"] is True


class _taken:
    """`host:port` held for the block, as another program on that node would hold it: listening (so no
    task is given it), and closing each connection at once (so the edge's requests fail fast)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past its old connections' TIME_WAIT
        self.address = (host, port)
        self.closing = threading.Thread(target=self._close_each, daemon=True)

    def __enter__(self) -> None:
        def bind() -> bool:
            try:
                self.sock.bind(self.address)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                return False  # the lost task's listener is on its way out
            return True

        wait_until(bind, 10, f"{self.address} to be free")
        self.sock.listen(16)
        self.closing.start()

    def _close_each(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return  # closed: the block is over
            connection.close()

    def __exit__(self, *exc: object) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        self.closing.join(5)
