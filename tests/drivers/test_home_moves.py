"""`instance move` between homes, through the services: a real fleet (SQLite, directory storage) whose
node-b keeps its data in a home of its own on another file system (a tmpfs), the real supervisor and
operations, and the fake runtime as a two-node cluster (its tasks answer health checks; starting one
reads the instance's data where the runtime was told it is, stopping one writes a file into it, as
Foundry saves its worlds at exit).

Interruptions: each crash point's state is built by running the move's own steps up to that point (the
journal row, the snapshots, the partial copy) and a new fleet process's services are opened on it; their
recovery, then the supervisor's start, must leave the instance in one home, running once."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundry_fleet.config import FleetConfig, load_config
from foundry_fleet.domain.errors import Conflict, ExternalFailure, InvalidInput
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.runtime.base import Capabilities, NodeInfo, TaskHandle, TaskSpec
from foundry_fleet.runtime.fake import FakeRuntime
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.moves import COMMITTED, COPYING, Moves
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.supervision_records import SupervisionRecords
from foundry_fleet.services.supervisor import SupervisionSettings, Supervisor
from foundry_fleet.storage.homes import HomedStorage
from foundry_fleet.storage.snapshots import PARTIAL
from foundry_fleet.wiring.services import FleetServices, make_backups, open_services
from tests.support.foundry_standin import build_release_zip
from tests.support.homes import mount_tmpfs, unmount

pytest.register_assert_rewrite("tests.support.zfs")

from tests.support.zfs import FilePool, destroy_dataset, zfs  # noqa: E402 (after the rewrite registration)

# The second pool's fixtures, for the ZFS test here.
_DESTINATIONS = itertools.count(1)

pytestmark = pytest.mark.timeout(120)

NODE_HOMES = {"node-a": "fleet", "node-b": "pool-b"}


@dataclass(frozen=True)
class Start:
    node: str
    data_dir: Path
    marker: str | None  # marker.txt as the started task found it


class TwoNodes(FakeRuntime):
    """The fake runtime as a cluster of node-a (the fleet's own home) and node-b (home pool-b)."""

    capabilities = Capabilities(isolation="none", limits=False, needs_image=False, multi_node=True)

    def __init__(self) -> None:
        super().__init__()
        self.placed: dict[str, str] = {}
        self.started: list[Start] = []

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        node = spec.node or "node-a"
        marker = spec.data_dir / "marker.txt"
        self.started.append(Start(node, spec.data_dir, marker.read_text() if marker.is_file() else None))
        self.placed[spec.name] = node
        return await super().start_task(spec)

    async def stop_task(self, handle: TaskHandle, timeout: float, signal: int = signal.SIGTERM) -> None:
        task = self._task(handle)
        if task is not None and task.exit is None:
            (task.spec.data_dir / "saved-at-exit.txt").write_text(f"saved by task {task.id}\n")
        await super().stop_task(handle, timeout, signal)

    async def data_node(self, name: str) -> str | None:
        return self.placed.get(name)

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(name=n, address=f"127.0.0.{i}", healthy=True, status="ready", instances=0,
                         free_memory_mb=1000, storage=home) for i, (n, home) in enumerate(NODE_HOMES.items(), 1)]


@dataclass
class Fleet:
    config: FleetConfig
    services: FleetServices
    runtime: TwoNodes
    supervisor: Supervisor
    ops: Operations

    @property
    def storage(self) -> HomedStorage:
        assert isinstance(self.services.storage, HomedStorage)
        return self.services.storage

    @property
    def moves(self) -> Moves:
        assert self.services.moves is not None
        return self.services.moves

    def events(self, name: str, action: str) -> list[tuple[str, str]]:
        return [(e.outcome, e.message) for e in self.services.events.recent(name, 200) if e.action == action]


@pytest.fixture
def home_b(other_file_system: Path) -> Path:
    """Home pool-b's root: a tmpfs, another file system than the fleet root's."""
    return other_file_system


