"""The event log's search (services/events.py `search`): every filter in one query, newest first."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.events import MAX_SEARCH, EventLog
from foundry_fleet.store.database import open_database


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    events = EventLog(open_database(tmp_path / "fleet.sqlite"), "tester")
    for action, target, outcome, message in [
        ("backup.snapshot", "alice", Outcome.OK, "1"),
        ("backup.snapshot", "alice", Outcome.FAILED, "2"),
        ("backup.thin", "alice", Outcome.OK, "3"),
        ("backupXsnapshot", "alice", Outcome.OK, "4"),  # `_` or `.` is no wildcard: not a backup. event
        ("instance.start", "alice", Outcome.FAILED, "5"),
        ("backup.snapshot", "bob", Outcome.FAILED, "6"),
        ("back%up", "bob", Outcome.OK, "7"),
    ]:
        events.record(action, target, outcome, message)
    return events


def messages(found: list) -> list[str]:  # type: ignore[type-arg]
    return [e.message for e in found]


def test_filters_combine_and_the_newest_come_first(log: EventLog) -> None:
    assert messages(log.search()) == ["7", "6", "5", "4", "3", "2", "1"]
    assert messages(log.search(target="alice", action_prefix="backup.")) == ["3", "2", "1"]
    assert messages(log.search(target="alice", action_prefix="backup.", outcome="failed")) == ["2"]
    assert messages(log.search(outcome="failed")) == ["6", "5", "2"]
    assert messages(log.search(action_prefix="backup.", limit=2)) == ["6", "3"]
    assert messages(log.search(target="nobody")) == []


def test_a_prefix_is_matched_literally(log: EventLog) -> None:
    assert messages(log.search(action_prefix="back%")) == ["7"]
    assert messages(log.search(action_prefix="backup_")) == []
    assert messages(log.search(action_prefix="%")) == []


def test_the_count_is_kept_within_bounds(log: EventLog) -> None:
    assert messages(log.search(limit=0)) == ["7"]
    assert len(log.search(limit=MAX_SEARCH * 10)) == 7
    event = log.search(limit=1)[0]
    assert (event.actor, event.action, event.target, event.outcome) == ("tester", "back%up", "bob", "ok")
