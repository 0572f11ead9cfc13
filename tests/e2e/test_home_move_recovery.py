"""A move between homes cut short by a crash, met by the next `foundry-fleet up`: the daemon rolls it back
or finishes it before anything starts, and the instance's real server then runs once, on the data of the
one home that holds it.

The fleet runs on the local runtime (real Foundry stand-in processes): what a daemon start does with an
interrupted move does not depend on the runtime, and the states are built here, while no daemon runs, by
the move's own steps up to each crash point (the journal row, the snapshots, the partial copy). Home
pool-b is a tmpfs: another file system than the fleet root's, as a node's own storage is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.storage.snapshots import PARTIAL
from foundry_fleet.wiring.services import make_backups, open_services
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness, kill_processes_with
from tests.support.homes import mount_tmpfs, unmount

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def _journal(h: FleetHarness) -> list[tuple[str, str]]:
    with sqlite3.connect(h.root / "state" / "fleet.sqlite") as db:
        return db.execute("SELECT instance, phase FROM moves").fetchall()


def _last_moved(h: FleetHarness, name: str) -> tuple[str, str]:
    with sqlite3.connect(h.root / "state" / "fleet.sqlite") as db:
        return db.execute("SELECT outcome, message FROM events WHERE target = ? AND action = 'instance.moved' "
                          "ORDER BY id DESC LIMIT 1", (name,)).fetchone()


def test_the_next_up_finishes_a_committed_move_and_rolls_back_one_still_copying(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    home_b = tmp_path / "pool-b"
    mount_tmpfs(home_b)
    h = make_fleet(tmp_path)
    try:
        h.config.write_text(h.config.read_text() + f'\n[[nomad.homes]]\nname = "pool-b"\nnodes = ["node-b"]\n'
                                                   f'root = "{home_b}"\n')
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        h.cli("instance", "create", "alice", "--release", "13.345")
        h.wait_state("alice", "running", timeout=60)
        assert h.probe_instance("alice", write="marker.txt")["write"]["marker.txt"]["ok"]
        h.stop_daemons()

        # Crash point 1: alice's move to home pool-b had committed (stopped, copied, home and node switched),
        # and the daemon died before starting her there and archiving the old copy.
        services = open_services(h.settings())
        moves, backups = services.moves, make_backups(services)
        assert moves is not None
        uid = services.instances.get("alice").uid
        move = moves.begin("cli:admin", "alice", "fleet", "pool-b", None, "node-b", True)
        backups.take("alice", "move")
        moves.copy(move, uid)
        services.desired.set("cli:admin", "alice", DesiredState.STOPPED, "moving to node node-b")
        backups.take("alice", "move")
        moves.copy(move, uid)
        moves.install_at_target(move)
        moves.commit("cli:admin", move, 2, 1)
        assert _journal(h) == [("alice", "committed")]

        h.up()
        alice = h.wait_state("alice", "running", timeout=60)
        b_data = home_b / "instances" / "alice" / "data"
        assert alice["data_dir"] == str(b_data) and alice["home"] == "pool-b" and alice["node"] == "node-b"
        read = h.probe_instance("alice", read="marker.txt")["read"]["marker.txt"]
        assert read["ok"] and read["bytes"] > 0  # the server runs on the copy in pool-b
        assert _journal(h) == []
        assert not (h.root / "instances" / "alice").exists()
        assert len(list((h.root / "archive").glob("alice-moved-*"))) == 1
        outcome, message = _last_moved(h, "alice")
        assert outcome == "ok" and "finished at the daemon's start" in message
        assert "finished the interrupted move of alice" in h.daemon_log()
        h.stop_daemons()

        # Crash point 2: a move back to the fleet's own home died while its first snapshot was being copied
        # (alice still running in pool-b, half a snapshot tree in the fleet root).
        services = open_services(h.settings())
        moves, backups = services.moves, make_backups(services)
        assert moves is not None
        move = moves.begin("cli:admin", "alice", "pool-b", "fleet", "node-b", "node-a", True)
        first = backups.take("alice", "move")
        half = h.root / "snapshots" / "alice" / (first.name + PARTIAL)
        half.mkdir(parents=True)
        (half / "marker.txt").write_text("half")
        assert _journal(h) == [("alice", "copying")]

        h.up()
        alice = h.wait_state("alice", "running", timeout=60)
        assert alice["data_dir"] == str(b_data) and alice["home"] == "pool-b"
        assert h.probe_instance("alice", read="marker.txt")["read"]["marker.txt"]["ok"]
        assert _journal(h) == []
        assert not (h.root / "snapshots" / "alice").exists() and not (h.root / "instances" / "alice").exists()
        outcome, message = _last_moved(h, "alice")
        assert outcome == "failed" and message.startswith("rolled back (interrupted; rolled back at the daemon's start)")
        assert "rolled back the interrupted move of alice" in h.daemon_log()
    finally:
        h.stop_daemons()
        kill_processes_with(str(home_b))
        h.tear_down()
        unmount(home_b)
