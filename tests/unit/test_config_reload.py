"""fleet.toml read again: which keys changed, which apply live, and a bad file changing nothing."""

from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.services.config_reload import ConfigReload, changed_keys, classify

BASE = """
[fleet]
root = "{root}"
domain = "games.example.org"

[instances]
idle_after = "off"

[backups]
plan = "7d=>1h"

[discord]
admin_users = ["123456789012345678"]
"""


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def record(self, action: str, target: str, outcome: object, message: str = "", actor: str | None = None) -> None:
        self.seen.append((action, getattr(outcome, "value", str(outcome)), message))


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(BASE.format(root=tmp_path / "fleet"))
    return path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_nothing_changed_is_said(tmp_path: Path) -> None:
    path = _write(tmp_path)
    a, b = load_config(path), load_config(path)
    assert changed_keys(a, b) == [] and classify(a, b).describe() == "fleet.toml: nothing changed"


def test_keys_are_told_apart_live_or_needing_a_restart(tmp_path: Path) -> None:
    path = _write(tmp_path)
    old = load_config(path)
    _edit(path, 'idle_after = "off"', 'idle_after = "2h"')
    _edit(path, 'admin_users = ["123456789012345678"]', 'admin_users = []')
    _edit(path, 'plan = "7d=>1h"', 'plan = "2d=>1h"')
    _edit(path, 'domain = "games.example.org"', 'domain = "tables.example.org"')
    changes = classify(old, load_config(path))
    assert changes.applied == ("instances.idle_after", "backups.plan", "discord.admin_users")
    assert changes.need_restart == ("fleet.domain",)
    said = changes.describe()
    assert "applied instances.idle_after, backups.plan, discord.admin_users" in said
    assert "restart" in said and "fleet.domain" in said


def test_reload_applies_live_keys_and_keeps_naming_restart_ones(tmp_path: Path) -> None:
    path = _write(tmp_path)
    seen: dict[str, object] = {}
    events = Events()
    reload = ConfigReload(path, load_config(path), {
        "instances.idle_after": lambda c: seen.__setitem__("idle", c.instances.idle_after_seconds),
        "backups.plan": lambda c: seen.__setitem__("plan", c.backups.plan),
        "discord.admin_users": lambda c: seen.__setitem__("admins", c.discord.admin_users),
    }, events)  # type: ignore[arg-type]
    _edit(path, 'idle_after = "off"', 'idle_after = "30min"')
    _edit(path, 'admin_users = ["123456789012345678"]', 'admin_users = []')
    _edit(path, 'domain = "games.example.org"', 'domain = "tables.example.org"')
    first = reload.reload("cli:test")
    assert first.applied == ("instances.idle_after", "discord.admin_users") and first.need_restart == ("fleet.domain",)
    assert seen == {"idle": 1800.0, "admins": []}
    again = reload.reload("cli:test")  # applied once; the restart key is still pending until `up`
    assert again.applied == () and again.need_restart == ("fleet.domain",)
    assert [e[1] for e in events.seen] == ["ok", "ok"]


def test_a_bad_file_changes_nothing_and_says_why(tmp_path: Path) -> None:
    path = _write(tmp_path)
    seen: list[object] = []
    events = Events()
    reload = ConfigReload(path, load_config(path), {
        "instances.idle_after": seen.append, "backups.plan": seen.append, "discord.admin_users": seen.append},
        events)  # type: ignore[arg-type]
    _edit(path, 'idle_after = "off"', 'idle_after = "soon"')
    with pytest.raises(FleetError) as e:
        reload.reload("cli:test")
    assert "idle_after" in e.value.message
    assert seen == [] and reload.current.instances.idle_after == "off"
    assert events.seen[-1][1] == "refused"
