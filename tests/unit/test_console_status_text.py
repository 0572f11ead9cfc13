"""The daemon's console shows status updates as plain text; Discord keeps the markdown."""

import asyncio
import logging

import pytest

from foundry_fleet.domain.text import plain_from_discord
from foundry_fleet.services.status_updates import LogNotifier, update_for


def test_discord_marks_are_taken_out() -> None:
    assert plain_from_discord("**alice** is restored to `nightly-1`") == "alice is restored to nightly-1"
    assert plain_from_discord("Invited <@123456789012345678> and <@!42>") == "Invited @123456789012345678 and @42"
    assert plain_from_discord("```\nlast lines\n```") == "last lines\n"
    assert plain_from_discord("no marks: 5 * 3 = 15") == "no marks: 5 * 3 = 15"


def test_updates_keep_markdown_for_discord() -> None:
    update = update_for("instance.crashed", "failed", "alice", "exit code 1")
    assert update is not None and update.text.startswith("**alice**")


def test_the_console_notifier_logs_plain_text(caplog: pytest.LogCaptureFixture) -> None:
    update = update_for("backup.snapshot", "failed", "alice", "disk full at `/srv/fleet`, ask <@123>")
    assert update is not None
    notifier = LogNotifier()
    with caplog.at_level(logging.INFO, logger="foundry_fleet.services.status_updates"):
        asyncio.run(notifier.post_ops(update.text))
        asyncio.run(notifier.send_dm("123", update.text))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["status: alice backup failed: disk full at /srv/fleet, ask @123",
                     "status for 123: alice backup failed: disk full at /srv/fleet, ask @123"]
    for line in lines:
        assert "**" not in line and "`" not in line and "<@" not in line
