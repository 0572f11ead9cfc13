"""The one ownership walker: an instance's data goes to its uid, the shared mount point stays root's,
and no link (planted by the tenant) is ever followed out of the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from foundry_fleet.domain import instance_layout
from foundry_fleet.storage.ownership import chown_tree, ensure_shared_mount_point
from foundry_fleet.storage.tenant_tree import make_dirs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to a tenant's uid)")

TENANT = 61234


def _owner(path: Path) -> int:
    return os.lstat(path).st_uid


def _data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    make_dirs(data, *instance_layout.FOLDERS)
    (data / instance_layout.OPTIONS).write_text("{}")
    (data / "Data" / "worlds" / "w").mkdir(parents=True)
    (data / "Data" / "worlds" / "w" / "world.db").write_text("state")
    return data


def test_everything_but_the_shared_mount_point_goes_to_the_tenant(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    (data / instance_layout.SHARED_MOUNT / "asset.png").write_text("the fleet's")
    chown_tree(data, TENANT, TENANT)
    for path in (data, data / "Config", data / instance_layout.OPTIONS, data / "Data" / "worlds" / "w" / "world.db",
                 data / "Logs", data / "Backups", data / "Data"):
        assert _owner(path) == TENANT, path
        assert os.lstat(path).st_gid == TENANT, path
    assert _owner(data / instance_layout.SHARED_MOUNT) == 0
    assert _owner(data / instance_layout.SHARED_MOUNT / "asset.png") == 0


def test_a_planted_link_is_chowned_as_a_link_never_followed(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root's")
    (data / "Data" / "escape").symlink_to(outside)  # a folder elsewhere
    (data / "Data" / "secret").symlink_to(outside / "passwd")  # a file elsewhere
    (data / "Config" / "dangling").symlink_to(tmp_path / "nowhere")
    chown_tree(data, TENANT, TENANT)
    assert _owner(data / "Data" / "escape") == TENANT and _owner(data / "Data" / "secret") == TENANT
    assert _owner(data / "Config" / "dangling") == TENANT
    assert _owner(outside) == 0 and _owner(outside / "passwd") == 0


def test_a_data_folder_that_is_a_link_is_not_walked_into(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside"
    (outside / "shared").mkdir(parents=True)
    (outside / "file").write_text("x")
    (data / "Data").symlink_to(outside)
    chown_tree(data, TENANT, TENANT)
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ensure_shared_mount_point(fd, TENANT)
    finally:
        os.close(fd)
    assert _owner(data / "Data") == TENANT
    assert _owner(outside) == 0 and _owner(outside / "file") == 0 and _owner(outside / "shared") == 0


def test_the_shared_mount_point_is_made_root_owned_inside_a_tenant_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ensure_shared_mount_point(fd, TENANT)
        ensure_shared_mount_point(fd, TENANT)  # again: nothing to do
    finally:
        os.close(fd)
    assert _owner(data / "Data") == TENANT and _owner(data / instance_layout.SHARED_MOUNT) == 0
