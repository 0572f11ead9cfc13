"""The Discord bot against a real fleet daemon, with Discord played by tests/support/discord_gateway_recorder.py.

Interactions go in as raw gateway payloads through discord.py's own parser; what the bot sends comes out
through discord.py's own HTTP code into a strict recorder that refuses what Discord refuses (3 s, one
initial response, forms, mentions, ephemeral secrets). The fleet side is real: the daemon, its control
API over its socket, and the service layer on the same database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest
from discord import app_commands

from foundry_fleet.bot.client import FleetBot
from foundry_fleet.bot.commands import Limits
from foundry_fleet.bot.confirm import CONFIRM_SECONDS
from foundry_fleet.bot.runner import run_bot
from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.status_updates import Undeliverable, Update
from foundry_fleet.wiring.services import make_bot_services, make_invites, make_status_updates, open_services
from tests.support.discord_gateway_recorder import (
    GUILD_ID, OPS_CHANNEL_ID, TOKEN, DiscordGatewayRecorder, Interaction, Message, Person,
)
from tests.support.harness import FleetHarness, wait_until
from tests.support.offline import create_offline

pytestmark = pytest.mark.e2e

ADMIN_ROLE = 1500000000000000001
OTHER_ROLE = 1500000000000000002
ALICE = Person(111111111111111111, "alice", (OTHER_ROLE,))
BOB = Person(222222222222222222, "bob")
BOSS = Person(333333333333333333, "boss", (ADMIN_ROLE,))  # admin by role
ROOT = Person(444444444444444444, "root")  # admin by [discord] admin_users
CAROL = Person(555555555555555555, "carol")
DAVE = Person(666666666666666666, "dave")
LICENSE = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX"
Scenario = Callable[[FleetBot, DiscordGatewayRecorder], Awaitable[None]]


def play(fleet: FleetHarness, scenario: Scenario, limits: Limits | None = None) -> DiscordGatewayRecorder:
    """Log a bot in against the recorder, tell it about the guild and its roles, run `scenario`."""
    recorder = DiscordGatewayRecorder()

    async def main() -> None:
        config = load_config(fleet.config)
        transport = httpx.AsyncHTTPTransport(uds=str(fleet.root / "run" / "control.sock"))
        bot = FleetBot(config, make_bot_services(open_services(config, actor="bot")), transport, limits=limits)
        await recorder.login(bot)
        recorder.guild_create(bot, {ADMIN_ROLE: "fleet-admin", OTHER_ROLE: "players"})
        try:
            await scenario(bot, recorder)
        finally:
            await recorder.drain()
            await bot.close()

    asyncio.run(main())
    recorder.assert_clean()
    return recorder


async def ask(rec: DiscordGatewayRecorder, bot: FleetBot, person: Person, sub: str, **options: Any) -> Message:
    """`/fleet sub ...` by `person`; the message that answers it, once final."""
    return await rec.reply(rec.feed(bot, rec.slash(person, sub, **options)))


async def press(rec: DiscordGatewayRecorder, bot: FleetBot, person: Person, message: Message, label: str,
                **kw: Any) -> Interaction:
    return await rec.answered(rec.feed(bot, rec.press(person, message, label, **kw)))


def private(message: Message, *words: str) -> str:
    assert message.ephemeral, f"expected an ephemeral message: {message.content!r}"
    for word in words:
        assert word in message.content, f"{word!r} not in {message.content!r}"
    return message.content


def admin_users(fleet: FleetHarness, *people: Person) -> None:
    fleet.edit_config("admin_users = []", "admin_users = [" + ", ".join(f'"{p.id}"' for p in people) + "]")


# tenants ---------------------------------------------------------------------------------------


def _event_says(fleet: FleetHarness, target: str, text: str) -> bool:
    """Whether the fleet's event log has an event about `target` whose message holds `text`."""
    import sqlite3

    db = sqlite3.connect(fleet.root / "state" / "fleet.sqlite")
    try:
        rows = db.execute("SELECT message FROM events WHERE target = ?", (target,)).fetchall()
    finally:
        db.close()
    return any(text in message for (message,) in rows)


