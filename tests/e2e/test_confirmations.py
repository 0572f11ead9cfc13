"""Destructive commands ask first; without a terminal they refuse unless --yes; a no changes nothing."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tests.support.harness import BIN, FleetHarness


def _answer(fleet: FleetHarness, answer: str, *args: str) -> tuple[int, str]:
    """Run a command on a terminal, as a person would, and type `answer` at its question."""
    leader, follower = pty.openpty()
    p = subprocess.Popen([str(BIN), "--config", str(fleet.config), *args], stdin=follower, stdout=follower,
                         stderr=follower, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    os.close(follower)
    seen = b""
    try:
        while b"[y/N]" not in seen:
            seen += os.read(leader, 4096)
        os.write(leader, answer.encode() + b"\n")
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal is gone once the command exits
                break
            if not chunk:
                break
            seen += chunk
        return p.wait(timeout=60), seen.decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(leader)


def test_without_a_terminal_destructive_commands_refuse_and_say_pass_yes(
        fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    invite = fleet.cli("invite", "create", "--discord-user", "123456789012345678", "--json").json()
    for args in (["release", "remove", "13.345"], ["invite", "revoke", str(invite["invite"]["id"])]):
        r = fleet.cli(*args, check=False)
        assert r.code == 2 and "pass --yes" in r.err, (args, r.code, r.err)
    assert [r["version"] for r in fleet.cli("release", "list", "--json").json()] == ["13.345"]
    assert fleet.cli("invite", "list", "--json").json()[0]["status"] == "pending"
    fleet.up()
    fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start")
    fleet.cli("backup", "now", "alice")
    for args in (["instance", "delete", "alice"], ["instance", "delete", "alice", "--purge"],
                 ["instance", "suspend", "alice"], ["backup", "restore", "alice", "latest"]):
        r = fleet.cli(*args, check=False)
        assert r.code == 2 and "pass --yes" in r.err, (args, r.code, r.err)
    alice = fleet.instance("alice")
    snaps = [s["name"] for s in fleet.cli("backup", "list", "alice", "--json").json()]
    assert alice["suspended"] is None and not any(n.startswith("safety-") for n in snaps), (alice, snaps)


def test_answering_no_changes_nothing_and_exits_1(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    code, out = _answer(fleet, "n", "release", "remove", "13.345")
    assert code == 1 and "nothing changed" in out, out
    assert [r["version"] for r in fleet.cli("release", "list", "--json").json()] == ["13.345"]
    code, out = _answer(fleet, "y", "release", "remove", "13.345")
    assert code == 0 and "removed release" in out, out
    assert fleet.cli("release", "list", "--json").json() == []


def test_an_invite_without_a_bot_says_how_it_reaches_the_person(fleet: FleetHarness) -> None:
    for_user = fleet.cli("invite", "create", "--discord-user", "123456789012345678").out
    assert "No Discord bot is configured" in for_user and "/fleet setup" in for_user
    code = fleet.cli("invite", "create", "--code").out
    shown = code.split("/fleet join): ")[1].split()[0]
    assert f"/fleet join code:{shown}" in " ".join(code.split())
