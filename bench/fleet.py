"""A throw-away fleet for a benchmark: a running daemon on a cached stand-in release, cleaned up after."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.services.init import init_fleet
from foundry_fleet.storage.trees import remove_tree
from tests.support.harness import FleetHarness
from tests.support.foundry_standin import build_release_zip


@contextmanager
def bench_fleet(prefix: str, port_low: int) -> Iterator[FleetHarness]:
    """init, release add 13.345, up; on exit stop the daemon, Caddy and every instance, and delete it all.

    Ports: instances from port_low (up to 100 of them), the edge at port_low+100 (http), +101
    (https) and +102 (the fleet's web endpoints).
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    fleet = None
    try:
        z = build_release_zip(work, ReleaseLayout.NODE, 13, 345)
        fleet = FleetHarness(root=work / "fleet", config=init_fleet(work / "fleet"))
        fleet.edit_config("port_range = [30000, 30999]", f"port_range = [{port_low}, {port_low + 99}]")
        fleet.edit_config("http_port = 8080", f"http_port = {port_low + 100}")
        fleet.edit_config("https_port = 8443", f"https_port = {port_low + 101}")
        fleet.edit_config("web_port = 8099", f"web_port = {port_low + 102}")
        fleet.cli("release", "add", str(z))
        fleet.up()
        yield fleet
    finally:
        if fleet is not None:
            fleet.tear_down()
        remove_tree(work)  # installs and the release cache are read-only
