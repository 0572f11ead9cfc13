"""What a tenant does to their own instance: status, start, stop, restart, url, logs, backup, backups,
restore (confirmed), upgrade. The control API checks ownership; the answers are private except /fleet
url, which is for sharing with players."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from foundry_fleet.bot.command_context import CommandContext, Limits
from foundry_fleet.bot.replies import Reply, respond, respond_by_update
from foundry_fleet.bot.text import backup_link, clip_tail, code_block, instance_line, license_text, public_url, scrub, size
from foundry_fleet.domain.errors import NotFound
from foundry_fleet.domain.snapshot_choice import choose_snapshot


INSTANCE = "which instance (not needed when you have just one)"
SHOWN_BACKUPS = 10


def register(group: app_commands.Group, bot: CommandContext, limits: Limits) -> None:
    read, act = limits.read, limits.act

    @group.command(name="status", description="How your instance is doing")
    @app_commands.describe(instance=INSTANCE)
    @app_commands.checks.cooldown(*read)
    async def status(interaction: discord.Interaction, instance: str | None = None) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            if instance and instance.strip():
                views = [await api.pick(instance)]
            else:
                views = await api.mine()
                if not views:
                    raise NotFound("you have no instance yet", "if you were invited, run /fleet setup")
            return Reply("\n".join(status_text(v) for v in views))

        await respond(interaction, work)

    def power(verb: str, description: str) -> None:
        @group.command(name=verb, description=description)
        @app_commands.describe(instance=INSTANCE)
        @app_commands.checks.cooldown(*act)
        async def command(interaction: discord.Interaction, instance: str | None = None) -> None:
            api = bot.api(interaction)

            async def work() -> Reply:
                if verb != "start":
                    return Reply(status_text(await api.power(await api.resolve(instance), verb)))
                # The control API's start wakes a sleeping instance: said so, since it was not stopped.
                before = await api.pick(instance)
                view = await api.power(before["name"], verb)
                woke = before.get("state") == "sleeping" and view.get("state") == "running"
                return Reply((f"Woke **{view['name']}** up.\n" if woke else "") + status_text(view))

            await respond(interaction, work, slow=True)

    power("start", "Start your instance")
    power("stop", "Stop your instance (players are disconnected)")
    power("restart", "Restart your instance (players are disconnected briefly)")

    @group.command(name="url", description="Where players connect (posted for everyone in this channel)")
    @app_commands.describe(instance=INSTANCE)
    @app_commands.checks.cooldown(*read)
    async def url(interaction: discord.Interaction, instance: str | None = None) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            view = await api.pick(instance)
            return Reply(f"**{view['name']}**: {public_url(view)}", public=True)

        await respond(interaction, work, public=True)

    @group.command(name="logs", description="The last lines of your instance's server log")
    @app_commands.describe(instance=INSTANCE, lines="how many lines (1-200)")
    @app_commands.checks.cooldown(*read)
    async def logs(interaction: discord.Interaction, instance: str | None = None,
                   lines: app_commands.Range[int, 1, 200] = 20) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            name = await api.resolve(instance)
            text = clip_tail([scrub(line) for line in await api.logs(name, lines)], 1900)
            return Reply(f"**{name}**, last {lines} lines:\n" + code_block(text or "(the log is empty)"))

        await respond(interaction, work)

    @group.command(name="backup", description="Take a backup (snapshot) of your instance now")
    @app_commands.describe(instance=INSTANCE, label="a short name for it: lowercase letters, digits, dashes")
    @app_commands.checks.cooldown(*act)
    async def backup(interaction: discord.Interaction, label: str = "manual", instance: str | None = None) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            view = await api.pick(instance)
            name = view["name"]
            snap = await api.take_backup(name, label.strip())
            return Reply(f"Backup `{snap['name']}` of **{name}** taken ({size(snap.get('bytes_total'))}).\n"
                         f"Download: {backup_link(view, snap['name'])}")

        await respond(interaction, work, slow=True)

    @group.command(name="backups", description="Your instance's backups, with download links")
    @app_commands.describe(instance=INSTANCE)
    @app_commands.checks.cooldown(*read)
    async def backups(interaction: discord.Interaction, instance: str | None = None) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            view = await api.pick(instance)
            name = view["name"]
            snaps = await api.backups(name)
            if not snaps:
                return Reply(f"**{name}** has no backups yet: `/fleet backup` takes one.")
            shown = snaps[-SHOWN_BACKUPS:]
            lines = [f"`{s['name']}`, <t:{int(s['created_at'])}:f>, {size(s.get('bytes_total'))}: "
                     f"[download]({backup_link(view, s['name'])})" for s in reversed(shown)]
            more = f"\n…and {len(snaps) - len(shown)} older ones." if len(snaps) > len(shown) else ""
            return Reply(f"**{name}**, newest first (sign in with Discord to download):\n" + "\n".join(lines) + more)

        await respond(interaction, work)

    @group.command(name="restore", description="Restore a backup (asks you to confirm first)")
    @app_commands.describe(snapshot="the backup's name from /fleet backups, its start, or latest", instance=INSTANCE)
    @app_commands.checks.cooldown(*act)
    async def restore(interaction: discord.Interaction, snapshot: str, instance: str | None = None) -> None:
        api = bot.api(interaction)
        asked_by = interaction.user.id

        async def work() -> Reply:
            name = await api.resolve(instance)
            wanted = choose_snapshot(snapshot, ((s["name"], s["created_at"]) for s in await api.backups(name)), name)

            async def confirmed(press: discord.Interaction) -> None:
                presser = bot.api(press)

                async def run() -> Reply:
                    result = await presser.restore(name, wanted)
                    return Reply(f"**{name}** is restored to `{wanted}`. What was there before is kept as backup "
                                 f"`{result['safety_snapshot']}`.\n{status_text(result['instance'])}")

                await respond_by_update(press, f"Restoring **{name}** to `{wanted}` …", run)

            token = bot.confirmations.add(asked_by, name, confirmed)
            return Reply(f"Restore **{name}** to `{wanted}`?\n{name} stops, its current data is kept as a backup, "
                         f"`{wanted}` is put in place, and it starts again if it was running.",
                         view=bot.confirmations.view(token, "Restore"))

        await respond(interaction, work)

    @group.command(name="upgrade", description="Move your instance to another Foundry release (rolled back if unhealthy)")
    @app_commands.describe(release="the release's version, e.g. 13.345", instance=INSTANCE)
    @app_commands.checks.cooldown(*act)
    async def upgrade(interaction: discord.Interaction, release: str, instance: str | None = None) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            name = await api.resolve(instance)
            result = await api.upgrade(name, release.strip())
            if result["upgraded"]:
                head = f"**{name}** now runs Foundry {release.strip()}."
            else:
                head = (f"**{name} was not healthy on Foundry {release.strip()}** ({scrub(str(result['reason']))}), "
                        "so it is back on its previous release and data.")
            return Reply(f"{head} Backup from just before: `{result['snapshot']}`.\n{status_text(result['instance'])}")

        await respond(interaction, work, slow=True)


def status_text(view: dict[str, Any]) -> str:
    line = instance_line(view)
    if licensed := license_text(view):
        line += f"\n{licensed}"
    if view.get("suspended"):
        line += "\nA fleet admin suspended it; it cannot be started until they resume it."
    elif view.get("state") == "sleeping":
        line += ("\nIt was idle, so it sleeps to free the host's memory. Players opening its URL see a page "
                 "while it starts; `/fleet start` wakes it now.")
    return line
