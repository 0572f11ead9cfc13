"""The supervisor on the fake runtime: health checks, start timeout, backoff, crash loops,
re-attaching after a control-plane restart and stop escalation, each in well under a second.

The database is a real SQLite store; the tasks are the fake runtime's, each with a real HTTP status
endpoint, so health checks run as in production, through the runtime's address().
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.crash_policy import CrashPolicy
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.runtime.base import NodeInfo
from foundry_fleet.runtime.fake import FAKE_PIDS, FakeRuntime
from foundry_fleet.services.supervision_records import SupervisionRecords
from foundry_fleet.services.supervisor import SupervisionSettings, Supervisor
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import EventRow, Instance, Release
from tests.support.harness import wait_until_async

pytestmark = pytest.mark.timeout(20)

# Quick settings: every wait below is for a condition, and these bound how long it takes.
QUICK = SupervisionSettings(
    crash_policy=CrashPolicy(backoff_initial=0.05, backoff_max=0.2, max_crashes=3, window=60.0, stable_after=60.0),
    health_interval=0.02,
    health_timeout=0.5,
    health_failures=3,
    start_timeout=0.3,
    stop_timeout=0.15,
    starting_poll=0.01,
)


@dataclass
class World:
    sessions: sessionmaker[Session]
    records: SupervisionRecords
    runtime: FakeRuntime
    settings: SupervisionSettings

    def add(self, name: str, desired: str = "running", state: str = "stopped") -> None:
        """An instance as creation leaves it. Its port is a privileged one nothing listens on, so a
        health check that did not go through the runtime's address() would fail."""
        with self.sessions() as s, s.begin():
            port = 1 + len(s.scalars(select(Instance.id)).all())
            s.add(Instance(name=name, release_version="13.345", port=port, desired=desired, state=state,
                           state_reason="", restarts=0, crash_times=[]))

    def row(self, name: str) -> Instance:
        with self.sessions() as s:
            row = s.scalar(select(Instance).where(Instance.name == name))
            assert row is not None
            return row

    def set_desired(self, name: str, desired: str) -> None:
        with self.sessions() as s, s.begin():
            s.scalar(select(Instance).where(Instance.name == name)).desired = desired  # type: ignore[union-attr]

    def actions(self, name: str) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(EventRow.action).where(EventRow.target == name).order_by(EventRow.id)))

    def messages(self, name: str, action: str) -> list[str]:
        with self.sessions() as s:
            return list(s.scalars(select(EventRow.message).where(EventRow.target == name, EventRow.action == action)))

    def supervisor(self) -> Supervisor:
        return Supervisor(self.records, self.runtime, self.settings)


@pytest.fixture
def world(tmp_path: Path) -> World:
    sessions = open_database(tmp_path / "state" / "fleet.sqlite")
    with sessions() as s, s.begin():
        s.add(Release(version="13.345", generation=13, build=345, layout="node", entry="main.js", sha256="",
                      zip_bytes=0, unpacked_bytes=0, path=str(tmp_path / "releases"), source="test"))
    settings = replace(QUICK, log_dir_of=lambda name: tmp_path / "logs" / name)
    records = SupervisionRecords(sessions, DirectoryStorage(tmp_path))
    return World(sessions, records, FakeRuntime(), settings)


