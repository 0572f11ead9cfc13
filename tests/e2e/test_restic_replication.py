"""Replication of directory snapshots into a real restic repository (a local path under the test's temp dir):
full then incremental with restic's deduplication, a destination that does not answer for a while and then
catches up, and the password file's refusals."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from foundry_fleet.config import load_config
from foundry_fleet.domain.backup_plan import thin
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.backups import Backups
from foundry_fleet.wiring.services import make_backups, open_services
from foundry_fleet.storage.snapshots import META
from foundry_fleet.store.models import ReplicationRow
from tests.support.harness import FleetHarness
from tests.support.offline import create_offline

pytestmark = pytest.mark.e2e
HOUR = 3600.0
MIB = 1024 * 1024
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR


def _create_dana(h: FleetHarness, release_zips: dict[str, Path]) -> Path:
    h.cli("release", "add", str(release_zips["node"]))
    inst = create_offline(h, "dana")["instance"]
    return Path(inst["data_dir"])


def _password_file(tmp_path: Path, mode: int = 0o600) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    pw = secrets / "restic.pw"
    pw.write_text("correct horse battery staple\n")
    pw.chmod(mode)
    return pw


def _configure(h: FleetHarness, target: str, password_file: Path | None, source_plan: str = "2h=>1h",
               dest_plan: str = "1d=>1h") -> Backups:
    """fleet.toml with the source's plan and one destination `usb`; a fresh Backups built from it."""
    text = h.config.read_text().replace('plan = "7d=>1h,30d=>1d,1y=>1w"', f'plan = "{source_plan}"')
    text += f'\n[[backups.destinations]]\nname = "usb"\ntarget = "{target}"\nplan = "{dest_plan}"\n'
    if password_file is not None:
        text += f'password_file = "{password_file}"\n'
    h.config.write_text(text)
    return make_backups(open_services(load_config(h.config), actor="test"))


def _retarget(h: FleetHarness, old: str, new: str) -> Backups:
    text = h.config.read_text()
    assert f'target = "{old}"' in text
    h.config.write_text(text.replace(f'target = "{old}"', f'target = "{new}"'))
    return make_backups(open_services(load_config(h.config), actor="test"))


