"""`instance move` between homes on the nomad runtime: node-b keeps instances' data in a home of its own
(a second zfs-fuse pool for a ZFS fleet, a directory tree on a file system of its own for a directory
fleet), node-a in the fleet's. One fleet per storage driver for the module (stand-in Nomad, real Caddy).

A running instance with world data and snapshots moves to node-b and back: its data, snapshots, `backup
list`, a restore and `/backups/` work in the home that holds it, the source's copy is archived, and
players reach the process through Caddy on its new node. A move the daemon dies in is rolled back
(before the commit point: it runs where it was, the target's copy is gone) or finished (after it: it
runs on the target) by the next `up`, never two copies running or none.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from foundry_fleet.storage.snapshots import DirectorySnapshots
from tests.support.edge_client import https, local_ca
from tests.support.fleets import Home, fleet_up_with, seen_at
from tests.support.harness import BIN, FleetHarness, file_digests, wait_until
from tests.support.homes import mount_tmpfs, unmount
from tests.support.zfs import dataset_under, zfs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
OWNER = {"X-Fleet-User": "123456789012345678"}  # what the auth service sets once a tenant signed in
WORLD = Path("Data/worlds/w/world.db")


@dataclass(frozen=True)
class HomesFleet:
    fleet: FleetHarness
    driver: str  # "zfs" or "directory"
    roots: dict[str, Path]  # home name -> its root ("fleet": the fleet root)
    bases: dict[str, str]  # home name -> its ZFS base (ZFS fleets only)
    node_roots: dict[str, Path]  # home name -> its root as its nodes see it

    def data_dir(self, home: str, name: str) -> Path:
        return self.roots[home] / "instances" / name / "data"

    def holds(self, home: str, name: str) -> bool:
        """The home has a copy of the instance's data (its dataset, or its directory)."""
        if self.driver == "zfs":
            return zfs("list", "-H", "-o", "name", f"{self.bases[home]}/instances/{name}", check=False).returncode == 0
        return any((self.roots[home] / where / name).exists() for where in ("instances", "snapshots"))

    def snapshots_in(self, home: str, name: str) -> list[str]:
        """The snapshots the home itself holds of the instance's data, as its storage keeps them."""
        if self.driver == "zfs":
            data = f"{self.bases[home]}/instances/{name}/data"
            out = zfs("list", "-H", "-r", "-t", "snapshot", "-o", "name", "-s", "createtxg", data).stdout
            return [line.split("@", 1)[1] for line in out.split() if line.startswith(f"{data}@")]
        return [s.name for s in DirectorySnapshots(self.roots[home]).list(name)]


@pytest.fixture(scope="module", params=["zfs", "directory"])
def homes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          release_zips: dict[str, Path]) -> Iterator[HomesFleet]:
    tmp = tmp_path_factory.mktemp(f"nomad-homes-{request.param}")
    root_b = tmp / "home-b"
    if request.param == "zfs":
        pool, pool_b = request.getfixturevalue("zfs_pool"), request.getfixturevalue("second_zfs_pool")
        with dataset_under(pool) as base, dataset_under(pool_b) as base_b:
            home = Home("pool-b", ("node-b",), root_b, zfs_base=base_b)
            for fleet in fleet_up_with(tmp, "nomad", release_zips["node"], homes=[home], zfs_base=base):
                roots = {"fleet": fleet.root, "pool-b": root_b}
                yield HomesFleet(fleet, "zfs", roots, {"fleet": base, "pool-b": base_b}, roots)
    else:
        # A file system of its own (hard links cannot cross it), which its nodes see at another path
        # than the fleet's host: the host volumes must name that one.
        mount_tmpfs(root_b, size="256m")
        with ExitStack() as mounted:
            mounted.callback(unmount, root_b)
            node_root = mounted.enter_context(seen_at(root_b, tmp / "home-b-on-its-nodes"))
            home = Home("pool-b", ("node-b",), root_b, node_root=node_root)
            for fleet in fleet_up_with(tmp, "nomad", release_zips["node"], homes=[home]):
                yield HomesFleet(fleet, "directory", {"fleet": fleet.root, "pool-b": root_b}, {},
                                 {"fleet": fleet.root, "pool-b": node_root})


