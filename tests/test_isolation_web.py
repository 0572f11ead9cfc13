"""Issue 8's smaller attacks on sign-in, plans and configuration: each one run, and each one refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.invites import parse_expiry
from foundry_fleet.services.wiring import open_fleet
from tests.conftest import make_fleet


@pytest.mark.parametrize("text", ["inf", "nan", "1e999d", f"{10**400}s", "99999999999999999999999999y"])
def test_an_invite_that_never_expires_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_expiry(text)


def test_a_plan_keeping_billions_of_snapshots_is_refused_and_the_old_plan_kept(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    fleet = make_fleet(tmp_path)
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start")
    fleet.cli("backup", "plan", "alice", "2d=>1h")
    bad = fleet.cli("backup", "plan", "alice", "100y=>1s", check=False)
    assert bad.code == 2 and "3,155,760,000 snapshots" in bad.err and "10,000" in bad.err
    assert fleet.cli("backup", "plan", "alice").out.strip() == "2d=>1h"
    backups = Backups(open_fleet(fleet.settings()))
    with pytest.raises(InvalidInput, match="more than the limit"):
        backups.set_plan("alice", "1y=>1min")
    assert str(backups.plan_for("alice")) == "2d=>1h"
