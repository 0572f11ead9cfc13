"""Register the slash commands with Discord only when they changed.

Discord allows 200 command creations a day per guild, and a sync on every start would spend them.
The payload discord.py would send is hashed with where it goes (guild or global) and which
application; the hash is kept in the fleet's state directory, and a sync happens only when it differs.
Moving from global to a guild (or back) also clears the commands left at the old place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import discord
from discord import app_commands

from foundry_fleet.files.atomic import write_atomic

log = logging.getLogger(__name__)


def commands_payload(tree: app_commands.CommandTree[Any], guild: discord.abc.Snowflake | None) -> list[dict[str, Any]]:
    return [command.to_dict(tree) for command in tree._get_all_commands(guild=guild)]


def target_name(guild: discord.abc.Snowflake | None) -> str:
    return f"guild:{guild.id}" if guild is not None else "global"


def commands_digest(payload: list[dict[str, Any]], target: str, application_id: int | None) -> str:
    blob = json.dumps({"application": application_id, "target": target, "commands": payload}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_state(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(path: Path, state: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(state), 0o644)


async def sync_if_changed(tree: app_commands.CommandTree[Any], guild: discord.abc.Snowflake | None,
                          state_file: Path, application_id: int | None) -> bool:
    """Sync the tree's commands for `guild` (None: global) unless Discord has them already. True if synced."""
    target = target_name(guild)
    digest = commands_digest(commands_payload(tree, guild), target, application_id)
    state = _read_state(state_file)
    if state.get("sha256") == digest:
        log.info("Discord commands unchanged (%s); not syncing", target)
        return False
    old_target = state.get("target")
    if old_target and old_target != target and state.get("application") == str(application_id):
        old = None if old_target == "global" else discord.Object(int(old_target.split(":", 1)[1]))
        if not commands_payload(tree, old):
            await tree.sync(guild=old)  # empty there now: removes what an earlier configuration left
            log.info("cleared the Discord commands left at %s", old_target)
    await tree.sync(guild=guild)
    _write_state(state_file, {"sha256": digest, "target": target, "application": str(application_id)})
    log.info("synced the Discord commands (%s)", target)
    return True
