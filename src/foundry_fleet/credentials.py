"""Secrets handed over by systemd (`LoadCredential=`) instead of read from where fleet.toml names them.

Under its unit the daemon may not be able to read the operator's secret files at all (they can live
where the unit's sandbox hides them), and a credential is the one copy systemd gives the service
alone. Each secret setting has a fixed credential name; the unit loads `<name>:<configured path>`, and
when the daemon runs with `$CREDENTIALS_DIRECTORY` holding that name, the loader points the setting at
the credential. fleet.toml is unchanged either way, and CLI commands run outside the unit still read
the configured paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DISCORD_TOKEN = "discord-token"
DISCORD_CLIENT_SECRET = "discord-client-secret"
NOMAD_TOKEN = "nomad-token"
RESTIC_PASSWORD = "restic-password-"  # + the destination's name


def _settings(raw: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(credential name, the table holding the setting, its key) for every secret setting in `raw`."""
    discord = raw.get("discord")
    if isinstance(discord, dict):
        yield DISCORD_TOKEN, discord, "token_file"
        yield DISCORD_CLIENT_SECRET, discord, "client_secret_file"
    nomad = raw.get("nomad")
    if isinstance(nomad, dict):
        yield NOMAD_TOKEN, nomad, "token_file"
    backups = raw.get("backups")
    destinations = backups.get("destinations") if isinstance(backups, dict) else None
    for dest in destinations if isinstance(destinations, list) else []:
        if isinstance(dest, dict) and isinstance(dest.get("name"), str):
            yield RESTIC_PASSWORD + dest["name"], dest, "password_file"


def configured_secrets(raw: Mapping[str, Any]) -> dict[str, Path]:
    """Credential name -> the file fleet.toml names, for each secret that is set: what a unit loads."""
    return {name: Path(table[key]) for name, table, key in _settings(raw) if isinstance(table.get(key), str | Path)
            and str(table[key])}


def use_loaded_credentials(raw: dict[str, Any], environ: Mapping[str, str] = os.environ) -> None:
    """Point each set secret at systemd's copy of it, where the service got one (in place)."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return
    for name, table, key in _settings(raw):
        loaded = Path(directory, name)
        if table.get(key) and loaded.is_file():
            table[key] = str(loaded)
