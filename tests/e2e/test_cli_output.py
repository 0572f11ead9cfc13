"""A command prints its own words only: no log lines of the fleet's or its libraries' loggers."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.harness import FleetHarness
from tests.support.releases import LocalHTTPS, Route

# What a log line looks like: a level name, a logger's dotted name or httpx's request line.
LOG_LINE = re.compile(r"\b(INFO|WARNING|DEBUG|ERROR)\b|HTTP Request:|foundry_fleet\.|\[(cli|scheduler|repair)[^\]]*\]$",
                      re.MULTILINE)


def _no_log_lines(*texts: str) -> None:
    for text in texts:
        assert not LOG_LINE.search(text), text


def test_release_add_of_a_url_and_instance_create_print_no_log_lines(
        fleet: FleetHarness, release_zips: dict[str, Path], https_server: LocalHTTPS) -> None:
    fleet.edit_config('allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com"]',
                      'allowed_hosts = ["foundryvtt.com", "*.foundryvtt.com", "127.0.0.1"]')
    fleet.config.write_text(fleet.config.read_text().replace(
        "[releases]\n", f'[releases]\nallow_private_addresses = true\nextra_ca_file = "{https_server.cert}"\n', 1))
    https_server.routes["/FoundryVTT-Node-13.345.zip"] = Route(body=release_zips["node"].read_bytes())
    added = fleet.cli("release", "add", https_server.url("/FoundryVTT-Node-13.345.zip?verify=T"))
    _no_log_lines(added.out, added.err)
    assert added.out.strip().startswith("release 13.345 ready")
    missing = fleet.cli("release", "add", https_server.url("/FoundryVTT-Node-13.999.zip?verify=T"), check=False)
    assert missing.code != 0
    _no_log_lines(missing.out, missing.err)  # the failure is said once, as the error, not also as a log line
    fleet.up()
    created = fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start")
    _no_log_lines(created.out, created.err)
    refused = fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start", check=False)
    assert refused.code != 0
    _no_log_lines(refused.out, refused.err)
    removed = fleet.cli("release", "remove", "13.345", "--yes", check=False)  # in use: refused, said once
    assert removed.code == 4 and removed.err.count("in use") == 1, removed.err
    _no_log_lines(removed.out, removed.err)