async def until(condition: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    # A fine interval: the fake runtime's timings are tens of milliseconds.
    await wait_until_async(condition, timeout, what, interval=0.005)


def run(world: World, scenario: Callable[[Supervisor], Awaitable[None]]) -> None:
    """Run `scenario` against a started supervisor; shut it down (stopping instances) afterwards."""

    async def main() -> None:
        supervisor = world.supervisor()
        await supervisor.start()
        try:
            await scenario(supervisor)
        finally:
            await supervisor.shutdown(stop_instances=True)

    asyncio.run(main())


def state_is(world: World, name: str, state: str) -> Callable[[], bool]:
    return lambda: world.row(name).state == state


def test_a_started_instance_is_running_once_its_address_answers(world: World) -> None:
    world.add("alice")

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        (task,) = world.runtime.running("alice")
        row = world.row("alice")
        # What the runtime's address() said is recorded for the edge, with the pid for display.
        assert (row.address, row.pid, row.state_reason) == (f"127.0.0.1:{task.port}", FAKE_PIDS + task.id, "healthy")
        assert row.task == {"driver": "fake", "name": "alice", "started_at": task.started_at, "state": {"id": task.id}}
        assert world.actions("alice") == ["instance.spawn", "instance.healthy"]
        # Its log comes through the runtime too.
        assert [line async for line in supervisor.logs("alice", 10)] == [f"listening on {task.port}"]

    run(world, scenario)
    row = world.row("alice")
    assert (row.state, row.task, row.address, row.pid) == ("stopped", None, None, None)


def test_repeated_failed_health_checks_restart_the_instance(world: World) -> None:
    world.add("alice")

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        world.runtime.behave("alice", healthy=False)  # hangs: its process lives, it answers 503
        await until(lambda: len(world.runtime.starts_of("alice")) == 2, "a second start")
        first = next(t for t in world.runtime.tasks.values() if t.id == 1)
        assert first.signals == [signal.SIGTERM] and first.exit is not None
        assert world.messages("alice", "instance.crashed") == ["crashed (3 health checks failed in a row); restarting in 0.05s"]
        world.runtime.behave("alice", healthy=True)
        await until(state_is(world, "alice", "running"), "alice to run again")
        row = world.row("alice")
        assert row.restarts == 1 and len(row.crash_times) == 1
        assert "instance.crashed" in world.actions("alice")

    run(world, scenario)


def test_an_instance_not_healthy_within_the_start_timeout_is_restarted(world: World) -> None:
    world.add("alice")
    world.runtime.behave("alice", healthy=False)

    async def scenario(supervisor: Supervisor) -> None:
        began = time.monotonic()
        await until(lambda: "not healthy within 0.3s" in world.row("alice").state_reason, "the start timeout")
        assert time.monotonic() - began >= QUICK.start_timeout  # a lower bound: no load can break it
        (first,) = world.runtime.tasks.values()
        assert first.exit is not None and first.signals == [signal.SIGTERM]
        world.runtime.behave("alice", healthy=True)
        await until(state_is(world, "alice", "running"), "the restarted alice to run")
        assert len(world.runtime.starts_of("alice")) == 2

    run(world, scenario)


def test_restarts_after_crashes_back_off_exponentially(world: World) -> None:
    world.add("alice")
    world.runtime.behave("alice", exit_after=0.0, exit_code=3)  # dies at once, every time

    async def scenario(supervisor: Supervisor) -> None:
        await until(lambda: len(world.runtime.starts_of("alice")) == 3, "three starts")
        starts = world.runtime.starts_of("alice")
        # backoff_initial, then twice that: restarts never come sooner.
        assert starts[1] - starts[0] >= 0.05
        assert starts[2] - starts[1] >= 0.1
        assert world.messages("alice", "instance.crashed")[:2] == [
            "crashed (exited with code 3); restarting in 0.05s", "crashed (exited with code 3); restarting in 0.1s"]

    run(world, scenario)


def test_a_crash_loop_leaves_the_instance_failed_and_stops_restarting_it(world: World) -> None:
    world.add("alice")
    world.runtime.behave("alice", exit_after=0.0, exit_code=3)

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "failed"), "alice to fail")
        row = world.row("alice")
        assert row.state_reason.startswith("crash loop: 4 crashes in 1 min (last: exited with code 3)")
        assert (row.task, row.address, len(row.crash_times)) == (None, None, 4)
        assert len(world.runtime.starts_of("alice")) == 4  # max_crashes restarts after the first start
        # Settled, with no backoff pending: only a start request wakes it again.
        assert supervisor.get("alice").settled.is_set() and not world.runtime.running("alice")
        assert world.actions("alice")[-1] == "instance.failed"
        world.set_desired("alice", "running")
        supervisor.poke("alice")
        await supervisor.wait_settled("alice", 1.0)
        assert len(world.runtime.starts_of("alice")) == 4 and world.row("alice").state == "failed"

    run(world, scenario)