def test_tenants_run_their_own_instance_from_discord(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.cli("release", "add", str(release_zips["wrapped"]))  # 13.347
    create_offline(fleet, "alice", owner=str(ALICE.id))
    create_offline(fleet, "bob", owner=str(BOB.id))
    create_offline(fleet, "bob-two", owner=str(BOB.id))
    fleet.up()
    domain = fleet.settings().fleet.domain

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        status = await ask(rec, bot, ALICE, "status")
        assert "**alice**: stopped" in private(status) and "bob" not in status.content
        assert "License key: **missing**" in status.content and "a fleet admin sets it" in status.content

        start = rec.feed(bot, rec.slash(ALICE, "start"))
        reply = await rec.reply(start)
        assert start.initial == 5  # slow: deferred first, then the outcome edits the same message
        assert "**alice**: running" in private(reply) and reply.history[-1] == reply.content

        url = await ask(rec, bot, ALICE, "url")
        assert not url.ephemeral and f"https://alice.{domain}" in url.content  # for the players in the channel

        logs = await ask(rec, bot, ALICE, "logs", lines=5)
        assert private(logs, "last 5 lines").count("```") == 2

        taken = await ask(rec, bot, ALICE, "backup", label="before-test")
        snapshot = re.search(r"`(before-test-[^`]+)`", private(taken, "Download:"))[1]
        assert f"https://alice.{domain}" in taken.content and f"/backups/{snapshot}.zip" in taken.content
        listing = await ask(rec, bot, ALICE, "backups")
        assert snapshot in private(listing) and f"/backups/{snapshot}.zip" in listing.content

        # Restore: a confirm button only the person who asked may press.
        confirm = await ask(rec, bot, ALICE, "restore", snapshot="latest")  # named in full in the question
        assert private(confirm, f"Restore **alice** to `{snapshot}`?").startswith("Restore")
        assert confirm.labels() == ["Restore", "Cancel"]
        refused = await press(rec, bot, BOB, confirm, "Restore", forge=True)
        refusal = await rec.reply(refused)
        assert "Only the person who asked" in private(refusal) and confirm.labels() == ["Restore", "Cancel"]
        done = await press(rec, bot, ALICE, confirm, "Restore")
        assert done.initial == 7  # the confirm message itself turns into the outcome
        await rec.until(lambda: "is restored" in confirm.content, 30, "the restore")
        assert "Restoring **alice**" in confirm.history[-2] and confirm.labels() == []
        assert "**alice**: running" in confirm.content

        # Another tenant's instance does not exist for Alice, whatever the command.
        for sub, extra in (("status", {}), ("start", {}), ("logs", {}), ("backups", {}),
                           ("restore", {"snapshot": snapshot}), ("upgrade", {"release": "13.347"})):
            refused_reply = await ask(rec, bot, ALICE, sub, instance="bob", **extra)
            assert "you have no instance named bob" in private(refused_reply), sub
        admin_only = await ask(rec, bot, ALICE, "suspend", instance="alice")
        assert "only fleet admins" in private(admin_only)
        sneaky = await ask(rec, bot, ALICE, "status", instance="bob/logs")
        assert "is not a DNS label" in private(sneaky)

        # The instance may be left out only when there is exactly one to mean.
        both = await ask(rec, bot, BOB, "status")
        assert "**bob**" in private(both) and "**bob-two**" in both.content
        which = await ask(rec, bot, BOB, "logs")
        assert "you have 2 instances: say which one" in private(which, "one of bob, bob-two")
        in_dm = await ask(rec, bot, ALICE, "status", dm=True)  # commands work in a DM with the bot too
        assert "**alice**: running" in private(in_dm)

        # One operation at a time per instance: the fleet refuses a second one at once, saying why.
        upgrade = rec.feed(bot, rec.slash(ALICE, "upgrade", release="13.347"))
        await rec.until(lambda: _event_says(fleet, "alice", "upgrading to 13.347"), 10, "the upgrade to begin")
        busy = await ask(rec, bot, ALICE, "restart")
        assert "alice is being upgraded" in private(busy) and "try again once it has finished" in busy.content
        upgraded = await rec.reply(upgrade)
        assert "now runs Foundry 13.347" in private(upgraded) and "Backup from just before" in upgraded.content

        stop = await ask(rec, bot, ALICE, "stop")
        assert "**alice**: stopped" in private(stop)

        # Per-user cooldowns, with a friendly answer: 5 uses of /fleet url per 15 s.
        for _ in range(4):
            await ask(rec, bot, ALICE, "url")
        slow_down = await ask(rec, bot, ALICE, "url")
        assert "Slow down" in private(slow_down) and "/fleet url" in slow_down.content
        assert "https://bob." in (await ask(rec, bot, BOB, "url", instance="bob")).content  # others are not slowed

    play(fleet, scenario)
    alice = fleet.instance("alice")
    assert alice["release"] == "13.347" and alice["state"] == "stopped"
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["actor"] == f"discord:{ALICE.id}" and e["action"] == "instance.start" for e in events)