@pytest.fixture
def config(tmp_path: Path, home_b: Path) -> FleetConfig:
    path = init_fleet(tmp_path / "fleet")
    path.write_text(path.read_text() + f'\n[[nomad.homes]]\nname = "pool-b"\nnodes = ["node-b"]\nroot = "{home_b}"\n')
    config = load_config(path)
    open_services(config).releases.add(str(build_release_zip(tmp_path, ReleaseLayout.NODE, 13, 345)))
    return config


def open_fleet(config: FleetConfig) -> Fleet:
    """The services of one fleet process (as a daemon builds them), with its own runtime."""
    runtime = TwoNodes()
    services = open_services(config, actor="daemon", runtime=runtime)
    services.storage.ensure_layout()
    supervisor = Supervisor(SupervisionRecords(services.sessions, services.storage), runtime,
                            SupervisionSettings.from_config(config), repair=services.repair_interrupted)
    ops = Operations(services.lifecycle(), supervisor, make_backups(services), 20.0, settle_timeout=20.0,
                     moves=services.moves)
    return Fleet(config, services, runtime, supervisor, ops)


async def running_alice(fleet: Fleet, node: str = "node-a") -> None:
    await fleet.ops.create("cli:admin", "alice", "13.345", node=node)
    await fleet.supervisor.wait_settled("alice", 10)
    data = fleet.storage.paths("alice").data
    (data / "marker.txt").write_text("written while on node-a\n")
    os.chown(data / "marker.txt", *(2 * [fleet.services.instances.get("alice").uid or 0]))


def test_a_running_instance_moves_to_a_node_of_another_home_with_all_its_data_and_snapshots(
        config: FleetConfig, home_b: Path) -> None:
    async def scenario() -> None:
        fleet = open_fleet(config)
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            before = await fleet.ops.take_backup("cli:admin", "alice", "before")
            main_root = fleet.storage.home("fleet").paths("alice").root
            assert fleet.runtime.started[-1].node == "node-a"

            moved = await fleet.ops.move("cli:admin", "alice", "node-b")

            assert (moved.outcome, moved.previous, moved.node, moved.now_on) == ("moved", "node-a", "node-b", "node-b")
            assert (moved.previous_home, moved.home, moved.instance.home) == ("fleet", "pool-b", "pool-b")
            assert moved.instance.state == "running" and moved.instance.node == "node-b"
            # Everything the source held is at the target, in order: the snapshot taken before, the move's
            # first snapshot (while it ran), and its final one (after the stop).
            assert moved.copied_snapshots[0] == before.name and len(moved.copied_snapshots) == 3
            assert all(name.startswith("move-") for name in moved.copied_snapshots[1:])
            assert moved.copied_bytes > 0
            assert moved.downtime_seconds is not None and 0 < moved.downtime_seconds < 20
            # Started once more, on node-b, on the data in home pool-b: the marker written on node-a and the
            # file its task saved as it stopped (after the first copy) are both there.
            start = fleet.runtime.started[-1]
            b_data = home_b / "instances" / "alice" / "data"
            assert (start.node, start.data_dir, start.marker) == ("node-b", b_data, "written while on node-a\n")
            assert (b_data / "saved-at-exit.txt").read_text().startswith("saved by task")
            assert len(fleet.runtime.running("alice")) == 1
            assert fleet.services.instances.get("alice").data_dir == str(b_data)
            # Its snapshots, backups and restores work on the home holding it now.
            assert [s.name for s in fleet.storage.snapshots.list("alice")] == list(moved.copied_snapshots)
            assert fleet.storage.home("pool-b").snapshots.names("alice") == list(moved.copied_snapshots)
            after = await fleet.ops.take_backup("cli:admin", "alice", "after")
            assert (home_b / "snapshots" / "alice" / after.name).is_dir()
            # The source's copy is archived, the journal closed, and each outcome recorded.
            assert not main_root.exists()
            archived = list((config.root / "archive").glob("alice-moved-*"))
            assert len(archived) == 1 and (archived[0] / "data" / "marker.txt").is_file()
            assert fleet.moves.unfinished() == []
            moves = fleet.events("alice", "instance.move")
            assert moves[0] == ("info", "started: node node-a (home fleet) -> node node-b (home pool-b)")
            assert moves[1][0] == "ok" and moves[1][1].startswith("committed: node node-a (home fleet) -> node node-b "
                                                                  "(home pool-b); 3 snapshot(s), ")
            finished = fleet.events("alice", "instance.moved")
            assert finished[-1][0] == "ok" and "the old copy is archived at" in finished[-1][1]

            # And back: the fleet's own home still has nothing of alice, so the whole history goes again.
            back = await fleet.ops.move("cli:admin", "alice", "node-a")
            assert (back.outcome, back.home, back.instance.home, back.now_on) == ("moved", "fleet", "fleet", "node-a")
            assert back.copied_snapshots[:3] == moved.copied_snapshots and after.name in back.copied_snapshots
            assert fleet.runtime.started[-1].data_dir == main_root / "data"
            assert fleet.runtime.started[-1].marker == "written while on node-a\n"
            assert not (home_b / "instances" / "alice").exists()
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(scenario())


