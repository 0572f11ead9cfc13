"""A second storage home for the tests: a tmpfs mount (another file system, so nothing can be hard-linked
across from the first home). A ZFS home's pool is tests/support/zfs.py's `second_zfs_pool`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


TMPFS_SIZE = "64m"


def mount_tmpfs(path: Path, size: str = TMPFS_SIZE) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True)


def unmount(path: Path) -> None:
    done = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    if done.returncode != 0:  # a process of the test still in it: detach now, freed when it leaves
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """An empty tmpfs mounted for the test (another file system than tmp_path's), unmounted after."""
    mount = tmp_path / "other-fs"
    mount_tmpfs(mount)
    try:
        yield mount
    finally:
        unmount(mount)
