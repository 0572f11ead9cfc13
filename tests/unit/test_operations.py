"""One operation at a time per instance: a second one is refused at once, naming what is under way.

A real fleet (SQLite, directory storage, a release in its cache) and the operations service; the
supervisor is a stand-in that holds an operation in its wait for the instance to settle until the test
lets it go, which is where a real stop or upgrade spends its time."""

from __future__ import annotations

import asyncio
import socket

import pytest

from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound, Unsupported
from foundry_fleet.runtime.base import Capabilities, NodeInfo
from foundry_fleet.runtime.fake import FakeRuntime
from foundry_fleet.services.operation_lock import InstanceBusy, OperationLock
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.supervision_records import SupervisionRecords
from foundry_fleet.wiring.services import FleetServices, make_backups
from tests.support.releases import services_with_release


class HeldSupervisor:
    """The supervisor as the operations tell it things; settling waits for `settle`."""

    def __init__(self) -> None:
        self.settle = asyncio.Event()
        self.poked: list[str] = []

    def poke(self, name: str) -> None:
        self.poked.append(name)

    async def wait_settled(self, name: str, timeout: float) -> None:
        await self.settle.wait()

    async def reconcile(self, poke: bool = False) -> None:
        pass

    async def restart(self, name: str) -> None:
        self.poked.append(name)

    async def remove(self, name: str) -> None:
        pass


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetServices:
    services = services_with_release(tmp_path_factory.mktemp("ops"))
    for name in ("alice", "bob"):
        services.provisioning.create("cli:admin", name, "13.345", start=False)
    return services


def _operations(fleet: FleetServices, supervisor: HeldSupervisor) -> Operations:
    return Operations(fleet.lifecycle(), supervisor, make_backups(fleet),  # type: ignore[arg-type]
                      fleet.config.supervisor.start_timeout)


def test_the_lock_names_what_holds_it_and_lets_go() -> None:
    lock = OperationLock()
    with lock.hold("alice", "restoring"):
        assert lock.busy("alice") == "restoring" and lock.busy("bob") is None
        with pytest.raises(InstanceBusy) as refused:
            with lock.hold("alice", "starting"):
                pass
        assert refused.value.message == "alice is restoring" and "try again once it has finished" in refused.value.hint
        assert isinstance(refused.value, Conflict)  # a 409 from the control API, exit 4 from the CLI
    assert lock.busy("alice") is None
    with lock.hold("alice", "starting"):
        pass


def test_a_second_operation_on_a_busy_instance_is_refused_at_once(fleet: FleetServices) -> None:
    async def scenario() -> None:
        supervisor = HeldSupervisor()
        ops = _operations(fleet, supervisor)
        stopping = asyncio.create_task(ops.stop("cli:admin", "alice"))
        await asyncio.sleep(0.2)  # the stop waits for alice to settle, holding her lock
        assert ops.busy("alice") == "stopping"
        for second in (ops.restore("cli:admin", "alice", "manual-x"), ops.take_backup("cli:admin", "alice"),
                       ops.upgrade("cli:admin", "alice", "13.345"), ops.delete("cli:admin", "alice")):
            with pytest.raises(InstanceBusy, match="^alice is stopping$"):
                await asyncio.wait_for(second, 1)
        # Another instance is not held up.
        snap = await asyncio.wait_for(ops.take_backup("cli:admin", "bob", "other"), 30)
        assert snap.name.startswith("other-")
        supervisor.settle.set()
        assert (await stopping).desired == "stopped"
        assert ops.busy("alice") is None
        # Free again: the next operation goes through.
        taken = await asyncio.wait_for(ops.take_backup("cli:admin", "alice", "after"), 30)
        assert taken.name.startswith("after-")

    asyncio.run(scenario())


def test_a_suspended_instance_is_refused_a_start_with_the_reason(fleet: FleetServices) -> None:
    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.settle.set()
        ops = _operations(fleet, supervisor)
        await ops.suspend("cli:admin", "bob", "unpaid")
        with pytest.raises(Conflict, match="bob is suspended: unpaid"):
            await ops.start("discord:1", "bob")
        resumed = await ops.resume("cli:admin", "bob")
        assert resumed.suspended is None and resumed.desired == "running"
        actors = [e.actor for e in fleet.events.recent("bob") if e.action in ("instance.suspend", "instance.resume")]
        assert actors == ["cli:admin", "cli:admin"]  # who asked is recorded with each

    asyncio.run(scenario())