def test_a_control_plane_restart_reattaches_without_starting_twice(world: World) -> None:
    world.add("alice")
    world.add("bob")
    world.runtime.behave("bob", survives_restart=False)

    async def main() -> None:
        first = world.supervisor()
        await first.start()
        await until(lambda: world.row("alice").state == world.row("bob").state == "running", "both to run")
        address = world.row("alice").address
        await first.shutdown(stop_instances=False)  # the daemon goes; its instances stay
        assert world.row("alice").state == "running" and len(world.runtime.running("alice")) == 1

        second = world.supervisor()
        await second.start()
        try:
            await until(lambda: world.row("alice").state_reason == "healthy" and "instance.reattach" in
                        world.actions("alice"), "alice to be re-attached and healthy")
            assert len(world.runtime.starts_of("alice")) == 1 and world.row("alice").address == address
            # bob's task did not survive: said so, then started afresh.
            await until(lambda: len(world.runtime.starts_of("bob")) == 2, "bob to start again")
            assert "instance.lost" in world.actions("bob")
            await until(state_is(world, "bob", "running"), "bob to run")
        finally:
            await second.shutdown(stop_instances=True)

    asyncio.run(main())


def test_a_stop_escalates_to_sigkill_when_sigterm_is_ignored(world: World) -> None:
    world.add("alice")
    world.runtime.behave("alice", ignores_sigterm=True)

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        (task,) = world.runtime.running("alice")
        world.set_desired("alice", "stopped")
        began = time.monotonic()
        supervisor.poke("alice")
        await until(state_is(world, "alice", "stopped"), "alice to stop")
        assert time.monotonic() - began >= QUICK.stop_timeout  # SIGTERM had its chance first
        assert task.signals == [signal.SIGTERM, signal.SIGKILL] and task.exit is not None
        assert task.exit.signal == signal.SIGKILL and task.destroyed
        row = world.row("alice")
        assert (row.task, row.address, row.pid, row.restarts) == (None, None, None, 0)
        assert world.actions("alice")[-1] == "instance.stopped"

    run(world, scenario)


def test_a_task_that_cannot_start_fails_the_instance_with_the_drivers_reason(world: World) -> None:
    world.add("alice")
    world.runtime.behave("alice", start_error="no node binary fits")
    world.runtime.note_event("alice", "strays", "stopped 1 unrecorded process(es)")

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "failed"), "alice to fail")
        assert "no node binary fits" in world.row("alice").state_reason
        # What the driver did on the instance's behalf is told as an event of its own.
        assert world.actions("alice") == ["instance.strays", "instance.start"]

    run(world, scenario)


