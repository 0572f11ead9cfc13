"""/fleet sftp-key add|list|remove: owners register their keys from Discord (the recorder plays Discord)."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from foundry_fleet.bot.client import FleetBot
from tests.e2e.test_bot import ALICE, BOB, ask, play, private
from tests.support.discord_gateway_recorder import DiscordGatewayRecorder
from tests.support.fleets import set_section
from tests.support.harness import FleetHarness
from tests.support.offline import create_offline
from tests.support.ports import single_port

pytestmark = pytest.mark.e2e


def test_owners_add_list_and_remove_their_sftp_keys(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    port = single_port()
    set_section(fleet, "sftp", {"enabled": "true", "listen": f"127.0.0.1:{port}"})
    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "alice", owner=str(ALICE.id))
    create_offline(fleet, "bob", owner=str(BOB.id))
    fleet.up()
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@laptop")
    public = key.export_public_key("openssh").decode().strip()
    fingerprint = key.get_fingerprint("sha256")

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        added = await ask(rec, bot, ALICE, "sftp-key add", key=public)
        assert fingerprint in private(added, f"sftp -P {port} alice@alice.")
        listed = await ask(rec, bot, ALICE, "sftp-key list")
        assert fingerprint in private(listed, "alice@laptop")
        # A private key is refused, and said to be exposed; someone else's instance does not exist.
        leaked = await ask(rec, bot, ALICE, "sftp-key add", key=key.export_private_key().decode()[:5000])
        assert "private key" in private(leaked) and "make a new key pair" in leaked.content
        for sub, extra in (("sftp-key add", {"key": public}), ("sftp-key list", {}),
                           ("sftp-key remove", {"key": fingerprint})):
            refused = await ask(rec, bot, ALICE, sub, instance="bob", **extra)
            assert "you have no instance named bob" in private(refused), sub
        assert "no SFTP keys" in private(await ask(rec, bot, BOB, "sftp-key list"))
        removed = await ask(rec, bot, ALICE, "sftp-key remove", key=fingerprint)
        assert "can no longer open **alice**" in private(removed)
        assert "no SFTP keys" in private(await ask(rec, bot, ALICE, "sftp-key list"))

    play(fleet, scenario)
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["actor"] == f"discord:{ALICE.id}" and e["action"] == "sftp.key.add" for e in events)
