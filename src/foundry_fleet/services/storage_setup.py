"""`foundry-fleet storage init --zfs POOL[/PATH]`: lay the fleet out on ZFS and record it in fleet.toml.

Idempotent: run again, it adopts the datasets that exist and corrects only what differs (mountpoints,
read-only flags, quotas, interrupted install swaps). It refuses to move a fleet that already has
instances on other storage: their data would stay behind, invisible to the new driver.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict
from foundry_fleet.services.config_keys import set_section_keys
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_layout import parse_base
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import Instance


def init_zfs_storage(config_path: Path, base: str) -> dict[str, object]:
    """Lay out (or repair) the datasets under `base`, switch fleet.toml to them; returns storage status."""
    config = load_config(config_path)
    _pool, base = parse_base(base)
    with open_database(config.paths.database)() as s:
        names = list(s.scalars(select(Instance.name)))
    current = config.storage
    if names and (current.driver != "zfs" or current.zfs_base != base):
        where = f"ZFS {current.zfs_base}" if current.driver == "zfs" else "directories"
        raise Conflict(
            f"the fleet already has {len(names)} instance(s) on {where}; moving them is not supported",
            "create the ZFS fleet before its instances, or use a new fleet root and re-create them there",
        )
    storage = ZfsStorage(config.root, base)
    storage.ensure_layout()
    quota = config.limits.disk_mb * 1024 * 1024 or None
    for name in names:  # same base: bring each instance's datasets to what the layout says
        storage.create_instance(name, quota_bytes=quota)
    write_storage_section(config_path, base)
    return storage.status()


def write_storage_section(config_path: Path, base: str) -> None:
    """Set `driver = "zfs"` and `zfs_base` in fleet.toml's [storage], keeping every other line and comment."""
    set_section_keys(config_path, "storage", {"driver": '"zfs"', "zfs_base": json.dumps(base)})