def _probe(h: FleetHarness, name: str, **params: str) -> dict[str, Any]:
    """The instance's test hook, asked the way a player reaches it: through Caddy, by its hostname."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    answer = https(h.settings().edge.https_port, f"{name}.localhost", f"/-/__probe?{query}", local_ca(h.root))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _answers_through_caddy_from(h: FleetHarness, name: str, address: str, world: bytes) -> dict[str, Any]:
    """Once the edge routes to the instance at `address`: the probe's answer, having read its world
    and written beside it as its own user."""
    def answered() -> dict[str, Any] | None:
        try:
            probe = _probe(h, name, read=str(WORLD), write=str(WORLD.parent))
        except (AssertionError, httpx.HTTPError):
            return None
        return probe if h.instance(name)["address"].startswith(f"{address}:") else None

    probe = wait_until(answered, 30, f"{name} to answer through Caddy from {address}", interval=0.2)
    read = probe["read"][str(WORLD)]
    assert read["ok"] and read["bytes"] == len(world), probe
    assert probe["write"][str(WORLD.parent)]["ok"], probe
    return probe


def _on_node(homes: HomesFleet, name: str, node: str, home: str) -> None:
    """Its job is pinned to `node`, its one live allocation runs there, and its data volume is
    registered there alone, at its data's path in `home` as that home's nodes see it."""
    h = homes.fleet
    node_id = h.nomad.node_id(node)
    assert h.nomad.jobs[f"fvtt-{name}"]["Constraints"][0]["RTarget"] == node_id
    live = [a["NodeID"] for a in h.nomad.allocations.values()
            if a["JobID"] == f"fvtt-{name}" and a["ClientStatus"] in ("pending", "running")]
    assert live == [node_id], live
    volumes = [(v["NodeID"], v["HostPath"]) for v in h.nomad.store.volumes.values() if v["Name"] == f"fvtt-{name}-data"]
    assert volumes == [(node_id, str(homes.node_roots[home] / "instances" / name / "data"))], volumes


def _home(h: FleetHarness, name: str) -> str:
    """The home holding its data, as the fleet records it and `instance show` says it."""
    with sqlite3.connect(h.root / "state" / "fleet.sqlite") as db:
        (home,) = db.execute("SELECT home FROM instances WHERE name = ?", (name,)).fetchone()
    shown = h.instance(name)["home"]
    assert shown == (home or "fleet"), (shown, home)
    return shown


def _move_phase(h: FleetHarness, name: str) -> str | None:
    with sqlite3.connect(h.root / "state" / "fleet.sqlite", timeout=5) as db:
        row = db.execute("SELECT phase FROM moves WHERE instance = ?", (name,)).fetchone()
    return row[0] if row else None


def _with_a_world(homes: HomesFleet, name: str, text: bytes) -> Path:
    """`name` created on node-a and running, with a world and a map in its data."""
    h = homes.fleet
    inst = h.cli("instance", "create", name, "--release", "13.345", "--node", "node-a", "--json").json()["instance"]
    h.wait_state(name, "running", timeout=60)
    data = Path(inst["data_dir"])
    assert data == homes.data_dir("fleet", name)
    (data / WORLD).parent.mkdir(parents=True, exist_ok=True)
    (data / WORLD).write_bytes(text)
    (data / "Data" / "map.webp").write_bytes(os.urandom(300_000))
    for path in ((data / WORLD).parent.parent, (data / WORLD).parent, data / WORLD, data / "Data" / "map.webp"):
        os.chown(path, inst["uid"], inst["uid"])
    return data


def test_a_running_instance_moves_to_another_homes_node_with_its_data_and_snapshots_and_back(
        homes: HomesFleet) -> None:
    h = homes.fleet
    data = _with_a_world(homes, "alice", b"session 1")
    first = h.cli("backup", "now", "alice", "--label", "before", "--json").json()["name"]
    (data / WORLD).write_bytes(b"session 2")
    second = h.cli("backup", "now", "alice", "--json").json()["name"]
    (data / WORLD).write_bytes(b"session 3, since the last snapshot")
    before = file_digests(data)
    had = homes.snapshots_in("fleet", "alice")  # the plan's own too (taken at create), then ours
    assert had[-2:] == [first, second], had
    _answers_through_caddy_from(h, "alice", "127.0.0.1", b"session 3, since the last snapshot")

    moved = h.cli("instance", "move", "alice", "--node", "node-b")
    assert "alice moved from node node-a to node node-b (home fleet -> pool-b): running there" in moved.out, moved.out
    copied = re.search(r"copied (\d+) snapshots \(.+\): (\S+) \.\. (\S+); down [0-9.]+ s \(stopped -> running "
                       r"again\)", moved.out)
    assert copied and int(copied[1]) > len(had) and copied[2] == had[0], moved.out  # its own, then the move's
    shown = h.instance("alice")
    assert (shown["state"], shown["node"], _home(h, "alice")) == ("running", "node-b", "pool-b")
    data_b = homes.data_dir("pool-b", "alice")
    assert Path(shown["data_dir"]) == data_b
    assert file_digests(data_b) == before  # what was written after the last snapshot too
    _on_node(homes, "alice", "node-b", "pool-b")
    _answers_through_caddy_from(h, "alice", "127.0.0.2", b"session 3, since the last snapshot")
    shown_nodes = {n["name"]: (n["home"], n["instances"]) for n in h.cli("status", "--json").json()["runtime"]["nodes"]}
    assert shown_nodes == {"node-a": ("fleet", 0), "node-b": ("pool-b", 1)}, shown_nodes
    # Every snapshot came along, oldest first, the move's own after them; the source's copy is archived.
    sent = homes.snapshots_in("pool-b", "alice")
    assert sent[:len(had)] == had and len(sent) == int(copied[1]), sent
    assert not homes.holds("fleet", "alice")
    listed = [s["name"] for s in h.cli("backup", "list", "alice", "--json").json()]
    assert {first, second} <= set(listed)

    # Backups are browsed and restored from the home that holds them now.
    sock = h.root / "run" / "backups.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://alice.localhost",
                      timeout=30) as door:
        assert first in [s["name"] for s in door.get("/backups/", headers={**OWNER, "Accept": "application/json"})
                         .json()]
        got = door.get(f"/backups/{first}/{WORLD}", headers=OWNER)
        assert got.status_code == 200 and got.text == "session 1", got.text
    restored = h.cli("backup", "restore", "alice", first, "--yes").out
    assert "kept as snapshot safety-" in restored
    assert (data_b / WORLD).read_bytes() == b"session 1"
    h.wait_state("alice", "running", timeout=60)
    _on_node(homes, "alice", "node-b", "pool-b")
    _answers_through_caddy_from(h, "alice", "127.0.0.2", b"session 1")
    (data_b / WORLD).write_bytes(b"session 4 on node-b")
    before = file_digests(data_b)

    # And back to the fleet's own home, with what it gained there (a restore's safety snapshot too).
    kept = homes.snapshots_in("pool-b", "alice")
    back = h.cli("instance", "move", "alice", "--node", "node-a")
    assert "alice moved from node node-b to node node-a" in back.out, back.out
    assert (h.instance("alice")["node"], _home(h, "alice")) == ("node-a", "fleet")
    assert file_digests(data) == before
    assert homes.snapshots_in("fleet", "alice")[:len(kept)] == kept
    assert not homes.holds("pool-b", "alice")
    _on_node(homes, "alice", "node-a", "fleet")
    _answers_through_caddy_from(h, "alice", "127.0.0.1", b"session 4 on node-b")
    assert {first, second} <= {s["name"] for s in h.cli("backup", "list", "alice", "--json").json()}


def _killed_in_phase(h: FleetHarness, name: str, node: str, phase: str) -> None:
    """`instance move` to `node`, its daemon killed (SIGKILL) as soon as the move's journal says `phase`."""
    mover = subprocess.Popen([str(BIN), "--config", str(h.config), "instance", "move", name, "--node", node],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _move_phase(h, name) == phase or mover.poll() is not None, 60,
                   f"the move of {name} to reach {phase}", interval=0.005)
        h.daemons[-1].send_signal(signal.SIGKILL)
        h.daemons[-1].wait(10)
    finally:
        out, err = mover.communicate(timeout=30)
    assert _move_phase(h, name) == phase, f"the move ended before it could be interrupted: {out}{err}"


