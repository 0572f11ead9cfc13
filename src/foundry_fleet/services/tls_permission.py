"""Who may ask the fleet whether a host is one of its tenants: Caddy alone.

Caddy's on-demand TLS asks `<endpoint>?domain=NAME` before it gets a certificate, and a 200 allows
it. Anyone else who could ask would learn which hosts the fleet serves, so the endpoint's path
holds a secret: 64 random hex digits in a 0600 file the fleet makes. Caddy's config names only the
file (a `{file.PATH}` placeholder, read when Caddy asks), so the secret is in no config, autosave or
`edge show` output. Caddy itself names the whole URL in its own log (`edge/caddy.log`, the fleet's)
when asking fails; lines of that log quoted in the fleet's errors have it masked (edge/process.py). The endpoint is on the fleet's loopback web port only, never routed
through the edge; without the secret every question gets the same 404 as a path that does not exist.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from foundry_fleet.config import FleetConfig

SECRET_FILE = "tls-permission.key"
PATH_PREFIX = "/tls/permission/"


def secret_path(config: FleetConfig) -> Path:
    return config.paths.database.parent / SECRET_FILE


def load_or_create_secret(path: Path) -> str:
    # Imported here: the edge's settings need only secret_path, and web_login brings Authlib and
    # SQLAlchemy with it (a node's `nomad provision` would pay for them at every dispatch).
    from foundry_fleet.services.web_login import load_or_create_key

    return load_or_create_key(path, "the TLS permission secret", "when the daemon next starts").decode()


def is_caddy(secret: str, given: str) -> bool:
    return hmac.compare_digest(secret.encode(), given.encode(errors="replace"))
