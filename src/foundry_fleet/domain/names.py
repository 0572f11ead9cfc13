"""Instance names become DNS labels (`<name>.<domain>`), users and paths: validate them once, here."""

from __future__ import annotations

import re

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.hosts import MAX_HOST, normalise_hostname

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

# Names that would shadow the fleet's own hosts or common infrastructure names; "caddy" and "provision"
# would also give an instance the Nomad job ID of the fleet's own jobs (fvtt-caddy, fvtt-provision).
RESERVED_NAMES = frozenset(
    {
        "fleet", "admin", "api", "www", "mail", "smtp", "imap", "ftp", "ns", "ns1", "ns2",
        "localhost", "caddy", "backups", "backup", "auth", "login", "status", "static",
        "shared", "root", "system", "provision", "default", "test", "wpad", "autoconfig", "autodiscover",
    }
)


def validate_instance_name(name: str, extra_reserved: frozenset[str] = frozenset()) -> str:
    """Return `name` if it is a usable instance name, else raise InvalidInput saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("instance name is empty", "use 1-63 lowercase letters, digits or dashes")
    if len(name) > 63:
        raise InvalidInput(
            f"instance name {name[:70]!r} is {len(name)} characters long; a DNS label holds at most 63",
            "choose a shorter name",
        )
    if name != name.lower() and _LABEL.match(name.lower()):
        raise InvalidInput(
            f"instance name {name!r} has uppercase letters", f"use {name.lower()!r} instead"
        )
    if not _LABEL.match(name):
        raise InvalidInput(
            f"instance name {name!r} is not a DNS label",
            "use lowercase letters a-z, digits and dashes, not starting or ending with a dash",
        )
    if name[2:4] == "--":
        raise InvalidInput(
            f"instance name {name!r} has '--' in positions 3-4, which DNS reserves for encoded names",
            "move or remove the double dash",
        )
    if name in RESERVED_NAMES or name in extra_reserved:
        raise InvalidInput(f"instance name {name!r} is reserved", "choose another name")
    return name


def validate_domain(domain: str) -> str:
    """A domain the fleet serves tenant hosts under, e.g. `games.example.org` or `localhost`.

    Tenant hosts are `<name>.<domain>`, so it leaves room for a 63-character name, and it is never an
    IP address (`<name>.127.0.0.1` would be no hostname at all)."""
    return normalise_hostname(domain, "domain", max_length=MAX_HOST - 64)


_SNOWFLAKE = re.compile(r"^[0-9]{15,21}$")


def validate_discord_id(value: str) -> str:
    """A Discord user id (a snowflake), also accepted in mention form `<@id>` / `<@!id>`."""
    text = str(value).strip().removeprefix("<@").removeprefix("!").removesuffix(">")
    if not _SNOWFLAKE.match(text):
        raise InvalidInput(f"{value!r} is not a Discord user id",
                           "copy it in Discord (Developer Mode: right-click the user, Copy User ID)")
    return text
