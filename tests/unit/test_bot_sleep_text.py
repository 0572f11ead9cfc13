"""How the bot shows sleeping instances and when running ones will sleep (bot/text.py, the commands'
own wording): asleep is neither stopped nor failed, and a running one says when it sleeps, compactly."""

from __future__ import annotations

from foundry_fleet.bot.admin_commands import idle_after_text
from foundry_fleet.bot.tenant_commands import status_text
from foundry_fleet.bot.text import instance_line, sleep_note, state_text

NOW = 1_800_000_000.0
VIEW = {"name": "alice", "state": "running", "release": "13.345", "host": "alice.example.org",
        "url": "https://alice.example.org/", "state_reason": "healthy", "suspended": None,
        "sleeps_after": 3600.0, "idle_after_own": False, "idle_since": None}


def test_a_sleeping_instance_wakes_when_someone_opens_it() -> None:
    asleep = {**VIEW, "state": "sleeping", "state_reason": "idle for 1h"}
    assert instance_line(asleep, NOW) == ("**alice**: asleep (wakes when someone opens it), Foundry 13.345 "
                                          "<https://alice.example.org/>")
    said = status_text(asleep)
    assert "stopped" not in said and "failed" not in said
    assert said.endswith("Players opening its URL see a page while it starts; `/fleet start` wakes it now.")


def test_a_running_instance_says_when_it_sleeps() -> None:
    assert state_text(VIEW, NOW) == "running (sleeps after 1h idle)"  # in use: its idle time, from now on
    idle = {**VIEW, "idle_since": NOW - 600}
    # Idle: when, as a Discord timestamp every reader sees in their own terms ("in 50 minutes").
    assert state_text(idle, NOW) == f"running (idle, sleeps <t:{int(NOW + 3000)}:R>)"
    assert state_text({**VIEW, "idle_since": NOW - 3600}, NOW) == "running (idle, about to sleep)"
    assert instance_line({**VIEW, "sleeps_after": None}, NOW).startswith("**alice**: running, Foundry 13.345")


def test_suspended_failed_and_stopped_read_as_before() -> None:
    assert state_text({**VIEW, "state": "stopped", "suspended": "unpaid"}, NOW) == "suspended (unpaid)"
    assert state_text({**VIEW, "state": "failed", "state_reason": "exit 1"}, NOW) == "failed: exit 1"
    assert state_text({**VIEW, "state": "stopped"}, NOW) == "stopped"
    assert state_text({**VIEW, "state": "starting", "idle_since": NOW}, NOW) == "starting"


def test_the_idle_time_an_admin_set_and_the_new_owners_note() -> None:
    assert idle_after_text({**VIEW, "sleeps_after": 7200.0, "idle_after_own": True}) == (
        "**alice** sleeps after 2h without players or visits (its own setting), and wakes when someone opens it.")
    assert idle_after_text({**VIEW, "sleeps_after": None, "idle_after_own": True}) == (
        "**alice** never sleeps (its own setting).")
    assert "(the fleet's setting)" in idle_after_text(VIEW)
    assert sleep_note(VIEW).startswith("After 1h without players it sleeps")
    assert sleep_note({**VIEW, "sleeps_after": None}) == ""
