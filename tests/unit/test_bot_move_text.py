"""`/fleet move` answers with what the move did, from the control API's answer (operations.Moved)."""

from __future__ import annotations

from foundry_fleet.bot.text import moved_text

VIEW = {"name": "alice", "state": "running", "release": "13.345", "host": "alice.example.org",
        "url": "https://alice.example.org/", "state_reason": ""}


def test_a_move_between_homes_says_what_was_sent_and_for_how_long_it_was_down() -> None:
    text = moved_text("alice", {"outcome": "moved", "previous": "node-a", "node": "node-b", "now_on": "node-b",
                                "home": "pool-b", "previous_home": "fleet", "copied_snapshots": ["s1", "s2", "s3"],
                                "copied_bytes": 3 * 1024 * 1024, "downtime_seconds": 2.345, "instance": VIEW})
    assert text == ("Moved **alice** from node `node-a` to node `node-b` (home `fleet` -> `pool-b`: 3 snapshots, "
                    "3.0 MiB sent, down 2.3 s).\n**alice**: running, Foundry 13.345 <https://alice.example.org/>")


def test_a_move_in_one_home_an_instance_already_there_a_stopped_one_and_one_that_did_not_come_up() -> None:
    same_home = {"outcome": "moved", "previous": "node-a", "node": "node-c", "now_on": "node-c", "home": "fleet",
                 "previous_home": "fleet", "instance": VIEW}
    assert moved_text("alice", same_home).startswith("Moved **alice** from node `node-a` to node `node-c`.\n")
    assert moved_text("alice", {**same_home, "outcome": "already there"}) == (
        "**alice** is already on node `node-c`: nothing to move.")
    stopped = {**same_home, "outcome": "pinned", "instance": {**VIEW, "state": "stopped"}}
    assert moved_text("alice", stopped) == "**alice** is stopped: it moves to node `node-c` at its next start."
    failed = {**same_home, "outcome": "not moved", "now_on": "node-a",
              "instance": {**VIEW, "state": "failed", "state_reason": "crashed\x1b[31m 5 times"}}
    assert moved_text("alice", failed) == ("**alice** is not running on node `node-c`: failed (crashed\\x1b[31m 5 "
                                           "times); its data is on node `node-a`.")