# admins ----------------------------------------------------------------------------------------


def test_admins_invite_list_suspend_resume_and_delete(fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    admin_users(fleet, ROOT)
    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "alice", owner=str(ALICE.id), start=True)
    fleet.up()
    fleet.wait_state("alice", "running")

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        for sub, options in (("invite", {"user": CAROL}), ("list", {}), ("suspend", {"instance": "alice"}),
                             ("resume", {"instance": "alice"}), ("move", {"instance": "alice", "node": "node-b"}),
                             ("delete", {"instance": "alice"})):
            refused = await ask(rec, bot, ALICE, sub, **options)
            assert f"only fleet admins may do /fleet {sub}" in private(refused), sub
        assert rec.dms_to(CAROL) == []

        invited = await ask(rec, bot, BOSS, "invite", user=CAROL, expires="2d")
        assert "they have a DM with a button" in private(invited, "<@555555555555555555>")
        [dm] = rec.dms_to(CAROL)
        assert dm.labels() == ["Set up my instance", "Read my key from foundryvtt.com"] and "You are invited" in dm.content
        again = await ask(rec, bot, BOSS, "invite", user=CAROL)
        assert "already has a pending invite" in private(again)

        rec.closed_dms.add(DAVE.id)
        closed = await ask(rec, bot, BOSS, "invite", user=DAVE)
        assert "their DMs are closed to me" in private(closed, "/fleet setup") and rec.dms_to(DAVE) == []

        code_reply = await ask(rec, bot, ROOT, "invite", expires="1d")  # admin by config, no role
        code = re.search(r"code, shown this once: `([^`]+)`", private(code_reply))[1]
        rec.secrets.add(code)
        bad_expiry = await ask(rec, bot, BOSS, "invite", user=BOB, expires="100d")
        assert "is not allowed" in private(bad_expiry) and "between 5min and 90d" in bad_expiry.content

        listing = await ask(rec, bot, ROOT, "list")
        assert "**alice**: running" in private(listing, "Pending invites: 3", "shareable code", "<@666666666666666666>")
        outside = await ask(rec, bot, BOSS, "list", dm=True)  # the admin role counts in the guild only
        assert "only fleet admins" in private(outside)

        suspended = await ask(rec, bot, BOSS, "suspend", instance="alice", reason="unpaid")
        assert "suspended (unpaid)" in private(suspended, "Suspended.")
        tenant_try = await ask(rec, bot, ALICE, "start")
        assert "suspended: unpaid" in private(tenant_try)
        status = await ask(rec, bot, ALICE, "status")
        assert "A fleet admin suspended it" in private(status)
        resumed = await ask(rec, bot, ROOT, "resume", instance="alice")
        assert "**alice**: running" in private(resumed, "Resumed.")

        nowhere_else = await ask(rec, bot, BOSS, "move", instance="alice", node="node-b")
        assert "the local runtime runs every instance on this host" in private(nowhere_else), nowhere_else.content

        changed_mind = await ask(rec, bot, BOSS, "delete", instance="alice")
        await press(rec, bot, BOSS, changed_mind, "Cancel")
        assert changed_mind.content == "Cancelled: nothing was changed." and changed_mind.labels() == []
        too_late = await ask(rec, bot, BOSS, "delete", instance="alice")
        bot.confirmations.clock = lambda: time.monotonic() + CONFIRM_SECONDS + 1
        await press(rec, bot, BOSS, too_late, "Delete")
        assert "This confirmation has expired; nothing was changed" in too_late.content
        bot.confirmations.clock = time.monotonic

        confirm = await ask(rec, bot, BOSS, "delete", instance="alice")
        assert private(confirm, "Delete **alice**", "<@111111111111111111>") and confirm.labels() == ["Delete", "Cancel"]
        not_asked = await press(rec, bot, ROOT, confirm, "Delete", forge=True)  # an admin, but not the one who asked
        assert "Only the person who asked" in private(await rec.reply(not_asked))
        await press(rec, bot, BOSS, confirm, "Delete")
        await rec.until(lambda: "Deleted **alice**" in confirm.content, 30, "the deletion")
        assert "Its data is kept at" in confirm.content
        gone = await ask(rec, bot, ALICE, "status")
        assert "you have no instance yet" in private(gone)

        missing = await ask(rec, bot, BOSS, "delete", instance="nothing")
        assert "no instance" in private(missing) and missing.labels() == []

    play(fleet, scenario)
    pending = make_invites(open_services(load_config(fleet.config))).list()
    assert sorted(str(i.discord_user_id) for i in pending) == sorted([str(CAROL.id), str(DAVE.id), "None"])
    assert fleet.cli("instance", "list", "--json").json() == []


