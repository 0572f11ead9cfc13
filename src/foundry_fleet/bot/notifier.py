"""Status updates through Discord (the Notifier protocol of services/status_updates.py): the ops
channel, and DMs to instance owners. A closed inbox (Discord 50007, or any 403) is Undeliverable, so
the status updates stop trying that user for a while instead of retrying in a loop."""

from __future__ import annotations

import discord

from foundry_fleet.bot.text import clip, scrub
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.names import validate_discord_id
from foundry_fleet.services.status_updates import Undeliverable

DM_CLOSED = 50007  # "Cannot send messages to this user"
UNKNOWN_USER = 10013


class DiscordNotifier:
    def __init__(self, client: discord.Client, ops_channel_id: str | None) -> None:
        self.client = client
        self.ops_channel_id = ops_channel_id

    def _require_login(self) -> None:
        if self.client.user is None:
            raise ExternalFailure("the Discord bot has not logged in (yet)", "see the daemon's log for why")

    async def post_ops(self, text: str) -> None:
        if self.ops_channel_id is None:
            return
        self._require_login()
        channel = self.client.get_partial_messageable(int(self.ops_channel_id))
        try:
            await channel.send(clip(scrub(text)))
        except discord.HTTPException as e:
            raise ExternalFailure(f"Discord refused a message to the ops channel {self.ops_channel_id}: "
                                  f"{e.status} (code {e.code})", "check the bot may post there") from None

    async def send_dm(self, user_id: str, text: str) -> None:
        user = int(validate_discord_id(user_id))
        self._require_login()
        try:
            channel = await self.client.create_dm(discord.Object(user))
            await channel.send(clip(scrub(text)))
        except discord.Forbidden as e:
            raise Undeliverable(f"Discord user {user_id} does not accept DMs from the bot (code {e.code})") from None
        except discord.HTTPException as e:
            if e.code in (DM_CLOSED, UNKNOWN_USER):
                raise Undeliverable(f"Discord user {user_id} cannot be sent DMs (code {e.code})") from None
            raise ExternalFailure(f"Discord refused a DM to {user_id}: {e.status} (code {e.code})") from None