def test_a_stopped_instance_is_copied_and_committed_at_once_and_runs_there_at_its_next_start(
        config: FleetConfig, home_b: Path) -> None:
    async def scenario() -> None:
        fleet = open_fleet(config)
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            await fleet.ops.stop("cli:admin", "alice")
            starts = len(fleet.runtime.started)
            moved = await fleet.ops.move("cli:admin", "alice", "node-b")
            assert (moved.outcome, moved.home, moved.downtime_seconds) == ("moved", "pool-b", None)
            assert moved.instance.desired == "stopped" and len(fleet.runtime.started) == starts  # not started
            assert (home_b / "instances" / "alice" / "data" / "marker.txt").is_file()
            started = await fleet.ops.start("cli:admin", "alice")
            assert started.state == "running"
            assert fleet.runtime.started[-1].node == "node-b"
            assert fleet.runtime.started[-1].marker == "written while on node-a\n"
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(scenario())


def test_a_move_that_fails_before_its_commit_is_rolled_back_and_the_instance_runs_where_it_was(
        config: FleetConfig, home_b: Path) -> None:
    async def scenario() -> None:
        fleet = open_fleet(config)
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            # More data than home pool-b has room for: the copy fails with the disk's own words.
            unmount(home_b)
            mount_tmpfs(home_b, size="1m")
            fleet.storage.home("pool-b").ensure_layout()
            (fleet.storage.paths("alice").data / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
            with pytest.raises(ExternalFailure) as failed:
                await fleet.ops.move("cli:admin", "alice", "node-b")
            assert "No space left on device" in failed.value.message
            view = fleet.services.instances.get("alice")
            assert (view.home, view.state, view.desired, view.node) == ("fleet", "running", "running", "node-a")
            assert fleet.runtime.started[-1].node == "node-a" and len(fleet.runtime.running("alice")) == 1
            assert not (home_b / "instances" / "alice").exists() and not (home_b / "snapshots" / "alice").exists()
            assert fleet.moves.unfinished() == [] and fleet.ops.busy("alice") is None
            outcome, message = fleet.events("alice", "instance.moved")[-1]
            assert outcome == "failed" and message.startswith("rolled back (") and "No space left" in message
            assert "it stays on node node-a (home fleet)" in message
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(scenario())


def test_the_release_is_installed_at_the_target_while_the_instance_still_runs(
        config: FleetConfig, home_b: Path) -> None:
    """The install in the target home needs nothing stopped, so it stays out of the downtime: it runs
    before the stop, and one that fails is rolled back without the instance ever having stopped."""
    async def scenario() -> None:
        fleet = open_fleet(config)
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            starts = len(fleet.runtime.started)
            install = fleet.moves.install_at_target
            running_at_install: list[int] = []

            def failing(move: object) -> None:
                running_at_install.append(len(fleet.runtime.running("alice")))
                raise ExternalFailure("copying the release into home pool-b failed: No space left on device")

            fleet.moves.install_at_target = failing  # type: ignore[method-assign]
            with pytest.raises(ExternalFailure, match="copying the release"):
                await fleet.ops.move("cli:admin", "alice", "node-b")
            assert running_at_install == [1]
            assert len(fleet.runtime.started) == starts  # never stopped, so never started again
            assert "saved-at-exit.txt" not in os.listdir(fleet.storage.paths("alice").data)
            view = fleet.services.instances.get("alice")
            assert (view.home, view.state, view.node) == ("fleet", "running", "node-a")
            assert not (home_b / "instances" / "alice").exists()

            def spied(move: object) -> None:
                running_at_install.append(len(fleet.runtime.running("alice")))
                install(move)  # type: ignore[arg-type]

            fleet.moves.install_at_target = spied  # type: ignore[method-assign]
            moved = await fleet.ops.move("cli:admin", "alice", "node-b")
            assert running_at_install == [1, 1] and moved.outcome == "moved"
            assert (home_b / "instances" / "alice" / "install").is_dir()
            assert fleet.runtime.started[-1].node == "node-b"
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(scenario())


# Interruptions ---------------------------------------------------------------------------------------

async def crash_during(fleet: Fleet, point: str) -> None:
    """Run alice's move to node-b, step by step as operations.move does, up to `point`; then the process
    "dies" (its tasks are left as a killed daemon leaves them)."""
    moves, backups = fleet.moves, make_backups(fleet.services)
    move = moves.begin("cli:admin", "alice", "fleet", "pool-b", "node-a", "node-b", True)
    first = backups.take("alice", "move")
    if point == "first copy":
        # Half of the first snapshot's tree had arrived, as the target's snapshots receive it.
        half = home_b_of(fleet) / "snapshots" / "alice" / (first.name + PARTIAL)
        half.mkdir(parents=True)
        (half / "marker.txt").write_text("half")
        return
    moves.copy(move, fleet.services.instances.get("alice").uid)
    await fleet.ops._stop_and_wait("cli:admin", "alice", "moving to node node-b")
    if point == "stopped":
        return
    backups.take("alice", "move")
    moves.copy(move, fleet.services.instances.get("alice").uid)
    moves.install_at_target(move)
    moves.commit("cli:admin", move, 2, 1)
    assert point == "committed"


def home_b_of(fleet: Fleet) -> Path:
    return fleet.storage.home("pool-b").paths("alice").root.parent.parent


@pytest.mark.parametrize("point", ["first copy", "stopped"])
def test_a_move_interrupted_before_its_commit_is_rolled_back_at_the_next_start(
        config: FleetConfig, home_b: Path, point: str) -> None:
    async def first_process() -> None:
        fleet = open_fleet(config)
        await fleet.supervisor.start()
        await running_alice(fleet)
        await crash_during(fleet, point)
        assert fleet.moves.get("alice").phase == COPYING  # type: ignore[union-attr]
        assert (home_b / "snapshots" / "alice").is_dir()  # the partial copy
        await fleet.supervisor.shutdown(stop_instances=False)

    async def next_start() -> None:
        fleet = open_fleet(config)
        recovered = fleet.moves.recover("daemon")
        assert [(r.instance, r.outcome) for r in recovered] == [("alice", "rolled back")]
        await fleet.supervisor.start()
        try:
            await fleet.supervisor.wait_settled("alice", 10)
            view = fleet.services.instances.get("alice")
            assert (view.home, view.node, view.desired, view.state) == ("fleet", "node-a", "running", "running")
            assert [(s.node, s.marker) for s in fleet.runtime.started] == [("node-a", "written while on node-a\n")]
            assert not (home_b / "instances" / "alice").exists() and not (home_b / "snapshots" / "alice").exists()
            assert fleet.storage.home("fleet").paths("alice").data.is_dir()
            assert fleet.moves.unfinished() == []
            assert "rolled back (interrupted; rolled back at the daemon's start)" in \
                fleet.events("alice", "instance.moved")[-1][1]
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(first_process())
    asyncio.run(next_start())


def test_a_move_interrupted_after_its_commit_is_finished_at_the_next_start(
        config: FleetConfig, home_b: Path) -> None:
    async def first_process() -> None:
        fleet = open_fleet(config)
        await fleet.supervisor.start()
        await running_alice(fleet)
        await crash_during(fleet, "committed")
        view = fleet.services.instances.get("alice")
        assert (view.home, view.node, view.desired) == ("pool-b", "node-b", DesiredState.STOPPED.value)
        assert fleet.moves.get("alice").phase == COMMITTED  # type: ignore[union-attr]
        await fleet.supervisor.shutdown(stop_instances=False)

    async def next_start() -> None:
        fleet = open_fleet(config)
        recovered = fleet.moves.recover("daemon")
        assert [(r.instance, r.outcome) for r in recovered] == [("alice", "finished")]
        await fleet.supervisor.start()
        try:
            await fleet.supervisor.wait_settled("alice", 10)
            view = fleet.services.instances.get("alice")
            assert (view.home, view.node, view.desired, view.state) == ("pool-b", "node-b", "running", "running")
            b_data = home_b / "instances" / "alice" / "data"
            assert [(s.node, s.data_dir, s.marker) for s in fleet.runtime.started] == [
                ("node-b", b_data, "written while on node-a\n")]
            assert (b_data / "saved-at-exit.txt").is_file()
            assert not fleet.storage.home("fleet").paths("alice").root.exists()
            assert len(list((config.root / "archive").glob("alice-moved-*"))) == 1
            assert fleet.moves.unfinished() == []
            assert "finished at the daemon's start" in fleet.events("alice", "instance.moved")[-1][1]
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)

    asyncio.run(first_process())
    asyncio.run(next_start())


