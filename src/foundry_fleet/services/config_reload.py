"""`foundry-fleet reload` and SIGHUP: fleet.toml read again while the daemon runs.

The new file is loaded and validated in full before anything is applied, so a bad edit changes
nothing. Only settings a service reads when it uses them are applied live (`LIVE`): anything built
into a running part (sockets, the runtime, storage, the edge's ports, the bot's login) needs `up`
again, and is named so rather than half applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from foundry_fleet.config import FleetConfig, load_config
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.events import EventLog

log = logging.getLogger(__name__)

# The keys the daemon applies live; the wiring gives each one its setter.
LIVE = ("instances.idle_after", "backups.plan", "discord.admin_users")


@dataclass(frozen=True)
class ConfigChanges:
    applied: tuple[str, ...]  # changed and in effect now
    need_restart: tuple[str, ...]  # changed in the file; in effect after the next `up`

    def to_dict(self) -> dict[str, list[str]]:
        return {"applied": list(self.applied), "need_restart": list(self.need_restart)}

    def describe(self) -> str:
        if not self.applied and not self.need_restart:
            return "fleet.toml: nothing changed"
        parts = []
        if self.applied:
            parts.append("applied " + ", ".join(self.applied))
        if self.need_restart:
            parts.append("needs a restart (`foundry-fleet up` again): " + ", ".join(self.need_restart))
        return "fleet.toml: " + "; ".join(parts)


def changed_keys(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ, section by section (a list of tables, such as backup
    destinations, counts as one key: its entries have no names to tell apart)."""
    out = []
    for field in type(old).model_fields:
        a, b = getattr(old, field), getattr(new, field)
        key = f"{prefix}{field}"
        if isinstance(a, BaseModel) and isinstance(b, BaseModel) and type(a) is type(b):
            out += changed_keys(a, b, key + ".")
        elif a != b:
            out.append(key)
    return out


def classify(old: FleetConfig, new: FleetConfig) -> ConfigChanges:
    keys = changed_keys(old, new)
    return ConfigChanges(tuple(k for k in keys if k in LIVE), tuple(k for k in keys if k not in LIVE))


class ConfigReload:
    def __init__(self, path: Path, current: FleetConfig, appliers: Mapping[str, Callable[[FleetConfig], Any]],
                 events: EventLog) -> None:
        """`appliers`: for each key of LIVE, what puts its new value into effect."""
        missing = set(LIVE) - set(appliers)
        assert not missing, f"no way to apply {sorted(missing)} live"
        self.path = path
        self.current = current
        self.appliers = appliers
        self.events = events

    def reload(self, actor: str) -> ConfigChanges:
        """Read, validate, apply what can change live; raises (InvalidInput) on a bad file, changing nothing.
        What needs a restart is not taken as current: the next reload names it again until `up` does."""
        try:
            new = load_config(self.path)
        except Exception as e:
            self.events.record("daemon.reload", str(self.path), Outcome.REFUSED, getattr(e, "message", str(e)),
                               actor=actor)
            raise
        changes = classify(self.current, new)
        for key in changes.applied:
            self.appliers[key](new)
        for key in changes.applied:
            section, field = key.split(".")
            kept = getattr(self.current, section).model_copy(update={field: getattr(getattr(new, section), field)})
            self.current = self.current.model_copy(update={section: kept})
        self.events.record("daemon.reload", str(self.path), Outcome.OK, changes.describe(), actor=actor)
        log.info("%s", changes.describe())
        return changes
