"""A second storage home for the driver tests: a tmpfs mount (another file system, so nothing can be
hard-linked across from the first home), and a second zfs-fuse pool on its own file."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.zfs import FilePool, destroy_dataset, make_file_pool, sweep_stale_pools

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


@pytest.fixture(scope="session")
def second_zfs_pool(zfs_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilePool]:
    sweep_stale_pools()
    pool = make_file_pool(tmp_path_factory.mktemp("zpools-b"))
    try:
        yield pool
    finally:
        pool.destroy()


_BASES = itertools.count(1)


@pytest.fixture
def second_zfs_base(second_zfs_pool: FilePool) -> Iterator[str]:
    """A fresh dataset name (not created) in the second pool, destroyed after the test."""
    base = f"{second_zfs_pool.name}/h{next(_BASES)}"
    try:
        yield base
    finally:
        destroy_dataset(base)
