"""The bearer token that scrapers of https://<fleet host>/metrics send: a fleet secret like the others,
64 random hex digits in a 0600 file made on first use."""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.config import FleetConfig
from foundry_fleet.services.web_login import load_or_create_key

TOKEN_FILE = "metrics.token"


def token_path(config: FleetConfig) -> Path:
    return config.metrics.token_file or config.paths.database.parent / TOKEN_FILE


def load_or_create_token(path: Path) -> str:
    return load_or_create_key(path, "the metrics token", "give scrapers the new one").decode()
