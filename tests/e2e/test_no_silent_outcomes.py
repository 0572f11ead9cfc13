"""No silent bad outcomes, through the CLI and a real daemon: a create on a release that crash-loops fails
loudly (the states on the way, a non-zero exit, the reason and the server's last log lines); a stop or a
start with nothing to do says so."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.domain import instance_layout
from foundry_fleet.domain.admin_key import verify_admin_password
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.release import ReleaseLayout
from tests.support.fleets import make_fleet
from tests.support.foundry_standin import build_release_zip
from tests.support.harness import FleetHarness

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, release_zips: dict[str, Path]) -> Iterator[FleetHarness]:
    tmp = tmp_path_factory.mktemp("no-silent")
    h = make_fleet(tmp)
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.cli("release", "add", str(build_release_zip(tmp / "zips", ReleaseLayout.NODE, 13, 399, crash_on_start=True)))
        h.up()
        yield h
    finally:
        h.tear_down()


def test_a_create_on_a_release_that_crash_loops_fails_with_the_reason_and_the_last_log_lines(
        fleet: FleetHarness) -> None:
    began = time.monotonic()
    result = fleet.cli("instance", "create", "broken", "--release", "13.399", check=False, timeout=60)
    took = time.monotonic() - began
    assert result.code == ExternalFailure.exit_code, (result.out, result.err)
    assert "broken: starting" in result.err  # the way there, line by line without a terminal
    assert "broken did not start (failed: crash loop" in result.err, result.err
    assert "server log:" in result.err and "Error: this release is broken" in result.err
    assert took < 40, took
    assert fleet.cli("instance", "show", "broken", "--json").json()["state"] == "failed"
    fleet.cli("instance", "delete", "broken", "--purge", "--yes")


def test_stopping_a_stopped_instance_and_starting_a_running_one_say_so(fleet: FleetHarness) -> None:
    fleet.cli("instance", "create", "quiet", "--release", "13.345")
    assert fleet.cli("instance", "start", "quiet").out == "quiet is already running\n"
    fleet.cli("instance", "stop", "quiet")
    stopped = fleet.cli("instance", "stop", "quiet")
    assert (stopped.code, stopped.out) == (0, "quiet is already stopped\n")
    fleet.cli("instance", "delete", "quiet", "--purge", "--yes")


def test_a_create_without_a_license_warns_and_a_license_set_later_restarts_it(fleet: FleetHarness,
                                                                               tmp_path: Path) -> None:
    created = fleet.cli("instance", "create", "nokey", "--release", "13.345")
    assert "no license: nokey will show Foundry's license page" in " ".join(created.err.split())
    assert "instance set nokey --license-file FILE" in created.err
    assert fleet.cli("instance", "show", "nokey", "--json").json()["license"] == "missing"
    assert "license missing: nokey" in fleet.cli("status").out
    pid = fleet.cli("instance", "show", "nokey", "--json").json()["pid"]
    key = tmp_path / "key"
    key.write_text("ABCD-EFGH-IJKL-MNOP-QRST-UVWX\n")
    said = fleet.cli("instance", "set", "nokey", "--license-file", str(key))
    assert said.out == "nokey: license set, restarted\n"
    row = fleet.cli("instance", "show", "nokey", "--json").json()
    assert row["license"] == "set" and row["pid"] != pid and row["state"] == "running"
    license_json = Path(row["data_dir"], instance_layout.LICENSE)
    assert json.loads(license_json.read_text()) == {"license": "ABCDEFGHIJKLMNOPQRSTUVWX"}
    bad = tmp_path / "bad"
    bad.write_text("not a key\n")
    assert fleet.cli("instance", "set", "nokey", "--license-file", str(bad), check=False).code == 2
    fleet.cli("instance", "delete", "nokey", "--purge", "--yes")


def test_reset_admin_password_generates_one_shown_once_or_sets_the_one_given(fleet: FleetHarness,
                                                                             tmp_path: Path) -> None:
    fleet.cli("instance", "create", "forgot", "--release", "13.345")
    admin_txt = Path(fleet.cli("instance", "show", "forgot", "--json").json()["data_dir"],
                     instance_layout.ADMIN_PASSWORD)
    reset = fleet.cli("instance", "reset-admin-password", "forgot")
    assert reset.out == "forgot: admin password generated, restarted\n"
    password = reset.err.rsplit(":", 1)[1].strip()
    assert verify_admin_password(password, admin_txt.read_text())
    chosen = tmp_path / "pw"
    chosen.write_text("correct horse battery\n")
    fleet.cli("instance", "stop", "forgot")
    said = fleet.cli("instance", "reset-admin-password", "forgot", "--password-file", str(chosen))
    assert said.out == "forgot: admin password set (stopped: used from its next start)\n" and said.err == ""
    assert verify_admin_password("correct horse battery", admin_txt.read_text())
    fleet.cli("instance", "delete", "forgot", "--purge", "--yes")
