"""Starting the bot: what the daemon runs when [discord] token_file is set.

    bot = asyncio.create_task(run_bot(
        config, make_bot_services(open_services(config, actor="bot")),
        httpx.AsyncHTTPTransport(uds=str(config.paths.socket)),   # or httpx.ASGITransport(app=app)
        on_notifier=lambda notifier: ...,  # e.g. start make_status_updates(services, notifier).run()
    ))
    ...
    bot.cancel()   # stops it: the client closes its gateway connection and HTTP sessions

The token is read (and its file's mode checked) before anything connects and is never logged. A
problem with it (missing, readable by others, refused by Discord) is raised as InvalidInput, so the
daemon can log it and go on without the bot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import discord
import httpx

from foundry_fleet.bot.bot_token import read_token
from foundry_fleet.bot.client import BotServices, FleetBot
from foundry_fleet.bot.commands import Limits
from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.status_updates import Notifier
from foundry_fleet.services.views import CreatedInstance

log = logging.getLogger(__name__)

# At DEBUG, discord.py logs request bodies and gateway events: license keys typed into the setup
# form, and the admin password shown to a new tenant, would land in the log.
CHATTY_LOGGERS = ("discord.http", "discord.gateway", "discord.client", "discord.state", "discord.webhook.async_")


def quiet_discord_logs() -> None:
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


async def run_bot(config: FleetConfig, services: BotServices, control_transport: httpx.AsyncBaseTransport, *,
                  create: Callable[..., CreatedInstance] | None = None,
                  on_notifier: Callable[[Notifier], None] | None = None,
                  limits: Limits | None = None) -> None:
    """Run the bot until cancelled. Raises InvalidInput for a token file that is missing, readable by
    others, or holds a token Discord refuses."""
    token = read_token(config.discord.token_file)
    quiet_discord_logs()
    bot = FleetBot(config, services, control_transport, create=create, limits=limits)
    if on_notifier is not None:
        on_notifier(bot.notifier)
    try:
        log.info("starting the Discord bot%s", f" for guild {config.discord.guild_id}" if config.discord.guild_id else "")
        await bot.start(token, reconnect=True)
    except discord.LoginFailure:
        raise InvalidInput(f"Discord refused the bot token in {config.discord.token_file}",
                           "copy the token again from the developer portal (Bot, Reset Token) into that file"
                           ) from None
    finally:
        if not bot.is_closed():
            await bot.close()
        log.info("the Discord bot has stopped")