def test_sleeping_instances_read_as_asleep_a_start_wakes_them_and_admins_set_the_idle_time(
        fleet: FleetHarness, release_zips: dict[str, Path]) -> None:
    admin_users(fleet, ROOT)
    fleet.edit_config('idle_after = "60min"', 'idle_after = "2s"')
    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "alice", owner=str(ALICE.id), start=True)
    fleet.up()
    fleet.wait_state("alice", "sleeping", 30)

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        status = await ask(rec, bot, ALICE, "status")
        assert "**alice**: asleep (wakes when someone opens it)" in private(status, "`/fleet start` wakes it now")
        assert "stopped" not in status.content and "failed" not in status.content
        listing = await ask(rec, bot, ROOT, "list")
        assert "**Instances** (1 instance: 1 sleeping)" in private(listing, "**alice**: asleep")

        # Only admins set it; what the fleet cannot read as an idle time is said, nothing changed.
        refused = await ask(rec, bot, ALICE, "idle-after", instance="alice", after="off")
        assert "only fleet admins may do /fleet idle-after" in private(refused)
        for wrong, said in (("soon", "'soon' is not an idle time"), ("5m", "minutes are `min`"),
                            ("fleetwide", "'fleetwide' is not an idle time")):
            bad = await ask(rec, bot, ROOT, "idle-after", instance="alice", after=wrong)
            assert said in private(bad), bad.content
        off = await ask(rec, bot, ROOT, "idle-after", instance="alice", after="off")
        assert "**alice** never sleeps (its own setting)." in private(off, "**alice**: asleep")  # not woken by it

        woke = await ask(rec, bot, ALICE, "start")
        assert private(woke).startswith("Woke **alice** up.\n**alice**: running, Foundry 13.345")
        again = await ask(rec, bot, ALICE, "start")  # already running: nothing was woken
        assert "Woke" not in private(again, "**alice**: running")

        hours = await ask(rec, bot, BOSS, "idle-after", instance="alice", after="2h")
        assert "sleeps after 2h without players or visits (its own setting)" in private(hours)
        assert re.search(r"\*\*alice\*\*: running \((sleeps after 2h idle|idle, sleeps <t:\d+:R>)\)", hours.content)
        follows = await ask(rec, bot, ROOT, "idle-after", instance="alice", after="fleet")
        assert "**alice** sleeps after 2s without players or visits (the fleet's setting)" in private(follows)
        await asyncio.to_thread(fleet.wait_state, "alice", "sleeping", 30)
        assert "**alice**: asleep" in private(await ask(rec, bot, ALICE, "status"))

    play(fleet, scenario)
    events = fleet.cli("events", "--instance", "alice", "--json").json()
    assert any(e["action"] == "instance.sleep" for e in events)


# the setup wizard ------------------------------------------------------------------------------


