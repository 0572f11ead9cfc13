"""A ZFS home whose pool is on another host, driven over ssh (`[[nomad.homes]] ssh`): a real sshd on
loopback lets the fleet in as root@127.0.0.1 with a test key, and the second zfs-fuse pool is that host's
pool. Its files are reached at its root, as a mount of the node's tree would show them (here: the same
host, so the same path).

Every zfs/zpool command of that home must go through ssh (an observer on its runner sees each one), and
none of the fleet's own home; a move there and back with the real services keeps the data, snapshots,
restores and replication; a host that does not answer fails the move with a message naming it, and
nothing is lost."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundry_fleet.config import FleetConfig, load_config
from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.domain.homes import MAIN_HOME
from foundry_fleet.domain.release import ReleaseInfo, ReleaseLayout
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import DownloadPolicy
from foundry_fleet.services.init import init_fleet
from foundry_fleet.storage.home_reach import MARK, check_reached
from foundry_fleet.storage.home_transfer import copy_instance_data
from foundry_fleet.storage.homes import HomedStorage
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_cmd import ZfsHostUnreachable, ZfsRunner, ssh_prefix
from foundry_fleet.wiring.drivers import describe_storage
from foundry_fleet.wiring.services import make_backups, open_services
from tests.drivers.test_home_moves import open_fleet, running_alice, zfs_snapshot_names
from tests.support.foundry_standin import build_release_zip
from tests.support.releases import small_limits
from tests.support.sshd import Sshd, running_sshd

pytest.register_assert_rewrite("tests.support.zfs")

from tests.support.zfs import FilePool, destroy_dataset, zfs  # noqa: E402 (after the rewrite registration)

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024
QUOTA = 32 * MIB
HOST = "root@127.0.0.1"
_DESTINATIONS = itertools.count(1)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def answering(sshd: Sshd) -> Iterator[Sshd]:
    """The module's sshd, running again after a test that stopped it."""
    try:
        yield sshd
    finally:
        if sshd.proc is None:
            sshd.start()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> ReleaseInfo:
    d = tmp_path_factory.mktemp("remote-home-releases")
    cache = ReleaseCache(d / "cache", DownloadPolicy(allowed_hosts=("foundryvtt.com",), max_download_bytes=10 * MIB),
                         small_limits())
    return cache.add(str(build_release_zip(d / "zips", ReleaseLayout.NODE, 13, 345)))