def test_a_move_cut_short_is_rolled_back_before_its_commit_and_finished_after_it(homes: HomesFleet) -> None:
    h = homes.fleet
    data = _with_a_world(homes, "bob", b"bob's world")
    for i in range(8):  # enough that sending it takes a moment
        (data / "Data" / f"scene{i}.webp").write_bytes(os.urandom(1024 * 1024))
    h.cli("backup", "now", "bob")
    before = file_digests(data)

    # Killed while copying: the next `up` discards the target's copy, and bob runs where he was.
    _killed_in_phase(h, "bob", "node-b", "copying")
    h.up()
    wait_until(lambda: _move_phase(h, "bob") is None, 60, "the cut-short move to be rolled back")
    h.wait_state("bob", "running", timeout=60)
    assert (h.instance("bob")["node"], _home(h, "bob")) == ("node-a", "fleet")
    assert not homes.holds("pool-b", "bob")
    _on_node(homes, "bob", "node-a", "fleet")
    assert file_digests(data) == before
    _answers_through_caddy_from(h, "bob", "127.0.0.1", b"bob's world")

    # Killed after the commit: the next `up` finishes it, bob runs on node-b, the source is archived.
    _killed_in_phase(h, "bob", "node-b", "committed")
    h.up()
    wait_until(lambda: _move_phase(h, "bob") is None, 60, "the committed move to be finished")
    h.wait_state("bob", "running", timeout=60)
    assert (h.instance("bob")["node"], _home(h, "bob")) == ("node-b", "pool-b")
    assert file_digests(homes.data_dir("pool-b", "bob")) == before
    assert not homes.holds("fleet", "bob")
    _on_node(homes, "bob", "node-b", "pool-b")
    _answers_through_caddy_from(h, "bob", "127.0.0.2", b"bob's world")