def test_the_wizard_takes_an_invite_to_a_running_instance(
    fleet: FleetHarness, release_zips: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="foundry_fleet")
    caplog.set_level(logging.INFO, logger="discord")
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    link_token = "s3cr3t-download-token"
    result: dict[str, Any] = {}

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        rec.secrets.update({LICENSE, LICENSE.replace("-", ""), link_token})
        await ask(rec, bot, BOSS, "invite", user=CAROL)
        [dm] = rec.dms_to(CAROL)

        opened = await press(rec, bot, CAROL, dm, "Set up my instance")  # in the DM, not the guild
        assert opened.initial == 9 and opened.payload.get("guild_id") is None
        assert opened.modal["title"] == "Set up your Foundry instance (1 of 2)"

        async def details(opener: Interaction, name: str, key: str) -> Message:
            return await rec.reply(rec.feed(bot, rec.submit(CAROL, opener, {
                "Instance name": name, "Foundry license key": key})))

        bad_name = await details(opened, "Carol's Table!", LICENSE)
        assert "is not a DNS label" in private(bad_name, "press the button to fill it in again")
        assert bad_name.labels() == ["Try again", "Cancel setup"]
        retry = await press(rec, bot, CAROL, bad_name, "Try again")
        bad_key = await details(retry, "carol", "NOT-A-REAL-FOUNDRY-LICENSE!")
        assert "not a Foundry license key" in private(bad_key)
        retry = await press(rec, bot, CAROL, bad_key, "Try again")
        step2 = await details(retry, "carol", LICENSE)
        private(step2, "Step 2 of 2", "`carol`", "13.345")
        assert step2.labels() == ["Next: choose the release", "Change name or license", "Cancel setup"]

        async def release(message: Message, label: str, **values: str) -> Interaction:
            opener = await press(rec, bot, CAROL, message, label)
            assert opener.initial == 9, "a button answers with the second form"
            fields = dict((f["label"], f) for f in opener.modal["components"])
            assert "Release (13.345)" in fields
            return rec.feed(bot, rec.submit(CAROL, opener, values))

        not_cached = await rec.reply(await release(step2, "Next: choose the release", **{"Release (13.345)": "13.999"}))
        assert "release 13.999 is not in the fleet's cache" in private(not_cached, "choose one of: 13.345")
        bad_link = await rec.reply(await release(not_cached, "Choose the release again", **{
            "Or a timed download link": f"https://example.org/FoundryVTT.zip?token={link_token}"}))
        assert "not an allowed download host" in private(bad_link) and link_token not in bad_link.content
        neither = await rec.reply(await release(bad_link, "Choose the release again"))
        assert "choose one: a release from the list, or a download link" in private(neither)

        making = await release(neither, "Choose the release again", **{"Release (13.345)": "13.345"})
        reply = await rec.reply(making)
        assert making.initial == 5 and reply.ephemeral
        await rec.until(lambda: making.followups, 60, "the instance to be made")
        assert any("creating carol with Foundry 13.345" in h for h in reply.history), reply.history
        assert "`carol` is ready" in reply.content  # progress edits of the same message, then the outcome
        [final] = making.followups
        assert "is running at https://carol." in private(final, "Admin password", "shown this once")
        assert "After 1h without players it sleeps" in final.content  # the fleet's idle_after, as init wrote it
        result["password"] = re.search(r"\|\|`([^`]+)`\|\|", final.content)[1]
        rec.secrets.add(result["password"])

        status = await ask(rec, bot, CAROL, "status")
        assert re.search(r"\*\*carol\*\*: running \((sleeps after 1h idle|idle, sleeps <t:\d+:R>)\)", private(status))
        assert "License key: set." in status.content
        assert LICENSE not in status.content and LICENSE.replace("-", "") not in status.content
        again = await ask(rec, bot, CAROL, "setup")
        assert "no pending invite" in private(again)  # the invite is used up

    rec = play(fleet, scenario)
    carol = fleet.instance("carol")
    assert carol["owner"] == str(CAROL.id) and carol["state"] == "running"
    license_json = Path(carol["data_dir"], "Config", "license.json").read_text()
    assert LICENSE.replace("-", "") in license_json
    public = [m.text() for m in rec.messages.values() if not m.ephemeral]
    for secret in (LICENSE, LICENSE.replace("-", ""), result["password"], link_token):
        assert secret not in caplog.text and not any(secret in text for text in public)
    events = fleet.cli("events", "--json").json()
    assert any(e["action"] == "wizard.done" and e["actor"] == f"discord:{CAROL.id}" for e in events)


