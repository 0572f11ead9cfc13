"""/fleet import: the owner of an instance (or an admin) attaches a zip, and the daemon fetches it from
Discord's file host and imports it by the same rules as `foundry-fleet instance import` (a snapshot
first, no overwrite without replace, files owned by the instance's uid)."""

from __future__ import annotations

import discord
from discord import app_commands

from foundry_fleet.bot.command_context import CommandContext, Limits
from foundry_fleet.bot.replies import Reply, respond
from foundry_fleet.bot.text import scrub, size
from foundry_fleet.domain.errors import Conflict, InvalidInput

INSTANCE = "which instance (not needed when you have just one)"
# What Discord lets a bot receive without boosts; a guild's own limit, when higher, wins.
DISCORD_UPLOAD_LIMIT = 25 * 1024 * 1024


def upload_limit(interaction: discord.Interaction) -> int:
    return max(DISCORD_UPLOAD_LIMIT, getattr(interaction, "filesize_limit", 0) or 0)


def check_attachment(file: discord.Attachment, limit: int) -> None:
    """Refused before the daemon downloads anything: only a zip is imported, and Discord would not have
    taken a larger file, so its size is not to be believed."""
    if not file.filename.lower().endswith(".zip"):
        raise InvalidInput(f"{scrub(file.filename)} is not a .zip", "zip your worlds, modules or assets first")
    if file.size > limit:
        raise InvalidInput(f"{scrub(file.filename)} is {size(file.size)}, over Discord's upload limit of "
                           f"{size(limit)}", "import larger zips with a link through a fleet admin, or over SFTP")


def imported_text(done: dict) -> str:
    lines = [f"Imported {done['files']} files ({size(done['bytes'])}) into **{done['instance']}** "
             f"`{scrub(str(done['into']))}`."]
    if done.get("replaced"):
        lines.append(f"{done['replaced']} existing files were replaced.")
    if done.get("snapshot"):
        lines.append(f"What was there before is kept as backup `{done['snapshot']}` (see /fleet backups).")
    if done.get("restarted"):
        lines.append("The instance was stopped for the import and started again.")
    return "\n".join(lines)


def register(group: app_commands.Group, bot: CommandContext, limits: Limits) -> None:
    @group.command(name="import", description="Import a zip of worlds, modules or assets into your instance's data")
    @app_commands.describe(file="a .zip, attached here", instance=INSTANCE,
                           into="where under the data, e.g. Data/worlds (default Data)",
                           replace="overwrite files that are already there (a backup is taken first)")
    @app_commands.checks.cooldown(*limits.act)
    async def import_(interaction: discord.Interaction, file: discord.Attachment, instance: str | None = None,
                      into: str = "Data", replace: bool = False) -> None:
        api = bot.api(interaction)

        async def work() -> Reply:
            check_attachment(file, upload_limit(interaction))
            name = await api.resolve(instance)
            try:
                return Reply(imported_text(await api.import_data(name, file.url, into, replace)))
            except Conflict as e:
                # The daemon's hint names the CLI's flag; here it is an option of this command.
                raise Conflict(e.message, "nothing was changed; run /fleet import again with replace: True "
                                          "to overwrite them (a backup is taken first)") from None

        # Deferred at once: a download, a snapshot and the copy outlast Discord's three seconds.
        await respond(interaction, work, slow=True)