class Homes:
    """Where each instance lives (what the store would answer)."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}

    def __call__(self, instance: str) -> str:
        return self.of.get(instance, MAIN_HOME)


def over_ssh(sshd: Sshd, whose: str, seen: list[list[str]]) -> ZfsRunner:
    return ZfsRunner(remote=ssh_prefix(sshd.ssh_command(), HOST), whose=whose, observer=seen.append)


def test_every_zfs_command_of_a_home_over_ssh_runs_there_and_none_of_the_fleets_own(
        tmp_path: Path, zfs_base: str, second_zfs_base: str, answering: Sshd, release: ReleaseInfo) -> None:
    here: list[list[str]] = []
    there: list[list[str]] = []
    homes = Homes()
    main = ZfsStorage(tmp_path / "fleet", f"{zfs_base}/main", runner=ZfsRunner(observer=here.append),
                      quota_bytes=QUOTA)
    remote = ZfsStorage(tmp_path / "fleet-b", second_zfs_base, runner=over_ssh(answering, "home pool-b", there),
                        quota_bytes=QUOTA)
    storage = HomedStorage({MAIN_HOME: main, "pool-b": remote}, homes)
    storage.ensure_layout()
    homes.of["alice"] = "pool-b"

    for name in ("alice", "bob"):
        paths = storage.create_instance(name, QUOTA)
        storage.install_release(name, Path(release.path))
        assert (paths.install / "main.js").read_bytes() == (Path(release.path) / "main.js").read_bytes()
        (paths.data / "Data" / "world.db").write_text(f"{name}'s world, first")
    alice = storage.paths("alice")
    assert alice.data == tmp_path / "fleet-b" / "instances" / "alice" / "data"
    origin = zfs("get", "-H", "-o", "value", "origin", f"{second_zfs_base}/instances/alice/install").stdout.strip()
    assert origin == f"{second_zfs_base}/releases/{release.version}@pristine"  # the release, copied into pool-b

    first = storage.snapshots.take("alice", alice.data, "first")
    storage.snapshots.take("bob", storage.paths("bob").data, "first")
    (alice.data / "Data" / "world.db").write_text("alice's world, later")
    view = storage.snapshots.path("alice", first.name)  # a read-only view (zfs-fuse has no .zfs), mounted there
    assert (view / "Data" / "world.db").read_text() == "alice's world, first"
    storage.snapshots.restore("alice", first.name, alice.data, None)
    assert (alice.data / "Data" / "world.db").read_text() == "alice's world, first"
    assert storage.snapshots.restoring("alice") is None
    assert storage.snapshots.names("alice") == ["first"]
    assert zfs_snapshot_names(f"{second_zfs_base}/instances/alice/data") == ["first"]
    assert storage.usage_bytes("alice") > 0
    status = storage.status()["homes"]["pool-b"]  # type: ignore[index]
    assert status["pool"]["health"] == "ONLINE" and "alice" in status["instances"]

    # pool-b -> another pool over ssh -> the fleet's own pool: each side of the stream where its pool is.
    third = ZfsStorage(tmp_path / "fleet-c", f"{zfs_base}/other", runner=over_ssh(answering, "home pool-c", there),
                       quota_bytes=QUOTA)
    third.ensure_layout()
    copied = copy_instance_data("alice", remote, third, None)
    assert copied.snapshots == ("first",) and copied.bytes > 0
    assert (third.paths("alice").data / "Data" / "world.db").read_text() == "alice's world, first"
    back = copy_instance_data("alice", third, main, None)
    assert back.snapshots == ("first",)
    assert (main.paths("alice").data / "Data" / "world.db").read_text() == "alice's world, first"

    storage.snapshots.sweep_views(idle_seconds=0)
    storage.archive_instance("alice", "20260101-000000")
    assert not (tmp_path / "fleet-b" / "instances" / "alice").exists()

    # ssh hands the remote shell one line: every argument arrives there as it was given here.
    said = over_ssh(answering, "home pool-b", []).run(["printf", "%s|", "a b", "it's", "$HOME", "*"])
    assert said == "a b|it's|$HOME|*|"

    prefix = ssh_prefix(answering.ssh_command(), HOST)
    assert len(there) > 20
    wrong = [argv for argv in there if argv[:len(prefix)] != prefix or argv[len(prefix)] not in ("zfs", "zpool", "cat")]
    assert wrong == []
    assert [argv[len(prefix):] for argv in there if argv[len(prefix)] == "cat"][0] == ["cat", "/proc/self/mounts"]
    assert any(argv[len(prefix):len(prefix) + 2] == ["zfs", "recv"] for argv in there)  # the copy's receive
    assert here and [argv for argv in here if argv[0] not in ("zfs", "zpool")] == []


@pytest.fixture
def ssh_config(tmp_path: Path, zfs_base: str, second_zfs_base: str, zfs_pool: FilePool,
               sshd: Sshd) -> Iterator[FleetConfig]:
    """A ZFS fleet whose home pool-b (node-b's) is the second pool, driven over ssh, and a backup
    destination in the first pool."""
    destination = f"{zfs_pool.name}/remote-offsite{next(_DESTINATIONS)}"
    path = init_fleet(tmp_path / "fleet", storage="zfs", zfs_base=zfs_base)
    ssh_command = ", ".join(f'"{arg}"' for arg in sshd.ssh_command())
    path.write_text(path.read_text() + f'''
[[backups.destinations]]
name = "offsite"
target = "{destination}"
plan = "1d=>1h"

[[nomad.homes]]
name = "pool-b"
nodes = ["node-b"]
root = "{tmp_path / 'fleet-b'}"
zfs_base = "{second_zfs_base}"
ssh = "{HOST}"
ssh_command = [{ssh_command}]
''')
    config = load_config(path)
    open_services(config).releases.add(str(build_release_zip(tmp_path, ReleaseLayout.NODE, 13, 345)))
    try:
        yield config
    finally:
        destroy_dataset(destination)


def test_a_move_to_a_home_over_ssh_and_back_keeps_data_snapshots_restores_and_replication(
        ssh_config: FleetConfig, zfs_base: str, second_zfs_base: str, answering: Sshd) -> None:
    async def scenario() -> None:
        fleet = open_fleet(ssh_config)
        assert fleet.storage.home("pool-b").zfs.host == HOST  # type: ignore[attr-defined]
        backups = make_backups(fleet.services)
        assert backups.replication is not None
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            before = await fleet.ops.take_backup("cli:admin", "alice", "before")
            assert [(r.sent_to, r.error) for r in backups.replication.run_round(["alice"])] == [(before.name, "")]

            there = await fleet.ops.move("cli:admin", "alice", "node-b")

            assert (there.outcome, there.home) == ("moved", "pool-b") and there.copied_bytes > 0
            b_data = f"{second_zfs_base}/instances/alice/data"
            assert zfs_snapshot_names(b_data) == list(there.copied_snapshots)
            assert there.copied_snapshots[0] == before.name
            start = fleet.runtime.started[-1]
            assert (start.node, start.marker) == ("node-b", "written while on node-a\n")
            assert start.data_dir == ssh_config.home("pool-b").root / "instances" / "alice" / "data"  # type: ignore[union-attr]
            assert zfs("list", "-H", f"{zfs_base}/instances/alice", check=False).returncode != 0
            # Snapshots, replication (sent from pool-b over ssh), browsing and restore work on pool-b.
            after = await fleet.ops.take_backup("cli:admin", "alice", "after")
            assert after.name in zfs_snapshot_names(b_data)
            assert [(r.sent_to, r.error) for r in backups.replication.run_round(["alice"])] == [(after.name, "")]
            view = fleet.storage.snapshots.path("alice", before.name)
            assert (view / "marker.txt").read_text() == "written while on node-a\n"
            restored = await fleet.ops.restore("cli:admin", "alice", before.name)
            assert restored.instance.state == "running"
            assert not (start.data_dir / "saved-at-exit.txt").exists()  # as it was before the move
            (start.data_dir / "marker.txt").write_text("written on node-b\n")
            fleet.storage.snapshots.sweep_views(idle_seconds=0)

            home = await fleet.ops.move("cli:admin", "alice", "node-a")  # from the pool over ssh, back here

            assert (home.outcome, home.home) == ("moved", MAIN_HOME)
            a_data = f"{zfs_base}/instances/alice/data"
            assert set(zfs_snapshot_names(a_data)) >= {before.name, after.name}
            assert (fleet.runtime.started[-1].node, fleet.runtime.started[-1].marker) == ("node-a",
                                                                                           "written on node-b\n")
            assert zfs("list", "-H", f"{second_zfs_base}/instances/alice", check=False).returncode != 0
            archived = zfs("list", "-H", "-o", "name", "-r", f"{second_zfs_base}/archive").stdout
            assert "/archive/alice-" in archived  # the old copy, kept in pool-b's archive
            last = await fleet.ops.take_backup("cli:admin", "alice", "home-again")
            assert last.name in zfs_snapshot_names(a_data)
            assert [(r.sent_to, r.error) for r in backups.replication.run_round(["alice"])] == [(last.name, "")]
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)
            fleet.storage.snapshots.sweep_views(idle_seconds=0)

    asyncio.run(scenario())


def test_a_move_to_a_home_whose_host_does_not_answer_fails_naming_it_and_loses_nothing(
        ssh_config: FleetConfig, zfs_base: str, second_zfs_base: str, answering: Sshd) -> None:
    async def first_process() -> None:
        fleet = open_fleet(ssh_config)
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            answering.stop()  # node-b goes away
            with pytest.raises(ZfsHostUnreachable) as failed:
                await fleet.ops.move("cli:admin", "alice", "node-b")
            assert failed.value.message.startswith(f"home pool-b: {HOST} does not answer over ssh: ")
            assert "ssh_command" in (failed.value.hint or "")
            assert isinstance(failed.value, ExternalFailure)
            view = fleet.services.instances.get("alice")
            assert (view.home, view.node, view.desired, view.state) == ("fleet", "node-a", "running", "running")
            assert len(fleet.runtime.running("alice")) == 1 and fleet.runtime.started[-1].node == "node-a"
            data = fleet.storage.paths("alice").data
            assert (data / "marker.txt").read_text() == "written while on node-a\n"
            assert fleet.ops.busy("alice") is None
            assert fleet.moves.unfinished() == []  # refused before it began: nothing to roll back
            assert not any(e.action == "instance.move" for e in fleet.services.events.recent(target="alice"))
            # node-b being down keeps nothing else from working: the daemon's start-up steps, and a new
            # instance in the fleet's own home.
            fleet.storage.ensure_layout()
            fleet.storage.snapshots.sweep_views(idle_seconds=0)
            assert f"home pool-b: not answering (home pool-b: {HOST} does not answer over ssh" in \
                describe_storage(fleet.storage)
            assert "does not answer over ssh" in fleet.storage.status()["homes"]["pool-b"]["error"]  # type: ignore[index]
            await fleet.ops.create("cli:admin", "bob", "13.345", node="node-a")
            await fleet.supervisor.wait_settled("bob", 10)
            assert fleet.services.instances.get("bob").state == "running"
        finally:
            await fleet.supervisor.shutdown(stop_instances=False)

    async def host_back() -> None:
        answering.start()
        fleet = open_fleet(ssh_config)
        # The refused move left nothing to recover: alice stays here, whole, and nothing of hers is in pool-b.
        assert fleet.moves.recover("daemon") == [] and fleet.moves.unfinished() == []
        assert zfs("list", "-H", f"{second_zfs_base}/instances/alice", check=False).returncode != 0
        await fleet.supervisor.start()
        try:
            await fleet.supervisor.wait_settled("alice", 10)
            view = fleet.services.instances.get("alice")
            assert (view.home, view.node, view.state) == ("fleet", "node-a", "running")
            alice = [start for start in fleet.runtime.started if start.data_dir.parent.name == "alice"]
            assert [(start.node, start.marker) for start in alice] == [("node-a", "written while on node-a\n")]
            assert zfs("list", "-H", f"{zfs_base}/instances/alice/data", check=False).returncode == 0
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(first_process())
    asyncio.run(host_back())


_UNDER_A_COVERED_FOLDER = """
import json, subprocess, sys
from pathlib import Path
from foundry_fleet.storage.home_reach import HomeNotReached, check_reached
from foundry_fleet.storage.zfs import ZfsStorage
from foundry_fleet.storage.zfs_cmd import ZfsRunner
args = json.loads(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "none", args["covered"]], check=True)
home = ZfsStorage(Path(args["root"]), args["base"], runner=ZfsRunner(remote=args["remote"], whose="home pool-b"))
try:
    check_reached(home, "pool-b")
    print("reached")