def test_the_wizard_resumes_cancels_joins_by_code_and_says_what_to_fix(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    code = make_invites(open_services(load_config(fleet.config))).create(None, "1d", shareable=True).code

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        rec.secrets.add(code)
        nothing = await ask(rec, bot, DAVE, "setup")
        assert "you have no pending invite" in private(nothing, "ask a fleet admin")
        wrong = await ask(rec, bot, DAVE, "join", code="not-the-code")
        assert "that invite code is not valid" in private(wrong)

        joined = await ask(rec, bot, DAVE, "join", code=code)
        private(joined, "accepted", "step 1 of 2")
        opener = await press(rec, bot, DAVE, joined, "Enter name and license")
        step2 = await rec.reply(rec.feed(bot, rec.submit(DAVE, opener, {
            "Instance name": "late", "Foundry license key": LICENSE})))
        assert "Step 2 of 2" in private(step2)

        # Left half-way: /fleet setup picks up at step 2.
        resumed = await ask(rec, bot, DAVE, "setup")
        assert "choose the Foundry release for `late`" in private(resumed)

        # The name gets taken by other means before the instance is made: the wizard goes back to
        # step 1 and says why, with the button to fix it.
        await asyncio.to_thread(fleet.cli, "instance", "create", "late", "--release", "13.345", "--no-start")
        opener = await press(rec, bot, DAVE, resumed, "Next: choose the release")
        making = rec.feed(bot, rec.submit(DAVE, opener, {"Release (13.345)": "13.345"}))
        failed = await rec.reply(making)
        await rec.until(lambda: "did not work" in failed.content, 30, "the failure")
        assert "Setting up did not work" in private(failed, "late", "step 1 of 2")
        # The license key is kept: only the name is asked for again.
        assert failed.labels() == ["Enter the name", "Read my key from foundryvtt.com", "Cancel setup"]

        # A form opened before the bot restarted is answered, not left to fail.
        forgotten = rec.feed(bot, rec.forged_submit(DAVE, "0123456789abcdef0123456789abcdef", {"name": "x"}))
        answer = await rec.reply(forgotten, timeout=5)
        assert "no longer active" in private(answer)

        # Cancel: the wizard is gone, the invite stays, setup starts afresh.
        await press(rec, bot, DAVE, failed, "Cancel setup")
        await rec.until(lambda: "Setup cancelled" in failed.content, 5, "the cancel")
        assert failed.labels() == []
        fresh = await ask(rec, bot, DAVE, "setup")
        assert "step 1 of 2" in private(fresh)
        opener = await press(rec, bot, DAVE, fresh, "Enter name and license")
        step2 = await rec.reply(rec.feed(bot, rec.submit(DAVE, opener, {
            "Instance name": "dave", "Foundry license key": LICENSE})))
        assert "Step 2 of 2" in private(step2)
        # The release was chosen but the instance never made (the bot stopped in between): setup
        # offers to create it.
        await asyncio.to_thread(bot.wizard.submit_release, str(DAVE.id), version="13.345")
        ready = await ask(rec, bot, DAVE, "setup")
        assert "Ready to create `dave` with Foundry 13.345" in private(ready)
        assert ready.labels() == ["Create my instance", "Change the release", "Cancel setup"]
        making = await press(rec, bot, DAVE, ready, "Create my instance")
        assert making.initial == 5
        await rec.until(lambda: making.followups, 60, "the instance to be made")
        assert "`dave` is ready" in private(await rec.reply(making))
        assert "Admin password" in private(making.followups[0])

    play(fleet, scenario)
    assert fleet.instance("dave")["owner"] == str(DAVE.id)


# command sync, notifier, runner ----------------------------------------------------------------


def test_commands_are_synced_only_when_they_changed(fleet: FleetHarness) -> None:
    async def logins() -> list[list[str]]:
        seen = []
        for i, extra in enumerate((None, None, "guild", "guild", "more")):
            if i == 2:
                fleet.edit_config('# guild_id = "123456789012345678"', f'guild_id = "{GUILD_ID}"')
            config = load_config(fleet.config)
            bot = FleetBot(config, make_bot_services(open_services(config)), httpx.AsyncHTTPTransport(uds="/nonexistent"))
            if extra == "more":
                @bot.tree.command(name="ping", description="an extra command", guild=bot.guild)
                async def ping(interaction: discord.Interaction) -> None:
                    await interaction.response.send_message("pong")
            rec = DiscordGatewayRecorder()
            await rec.login(bot)
            await bot.close()
            rec.assert_clean()
            seen.append([f"{target}:{len(body)}" for target, body in rec.syncs])
        return seen

    assert asyncio.run(logins()) == [
        ["global:1"],  # first start: registered
        [],  # unchanged: nothing sent
        ["global:0", f"guild:{GUILD_ID}:1"],  # moved to the guild: the global copy is cleared
        [],
        [f"guild:{GUILD_ID}:2"],  # a command more
    ]
    state = fleet.root / "state" / "discord-commands.json"
    assert state.exists() and f"guild:{GUILD_ID}" in state.read_text()


def test_status_updates_reach_the_ops_channel_and_owners_and_closed_dms_are_undeliverable(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.edit_config('# ops_channel_id = "123456789012345678"', f'ops_channel_id = "{OPS_CHANNEL_ID}"')
    fleet.cli("release", "add", str(release_zips["node"]))
    create_offline(fleet, "dave", owner=str(DAVE.id))

    async def scenario(bot: FleetBot, rec: DiscordGatewayRecorder) -> None:
        rec.closed_dms.add(DAVE.id)
        await bot.notifier.post_ops("**alice** crashed and is being restarted: exit 1 <@&1> @everyone")
        await bot.notifier.send_dm(str(ALICE.id), "**alice** was upgraded")
        with pytest.raises(Undeliverable, match="50007"):
            await bot.notifier.send_dm(str(DAVE.id), "**dave** could not start")
        [ops] = rec.channel_messages[OPS_CHANNEL_ID]
        assert ops.content.startswith("**alice** crashed") and not ops.ephemeral
        [dm] = rec.dms_to(ALICE)
        assert dm.content == "**alice** was upgraded"
        # Through the status updates: the ops channel hears it, Dave's closed inbox is not retried.
        def dm_attempts() -> int:
            return len([r for r in rec.requests if r.path == f"/channels/{rec.dm_channel_for(DAVE)}/messages"])

        updates = make_status_updates(open_services(load_config(fleet.config), actor="bot"), bot.notifier)
        tried = dm_attempts()
        assert await updates.deliver(Update("instance.failed:failed:dave", "dave", "**dave** has stopped"))
        assert [m.content for m in rec.channel_messages[OPS_CHANNEL_ID]][-1] == "**dave** has stopped"
        assert dm_attempts() == tried + 1
        assert await updates.deliver(Update("instance.start:failed:dave", "dave", "**dave** could not start"))
        assert rec.channel_messages[OPS_CHANNEL_ID][-1].content == "**dave** could not start"
        assert dm_attempts() == tried + 1  # a closed inbox is not tried again

    play(fleet, scenario)


def test_run_bot_reads_a_private_token_file_and_stops_when_cancelled(
    fleet: FleetHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = load_config(fleet.config)
    service = make_bot_services(open_services(config))
    transport = httpx.AsyncHTTPTransport(uds="/nonexistent")
    with pytest.raises(InvalidInput, match="no token file configured"):
        asyncio.run(run_bot(config, service, transport))

    token_file = fleet.root / "discord-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    fleet.edit_config('# token_file = "discord-token"', f'token_file = "{token_file}"')
    config = load_config(fleet.config)
    with pytest.raises(InvalidInput, match="may be read by others") as refused:
        asyncio.run(run_bot(config, service, transport))
    assert "chmod 600" in (refused.value.hint or "") and TOKEN not in str(refused.value)
    token_file.chmod(0o600)

    rec = DiscordGatewayRecorder()

    monkeypatch.setattr(discord.http.HTTPClient, "static_login", rec.static_login())
    notifiers: list[Any] = []

    async def main() -> None:
        task = asyncio.create_task(run_bot(config, service, transport, on_notifier=notifiers.append))
        await rec.until(lambda: rec.gateway_attempts, 10, "a connection to the gateway")
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
        assert task.done()

    asyncio.run(main())
    rec.assert_clean()
    assert rec.tokens_seen == {TOKEN} and [t for t, _ in rec.syncs] == ["global"]
    assert len(notifiers) == 1 and hasattr(notifiers[0], "send_dm")

    token_file.write_text("a-token-discord-does-not-know")
    with pytest.raises(InvalidInput, match="Discord refused the bot token") as refused:
        asyncio.run(run_bot(config, service, transport))
    assert "a-token-discord" not in str(refused.value) + str(refused.value.hint)
    assert TOKEN not in caplog.text and "MTEwMDAw" not in caplog.text and "a-token-discord" not in caplog.text
    assert os.stat(token_file).st_mode & 0o777 == 0o600


# the recorder itself ---------------------------------------------------------------------------


def test_the_recorder_refuses_what_discord_refuses() -> None:
    """A bot that breaks Discord's rules is caught: a second initial response, mentions allowed, a form
    answering a form, a form over the limits, a follow-up before any response, a slow answer."""

    async def main() -> DiscordGatewayRecorder:
        client = discord.Client(intents=discord.Intents.none(), allowed_mentions=discord.AllowedMentions.none())
        tree = app_commands.CommandTree(client)
        group = app_commands.Group(name="fleet", description="test")

        class TooBig(discord.ui.Modal, title="A title that is far too long for Discord's 45 characters"):
            field = discord.ui.TextInput(label="x")

        class Form(discord.ui.Modal, title="Fine"):
            field = discord.ui.TextInput(label="x")

            async def on_submit(self, interaction: discord.Interaction) -> None:
                await interaction.response.send_modal(Form())  # a form cannot answer a form

        @group.command(name="status", description="answers twice")
        async def status(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("one")
            await discord.InteractionResponse(interaction).send_message("two")  # around discord.py's own guard

        @group.command(name="restart", description="pings everyone")
        async def restart(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("@everyone", allowed_mentions=discord.AllowedMentions(everyone=True))

        @group.command(name="url", description="a form, then a form")
        async def url(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(Form())

        @group.command(name="logs", description="too big a form, or a follow-up first")
        async def logs(interaction: discord.Interaction, big: bool = True) -> None:
            if big:
                await interaction.response.send_modal(TooBig())
            else:
                await interaction.followup.send("early")

        @group.command(name="backup", description="too slow")
        async def backup(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.4)  # deliberately slower than the recorder's 0.3 s deadline
            await interaction.response.send_message("late")

        tree.add_command(group)

        async def setup_hook() -> None:
            await tree.sync()

        client.setup_hook = setup_hook  # type: ignore[method-assign]
        rec = DiscordGatewayRecorder(deadline=0.3)
        await rec.login(client)
        user = Person(777777777777777777, "mallory")
        for sub in ("status", "restart", "backup"):
            rec.feed(client, rec.slash(user, sub))
        opened = rec.feed(client, rec.slash(user, "url"))
        await rec.answered(opened)
        rec.feed(client, rec.submit(user, opened, {"x": "hello"}))
        rec.feed(client, rec.slash(user, "logs", big=True))
        rec.feed(client, rec.slash(user, "logs", big=False))
        await rec.until(lambda: "initial response after 0.4" in "\n".join(rec.violations), 10, "the late answer")
        await rec.drain()
        await client.close()
        return rec

    rec = asyncio.run(main())
    found = "\n".join(rec.violations)
    for expected in ("a second initial response", "mentions are not disabled", "a form cannot be answered with a form",
                     "form title", "before the initial response", "initial response after 0.4",
                     "was never answered"):
        assert expected in found, f"{expected!r} not among:\n{found}"
    with pytest.raises(AssertionError, match="Discord would have refused"):
        rec.assert_clean()


def test_the_daemon_goes_on_without_a_bot_it_cannot_start(fleet: FleetHarness) -> None:
    token = fleet.root / "discord-token"
    token.write_text("not-a-real-token\n")
    token.chmod(0o644)  # readable by others: refused before anything connects
    fleet.edit_config('# token_file = "discord-token"        # chmod 600', 'token_file = "discord-token"')
    fleet.up()
    wait_until(lambda: "the Discord bot is not running" in fleet.daemon_log(), 20, "the bot's refusal in the log")
    assert "chmod 600" in fleet.daemon_log() and "not-a-real-token" not in fleet.daemon_log()
    assert fleet.cli("status", "--json").json()["daemon"]["running"] is True