def test_a_move_interrupted_while_stopped_instance_was_copied_leaves_it_stopped(
        config: FleetConfig, home_b: Path) -> None:
    """A stopped instance's move that died while copying: rolled back, and still stopped."""
    fleet = open_fleet(config)
    fleet.services.provisioning.create("cli:admin", "alice", "13.345", start=False)
    moves = fleet.moves
    move = moves.begin("cli:admin", "alice", "fleet", "pool-b", None, "node-b", False)
    make_backups(fleet.services).take("alice", "move")
    moves.copy(move, fleet.services.instances.get("alice").uid)
    again = open_fleet(config)
    assert [(r.instance, r.outcome) for r in again.moves.recover("daemon")] == [("alice", "rolled back")]
    view = again.services.instances.get("alice")
    assert (view.home, view.desired) == ("fleet", "stopped")
    assert not (home_b / "instances" / "alice").exists()


# ZFS homes --------------------------------------------------------------------------------------------

@pytest.fixture
def zfs_config(tmp_path: Path, zfs_base: str, second_zfs_base: str, zfs_pool: FilePool) -> Iterator[FleetConfig]:
    """A ZFS fleet (its datasets in the session's pool) whose home pool-b is a second pool, and a backup
    destination in the first pool that every instance's snapshots are replicated to."""
    destination = f"{zfs_pool.name}/offsite{next(_DESTINATIONS)}"
    path = init_fleet(tmp_path / "fleet", storage="zfs", zfs_base=zfs_base)
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
''')
    config = load_config(path)
    open_services(config).releases.add(str(build_release_zip(tmp_path, ReleaseLayout.NODE, 13, 345)))
    try:
        yield config
    finally:
        destroy_dataset(destination)


def test_on_zfs_the_moved_instance_keeps_its_snapshots_restores_and_replication_in_its_new_home(
        zfs_config: FleetConfig, zfs_base: str, second_zfs_base: str) -> None:
    async def scenario() -> None:
        fleet = open_fleet(zfs_config)
        backups = make_backups(fleet.services)
        assert backups.replication is not None
        await fleet.supervisor.start()
        try:
            await running_alice(fleet)
            before = await fleet.ops.take_backup("cli:admin", "alice", "before")
            sent = backups.replication.run_round(["alice"])
            assert [(r.sent_to, r.error) for r in sent] == [(before.name, "")]

            moved = await fleet.ops.move("cli:admin", "alice", "node-b")

            assert (moved.outcome, moved.home) == ("moved", "pool-b") and moved.copied_bytes > 0
            b_data = f"{second_zfs_base}/instances/alice/data"
            assert zfs_snapshot_names(b_data) == list(moved.copied_snapshots)
            assert moved.copied_snapshots[0] == before.name
            start = fleet.runtime.started[-1]
            assert (start.node, start.marker) == ("node-b", "written while on node-a\n")
            assert zfs("get", "-H", "-o", "value", "mountpoint", b_data).stdout.strip() == str(start.data_dir)
            assert (start.data_dir / "saved-at-exit.txt").is_file()
            # The fleet's own pool has nothing of alice's left but the archive.
            assert zfs("list", "-H", f"{zfs_base}/instances/alice", check=False).returncode != 0
            # Replication goes on from pool-b, incrementally from what the destination already had.
            after = await fleet.ops.take_backup("cli:admin", "alice", "after")
            sent = backups.replication.run_round(["alice"])
            assert [(r.sent_to, r.error) for r in sent] == [(after.name, "")]
            # Backup browsing and restore read and write pool-b.
            view = fleet.storage.snapshots.path("alice", before.name)
            assert (view / "marker.txt").read_text() == "written while on node-a\n"
            restored = await fleet.ops.restore("cli:admin", "alice", before.name)
            assert restored.instance.state == "running"
            assert not (start.data_dir / "saved-at-exit.txt").exists()  # as it was before the move
            assert fleet.runtime.started[-1].data_dir == start.data_dir
        finally:
            await fleet.supervisor.shutdown(stop_instances=True)
            fleet.storage.snapshots.sweep_views(idle_seconds=0)

    asyncio.run(scenario())


def zfs_snapshot_names(dataset: str) -> list[str]:
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r", dataset).stdout
    return [line.split("@", 1)[1] for line in out.splitlines() if line.startswith(dataset + "@")]


def test_an_instance_created_on_a_node_of_another_home_is_laid_out_there(config: FleetConfig, home_b: Path) -> None:
    fleet = open_fleet(config)
    # Someone's files where bob would be laid out in pool-b: never adopted.
    stray = home_b / "instances" / "bob"
    stray.mkdir(parents=True)
    with pytest.raises(Conflict, match=f"^{stray} exists but belongs to no instance of this fleet$"):
        fleet.services.provisioning.create("cli:admin", "bob", "13.345", start=False, node="node-b")
    stray.rmdir()
    created = fleet.services.provisioning.create("cli:admin", "bob", "13.345", start=False, node="node-b")
    assert (created.instance.home, created.instance.node) == ("pool-b", "node-b")
    assert created.instance.data_dir == str(home_b / "instances" / "bob" / "data")
    assert (home_b / "instances" / "bob" / "data" / "Config" / "options.json").is_file()
    assert (home_b / "instances" / "bob" / "install").is_dir()
    assert not fleet.storage.home("fleet").paths("bob").root.exists()
    carol = fleet.services.provisioning.create("cli:admin", "carol", "13.345", start=False, node="node-a")
    assert carol.instance.home == "fleet"


def test_the_daemons_start_check_refuses_instances_in_a_home_fleet_toml_no_longer_lists(
        config: FleetConfig, home_b: Path) -> None:
    fleet = open_fleet(config)
    fleet.services.provisioning.create("cli:admin", "bob", "13.345", start=False, node="node-b")
    fleet.services.homes.check_configured(config.home_names)  # as it is: fine
    without = config.model_copy(update={"nomad": config.nomad.model_copy(update={"homes": []})})
    with pytest.raises(InvalidInput) as refused:
        fleet.services.homes.check_configured(without.home_names)
    assert refused.value.message == ("fleet.toml lists no home for instances bob (home 'pool-b'): their data is "
                                     "there, and the fleet would look for it in the wrong place")
    assert refused.value.hint == ("put those [[nomad.homes]] back in fleet.toml (nothing was changed); the homes "
                                  "it lists now are: fleet")
