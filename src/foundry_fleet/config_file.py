"""Finding fleet.toml and the fleet's layout on disk, without validating the whole configuration.

Kept apart from config.py (pydantic models) so a command that only talks to the daemon can find its
control socket without importing the validation machinery: the daemon validated the file when it
started.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry_fleet.domain.errors import InvalidInput, NotFound

CONFIG_ENV = "FOUNDRY_FLEET_CONFIG"
CONFIG_NAME = "fleet.toml"
DEFAULT_ROOT = "fleet-data"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $FOUNDRY_FLEET_CONFIG, else ./fleet.toml, else ./fleet-data/fleet.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in (Path(CONFIG_NAME), Path(DEFAULT_ROOT) / CONFIG_NAME):
        if candidate.exists():
            return candidate
    raise NotFound(
        "no fleet.toml found (looked for --config, $FOUNDRY_FLEET_CONFIG, ./fleet.toml, ./fleet-data/fleet.toml)",
        "create a fleet with: foundry-fleet init --root fleet-data",
    )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"config file {path} does not exist", "run foundry-fleet init, or pass --config") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{path} is not valid TOML: {e}", "fix the file, or re-create it with foundry-fleet init") from None


def resolve_root(raw: dict[str, Any], path: Path) -> Path | None:
    """The fleet root `[fleet] root` names, relative to fleet.toml; None without a [fleet] table.
    Written back into `raw`, so the full configuration reads the same root."""
    fleet = raw.get("fleet") if isinstance(raw.get("fleet"), dict) else None
    if fleet is None:
        return None
    fleet.setdefault("root", ".")
    root = (path.resolve().parent / str(fleet["root"])).resolve()
    fleet["root"] = str(root)
    return root


def control_socket(path: Path) -> Path:
    """Where the daemon of the fleet configured in `path` answers."""
    root = resolve_root(read_toml(path), path)
    if root is None:
        raise InvalidInput(f"{path}: [fleet] is missing", "fix the file, or re-create it with foundry-fleet init")
    return FleetPaths(root, root / "releases").socket


@dataclass(frozen=True)
class FleetPaths:
    """Where things live under the fleet root (the seed's layout)."""

    root: Path
    releases: Path

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def database(self) -> Path:
        return self.root / "state" / "fleet.sqlite"

    @property
    def socket(self) -> Path:
        return self.run / "control.sock"

    @property
    def daemon_lock(self) -> Path:
        return self.run / "daemon.lock"

    def instance_logs(self, name: str) -> Path:
        return self.logs / "instances" / name
