"""How the bot's instance status tells whether a Foundry license key is set: never the key; when none is,
what visitors get meanwhile and who sets it (fleet admins only); nothing when the fleet cannot tell."""

from __future__ import annotations

from foundry_fleet.bot.tenant_commands import status_text

VIEW = {"name": "alice", "state": "stopped", "release": "13.345", "host": "alice.example.org",
        "url": "https://alice.example.org/", "state_reason": "", "suspended": None, "sleeps_after": None,
        "idle_after_own": False, "idle_since": None}


def test_the_status_says_a_license_key_is_set() -> None:
    assert status_text({**VIEW, "license": "set"}) == (
        "**alice**: stopped, Foundry 13.345 <https://alice.example.org/>\nLicense key: set.")


def test_a_missing_license_key_says_what_visitors_see_and_who_sets_it() -> None:
    said = status_text({**VIEW, "license": "missing"}).split("\n")
    assert said[1].startswith("License key: **missing**. Until one is set, Foundry shows its license page")
    assert "a fleet admin sets it (`foundry-fleet instance set alice --license-file FILE`)" in said[1]


def test_nothing_is_said_when_the_fleet_cannot_tell() -> None:
    assert "License" not in status_text({**VIEW, "license": None}) and "License" not in status_text(VIEW)
