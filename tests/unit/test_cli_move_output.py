"""What `instance move` says of a move between homes: what was copied, and how long it was down."""

from __future__ import annotations

from foundry_fleet.cli.instance import _copied


def test_a_move_between_homes_names_its_snapshots_bytes_and_downtime() -> None:
    said = _copied({"copied_snapshots": ["before-2026-11-30-050000Z", "move-2026-11-30-051000Z",
                                         "move-2026-11-30-051003Z"],
                    "copied_bytes": 3 * 1024 * 1024 + 512 * 1024, "downtime_seconds": 2.345})
    assert said == ("copied 3 snapshots (3.5 MiB): before-2026-11-30-050000Z .. move-2026-11-30-051003Z; "
                    "down 2.3 s (stopped -> running again)")


def test_a_stopped_instance_moved_was_not_down_and_one_snapshot_is_named_alone() -> None:
    said = _copied({"copied_snapshots": ["move-2026-11-30-051000Z"], "copied_bytes": 900, "downtime_seconds": None})
    assert said == "copied 1 snapshot (900 B): move-2026-11-30-051000Z"


def test_snapshot_names_reach_the_terminal_without_control_characters() -> None:
    said = _copied({"copied_snapshots": ["evil\x1b[2Jname"], "copied_bytes": 0, "downtime_seconds": None})
    assert "\x1b" not in said
