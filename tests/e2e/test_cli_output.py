"""A command prints its own words only: no log lines of the fleet's or its libraries' loggers."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.e2e.test_access import as_user
from tests.support.harness import FleetHarness, wait_until
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


def test_reload_applies_live_settings_names_restart_ones_and_refuses_a_bad_file(fleet: FleetHarness) -> None:
    daemon = fleet.up()
    assert "nothing changed" in fleet.cli("reload").out
    someone = as_user(fleet, "123456789012345678")
    assert someone.get("/v1/events").status_code == 403
    fleet.edit_config('idle_after = "60min"', 'idle_after = "2h"')
    fleet.edit_config("admin_users = []", 'admin_users = ["123456789012345678"]')
    fleet.edit_config("stop_timeout = 5.0", "stop_timeout = 6.0")
    said = " ".join(fleet.cli("reload").out.split())
    assert "applied instances.idle_after, discord.admin_users" in said, said
    assert "restart" in said and "instances.stop_timeout" in said, said
    _no_log_lines(said)
    assert someone.get("/v1/events").status_code == 200  # an admin from this reload on
    good = fleet.config.read_text()
    fleet.config.write_text(good.replace('idle_after = "2h"', 'idle_after = "whenever"'))
    bad = fleet.cli("reload", check=False)
    assert bad.code == 2 and "idle_after" in bad.err, bad.err
    assert daemon.poll() is None and fleet.cli("status", "--json").json()["daemon"]["running"] is True
    fleet.config.write_text(good)
    again = fleet.cli("reload", "--json").json()  # the restart key stays named until `up` again
    assert again["applied"] == [] and again["need_restart"] == ["instances.stop_timeout"]
    outcomes = [e["outcome"] for e in fleet.cli("events", "--json").json() if e["action"] == "daemon.reload"]
    assert outcomes == ["ok", "ok", "refused", "ok"]
    fleet.edit_config('idle_after = "2h"', 'idle_after = "3h"')
    daemon.send_signal(signal.SIGHUP)  # as `systemctl reload` would
    by_signal = wait_until(lambda: [e for e in fleet.cli("events", "--json").json()
                                    if e["action"] == "daemon.reload" and e["actor"] == "signal:SIGHUP"], 20,
                           "the reload SIGHUP asks for")
    assert "applied instances.idle_after" in by_signal[-1]["message"] and daemon.poll() is None