def test_a_restore_of_a_missing_snapshot_stops_nothing(fleet: FleetServices) -> None:
    async def scenario() -> None:
        supervisor = HeldSupervisor()
        ops = _operations(fleet, supervisor)
        before = fleet.instances.get("alice").desired
        with pytest.raises(Exception, match="no-such"):
            await asyncio.wait_for(ops.restore("cli:admin", "alice", "no-such"), 5)
        assert fleet.instances.get("alice").desired == before and supervisor.poked == []
        assert ops.busy("alice") is None

    asyncio.run(scenario())


class SeenEdge:
    """The edge as the operations sync it: what it would show for each site, each time."""

    def __init__(self, fleet: FleetServices) -> None:
        self.fleet = fleet
        self.shown: list[dict[str, bool]] = []

    async def sync(self) -> None:
        self.shown.append({s.name: s.restoring for s in self.fleet.sites()})


def test_a_restore_is_on_the_edge_while_it_runs_and_gone_once_it_is_done(fleet: FleetServices) -> None:
    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.settle.set()
        edge = SeenEdge(fleet)
        ops = Operations(fleet.lifecycle(), supervisor, make_backups(fleet),  # type: ignore[arg-type]
                         fleet.config.supervisor.start_timeout, edge)
        fleet.sites.busy = ops.busy
        try:
            snap = await ops.take_backup("cli:admin", "alice", "before")
            edge.shown.clear()
            await asyncio.wait_for(ops.restore("cli:admin", "alice", snap.name), 30)
        finally:
            fleet.sites.busy = lambda _name: None
        # Told first that it is being restored (players see that, not "closed"); last, that it is not.
        assert edge.shown[0] == {"alice": True, "bob": False}
        assert edge.shown[-1] == {"alice": False, "bob": False}

    asyncio.run(scenario())


class Nodes:
    """A runtime as placement by hand asks it: what its nodes are now."""

    def __init__(self, name: str, multi_node: bool, nodes: list[NodeInfo]) -> None:
        self.name = name
        self.capabilities = Capabilities(isolation="none", limits=False, needs_image=False, multi_node=multi_node)
        self._nodes = nodes

    async def nodes(self) -> list[NodeInfo]:
        return self._nodes


def _node(name: str, status: str = "ready") -> NodeInfo:
    return NodeInfo(name=name, address="10.0.0.1", healthy=status == "ready", status=status, instances=0,
                    free_memory_mb=1000)


def test_a_node_asked_for_at_create_is_checked_against_the_runtime_and_kept(fleet: FleetServices) -> None:
    cluster = Nodes("nomad", True, [_node("node-a"), _node("node-b", "down"), _node("node-c")])

    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.runtime = cluster  # type: ignore[attr-defined]
        ops = _operations(fleet, supervisor)
        with pytest.raises(NotFound) as unknown:
            await ops.create("cli:admin", "carol", "13.345", start=False, node="node-x")
        assert unknown.value.message == "the nomad runtime has no node named 'node-x'"
        assert unknown.value.hint == "the ready nodes are: node-a, node-c"
        with pytest.raises(Conflict) as down:
            await ops.create("cli:admin", "carol", "13.345", start=False, node="node-b")
        assert down.value.message == "node node-b is down: no new instance can be placed there now"
        assert down.value.hint == "the ready nodes are: node-a, node-c"
        created = await ops.create("cli:admin", "carol", "13.345", start=False, node="node-c")
        assert created.instance.node == "node-c"

    asyncio.run(scenario())
    assert fleet.instances.get("carol").node == "node-c"
    records = SupervisionRecords(fleet.sessions, fleet.storage)
    assert records.launch_plan("carol").node == "node-c" and records.launch_plan("alice").node is None


def test_a_single_host_runtime_takes_no_node_but_its_own(fleet: FleetServices) -> None:
    here = FakeRuntime()

    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.runtime = here  # type: ignore[attr-defined]
        ops = _operations(fleet, supervisor)
        with pytest.raises(Unsupported) as elsewhere:
            await ops.create("cli:admin", "dave", "13.345", start=False, node="node-b")
        assert elsewhere.value.message == (f"the fake runtime runs every instance on this host ({socket.gethostname()}): "
                                           "it cannot place one on 'node-b'")
        assert "nomad runtime" in (elsewhere.value.hint or "")
        assert (await ops.create("cli:admin", "dave", "13.345", start=False, node=socket.gethostname())).instance.node \
            == socket.gethostname()

    asyncio.run(scenario())


class Cluster(Nodes):
    """A multi-node runtime as `instance move` asks it: its nodes, and where each instance's data is."""

    def __init__(self, nodes: list[NodeInfo], data: dict[str, str]) -> None:
        super().__init__("nomad", True, nodes)
        self.data = data

    async def data_node(self, name: str) -> str | None:
        return self.data.get(name)


