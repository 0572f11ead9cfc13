"""Fleet admins' commands: invite, list, suspend, resume, move, idle-after, delete (confirmed). Anyone
else is refused by services/access.py (and again by the control API); every answer is private."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands

from foundry_fleet.bot.command_context import CommandContext, Limits
from foundry_fleet.bot.replies import Reply, respond, respond_by_update
from foundry_fleet.bot.text import instance_line, moved_text
from foundry_fleet.bot.wizard_ui import invite_view
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.idle import format_idle_after
from foundry_fleet.domain.instance import states_summary
from foundry_fleet.services.invites import InviteView


log = logging.getLogger(__name__)
DM_CLOSED = 50007  # Discord: "Cannot send messages to this user"


def register(group: app_commands.Group, bot: CommandContext, limits: Limits) -> None:
    admin = limits.admin

    @group.command(name="invite", description="Admins: invite someone to set up an instance (or make a shareable code)")
    @app_commands.describe(user="who (leave empty for a code anyone can redeem once with /fleet join)",
                           expires="how long the invite is valid, e.g. 7d, 12h (5min to 90d)")
    @app_commands.checks.cooldown(*admin)
    async def invite(interaction: discord.Interaction, user: discord.User | None = None, expires: str = "7d") -> None:
        principal = bot.principal(interaction)

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet invite")
            invites = bot.invites_by(principal.actor)
            if user is None:
                created = await asyncio.to_thread(invites.create, None, expires.strip(), True)
                return Reply(f"Shareable invite code, shown this once: `{created.code}`\nWhoever first runs "
                             f"`/fleet join` with it can set up an instance; it expires {when(created.invite)}.")
            if user.bot:
                raise InvalidInput(f"{user} is a bot", "invite a person")
            created = await asyncio.to_thread(invites.create, str(user.id), expires.strip())
            if await send_invite(bot.domain, user, created.invite):
                return Reply(f"Invited <@{user.id}>: they have a DM with a button to set up their instance. "
                             f"The invite expires {when(created.invite)}.")
            return Reply(f"Invited <@{user.id}>, **but their DMs are closed to me**, so they have not been told. "
                         f"Ask them to run `/fleet setup` in this server; the invite expires {when(created.invite)}.")

        await respond(interaction, work, slow=True)

    @group.command(name="list", description="Admins: every instance, and the pending invites")
    @app_commands.checks.cooldown(*admin)
    async def list_all(interaction: discord.Interaction) -> None:
        principal = bot.principal(interaction)
        api = bot.api(interaction)

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet list")
            instances = await api.instances()
            pending = await asyncio.to_thread(bot.invites.list)
            lines = [f"{instance_line(v)}, owner {mention(v.get('owner'), 'none')}"
                     for v in sorted(instances, key=lambda v: v["name"])] or ["(no instances)"]
            lines.append(f"\n**Pending invites: {len(pending)}**")
            lines += [f"#{i.id}: {mention(i.discord_user_id, 'shareable code')}, expires {when(i)}" for i in pending]
            counted = f" ({states_summary(instances)})" if instances else ""
            return Reply(f"**Instances**{counted}\n" + "\n".join(lines))

        await respond(interaction, work)

    @group.command(name="suspend", description="Admins: stop an instance and keep it stopped until resumed")
    @app_commands.describe(instance="which instance", reason="told to the owner (up to 200 characters)")
    @app_commands.checks.cooldown(*admin)
    async def suspend(interaction: discord.Interaction, instance: str, reason: app_commands.Range[str, 0, 200] = ""
                      ) -> None:
        principal = bot.principal(interaction)
        api = bot.api(interaction)

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet suspend")
            name = await api.resolve(instance)
            view = await api.suspend(name, reason)
            return Reply(f"Suspended. {instance_line(view)}\nIts owner cannot start it until `/fleet resume {name}`.")

        await respond(interaction, work, slow=True)

    @group.command(name="resume", description="Admins: lift a suspension and start the instance")
    @app_commands.describe(instance="which instance")
    @app_commands.checks.cooldown(*admin)
    async def resume(interaction: discord.Interaction, instance: str) -> None:
        principal = bot.principal(interaction)
        api = bot.api(interaction)

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet resume")
            name = await api.resolve(instance)
            view = await api.resume(name)
            return Reply(f"Resumed. {instance_line(view)}")

        await respond(interaction, work, slow=True)

    @group.command(name="move", description="Admins: run an instance on another node (its data follows)")
    @app_commands.describe(instance="which instance", node="the node to run it on, as /fleet status lists them")
    @app_commands.checks.cooldown(*admin)
    async def move(interaction: discord.Interaction, instance: str, node: app_commands.Range[str, 1, 128]) -> None:
        principal = bot.principal(interaction)
        api = bot.api(interaction)

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet move")
            name = await api.resolve(instance)
            return Reply(moved_text(name, await api.move(name, node)))

        await respond(interaction, work, slow=True)

    @group.command(name="idle-after", description="Admins: how long an instance may be idle before it sleeps")
    @app_commands.describe(instance="which instance",
                           after="a duration such as 60min or 2h; off: it never sleeps; fleet: the fleet's setting")
    @app_commands.checks.cooldown(*admin)
    async def idle_after(interaction: discord.Interaction, instance: str, after: app_commands.Range[str, 1, 40]
                         ) -> None:
        principal = bot.principal(interaction)
        api = bot.api(interaction)

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet idle-after")
            name = await api.resolve(instance)
            view = await api.set_idle_after(name, after.strip())
            return Reply(f"{idle_after_text(view)}\n{instance_line(view)}")

        await respond(interaction, work)

    @group.command(name="delete", description="Admins: delete an instance (asks to confirm; its data is archived)")
    @app_commands.describe(instance="which instance")
    @app_commands.checks.cooldown(*admin)
    async def delete(interaction: discord.Interaction, instance: str) -> None:
        principal = bot.principal(interaction)
        api = bot.api(interaction)
        asked_by = interaction.user.id

        async def work() -> Reply:
            bot.access.require_admin(principal, "/fleet delete")
            view = await api.pick(instance)
            name = view["name"]

            async def confirmed(press: discord.Interaction) -> None:
                presser = bot.api(press)

                async def run() -> Reply:
                    bot.access.require_admin(presser.principal, "/fleet delete")
                    result = await presser.delete(name)
                    final = f" Final backup: `{result['final_snapshot']}`." if result.get("final_snapshot") else ""
                    return Reply(f"Deleted **{name}**. Its data is kept at `{result['kept_at']}`.{final}")

                await respond_by_update(press, f"Deleting **{name}** …", run)

            token = bot.confirmations.add(asked_by, name, confirmed)
            owner = mention(view.get("owner"), "nobody")
            return Reply(f"Delete **{name}** (owner {owner})? It stops now; its data is archived, not destroyed.",
                         view=bot.confirmations.view(token, "Delete"))

        await respond(interaction, work)


def idle_after_text(view: dict[str, object]) -> str:
    """What an instance's idle time now is, and whose setting it is."""
    after = view.get("sleeps_after")
    whose = "its own setting" if view.get("idle_after_own") else "the fleet's setting"
    if not isinstance(after, int | float):
        return f"**{view['name']}** never sleeps ({whose})."
    return (f"**{view['name']}** sleeps after {format_idle_after(after)} without players or visits ({whose}), "
            "and wakes when someone opens it.")


def mention(user_id: object, otherwise: str) -> str:
    """A user shown as a mention; the client's AllowedMentions.none() keeps it from pinging them."""
    return f"<@{user_id}>" if user_id else otherwise


def when(invite: InviteView) -> str:
    return f"<t:{int(invite.expires_at)}:R>"


async def send_invite(domain: str, user: discord.abc.User, invite: InviteView) -> bool:
    """DM the invitee a button that starts the setup wizard; False when their DMs are closed."""
    text = (f"**You are invited to run a Foundry VTT game on {domain}.**\n"
            "Press the button to choose your instance's name, give your Foundry license key (or let the fleet "
            "read it from your foundryvtt.com account) and pick a release; it takes a minute. "
            f"The invite expires {when(invite)}. `/fleet setup` does the same.")
    try:
        await user.send(text, view=invite_view())
    except discord.Forbidden:
        return False
    except discord.HTTPException as e:
        if e.code == DM_CLOSED:
            return False
        raise
    return True