def restic(repo: Path, pw: Path, *args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(pw),
           "RESTIC_CACHE_DIR": str(pw.parent / ".restic-cache-test"), "LC_ALL": "C"}
    done = subprocess.run(["restic", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def repo_snapshots(repo: Path, pw: Path) -> list[dict]:
    """The repository's snapshots in the order of their fleet names (their times are whole seconds)."""
    return sorted(json.loads(restic(repo, pw, "snapshots", "--json") or "[]") or [], key=snapshot_name)


def snapshot_name(entry: dict) -> str:
    names = [t.removeprefix("snapshot:") for t in entry["tags"] if t.startswith("snapshot:")]
    assert len(names) == 1, entry["tags"]
    return names[0]


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            full = Path(dirpath, f)
            if not full.is_symlink():
                out[str(full.relative_to(root))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def replication_row(backups: Backups) -> ReplicationRow:
    with backups.records.sessions() as s:
        return s.scalars(select(ReplicationRow).where(ReplicationRow.instance == "dana")).one()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connecting to it is refused, and nothing else can take it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_replication_to_restic_is_full_then_deduplicated_and_restores_the_same_files(
    fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    data = _create_dana(fleet, release_zips)
    pw = _password_file(tmp_path)
    repo = tmp_path / "usb" / "restic"  # does not exist yet: the first round initialises it
    backups = _configure(fleet, str(repo), pw)
    assert backups.replication is not None

    (data / "Data" / "big.bin").write_bytes(os.urandom(4 * MIB))
    first = backups.run_schedule(now=T0)
    assert first.failed == [] and len(first.taken) == 1
    name1 = first.taken[0].snapshot
    assert (repo / "config").is_file()
    [snap] = repo_snapshots(repo, pw)
    assert set(snap["tags"]) == {"instance:dana", f"snapshot:{name1}"}
    info1 = next(s for s in backups.snapshots.list("dana") if s.name == name1)
    # The restic snapshot carries the fleet snapshot's time (to the second, restic's --time precision).
    assert abs(datetime.fromisoformat(snap["time"]).timestamp() - info1.created_at) < 2
    full = replication_row(backups)
    assert full.last_snapshot == name1 and full.last_error == "" and full.bytes_sent >= 4 * MIB
    status = backups.replication.status(["dana"])[0]
    assert status["last_snapshot"] == name1 and status["snapshots_behind"] == 0

    (data / "Data" / "small.bin").write_bytes(os.urandom(256 * 1024))
    second = backups.run_schedule(now=T0 + HOUR)
    assert second.failed == [] and len(second.taken) == 1
    name2 = second.taken[0].snapshot
    sent = replication_row(backups).bytes_sent
    assert 256 * 1024 <= sent < MIB, sent  # the change, not the 4 MiB again
    there = repo_snapshots(repo, pw)
    assert [snapshot_name(s) for s in there] == [name1, name2]
    assert all("instance:dana" in s["tags"] for s in there)

    # What restic gives back is the fleet snapshot's files, without the snapshot's own metadata file.
    restored = tmp_path / "restored"
    restic(repo, pw, "restore", there[-1]["id"], "--target", str(restored))
    fleet_snap = backups.snapshots.path("dana", name2)
    want = {k: v for k, v in checksums(fleet_snap).items() if Path(k).name != META}
    got = checksums(restored)
    assert got == want
    assert "Data/big.bin" in got and "Data/small.bin" in got
    assert not any(Path(k).name == META for k in got)


def test_an_unreachable_restic_destination_is_caught_up_and_the_source_thinned_afterwards(
    fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path, closed_port: int
) -> None:
    data = _create_dana(fleet, release_zips)
    pw = _password_file(tmp_path)
    offline_target = f"rest:http://127.0.0.1:{closed_port}/"
    backups = _configure(fleet, offline_target, pw)
    assert backups.replication is not None

    behind = []
    for hour in range(4):  # the repository's server does not answer for four hours
        (data / "Data" / f"hour{hour}.txt").write_text(str(hour))
        # (restic does not retry a refused connection for minutes: the test's timeout says so)
        offline = backups.run_schedule(now=T0 + hour * HOUR)
        assert offline.failed == [] and len(offline.taken) == 1  # offline is not a failure of the round
        row = backups.replication.status(["dana"])[0]
        assert "does not answer" in row["last_error"] and "connection refused" in row["last_error"], row
        assert row["last_snapshot"] is None
        behind.append(row["snapshots_behind"])
    assert behind == [1, 2, 3, 4]
    # The plan here keeps two hours; everything the destination's day-long plan wants stayed.
    wanted = [backups.fmt.name(T0 + h * HOUR) for h in range(4)]
    assert backups.snapshots.names("dana") == wanted
    # ... which its own plan alone would have thinned already.
    assert thin(wanted, T0 + 3 * HOUR, backups.plan_for("dana"), backups.fmt).destroy

    repo = tmp_path / "usb" / "restic"
    backups = _retarget(fleet, offline_target, str(repo))
    (data / "Data" / "hour4.txt").write_text("4")
    back = backups.run_schedule(now=T0 + 4 * HOUR)
    assert back.failed == [] and len(back.taken) == 1
    wanted.append(back.taken[0].snapshot)
    there = repo_snapshots(repo, pw)
    assert [snapshot_name(s) for s in there] == wanted
    assert all("instance:dana" in s["tags"] for s in there)
    caught_up = backups.replication.status(["dana"])[0]
    assert caught_up["last_snapshot"] == wanted[-1]
    assert caught_up["snapshots_behind"] == 0 and caught_up["last_error"] == ""
    assert replication_row(backups).bytes_sent > 0
    # Caught up, the plan here applies again: only two hours' worth (and the newest) remain.
    local = backups.snapshots.names("dana")
    assert len(local) <= 3 and local[-1] == wanted[-1], local
    # Each hour's restic snapshot holds that hour's files, no later ones.
    paths = {json.loads(line).get("path") for line in restic(repo, pw, "ls", "--json", there[2]["id"]).splitlines()}
    assert {"/Data/hour0.txt", "/Data/hour1.txt", "/Data/hour2.txt"} <= paths and "/Data/hour3.txt" not in paths


def test_a_password_file_readable_by_others_or_missing_is_refused(
    fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "usb" / "restic"
    # Without a password file, the destination is refused when the backups are built.
    with pytest.raises(InvalidInput, match="needs password_file") as refused:
        _configure(fleet, str(repo), None)
    assert refused.value.hint and "chmod 600" in refused.value.hint

    text = fleet.config.read_text()
    fleet.config.write_text(text[:text.index("\n[[backups.destinations]]")])
    data = _create_dana(fleet, release_zips)
    pw = _password_file(tmp_path, mode=0o644)
    backups = _configure(fleet, str(repo), pw)
    (data / "Data" / "world.db").write_bytes(os.urandom(64 * 1024))
    loose = backups.run_schedule(now=T0)
    assert len(loose.taken) == 1  # the snapshot here is taken all the same
    assert len(loose.failed) == 1, loose.failed
    instance, why = loose.failed[0].instance, loose.failed[0].why
    assert instance == "dana" and "replication to usb" in why and f"chmod 600 {pw}" in why, why
    assert not repo.exists()  # restic never ran: nothing sent, no repository made
    row = replication_row(backups)
    assert row.last_snapshot is None and row.bytes_sent == 0 and "readable by others" in row.last_error
