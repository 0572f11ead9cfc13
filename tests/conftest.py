"""Shared fixtures: stand-in release zips, and fleets run through the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.domain.release import ReleaseLayout
from tests.support.fleets import leftovers_of_made_fleets, make_fleet
from tests.support.harness import FleetHarness
from tests.support.releases import https_server, https_server_session  # noqa: F401 (fixtures)
from tests.support.foundry_standin import build_release_zip

pytest_plugins = [
    "tests.support.zfs",  # real ZFS: zfs_daemon, zfs_pool, zfs_base, second_zfs_pool, second_zfs_base
    "tests.support.homes",  # other_file_system: a tmpfs, for a storage home hard links cannot reach
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
    h.tear_down()  # instances left running on purpose by a test (re-attach) must not outlive it either


@pytest.fixture(scope="session", autouse=True)
def no_fleet_outlives_the_run() -> Iterator[None]:
    """Every fleet a test made is gone at the end: no daemon, no process, no control group."""
    yield
    left = leftovers_of_made_fleets()
    assert not left, "fleets not torn down by their tests: " + "; ".join(left)
