"""Set keys of one fleet.toml section in place: every other line and comment stays as the admin wrote it.

TOML libraries that round-trip comments are not among the fleet's dependencies, and the edits the
commands make are small (a driver's name, a dataset), so lines are rewritten: the first line of each key
in the section is replaced where it stands, later ones dropped, missing ones added after the section's
last key. What is written must load (the old file stays when it does not).
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from foundry_fleet.config import load_config
from foundry_fleet.files.atomic import write_atomic

# [table] and [[array.of.tables]] headers, each maybe followed by a comment.
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]\s]+)\s*\]\]?\s*(#.*)?$")


def set_section_keys(config_path: Path, section: str, values: dict[str, str]) -> None:
    """Make `section` say `key = value` for each of `values` (values are TOML literals, e.g. '"zfs"')."""
    keys = {key: re.compile(rf"^\s*{re.escape(key)}\s*=") for key in values}
    lines = config_path.read_text().splitlines()
    out: list[str] = []
    current: str | None = None
    placed: set[str] = set()
    insert_at: int | None = None  # where missing keys go: after the section's last key, else its header

    for line in lines:
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            out.append(line)
            if current == section and insert_at is None:
                insert_at = len(out)
            continue
        if current == section:
            key = next((k for k, pattern in keys.items() if pattern.match(line)), None)
            if key is not None:
                if key not in placed:
                    out.append(f"{key} = {values[key]}")
                    placed.add(key)
                    insert_at = len(out)
                continue
            if line.strip() and not line.lstrip().startswith("#"):
                insert_at = len(out) + 1
        out.append(line)

    missing = [f"{key} = {value}" for key, value in values.items() if key not in placed]
    if missing:
        if insert_at is None:
            out += ["", f"[{section}]", *missing]
        else:
            out[insert_at:insert_at] = missing
    mode = stat.S_IMODE(config_path.stat().st_mode)
    write_atomic(config_path, "\n".join(out) + "\n", mode, check=load_config)  # what is written must load
