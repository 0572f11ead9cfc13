"""What is mounted where, from /proc/self/mounts (zfs-fuse's mounts have the type fuse.zfs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    point: str
    read_only: bool


def zfs_mounts() -> dict[str, Mount]:
    """ZFS mounts by dataset name, from /proc/self/mounts (zfs-fuse's type is fuse.zfs)."""
    return zfs_mounts_in(proc_mounts())


def zfs_mounts_in(table: list[list[str]]) -> dict[str, Mount]:
    """ZFS mounts by dataset name in a mount table (`proc_mounts`, or another host's `parse_mounts`)."""
    found: dict[str, Mount] = {}
    for fields in table:
        source, point, fstype, options = fields[:4]
        if fstype in ("zfs", "fuse.zfs"):
            found[source] = Mount(point, "ro" in options.split(","))
    return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`."""
    prefix = str(path)
    return [f[1] for f in proc_mounts() if f[1] == prefix or f[1].startswith(prefix + "/")]


def proc_mounts() -> list[list[str]]:
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return []
    return parse_mounts(text)


def parse_mounts(text: str) -> list[list[str]]:
    """The fields of each line of a /proc/self/mounts (its octal escapes undone)."""
    lines = text.splitlines()
    unescape = re.compile(r"\\([0-7]{3})")
    return [
        [unescape.sub(lambda m: chr(int(m.group(1), 8)), field) for field in line.split(" ")]
        for line in lines
        if line.count(" ") >= 3
    ]
