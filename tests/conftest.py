"""Shared fixtures: stand-in release zips, and fleets run through the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.domain.release import ReleaseLayout
from tests.support.fleets import make_fleet
from tests.support.harness import FleetHarness, kill_processes_with
from tests.support.releases import https_server, https_server_session  # noqa: F401 (fixtures)
from tests.support.foundry_standin import build_release_zip

pytest_plugins = [
    "tests.support.zfs",  # real ZFS: zfs_daemon, zfs_pool, zfs_base
    "tests.support.forbid_skips",  # FOUNDRY_FLEET_FORBID_SKIPS=1 (CI): a skip fails the run
]

@pytest.fixture(scope="session")
def release_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One stand-in release zip per layout, plus a wrapped one."""
    d = tmp_path_factory.mktemp("zips")
    return {
        "node": build_release_zip(d, ReleaseLayout.NODE, 13, 345),
        "linux": build_release_zip(d, ReleaseLayout.LINUX, 13, 346),
        "legacy": build_release_zip(d, ReleaseLayout.LEGACY_NODE, 12, 331),
        "wrapped": build_release_zip(d, ReleaseLayout.NODE, 13, 347, wrap=True),
    }


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetHarness]:
    h = make_fleet(tmp_path)
    yield h
    h.stop_daemons()
    # Instances left running on purpose by a test (re-attach) must not outlive it.
    kill_processes_with(str(h.root))  # instances (--dataPath=...) and Caddy (--config .../edge/caddy.json)
