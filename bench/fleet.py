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
def bench_fleet(prefix: str, port_low: int, instance_ports: int = 100,
                overrides: dict[str, str] | None = None) -> Iterator[FleetHarness]:
    """init, release add 13.345, up; on exit stop the daemon, Caddy and every instance, and delete it all.

    Ports: instances from port_low (`instance_ports` of them, 100 by default), the edge right above:
    port_low+instance_ports (http), +1 (https) and +2 (the fleet's web endpoints). `overrides`
    replace text of the generated fleet.toml (old: new) before the daemon starts.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    fleet = None
    try:
        z = build_release_zip(work, ReleaseLayout.NODE, 13, 345)
        fleet = FleetHarness(root=work / "fleet", config=init_fleet(work / "fleet"))
        edge = port_low + instance_ports
        fleet.edit_config("port_range = [30000, 30999]", f"port_range = [{port_low}, {edge - 1}]")
        fleet.edit_config("http_port = 8080", f"http_port = {edge}")
        fleet.edit_config("https_port = 8443", f"https_port = {edge + 1}")
        fleet.edit_config("web_port = 8099", f"web_port = {edge + 2}")
        for old, new in (overrides or {}).items():
            fleet.edit_config(old, new)
        fleet.cli("release", "add", str(z))
        fleet.up()
        yield fleet
    finally:
        if fleet is not None:
            fleet.tear_down()
        remove_tree(work)  # installs and the release cache are read-only