def _stored(name: str, status: str = "ready", storage: str = "shared root") -> NodeInfo:
    return NodeInfo(name=name, address="10.0.0.1", healthy=status == "ready", status=status, instances=0,
                    free_memory_mb=1000, storage=storage)


def test_a_move_is_checked_against_the_runtime_and_a_stopped_instance_is_only_re_pinned(
        fleet: FleetServices) -> None:
    fleet.provisioning.create("cli:admin", "erin", "13.345", start=False)
    cluster = Cluster([_stored("node-a"), _stored("node-b", "down"), _stored("node-c"),
                       _stored("node-d", storage="node-d's own pool")], {"erin": "node-a"})

    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.runtime = cluster  # type: ignore[attr-defined]
        ops = _operations(fleet, supervisor)
        with pytest.raises(NotFound) as unknown:
            await ops.move("cli:admin", "erin", "node-x")
        assert unknown.value.message == "the nomad runtime has no node named 'node-x'"
        assert unknown.value.hint == "the ready nodes are: node-a, node-c, node-d"
        with pytest.raises(Conflict) as down:
            await ops.move("cli:admin", "erin", "node-b")
        assert down.value.message.startswith("node node-b is down")
        with pytest.raises(Unsupported) as elsewhere:
            await ops.move("cli:admin", "erin", "node-d")
        assert elsewhere.value.message == (
            "moving erin from node node-a to node node-d would need its data sent from one node's storage to the "
            "other's, and this fleet has no [[nomad.homes]] to send it between")
        assert "[[nomad.homes]]" in (elsewhere.value.hint or "")
        with pytest.raises(NotFound):
            await ops.move("cli:admin", "nobody", "node-c")
        assert fleet.instances.get("erin").node is None  # nothing refused changed anything

        same = await ops.move("cli:admin", "erin", "node-a")
        assert (same.outcome, same.previous, same.now_on) == ("already there", "node-a", "node-a")
        assert [e for e in fleet.events.recent("erin") if e.action == "instance.move"] == []
        pinned = await ops.move("cli:admin", "erin", "node-c")
        assert (pinned.outcome, pinned.previous, pinned.node) == ("pinned", "node-a", "node-c")
        assert pinned.instance.node == "node-c" and pinned.instance.desired == "stopped"
        assert supervisor.poked == []  # stopped: nothing restarts, it moves at its next start
        moves = [e for e in fleet.events.recent("erin") if e.action == "instance.move"]
        assert [(e.actor, e.message) for e in moves] == [("cli:admin", "node-a -> node-c")]
        assert SupervisionRecords(fleet.sessions, fleet.storage).get("erin").node == "node-c"
        # Back where its data is, before it moved: the pending move is called off, nothing restarts.
        back = await ops.move("cli:admin", "erin", "node-a")
        assert back.outcome == "already there" and fleet.instances.get("erin").node == "node-a"

    asyncio.run(scenario())


def test_a_running_instance_is_restarted_by_its_move_and_says_where_it_ended_up(fleet: FleetServices) -> None:
    fleet.provisioning.create("cli:admin", "frank", "13.345", start=True)
    cluster = Cluster([_stored("node-a"), _stored("node-c")], {"frank": "node-a"})

    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.runtime = cluster  # type: ignore[attr-defined]
        supervisor.settle.set()
        ops = _operations(fleet, supervisor)
        moved = await ops.move("cli:admin", "frank", "node-c")
        assert supervisor.poked == ["frank"]  # restarted: its start moves it
        # This supervisor runs nothing: frank did not come up on node-c, and its data stayed put.
        assert (moved.outcome, moved.now_on, moved.instance.node) == ("not moved", "node-a", "node-c")
        events = [(e.action, e.message) for e in fleet.events.recent("frank")]
        assert ("instance.start", "moving to node node-c") in events and ("instance.move", "node-a -> node-c") in events

    asyncio.run(scenario())


def test_a_single_host_runtime_has_nothing_to_move(fleet: FleetServices) -> None:
    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.runtime = FakeRuntime()  # type: ignore[attr-defined]
        ops = _operations(fleet, supervisor)
        with pytest.raises(Unsupported) as refused:
            await ops.move("cli:admin", "bob", socket.gethostname())
        assert refused.value.message == "the fake runtime runs every instance on this host: there is no other node " \
                                        "to move bob to"
        assert "nomad runtime" in (refused.value.hint or "")

    asyncio.run(scenario())


