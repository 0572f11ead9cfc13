"""Removing trees: installs and snapshots the fleet keeps read-only, and data a tenant controlled."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from foundry_fleet.storage.tenant_tree import DIR_FLAGS, remove_contents


def remove_tree(path: Path) -> None:
    """rm -rf at any depth that never follows a link (read-only folders are opened up to be emptied);
    a link or a file is just unlinked. The path up to `path` is the fleet's own."""
    try:
        parent = os.open(path.parent, DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        try:
            st = os.stat(path.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path.name, dir_fd=parent)
            return
        fd = os.open(path.name, DIR_FLAGS, dir_fd=parent)
        try:
            remove_contents(fd)
        finally:
            os.close(fd)
        os.rmdir(path.name, dir_fd=parent)
    finally:
        os.close(parent)
