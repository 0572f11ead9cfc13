"""Directory-driver backups: hard-linked snapshots, the schedule and thinning, restore, and crash repair."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.domain.instance import InstanceState
from foundry_fleet.services.backups import Backups
from foundry_fleet.wiring.services import make_backups, open_services
from foundry_fleet.storage.snapshots import RESTORE_NEW, RESTORE_OLD, finish_restore, restore_into
from foundry_fleet.store.models import Instance
from tests.support.fleets import make_fleet
from tests.support.offline import create_offline

H = 3600


@pytest.fixture
def backups(tmp_path: Path, release_zips: dict[str, Path]) -> Backups:
    fleet = make_fleet(tmp_path)
    services = open_services(fleet.settings())
    # Added in this process, as create_offline creates: the command's own path is tested with the CLI's.
    services.releases.add(str(release_zips["node"]))
    create_offline(fleet, "alice")
    create_offline(fleet, "bob")
    return make_backups(services)


def data_of(b: Backups, name: str = "alice") -> Path:
    return b.storage.paths(name).data


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f == ".snapshot.json":
                continue
            full = Path(dirpath, f)
            if not full.is_symlink():
                out[str(full.relative_to(root))] = hashlib.sha256(full.read_bytes()).hexdigest()
    return out


def test_an_unchanged_second_snapshot_costs_almost_nothing(backups: Backups) -> None:
    world = data_of(backups) / "Data" / "worlds" / "w1"
    world.mkdir(parents=True)
    (world / "data.db").write_bytes(os.urandom(2 << 20))
    first = backups.take("alice", "one")
    second = backups.take("alice", "two")
    assert first.bytes_new >= 2 << 20
    assert second.bytes_new == 0 and second.files == first.files
    a = backups.snapshots.path("alice", first.name) / "Data/worlds/w1/data.db"
    b = backups.snapshots.path("alice", second.name) / "Data/worlds/w1/data.db"
    assert a.stat().st_ino == b.stat().st_ino  # one copy on disk


def test_a_file_changed_in_place_does_not_change_the_snapshot(backups: Backups) -> None:
    db = data_of(backups) / "Data" / "world.db"
    db.write_text("turn 1\n")
    snap = backups.take("alice", "before")
    with db.open("a") as f:  # Foundry appends to its databases in place
        f.write("turn 2\n")
    copy = backups.snapshots.path("alice", snap.name) / "Data" / "world.db"
    assert copy.read_text() == "turn 1\n"
    assert copy.stat().st_ino != db.stat().st_ino, "a snapshot never links to a live file"
    assert copy.stat().st_mode & 0o222 == 0, "snapshots are read-only"
    later = backups.take("alice", "after")
    assert (backups.snapshots.path("alice", later.name) / "Data" / "world.db").read_text() == "turn 1\nturn 2\n"
    assert copy.read_text() == "turn 1\n"


def test_two_snapshots_with_one_label_in_the_same_second_are_both_kept(backups: Backups) -> None:
    first = backups.take("alice", "pre-upgrade", now=1_700_000_000)
    second = backups.take("alice", "pre-upgrade", now=1_700_000_000)
    assert second.name == f"{first.name}-2"
    assert {first.name, second.name} <= {s.name for s in backups.list("alice")}
    assert backups.fmt.parse(second.name) is None  # still a manual snapshot: never thinned


def test_shared_assets_are_not_part_of_a_backup(backups: Backups) -> None:
    (backups.storage.shared_dir() / "big-map.webp").write_bytes(b"x" * 1000)
    snap = backups.take("alice")
    tree = backups.snapshots.path("alice", snap.name)
    assert not (tree / "Data" / "shared").exists()


def test_schedule_takes_one_per_slot_and_thins_like_znapzend(backups: Backups) -> None:
    backups.set_plan("alice", "3h=>1h,1d=>6h")
    manual = backups.take("alice", "keep-forever", now=1_700_000_000)
    start = 1_700_000_000 // (6 * H) * (6 * H)
    for hour in range(0, 30):
        backups.run_schedule(now=start + hour * H + 60)
        backups.run_schedule(now=start + hour * H + 120)  # a second run in the same slot takes nothing
    names = [s.name for s in backups.list("alice")]
    assert manual.name in names
    times = sorted(t for t in map(backups.fmt.parse, names) if t is not None)
    now = start + 29 * H + 120
    assert all(t % H == 0 for t in times), "named after the start of their epoch-aligned slot"
    recent = [t for t in times if now - t <= 3 * H]
    older = [t for t in times if now - t > 3 * H]
    assert len(recent) == len({t // H for t in recent}) and len(recent) >= 3
    assert len(older) == len({t // (6 * H) for t in older})
    assert all(now - t <= 24 * H for t in times)
    # bob follows the fleet's default plan (one an hour): he has just the newest slots.
    assert len(backups.list("bob")) >= 1


def test_the_newest_snapshot_shown_follows_every_snapshot_taken_or_removed_at_once(backups: Backups) -> None:
    assert backups.newest_snapshot_times() == {}  # read, and kept for the next readers
    first = backups.take("alice", "one")
    assert backups.newest_snapshot_times() == {"alice": first.created_at}
    second = backups.take("alice", "two")
    assert backups.newest_snapshot_times() == {"alice": second.created_at}
    backups.discard("alice", second.name)
    assert backups.newest_snapshot_times() == {"alice": first.created_at}
    # The panel and /metrics read the same figures: one listing serves both.
    assert backups.figures.read(["alice", "bob"]).newest_at == {"alice": first.created_at}


def test_plans_are_validated(backups: Backups) -> None:
    with pytest.raises(InvalidInput, match="shorter than the interval"):
        backups.set_plan("alice", "1h=>1d")
    assert backups.set_plan("alice", "2d=>2h") == "2d=>2h"
    assert backups.set_plan("alice", None).startswith("default")
    with pytest.raises(NotFound):
        backups.set_plan("nobody", "1d=>1h")
    with pytest.raises(InvalidInput):
        backups.take("alice", "Bad Label")


def test_restore_gives_back_exactly_the_snapshot_and_keeps_the_current_data(backups: Backups) -> None:
    data = data_of(backups)
    (data / "Data" / "world.db").write_text("good state")
    (data / "Data" / "assets").mkdir()
    (data / "Data" / "assets" / "token.png").write_bytes(os.urandom(10000))
    good = backups.take("alice", "good")
    expected = checksums(backups.snapshots.path("alice", good.name))
    (data / "Data" / "world.db").write_text("broken state")
    (data / "Data" / "assets" / "token.png").unlink()
    (data / "Data" / "junk.txt").write_text("new since")
    safety = backups.restore("alice", good.name)
    assert checksums(data) == expected
    assert (data / "Data" / "world.db").read_text() == "good state"
    kept = backups.snapshots.path("alice", safety)
    assert (kept / "Data" / "world.db").read_text() == "broken state" and (kept / "Data" / "junk.txt").exists()
    uid = backups.instances.get("alice").uid
    if uid is not None:
        assert (data / "Data" / "world.db").stat().st_uid == uid
    assert (data / "Data" / "world.db").stat().st_mode & 0o200, "restored files are writable again"
    with pytest.raises(NotFound):
        backups.restore("alice", "no-such-snapshot")


def test_restore_refuses_a_running_instance(backups: Backups) -> None:
    snap = backups.take("alice")
    with backups.records.sessions.begin() as s:  # a process recorded for it, as the supervisor records one
        row = s.scalar(select(Instance).where(Instance.name == "alice"))
        row.state, row.task = InstanceState.RUNNING.value, {"pid": 1}
    with pytest.raises(Conflict, match="is running"):
        backups.restore("alice", snap.name)


@pytest.mark.parametrize("crash_at", ["during-copy", "after-moving-data-aside", "before-removing-old"])
def test_a_restore_interrupted_anywhere_is_repaired_without_losing_data(backups: Backups, crash_at: str) -> None:
    data = data_of(backups)
    (data / "Data" / "world.db").write_text("current")
    snap = backups.take("alice", "target")
    source = backups.snapshots.path("alice", snap.name)
    (data / "Data" / "world.db").write_text("changed after")
    new, old = data.parent / RESTORE_NEW, data.parent / RESTORE_OLD
    if crash_at == "during-copy":
        new.mkdir()
        (new / "partial").write_text("half a copy")
        expect = "changed after"  # the live data was never touched
    elif crash_at == "after-moving-data-aside":
        restore_into(source, data, None)  # a complete restore, then rewind to the crash point:
        data.rename(new)  # the copy is in place as `new` ...
        old.mkdir()  # ... and the old data sits aside
        (old / "was").write_text("old")
        expect = "current"
    else:
        restore_into(source, data, None)
        old.mkdir()
        expect = "current"
    assert finish_restore(data) is not None
    assert (data / "Data" / "world.db").read_text() == expect
    assert not new.exists() and not old.exists()
    assert finish_restore(data) is None  # nothing left to do
