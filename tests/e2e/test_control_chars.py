"""A tenant's text reaches admins escaped: terminal controls in its log, state reasons and events.

The hostile line is written from inside a running instance onto its server's own stdout, the way a
module or macro would, and then read back through `instance logs` (tail and --follow) and the bot's
`/fleet logs`; text in events and state reasons goes through `events`, `instance show` and `status`.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from foundry_fleet.bot.client import FleetBot
from foundry_fleet.bot.text import instance_line, scrub
from foundry_fleet.domain.text import escape_controls
from tests.support.discord_gateway_recorder import DiscordGatewayRecorder
from tests.support.harness import BIN, FleetHarness, OutputReader, sigint_as_in_a_terminal, wait_until
from tests.support.offline import create_offline
from tests.support.foundry_standin import run_in_instance
from tests.e2e.test_bot import ALICE, ask, play, private

# OSC 0 (window title), OSC 52 (clipboard write), CSI (erase screen, colours), a bare carriage
# return that would overwrite the start of the line, and rich markup.
HOSTILE = ("title \x1b]0;pwned\x07 clip \x1b]52;c;cHduZWQ=\x07 csi \x1b[2J\x1b[31mred\x1b[0m "
           "cr \rOVERWRITE [bold red]markup[/] end")
HOSTILE_PRINTF = (r"title \033]0;pwned\007 clip \033]52;c;cHduZWQ=\007 csi \033[2J\033[31mred\033[0m "
                  r"cr \rOVERWRITE [bold red]markup[/] end\n")
SHOWN = escape_controls(HOSTILE)


def assert_escaped(output: str, expected: str = SHOWN) -> None:
    assert expected in output, output
    assert "\\x1b]0;pwned\\x07" in output and "\\x0dOVERWRITE [bold red]markup[/]" in output
    raw = sorted({f"{ord(c):#x}" for c in output if not c.isprintable() and c not in "\n\t"})
    assert not raw, f"raw control characters reached the admin: {raw}"


# ---------------------------------------------------------------------------------- the pure function


@given(st.text())
@example(HOSTILE)
@example("\u202egnp.exe\u200b\x85\u2028\x7f\x9b")
def test_no_control_character_survives(text: str) -> None:
    for multiline, allowed in ((False, "\t"), (True, "\t\n")):
        shown = escape_controls(text, multiline=multiline)
        assert all(c.isprintable() or c in allowed for c in shown), shown
        assert escape_controls(shown, multiline=multiline) == shown  # escaping twice changes nothing


@given(st.text())
def test_printable_text_is_unchanged(text: str) -> None:
    printable = "".join(c for c in text if c.isprintable() or c in "\t\n")
    assert escape_controls(printable, multiline=True) == printable
    one_line = printable.replace("\n", "")
    assert escape_controls(one_line) == one_line


@given(st.characters().filter(lambda c: not c.isprintable() and c not in "\t\n"))
def test_each_escape_names_its_character(ch: str) -> None:
    shown = escape_controls(ch)
    assert shown.startswith("\\") and shown.encode().decode("unicode_escape") == ch


def test_the_usual_sequences_are_shown_as_text() -> None:
    assert escape_controls("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert escape_controls("x\ry\tz") == "x\\x0dy\tz"
    assert escape_controls("one\ntwo") == "one\\x0atwo" and escape_controls("one\ntwo", multiline=True) == "one\ntwo"
    assert escape_controls("\x9b31m\u202e") == "\\x9b31m\\u202e"
    assert scrub("log \x1b[2J https://u:p@h.example/x?token=1\n") == "log \\x1b[2J https://h.example/x\n"


# ---------------------------------------------------------------------------------- through a real fleet


def _write_from_inside(port: int) -> None:
    """Onto the server's own stdout (its parent's fd 1), as code running in the server would."""
    result = run_in_instance(port, f"printf '{HOSTILE_PRINTF}' > /proc/$PPID/fd/1")
    assert result["code"] == 0, result


def _log_has_it(fleet: FleetHarness) -> bool:
    return "pwned" in fleet.cli("instance", "logs", "alice", "-n", "1000").out


@pytest.mark.e2e
def test_cli_and_bot_show_a_hostile_log_line_escaped(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    port = fleet.cli("instance", "create", "alice", "--release", "13.345", "--owner", str(ALICE.id),
                     "--json").json()["instance"]["port"]
    follower = subprocess.Popen(
        [str(BIN), "--config", str(fleet.config), "instance", "logs", "alice", "--follow", "-n", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=sigint_as_in_a_terminal,
    )
    try:
        out = OutputReader(follower)

        def followed_it() -> bool:
            # `-n 0` prints nothing until it follows: the line is written again until it shows.
            _write_from_inside(port)
            return "pwned" in out.text()

        wait_until(followed_it, 20, "the hostile line in the followed log", interval=0.5)
        assert _log_has_it(fleet)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert_escaped(out.text())
    assert_escaped(fleet.cli("instance", "logs", "alice", "-n", "1000").out)

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        reply = await ask(rec, bot, ALICE, "logs", lines=200)
        assert_escaped(private(reply, "pwned"))

    play(fleet, scenario)


@pytest.mark.e2e
def test_events_and_state_reasons_are_shown_escaped_and_without_markup(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "alice")
    # What a tenant's text in an error or reason looks like once recorded (file names, log lines).
    evil = "\x1b]0;pwned\x07[bold red]x[/]\r"
    fleet.sql("INSERT INTO events (at, actor, action, target, outcome, message, detail) "
              "VALUES (?, 'supervisor', 'instance.crashed', 'alice', 'failed', ?, '{}')", time.time(), evil)
    fleet.sql("UPDATE instances SET state_reason = ? WHERE name = 'alice'", evil)
    expected = escape_controls(evil)
    for args in (("events", "--instance", "alice"), ("instance", "show", "alice")):
        out = fleet.cli(*args).out
        assert expected in out, (args, out)  # markup shown as typed, controls escaped
        assert "\x1b" not in out and "\r" not in out, (args, out)
    status = fleet.cli("status").out
    assert "alice" in status and "\x1b" not in status
    # The bot's status line carries the reason of a failed instance; every message passes scrub.
    line = scrub(instance_line({"name": "alice", "state": "failed", "state_reason": evil, "url": "https://a.localhost/"}))
    assert expected in line and "\x1b" not in line


def test_the_daemon_log_shows_tenant_text_escaped() -> None:
    import logging

    from foundry_fleet.cli.main import _escape_log_record

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "instance %s: %s", ("alice", HOSTILE + "\nnext"), None)
    assert _escape_log_record(record)
    assert record.getMessage() == "instance alice: " + SHOWN + "\nnext"
