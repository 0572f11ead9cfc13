"""The bot token: read from [discord] token_file, which only its owner may read. Never logged, never
echoed in an error."""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.private_files import read_private_file

SETTING = "[discord] token_file in fleet.toml"


def read_token(path: Path | None) -> str:
    if path is None:
        raise InvalidInput("the Discord bot has no token file configured", f"set {SETTING} (a chmod 600 file)")
    token = read_private_file(path, "the Discord bot token file", SETTING)
    if not token.isascii() or any(c.isspace() for c in token):
        raise InvalidInput(f"the Discord bot token file {path} does not hold a token",
                           "put only the token in it, on one line, as the developer portal shows it")
    return token