class SleepySupervisor(HeldSupervisor):
    """The supervisor as a wake sees it: whether the instance is on its way to sleep, and the wakes."""

    def __init__(self, falling_asleep: bool) -> None:
        super().__init__()
        self.is_falling_asleep = falling_asleep
        self.woken: list[str] = []

    def falling_asleep(self, name: str) -> bool:
        return self.is_falling_asleep

    def wake(self, name: str) -> bool:
        self.woken.append(name)
        return True


def _set_state(fleet: FleetServices, name: str, state: str) -> None:
    from sqlalchemy import update

    from foundry_fleet.store.models import Instance

    with fleet.sessions.begin() as s:
        s.execute(update(Instance).where(Instance.name == name).values(state=state, desired="running"))


@pytest.mark.parametrize(("state", "falling_asleep", "woken"), [
    ("sleeping", False, True),
    ("stopping", True, True),  # a visit while it is being put to sleep: started again once down
    ("stopping", False, False),  # stopping for a restart (or a stop): not the visit's business
    ("running", False, False),
    ("failed", False, False),
])
def test_a_visit_wakes_an_instance_asleep_or_falling_asleep_and_nothing_else(
        fleet: FleetServices, state: str, falling_asleep: bool, woken: bool) -> None:
    async def scenario() -> None:
        supervisor = SleepySupervisor(falling_asleep)
        ops = _operations(fleet, supervisor)
        _set_state(fleet, "alice", state)
        before = len([e for e in fleet.events.recent("alice", 500) if e.action == "instance.wake"])
        assert await ops.wake("visitor", "alice") is None
        assert supervisor.woken == (["alice"] if woken else [])
        wakes = [e for e in fleet.events.recent("alice", 500) if e.action == "instance.wake"]
        assert len(wakes) == before + (1 if woken else 0)
        assert not woken or (wakes[-1].actor, wakes[-1].outcome) == ("visitor", "ok")

    try:
        asyncio.run(scenario())
    finally:
        _set_state(fleet, "alice", "stopped")


def _set_state(fleet: FleetServices, name: str, state: str) -> None:
    from foundry_fleet.services.instance_views import instance_row

    with fleet.sessions.begin() as s:
        instance_row(s, name).state = state


def test_a_license_set_after_create_is_written_for_foundry_and_a_running_instance_restarted(
        fleet: FleetServices) -> None:
    import json
    import stat
    from pathlib import Path

    fleet.provisioning.create("cli:admin", "gina", "13.345", start=False)
    assert fleet.instances.get("gina").license == "missing"

    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.settle.set()
        ops = _operations(fleet, supervisor)
        stopped = await ops.set_license("cli:admin", "gina", "abcd-efgh-ijkl-mnop-qrst-uvwx")
        assert supervisor.poked == [] and stopped.license == "set"  # stopped: read at its next start
        written = Path(stopped.data_dir, "Config", "license.json")
        assert json.loads(written.read_text()) == {"license": "ABCDEFGHIJKLMNOPQRSTUVWX"}
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
        _set_state(fleet, "gina", "running")
        await ops.set_license("cli:admin", "gina", "ABCD-EFGH-IJKL-MNOP-QRST-UVWY")
        assert supervisor.poked == ["gina"]
        with pytest.raises(InvalidInput):
            await ops.set_license("cli:admin", "gina", "not a key")
        assert ("instance.license", "license key set") in [(e.action, e.message) for e in fleet.events.recent("gina")]

    asyncio.run(scenario())


def test_the_admin_password_is_generated_once_or_set_and_only_its_hash_kept(fleet: FleetServices) -> None:
    from pathlib import Path

    from foundry_fleet.domain.admin_key import verify_admin_password

    fleet.provisioning.create("cli:admin", "hana", "13.345", start=False)

    async def scenario() -> None:
        supervisor = HeldSupervisor()
        supervisor.settle.set()
        ops = _operations(fleet, supervisor)
        view, generated = await ops.reset_admin_password("cli:admin", "hana", None)
        admin_txt = Path(view.data_dir, "Config", "admin.txt")
        assert generated and verify_admin_password(generated, admin_txt.read_text())
        assert generated not in admin_txt.read_text() and supervisor.poked == []
        _set_state(fleet, "hana", "running")
        view, generated = await ops.reset_admin_password("cli:admin", "hana", "correct horse battery")
        assert generated is None and verify_admin_password("correct horse battery", admin_txt.read_text())
        assert supervisor.poked == ["hana"]
        with pytest.raises(InvalidInput):
            await ops.reset_admin_password("cli:admin", "hana", "short")

    asyncio.run(scenario())