class ForgetfulRuntime(FakeRuntime):
    """A runtime whose tasks can outlive the daemon unrecorded (as containers do): its forget_unknown finds one."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[set[str], set[str]]] = []  # (known, what was running then)

    async def forget_unknown(self, known: set[str]) -> list[str]:
        from foundry_fleet.runtime.base import TaskEvent

        running = {name for name in ("alice", "bob", "gone") if self.running(name)}
        self.asked.append((set(known), running))
        self._events.append(TaskEvent("gone", "strays", "removed container of an instance nobody knows"))
        return ["gone"]


def test_a_runtime_that_can_list_its_tasks_is_asked_to_forget_unknown_ones_before_anything_starts(
        world: World) -> None:
    world.add("alice")
    world.add("bob", desired="stopped")
    runtime = ForgetfulRuntime()
    world.runtime = runtime

    async def main() -> None:
        first = world.supervisor()
        await first.start()
        await until(state_is(world, "alice", "running"), "alice to run")
        await first.shutdown(stop_instances=False)
        second = world.supervisor()
        await second.start()
        try:
            # Asked once per start, before any instance starts; alice's recorded task is known.
            assert runtime.asked == [(set(), set()), ({"alice"}, {"alice"})]
            assert world.messages("gone", "instance.strays") == ["removed container of an instance nobody knows"] * 2
        finally:
            await second.shutdown(stop_instances=True)

    asyncio.run(main())


def test_a_task_the_runtime_moves_is_recorded_at_its_new_address_without_a_restart(world: World) -> None:
    world.add("alice")
    updates: list[str | None] = []
    world.records.changed = lambda: updates.append(world.row("alice").address)

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        old = world.row("alice").address
        await world.runtime.move("alice")  # a cluster rescheduled it: same task, another place
        (task,) = world.runtime.running("alice")
        new = f"127.0.0.1:{task.port}"
        await until(lambda: world.row("alice").address == new, "the new address to be recorded")
        row = world.row("alice")
        assert (row.state, len(world.runtime.starts_of("alice")), row.restarts) == ("running", 1, 0)
        assert world.messages("alice", "instance.moved") == [f"moved from {old} to {new}"]
        assert new in updates  # the edge was told (it re-reads the address on every change)
        # It keeps answering health checks at the new place, and a second move is followed as well.
        await world.runtime.move("alice")
        (task,) = world.runtime.running("alice")
        await until(lambda: world.row("alice").address == f"127.0.0.1:{task.port}", "the second move")
        await asyncio.sleep(0.1)  # several health checks at the new address
        assert world.row("alice").state == "running" and len(world.runtime.starts_of("alice")) == 1

    run(world, scenario)


def test_an_exit_after_the_runtimes_own_restarts_fails_the_instance_at_once(world: World) -> None:
    world.add("alice")

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        world.runtime.give_up("alice", "Nomad gave up after 2 restarts: exited with code 3")
        await until(state_is(world, "alice", "failed"), "alice to fail")
        row = world.row("alice")
        assert row.state_reason == "Nomad gave up after 2 restarts: exited with code 3"
        assert (row.task, row.address, row.restarts) == (None, None, 0)
        await asyncio.sleep(0.2)  # several backoffs' worth: no restart comes
        assert len(world.runtime.starts_of("alice")) == 1 and not world.runtime.running("alice")
        assert world.actions("alice")[-1] == "instance.failed" and supervisor.get("alice").settled.is_set()

    run(world, scenario)


def test_the_launch_plan_names_the_instances_own_host_then_its_extra_ones(world: World, tmp_path: Path) -> None:
    from foundry_fleet.services.supervisor import build_task_spec

    world.add("alice")
    with world.sessions() as s, s.begin():
        s.scalar(select(Instance).where(Instance.name == "alice")).extra_hosts = [  # type: ignore[union-attr]
            "vtt.example.org", "alice.fleet.test"]
    records = SupervisionRecords(world.sessions, DirectoryStorage(tmp_path), own_host=lambda n: f"{n}.fleet.test")
    assert build_task_spec(world.settings, records, "alice").hosts == ("alice.fleet.test", "vtt.example.org")
    assert build_task_spec(world.settings, world.records, "alice").hosts == ("vtt.example.org", "alice.fleet.test")


def test_a_runtime_that_cannot_start_it_now_is_retried_with_backoff_for_as_long_as_it_takes(world: World) -> None:
    world.add("alice")
    world.runtime.behave("alice", start_unavailable="node-a, which holds the data of alice, is down")

    async def scenario(supervisor: Supervisor) -> None:
        await until(lambda: len(world.runtime.starts_of("alice")) == 2, "a second try")
        row = world.row("alice")
        assert row.state == "starting" and row.state_reason.startswith(
            "waiting for the runtime (node-a, which holds the data of alice, is down); trying again in ")
        world.runtime.behave("alice", start_unavailable=None)  # the node is back
        await until(state_is(world, "alice", "running"), "alice to run")
        # A runtime that stays away is no crash loop: the instance waits, never failed, and nothing of
        # it counts as a crash; it starts as soon as the runtime answers.
        world.add("bob")
        world.runtime.behave("bob", start_unavailable="Nomad at http://nomad:4646 did not answer")
        await supervisor.reconcile()
        policy = world.settings.crash_policy
        await until(lambda: len(world.runtime.starts_of("bob")) > policy.max_crashes + 1, "more tries than a loop allows",
                    timeout=10)
        row = world.row("bob")
        assert row.state == "starting" and row.state_reason.startswith("waiting for the runtime (Nomad at ")
        assert row.crash_times == [] and row.restarts == 0
        assert world.actions("bob").count("instance.start") == 1, "one event per outage, not one per try"
        world.runtime.behave("bob", start_unavailable=None)
        await until(state_is(world, "bob", "running"), "bob to run once the runtime answers", timeout=10)

    run(world, scenario)


def test_failed_health_checks_of_a_task_its_runtime_is_putting_back_do_not_restart_it(world: World) -> None:
    world.add("alice")

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        world.runtime.behave("alice", healthy=False, replacing=True)  # its node went away
        await asyncio.sleep(0.3)  # many failed checks' worth
        assert len(world.runtime.starts_of("alice")) == 1 and world.row("alice").state == "running"
        world.runtime.behave("alice", healthy=True, replacing=False)
        await world.runtime.move("alice")  # placed back, elsewhere
        (task,) = world.runtime.running("alice")
        await until(lambda: world.row("alice").address == f"127.0.0.1:{task.port}", "the new address")
        world.runtime.behave("alice", healthy=False)  # running, yet not answering: that is a hang
        await until(lambda: len(world.runtime.starts_of("alice")) == 2, "a restart")

    run(world, scenario)


def test_a_runtime_that_cannot_answer_after_a_restart_keeps_the_task_and_reattaches_once_it_answers(world: World) -> None:
    world.add("alice")

    async def main() -> None:
        first = world.supervisor()
        await first.start()
        await until(state_is(world, "alice", "running"), "alice to run")
        await first.shutdown(stop_instances=False)
        # Its cluster is away when the control plane comes back: the recorded task is kept as it is
        # (still running there, still routed to), asked again until the cluster answers, and then
        # re-attached: no crash counted, never a second task beside it.
        recorded = world.row("alice")
        world.runtime.behave("alice", unreachable="Nomad at http://nomad:4646 did not answer")
        second = world.supervisor()
        await second.start()
        try:
            await asyncio.sleep(0.3)  # many backoffs' worth
            row = world.row("alice")
            assert (row.state, row.address, row.task, row.restarts) == \
                ("running", recorded.address, recorded.task, recorded.restarts)
            assert "instance.crashed" not in world.actions("alice")
            assert len(world.runtime.starts_of("alice")) == 1
            world.runtime.behave("alice", unreachable=None)
            await until(lambda: world.actions("alice")[-1:] == ["instance.healthy"]
                        and "instance.reattach" in world.actions("alice"), "alice re-attached")
            assert world.row("alice").state == "running" and world.row("alice").restarts == recorded.restarts
            assert len(world.runtime.running("alice")) == 1 and len(world.runtime.starts_of("alice")) == 1
        finally:
            await second.shutdown(stop_instances=True)

    asyncio.run(main())


class KeepingRuntime(FakeRuntime):
    """A runtime that keeps something of each instance besides its task (a cluster's volume
    registrations): it tells what it released, and fails while its cluster is away."""

    def __init__(self) -> None:
        super().__init__()
        self.away = False
        self.running_when_forgotten: list[tuple[str, bool]] = []

    async def forget_instance(self, name: str) -> None:
        from foundry_fleet.domain.errors import ExternalFailure
        from foundry_fleet.runtime.base import TaskEvent

        if self.away:
            raise ExternalFailure("Nomad at http://127.0.0.1:4646 did not answer", "is Nomad running?")
        self.running_when_forgotten.append((name, bool(self.running(name))))
        self._events.append(TaskEvent(name, "released", "deregistered its host volumes"))


def test_removing_an_instance_releases_what_the_runtime_keeps_once_its_task_is_gone(world: World) -> None:
    world.add("alice")
    runtime = KeepingRuntime()
    world.runtime = runtime

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        await supervisor.remove("alice")
        assert runtime.running_when_forgotten == [("alice", False)]  # after the task, never before
        assert world.messages("alice", "instance.released") == ["deregistered its host volumes"]
        # The cluster away: the removal fails, saying so (deleting again finishes it).
        world.add("bob", desired="stopped")
        await supervisor.reconcile()
        runtime.away = True
        with pytest.raises(FleetError) as info:
            await supervisor.remove("bob")
        assert "did not answer" in info.value.message

    run(world, scenario)


def test_instances_a_crash_left_half_deleted_are_released_when_the_supervisor_starts(world: World) -> None:
    runtime = KeepingRuntime()
    world.runtime = runtime

    async def main() -> None:
        supervisor = Supervisor(world.records, runtime, world.settings, repair=lambda: ["gone", "halfmade"])
        await supervisor.start()
        await supervisor.shutdown(stop_instances=True)
        assert [name for name, _ in runtime.running_when_forgotten] == ["gone", "halfmade"]
        runtime.away = True  # then, a failure is an event; the supervisor still starts
        supervisor = Supervisor(world.records, runtime, world.settings, repair=lambda: ["later"])
        await supervisor.start()
        await supervisor.shutdown(stop_instances=True)
        assert world.actions("later") == ["instance.leftovers"]

    asyncio.run(main())


class ClusterRuntime(FakeRuntime):
    """The fake runtime as a cluster: each instance's data is on a node, and a start takes it to the
    node asked for (spec.node), as the nomad runtime moves its volumes."""

    capabilities = replace(FakeRuntime.capabilities, multi_node=True)

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str] = {}
        self.down: set[str] = set()

    async def nodes(self) -> list[NodeInfo]:
        return [NodeInfo(name=n, address="127.0.0.1", healthy=n not in self.down, status="down" if n in self.down
                         else "ready", instances=0, free_memory_mb=None) for n in ("node-a", "node-b")]

    async def start_task(self, spec):  # type: ignore[no-untyped-def]
        if spec.node is not None:
            self.data[spec.name] = spec.node
        return await super().start_task(spec)

    async def data_node(self, name: str) -> str | None:
        return self.data.get(name)


def test_a_reattached_task_whose_data_is_not_on_its_desired_node_is_restarted_there(world: World) -> None:
    """A move the control plane died in before restarting the instance: the next one restarts it."""
    world.runtime = ClusterRuntime()
    world.add("alice")
    world.add("bob")

    async def main() -> None:
        first = world.supervisor()
        await first.start()
        await until(lambda: world.row("alice").state == world.row("bob").state == "running", "both to run")
        world.runtime.data.update(alice="node-a", bob="node-a")
        await first.shutdown(stop_instances=False)
        with world.sessions() as s, s.begin():  # alice's move was stored; the daemon died then
            s.scalar(select(Instance).where(Instance.name == "alice")).node = "node-b"  # type: ignore[union-attr]

        world.runtime.down = {"node-b"}  # while the node asked for is down, a restart would change nothing
        waiting = world.supervisor()
        await waiting.start()
        await until(lambda: world.actions("alice").count("instance.healthy") == 2, "alice re-attached and healthy")
        await asyncio.sleep(0.1)  # deliberately: supervision rounds in which a restart would show
        assert len(world.runtime.starts_of("alice")) == 1
        await waiting.shutdown(stop_instances=False)
        world.runtime.down = set()

        second = world.supervisor()
        await second.start()
        try:
            await until(lambda: len(world.runtime.starts_of("alice")) == 2 and
                        world.row("alice").state == "running", "alice to start again")
            assert world.runtime.data["alice"] == "node-b" and len(world.runtime.running("alice")) == 1
            assert world.actions("alice") == ["instance.spawn", "instance.healthy", "instance.reattach",
                                              "instance.healthy", "instance.reattach", "instance.stopped", "instance.restart", "instance.spawn",
                                              "instance.healthy"]
            # bob is where he is to be (nowhere asked): re-attached, not restarted.
            await until(lambda: "instance.reattach" in world.actions("bob"), "bob to be re-attached")
            assert len(world.runtime.starts_of("bob")) == 1
        finally:
            await second.shutdown(stop_instances=True)

    asyncio.run(main())


# --- sleep and wake ------------------------------------------------------------------------------


IDLE_WHY = "idle for 2s: no players, no visits"


def counting(world: World, users: int | None = 0, health_interval: float | None = None) -> FakeRuntime:
    """A fresh fake runtime whose alice reports `users` connected (None: her status does not say)."""
    runtime = FakeRuntime()
    runtime.behave("alice", users=users)
    world.runtime = runtime
    if health_interval is not None:
        world.settings = replace(world.settings, health_interval=health_interval)
    world.add("alice")
    return runtime


async def asleep(world: World, supervisor: Supervisor) -> None:
    await until(state_is(world, "alice", "running"), "alice to run")
    supervisor.sleep("alice", IDLE_WHY)
    await until(state_is(world, "alice", "sleeping"), "alice to sleep")


@pytest.mark.parametrize("users", [1, None])
def test_a_sleep_request_leaves_it_running_when_its_foundry_counts_a_user_when_asked_right_before(
        world: World, users: int | None) -> None:
    # Health checks far apart: the count the sleep is judged on can only come from the fresh check.
    runtime = counting(world, users=0, health_interval=30.0)

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        sup = supervisor.get("alice")
        assert sup.users == 0  # what the last health check heard
        runtime.behave("alice", users=users)  # a player joined since (or the server stopped saying)
        asked = runtime.status_asked["alice"]
        supervisor.sleep("alice", IDLE_WHY)
        await until(lambda: runtime.status_asked["alice"] == asked + 1 and sup.sleep_requested is None, "the fresh check")
        await asyncio.sleep(0.1)  # rounds in which a stop would show
        row = world.row("alice")
        assert (row.state, row.state_reason) == ("running", "healthy")
        assert len(world.runtime.running("alice")) == 1 and len(world.runtime.starts_of("alice")) == 1
        assert world.actions("alice") == ["instance.spawn", "instance.healthy"]
        assert sup.users == users and sup.healthy

    run(world, scenario)


def test_an_instance_nobody_uses_sleeps_without_a_crash_or_a_stop_and_stays_asleep(world: World) -> None:
    counting(world, users=0)

    async def scenario(supervisor: Supervisor) -> None:
        await asleep(world, supervisor)
        row = world.row("alice")
        assert (row.desired, row.state, row.state_reason) == ("running", "sleeping", IDLE_WHY)
        assert (row.task, row.address, row.pid, row.restarts, row.crash_times) == (None, None, None, 0, [])
        (task,) = world.runtime.tasks.values()
        assert task.signals == [signal.SIGTERM] and not world.runtime.running("alice")
        assert world.actions("alice") == ["instance.spawn", "instance.healthy", "instance.sleep"]
        assert world.messages("alice", "instance.sleep") == [IDLE_WHY]
        sup = supervisor.get("alice")
        assert sup.settled.is_set() and not sup.healthy and sup.users is None
        # Nothing starts it by itself: not the supervisor's own rounds, nor a reconcile that pokes.
        await asyncio.sleep(0.3)  # several backoffs' and health checks' worth
        await supervisor.reconcile(poke=True)
        await asyncio.sleep(0.1)
        assert world.row("alice").state == "sleeping" and len(world.runtime.starts_of("alice")) == 1

    run(world, scenario)


def test_a_wake_starts_a_sleeping_instance_again(world: World) -> None:
    counting(world, users=0)

    async def scenario(supervisor: Supervisor) -> None:
        await asleep(world, supervisor)
        assert supervisor.wake("alice") is True
        await until(state_is(world, "alice", "running"), "alice to wake")
        row = world.row("alice")
        assert (row.restarts, row.crash_times, len(world.runtime.starts_of("alice"))) == (0, [], 2)
        assert world.actions("alice")[-3:] == ["instance.sleep", "instance.spawn", "instance.healthy"]
        # Awake, a wake changes nothing.
        assert supervisor.wake("alice") is False
        await asyncio.sleep(0.1)
        assert len(world.runtime.starts_of("alice")) == 2 and len(world.runtime.running("alice")) == 1

    run(world, scenario)


def test_a_wake_before_the_sleep_begins_keeps_it_running_and_a_later_sleep_is_not_undone(world: World) -> None:
    counting(world, users=0)

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        supervisor.sleep("alice", IDLE_WHY)
        assert supervisor.wake("alice") is True  # a visit, before the supervisor acted on the request
        await asyncio.sleep(0.2)
        assert world.row("alice").state == "running" and len(world.runtime.starts_of("alice")) == 1
        assert "instance.sleep" not in world.actions("alice")
        # That wake is spent: the next sleep is not taken back by it.
        supervisor.sleep("alice", IDLE_WHY)
        await until(state_is(world, "alice", "sleeping"), "alice to sleep")
        await asyncio.sleep(0.2)
        assert world.row("alice").state == "sleeping" and len(world.runtime.starts_of("alice")) == 1

    run(world, scenario)


def test_a_wake_while_it_falls_asleep_starts_it_again_once_it_is_down(world: World) -> None:
    counting(world, users=0)
    world.runtime.behave("alice", ignores_sigterm=True)  # its stop takes stop_timeout: time to visit meanwhile

    async def scenario(supervisor: Supervisor) -> None:
        await until(state_is(world, "alice", "running"), "alice to run")
        supervisor.sleep("alice", IDLE_WHY)
        await until(state_is(world, "alice", "stopping"), "alice to be on its way down")
        assert supervisor.wake("alice") is True
        await until(lambda: len(world.runtime.starts_of("alice")) == 2 and world.row("alice").state == "running",
                    "alice to start again")
        first = next(t for t in world.runtime.tasks.values() if t.id == 1)
        # Down first (the stop was carried through, never two tasks at once), then up again.
        assert first.signals == [signal.SIGTERM, signal.SIGKILL] and first.exit is not None
        assert len(world.runtime.running("alice")) == 1
        assert world.actions("alice") == ["instance.spawn", "instance.healthy", "instance.sleep", "instance.spawn",
                                          "instance.healthy"]
        assert world.row("alice").restarts == 0

    run(world, scenario)


def test_an_instance_stopped_while_asleep_is_stopped_and_no_visit_wakes_it(world: World) -> None:
    counting(world, users=0)

    async def scenario(supervisor: Supervisor) -> None:
        await asleep(world, supervisor)
        world.set_desired("alice", "stopped")
        supervisor.poke("alice")
        await until(state_is(world, "alice", "stopped"), "alice to be stopped")
        assert world.row("alice").state_reason == "stopped"
        assert supervisor.wake("alice") is False
        await asyncio.sleep(0.2)
        assert world.row("alice").state == "stopped" and len(world.runtime.starts_of("alice")) == 1
        # Started again by its owner, it runs (no longer asleep, it needs no wake).
        world.set_desired("alice", "running")
        supervisor.poke("alice")
        await until(state_is(world, "alice", "running"), "alice to run again")

    run(world, scenario)


def test_a_sleeping_instance_stays_asleep_across_a_control_plane_restart(world: World) -> None:
    counting(world, users=0)

    async def main() -> None:
        first = world.supervisor()
        await first.start()
        await asleep(world, first)
        await first.shutdown(stop_instances=False)  # the daemon goes, leaving its instances as they are

        second = world.supervisor()
        await second.start()
        try:
            await asyncio.sleep(0.3)  # several rounds' worth
            row = world.row("alice")
            assert (row.state, row.state_reason, row.desired) == ("sleeping", IDLE_WHY, "running")
            assert len(world.runtime.starts_of("alice")) == 1
            # Neither lost nor stopped: it sleeps, as it did; and the new supervisor wakes it.
            assert world.actions("alice") == ["instance.spawn", "instance.healthy", "instance.sleep"]
            assert second.get("alice").settled.is_set()
            assert second.wake("alice") is True
            await until(state_is(world, "alice", "running"), "alice to wake")
        finally:
            await second.shutdown(stop_instances=True)

    asyncio.run(main())
