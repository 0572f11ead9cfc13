"""`foundry-fleet invite ...`: invite Discord users to become tenants (the bot does the same with /fleet invite)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from foundry_fleet.cli.confirm import confirm_or_refuse
from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json
from foundry_fleet.cli.typer_compat import command_group

app = command_group("Invites for new tenants: create, list, revoke.")


def _invites(c: CliContext):  # type: ignore[no-untyped-def]
    from foundry_fleet.wiring.services import make_invites

    return make_invites(c.services())


@app.command()
def create(
    ctx: typer.Context,
    discord_user: Annotated[Optional[str], typer.Option("--discord-user", help="the Discord user id it is for")] = None,
    expires: Annotated[str, typer.Option(help="how long it stays valid: 30min, 12h, 7d ... (at most 90d)")] = "7d",
    code: Annotated[bool, typer.Option("--code", help="a shareable code instead (for whoever redeems it first)")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Invite a Discord user; the bot sends them a DM with a button that starts the setup."""
    c: CliContext = ctx.obj
    created = _invites(c).create(discord_user, expires, shareable=code)
    if json_out:
        print_json(created.to_dict())
        return
    inv = created.invite
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(inv.expires_at))
    whom = f"Discord user {inv.discord_user_id}" if inv.discord_user_id else "whoever redeems the code"
    console.print(f"invite {inv.id} for {whom}, valid until {until}")
    if created.code:
        console.print(f"code (shown once; they enter it with /fleet join): {created.code}")
    if c.config.discord.token_file is None:
        # Without a bot nobody tells the person: whoever invites them has to, with these words.
        how = (f"/fleet join code:{created.code}" if created.code
               else "/fleet setup")
        console.print("No Discord bot is configured ([discord] token_file in fleet.toml): the invite is recorded; "
                      f"once the bot runs, they use {how} in your Discord server.", highlight=False)


@app.command("list")
def list_(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="also used, revoked and expired ones")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pending invites (or all of them)."""
    c: CliContext = ctx.obj
    views = _invites(c).list(include_done=all_)
    if json_out:
        print_json([v.to_dict() for v in views])
        return
    t = Table()
    for col in ("id", "for", "status", "expires", "by"):
        t.add_column(col)
    for v in views:
        t.add_row(str(v.id), v.discord_user_id or "(code)", v.status,
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(v.expires_at)), v.created_by)
    console.print(t)


@app.command()
def revoke(
    ctx: typer.Context,
    invite_id: int,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (needed without a terminal)")] = False,
) -> None:
    """Revoke a pending invite."""
    c: CliContext = ctx.obj
    confirm_or_refuse(f"Revoke invite {invite_id}? (it cannot be used again)", yes)
    view = _invites(c).revoke(invite_id)
    console.print(f"invite {view.id} revoked")
