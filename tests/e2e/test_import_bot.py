"""/fleet import: an owner attaches a zip in Discord and the daemon imports it from Discord's file host
(here the test's own HTTPS server stands in for it, allowed by [discord] attachment_hosts)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from foundry_fleet.bot.client import FleetBot
from foundry_fleet.bot.command_context import Limits
from tests.e2e.test_bot import ALICE, BOB, ask, play, private
from tests.support.discord_gateway_recorder import DiscordGatewayRecorder, snowflake
from tests.support.fleets import set_section
from tests.support.harness import FleetHarness
from tests.support.offline import create_offline
from tests.support.releases import LocalHTTPS, Route

pytestmark = pytest.mark.e2e

WORLD = {"mine/world.json": b'{"id": "mine", "title": "Mine"}', "mine/data/actors.db": b"{}\n"}


def attachment(url: str, filename: str = "mine.zip", size: int = 1000) -> dict[str, Any]:
    return {"id": str(snowflake()), "filename": filename, "size": size, "url": url,
            "content_type": "application/zip"}


def test_an_owner_imports_a_zip_attached_in_discord(fleet: FleetHarness, release_zips: dict[str, Path],
                                                     https_server: LocalHTTPS) -> None:
    # Only attachments may come from the stand-in host: the release allow-list stays as it is.
    set_section(fleet, "discord", {"attachment_hosts": ["127.0.0.1"]})  # type: ignore[dict-item]
    set_section(fleet, "releases", {"allow_private_addresses": "true", "extra_ca_file": str(https_server.cert)})
    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "alice", owner=str(ALICE.id))
    create_offline(fleet, "bob", owner=str(BOB.id))
    fleet.up()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in WORLD.items():
            zf.writestr(name, body)
    https_server.routes["/attachments/1/2/mine.zip"] = Route(body=buf.getvalue())
    url = https_server.url("/attachments/1/2/mine.zip?ex=1&hm=SECRET")
    file = attachment(url, size=len(buf.getvalue()))

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        done = await ask(rec, bot, ALICE, "import", file=file, into="Data/worlds")
        assert "Imported 2 files" in private(done, "**alice**", "`Data/worlds`", "`pre-import-")
        again = await ask(rec, bot, ALICE, "import", file=file, into="Data/worlds")
        assert "already exist in alice" in private(again, "replace: True")
        refused = await ask(rec, bot, ALICE, "import", file=file, instance="bob")
        assert "you have no instance named bob" in private(refused)
        not_zip = await ask(rec, bot, ALICE, "import", file=attachment(url, "mine.tar"))
        assert "is not a .zip" in private(not_zip)
        huge = await ask(rec, bot, ALICE, "import", file=attachment(url, size=26 * 1024 * 1024))
        assert "over Discord's upload limit" in private(huge)

    play(fleet, scenario, Limits(act=(10, 60.0)))
    view = fleet.instance("alice")
    uid = view["uid"] if view["uid"] is not None else os.geteuid()
    for rel, body in WORLD.items():
        path = Path(view["data_dir"], "Data/worlds", rel)
        assert path.read_bytes() == body
        assert path.stat().st_uid == uid, path
    assert not Path(fleet.instance("bob")["data_dir"], "Data/worlds/mine").exists()
    # The release downloads did not open to the attachment host.
    refused = fleet.cli("instance", "import", "alice", url, "--into", "Data/modules", check=False)
    assert refused.code != 0 and "not an allowed download host" in refused.err
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["actor"] == f"discord:{ALICE.id}" and e["action"] == "instance.import" for e in events)