except HomeNotReached as e:
    print(e.message, "|", e.hint)
"""


def test_a_home_whose_tree_this_host_does_not_see_at_its_root_is_refused(
        tmp_path: Path, second_zfs_base: str, answering: Sshd) -> None:
    """The fleet writes a home's files through a mount of its host's tree; a folder in its place (no
    mount), or a mount that does not show the datasets under it (NFS without crossmnt), is found before
    anything is written there. Each case in a mount namespace of its own, where an empty tmpfs covers the
    folder: what this host would see, while the pool's host (the sshd, outside) sees the real tree."""
    remote = ZfsStorage(tmp_path / "fleet-b", second_zfs_base, runner=over_ssh(answering, "home pool-b", []),
                        quota_bytes=QUOTA)
    remote.ensure_layout()
    check_reached(remote, "pool-b")  # the same tree here and there: nothing to say
    assert (remote.root / MARK).stat().st_mode & 0o777 == 0o600
    for covered, why in ((remote.root, "no mount here"), (remote.shared_dir(), "a mount without crossmnt")):
        args = {"covered": str(covered), "root": str(remote.root), "base": second_zfs_base,
                "remote": ssh_prefix(answering.ssh_command(), HOST)}
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                               _UNDER_A_COVERED_FOLDER, json.dumps(args)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        said = done.stdout.strip()
        assert said.startswith(f"home pool-b: {covered} on this host is not {covered} on {HOST} ("), (why, said)
        assert f"mount {HOST}'s {remote.root} at {remote.root} here (NFS with crossmnt" in said, why
