"""Removing trees the fleet keeps read-only (installs, snapshots): open them up, then delete."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def remove_tree(path: Path) -> None:
    """rm -rf for a tree whose directories may be read-only; a link or file is just unlinked."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    os.chmod(path, 0o755)
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)

    def onerror(func, p, exc_info):  # type: ignore[no-untyped-def]
        # A read-only parent that appeared meanwhile: open it up and try once more.
        parent = os.path.dirname(p)
        os.chmod(parent, stat.S_IMODE(os.stat(parent).st_mode) | 0o700)
        func(p)

    shutil.rmtree(path, onerror=onerror)
