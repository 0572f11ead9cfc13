"""The reconcile loop: one supervisor per instance drives its task toward the desired state.

Like a Wings server object, an `InstanceSupervisor` owns its instance's power state: it starts the
task, health-checks it, restarts it after a crash with backoff, marks it failed in a crash loop,
and stops it gracefully. After the control plane restarts it re-attaches to a task that is still
running instead of starting a second one.

It reaches the instance only through the runtime (start, wait, stop, and `address()` for health
checks) and the database only through its own records (supervision_records.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.crash_policy import CrashPolicy, decide_after_crash
from foundry_fleet.domain.errors import FleetError, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import ROUTE_PREFIX
from foundry_fleet.domain.instance import InstanceState
from foundry_fleet.runtime.base import (
    Address, ResourceLimits, Runtime, RuntimeUnavailable, TaskExit, TaskHandle, TaskSpec, TaskStats,
)
from foundry_fleet.services.supervision_records import Event, RunningTask, SupervisedInstance, SupervisionRecords

log = logging.getLogger("foundry_fleet.supervisor")

STATUS_PATH = f"/{ROUTE_PREFIX}/api/status"


@dataclass(frozen=True)
class SupervisionSettings:
    """How the supervisor judges and treats instances (fleet.toml's [supervisor] and friends)."""

    crash_policy: CrashPolicy = CrashPolicy()
    health_interval: float = 15.0  # between checks of a healthy instance
    health_timeout: float = 2.0
    health_failures: int = 3  # failed checks in a row before a restart
    start_timeout: float = 120.0  # to become healthy after a start
    stop_timeout: float = 10.0  # after the stop signal, before SIGKILL
    starting_poll: float = 0.02  # between checks while an instance starts
    limits: ResourceLimits = ResourceLimits()
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    log_dir_of: Callable[[str], Path] = field(default=lambda name: Path("logs") / name)
    env: dict[str, str] = field(default_factory=lambda: {"NODE_ENV": "production"})

    @classmethod
    def from_config(cls, config: FleetConfig) -> SupervisionSettings:
        sup, lim = config.supervisor, config.limits
        return cls(
            crash_policy=sup.crash_policy(),
            health_interval=sup.health_interval,
            health_timeout=sup.health_timeout,
            health_failures=sup.health_failures,
            start_timeout=sup.start_timeout,
            stop_timeout=config.instances.stop_timeout,
            limits=ResourceLimits(memory_mb=lim.memory_mb, cpu_percent=lim.cpu_percent, pids=lim.pids),
            log_max_bytes=config.logs.max_kb * 1024,
            log_keep=config.logs.keep,
            log_dir_of=config.paths.instance_logs,
        )


def build_task_spec(settings: SupervisionSettings, records: SupervisionRecords, name: str) -> TaskSpec:
    plan = records.launch_plan(name)
    return TaskSpec(
        name=name,
        release=plan.release,
        data_dir=plan.data_dir,
        shared_dir=plan.shared_dir,
        log_dir=settings.log_dir_of(name),
        port=plan.port,
        uid=plan.uid,
        gid=plan.uid,
        env=dict(settings.env),
        limits=settings.limits,
        log_max_bytes=settings.log_max_bytes,
        log_keep=settings.log_keep,
        hosts=plan.hosts,
        node=plan.node,
        storage=plan.storage,
    )


class InstanceSupervisor:
    def __init__(self, name: str, records: SupervisionRecords, runtime: Runtime, settings: SupervisionSettings,
                 http: httpx.AsyncClient) -> None:
        self.name = name
        self.records = records
        self.runtime = runtime
        self.settings = settings
        self.http = http
        self.handle: TaskHandle | None = None
        self.address: Address | None = None  # where the running task answers health checks
        self.wake = asyncio.Event()
        self.settled = asyncio.Event()  # set whenever the instance reaches a resting state
        self.restart_requested = False
        # Asked to sleep (services/idle_watch.py), with the reason; it sleeps only if its Foundry still
        # counts no user when the stop would begin.
        self.sleep_requested: str | None = None
        # Asked to wake (a visit, `instance start`): a sleeping instance starts; one falling asleep
        # starts again once it is down.
        self.wake_requested = False
        self.falling_asleep = False  # from the sleep's last check until the instance is down
        self.users: int | None = None  # connected users, as its last health check heard; None: unknown
        self.healthy = False  # it answered since its last start (what idle is judged on)
        self.removed = False
        self.lock = asyncio.Lock()  # the supervisor's own power actions (start, stop, restart) one at a time
        self._task: asyncio.Task[None] | None = None
        self._unavailable_tries = 0  # starts in a row the runtime could not make (see _start_deferred)

    # control ------------------------------------------------------------------------------

    def start(self, recovered: TaskHandle | None) -> None:
        self.handle = recovered
        self._task = asyncio.create_task(self._run(), name=f"supervise:{self.name}")

    def poke(self) -> None:
        self.settled.clear()
        self.wake.set()

    def request_sleep(self, why: str) -> None:
        self.sleep_requested = why
        self.poke()

    def request_wake(self, sleeping: bool) -> None:
        """Start it if it sleeps or is falling asleep (`sleeping`: its row says it sleeps); otherwise
        nothing changes."""
        if sleeping or self.sleep_requested is not None or self.falling_asleep:
            self.wake_requested = True
            self.sleep_requested = None
            self.poke()

    async def close(self, stop_instance: bool) -> None:
        """Stop supervising; stop the task too when asked (otherwise it is left to be re-attached)."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if stop_instance and self.handle:
            await self._stop("fleet shutting down")

    async def remove(self) -> None:
        """Stop the task for good (before the instance is deleted)."""
        self.removed = True
        await self.close(stop_instance=True)

    # the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        if self.handle is not None:
            # Re-attached: find out whether it is healthy before calling it running.
            try:
                running = await self._running_task_once_the_runtime_answers(self.handle)
            except FleetError as e:  # the runtime answered, and the task is not there: count it as a crash
                handle, self.handle = self.handle, None
                try:
                    await self._stop_handle(handle)  # never two: the next start must not run beside it
                except FleetError:
                    pass  # unreachable too: a runtime removes its stray when it starts the next (Nomad does)
                await self._crashed(handle, f"could not re-attach: {e.message}", stop=False)
            else:
                self.records.record_task(self.name, InstanceState.STARTING, f"re-attached to {_what(running)}",
                                         running, Event("instance.reattach", Outcome.OK))
                await self._watch(started_at=time.monotonic(), healthy=False)
        while True:
            self.wake.clear()
            try:
                row = self.records.get(self.name)
            except NotFound:
                return
            if row.wants_running and not row.failed and (not row.sleeping or self.wake_requested):
                self.restart_requested = False  # whatever ran is gone; this start is the restart
                self.wake_requested = False
                async with self.lock:
                    ok = await self._launch()
                if ok:
                    await self._watch(started_at=time.monotonic(), healthy=False)
                    continue
            else:
                self.restart_requested = False
                self.sleep_requested = None
                if row.seems_active or (row.sleeping and not row.wants_running):
                    # e.g. stopped during a crash backoff: nothing runs, say so.
                    self.records.set_state(self.name, InstanceState.STOPPED, "stopped")
                self.settled.set()
            await self.wake.wait()

    async def _running_task_once_the_runtime_answers(self, handle: TaskHandle) -> RunningTask:
        """The recovered task, asked until its runtime answers. While the runtime's cluster is away the
        task most likely still runs there (Nomad keeps running what it runs): its record, address
        included, is kept as it is, so the edge keeps routing players to it; counting the outage as
        crashes would mark a running instance failed and unrouted after a few backoffs."""
        delay = self.settings.crash_policy.backoff_initial
        told = False
        while True:
            try:
                return await self._running_task(handle)
            except RuntimeUnavailable as e:
                if not told:
                    log.warning("%s: re-attaching waits for the runtime (%s)", self.name, e.message)
                    told = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.crash_policy.backoff_max)

    async def _running_task(self, handle: TaskHandle) -> RunningTask:
        self.address = await self.runtime.address(handle)
        status = await self.runtime.inspect_task(handle)
        return RunningTask(handle=handle, address=str(self.address), pid=status.pid)

    async def _launch(self) -> bool:
        """Start the task; False (with the instance failed) when it cannot even be started."""
        try:
            spec = build_task_spec(self.settings, self.records, self.name)
            self.records.set_state(self.name, InstanceState.STARTING, "starting")
            self.handle = await self.runtime.start_task(spec)
            self._unavailable_tries = 0
        except RuntimeUnavailable as e:
            self._record_driver_events()
            await self._start_deferred(e.message)
            return False
        except FleetError as e:
            self._record_driver_events()
            self._failed_to_start(e.message)
            return False
        except OSError as e:
            self._record_driver_events()
            self._failed_to_start(f"could not start: {e}")
            return False
        self._record_driver_events()
        try:
            running = await self._running_task(self.handle)
        except FleetError as e:
            await self._stop_handle(self.handle)
            self.handle = None
            self._failed_to_start(e.message)
            return False
        self.records.record_task(self.name, InstanceState.STARTING, f"{_what(running)} started", running,
                                 Event("instance.spawn", Outcome.OK))
        return True

    async def _start_deferred(self, why: str) -> None:
        """The runtime cannot start it now (its cluster, or the node holding its data, is away). That is
        not the instance's fault: nothing counts toward a crash loop and the desired state stands; it is
        tried again, with a backoff growing to the crash policy's ceiling, for as long as it takes. The
        first deferral settles the instance, so whoever asked for the start hears why it waits."""
        policy = self.settings.crash_policy
        delay = min(policy.backoff_max, policy.backoff_initial * 2 ** min(self._unavailable_tries, 30))
        first = self._unavailable_tries == 0
        self._unavailable_tries += 1
        reason = f"waiting for the runtime ({why}); trying again in {delay:g}s"
        # One event per outage, not one per try: a day-long outage would otherwise flood the log.
        self.records.clear_task(self.name, InstanceState.STARTING, reason,
                                Event("instance.start", Outcome.FAILED) if first else None)
        if first:
            self.settled.set()
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=delay)
        except TimeoutError:
            pass
        self.wake.set()  # the main loop re-reads the desired state and starts again

    def _failed_to_start(self, why: str) -> None:
        self.records.clear_task(self.name, InstanceState.FAILED, why, Event("instance.start", Outcome.FAILED))
        self.settled.set()

    def _record_driver_events(self) -> None:
        for event in self.runtime.take_events():
            self.records.record_event(f"instance.{event.action}", event.name, Outcome.INFO, event.message)

    async def _watch(self, started_at: float, healthy: bool) -> None:
        """Follow a live task until it exits, is stopped, or must be restarted."""
        assert self.handle is not None
        handle = self.handle
        self.healthy = healthy
        self.users = None
        exit_waiter = asyncio.create_task(self.runtime.wait_task(handle))
        move_waiter = self._watch_address(handle)
        settings = self.settings
        failures = 0
        try:
            while True:
                interval = settings.health_interval if healthy else settings.starting_poll
                wake_waiter = asyncio.create_task(self.wake.wait())
                done, _ = await asyncio.wait({exit_waiter, wake_waiter, move_waiter}, timeout=interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if wake_waiter not in done:
                    wake_waiter.cancel()
                if exit_waiter in done:
                    await self._on_exit(exit_waiter.result(), handle)
                    return
                if move_waiter in done:
                    await self._moved(handle, move_waiter, healthy)
                    move_waiter = self._watch_address(handle)
                    continue
                if wake_waiter in done:
                    self.wake.clear()
                    row = self.records.get(self.name)
                    if row.wants_running and not self.restart_requested and not self.removed \
                            and self.sleep_requested is not None:
                        if await self._falls_asleep(healthy):
                            exit_waiter.cancel()
                            return
                        continue
                    if not row.wants_running or self.restart_requested or self.removed:
                        exit_waiter.cancel()
                        restarting = self.restart_requested and not self.removed
                        async with self.lock:
                            await self._stop("restarting" if restarting else "stop requested", settle=not restarting)
                        if restarting:
                            self.records.record_event("instance.restart", self.name, Outcome.OK)
                        return
                    if healthy:
                        self.settled.set()
                    continue
                now = time.monotonic()
                ok = await self._healthy()
                if not healthy:
                    if ok:
                        healthy = self.healthy = True
                        self.records.set_state(self.name, InstanceState.RUNNING, "healthy",
                                               Event("instance.healthy", Outcome.OK))
                        self.settled.set()
                    elif now - started_at > settings.start_timeout:
                        exit_waiter.cancel()
                        await self._crashed(handle, f"not healthy within {settings.start_timeout:g}s", stop=True)
                        return
                    continue
                failures = 0 if ok else failures + 1
                if failures and not (await self.runtime.inspect_task(handle)).running:
                    # The runtime is putting it back (a cluster replacing it after its node went away):
                    # its exit or its new address will tell; restarting it here would only get in the way.
                    failures = 0
                if failures >= settings.health_failures:
                    exit_waiter.cancel()
                    await self._crashed(handle, f"{failures} health checks failed in a row", stop=True)
                    return
        finally:
            self.healthy = False
            for waiter in (exit_waiter, move_waiter):
                if not waiter.done():
                    waiter.cancel()

    def _watch_address(self, handle: TaskHandle) -> asyncio.Task[Address]:
        """Wait for the runtime to say the task answers elsewhere (a cluster moved it)."""
        current = self.address
        if current is None:  # not known yet: nothing to compare with, and never a move
            return asyncio.create_task(asyncio.Event().wait(), name=f"no-address:{self.name}")  # type: ignore[arg-type]
        return asyncio.create_task(self.runtime.watch_address(handle, current), name=f"address:{self.name}")

    async def _moved(self, handle: TaskHandle, waiter: asyncio.Task[Address], healthy: bool) -> None:
        """Record where the task answers now: the edge re-reads the address and routes there."""
        try:
            new = waiter.result()
        except FleetError as e:
            log.warning("could not follow where %s answers: %s", self.name, e.message)
            await asyncio.sleep(self.settings.health_interval)  # not in a tight loop while the runtime is away
            return
        old, self.address = self.address, new
        status = await self.runtime.inspect_task(handle)
        running = RunningTask(handle=handle, address=str(new), pid=status.pid)
        state = InstanceState.RUNNING if healthy else InstanceState.STARTING
        self.records.record_task(self.name, state, f"moved from {old} to {new}", running,
                                 Event("instance.moved", Outcome.INFO))

    async def _healthy(self) -> bool:
        """Ask Foundry's status; it also says how many users are connected (kept for idle detection,
        set only once the answer is in: a check under way never reads as "nobody there")."""
        if self.address is None:
            self.users = None
            return False
        url = f"http://{self.address}{STATUS_PATH}"
        status = None
        try:
            r = await self.http.get(url, timeout=self.settings.health_timeout)
            if r.status_code == 200:
                status = r.json()
        except (httpx.HTTPError, ValueError):
            pass
        if not isinstance(status, dict):
            self.users = None
            return False
        users = status.get("users")
        self.users = users if isinstance(users, int) and not isinstance(users, bool) and users >= 0 else None
        return True

    async def _falls_asleep(self, healthy: bool) -> bool:
        """Sleep as asked, unless someone is there after all: its Foundry is asked once more right
        before the stop, and a user it counts (or no answer) keeps it running."""
        why, self.sleep_requested = self.sleep_requested, None
        self.wake_requested = False  # a visit from now on keeps it up, or wakes it again once it is down
        self.falling_asleep = True
        try:
            if not healthy or not await self._healthy() or self.users != 0 or self.wake_requested:
                log.info("%s: not put to sleep (%s)", self.name, "a visit came" if self.wake_requested
                         else f"{self.users} user(s) connected" if self.users
                         else "its server does not say who is connected")
                return False
            async with self.lock:
                await self._stop(why or "idle", state=InstanceState.SLEEPING,
                                 event=Event("instance.sleep", Outcome.OK))
            return True
        finally:
            self.falling_asleep = False

    async def _on_exit(self, result: TaskExit, handle: TaskHandle) -> None:
        await self.runtime.destroy_task(handle)
        self.handle = None
        if result.gave_up:
            # The runtime restarted it as often as the crash policy allows already: failed now.
            self.address = None
            self.records.clear_task(self.name, InstanceState.FAILED, result.describe(),
                                    Event("instance.failed", Outcome.FAILED))
            self.settled.set()
            return
        await self._crashed(handle, result.describe(), stop=False)

    async def _crashed(self, handle: TaskHandle, why: str, stop: bool) -> None:
        if stop:
            await self._stop_handle(handle)
        self.handle = None
        self.address = None
        try:
            crash_times = self.records.crash_times(self.name)
        except NotFound:
            return  # deleted meanwhile
        now = time.time()
        policy = self.settings.crash_policy
        decision = decide_after_crash(policy, tuple(crash_times), now, ran_for=now - handle.started_at)
        if decision.give_up:
            reason = f"crash loop: {len(decision.recent)} crashes in {policy.window / 60:g} min (last: {why})"
            self.records.clear_task(self.name, InstanceState.FAILED, reason, Event("instance.failed", Outcome.FAILED),
                                    crash_times=list(decision.recent))
            self.settled.set()
            return
        reason = f"crashed ({why}); restarting in {decision.delay:g}s"
        self.records.clear_task(self.name, InstanceState.STARTING, reason, Event("instance.crashed", Outcome.FAILED),
                                restarts_delta=1, crash_times=list(decision.recent))
        # Back off; a stop (or any other change) during the wait wakes us, and the main loop
        # re-reads the desired state before starting again.
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=decision.delay)
        except TimeoutError:
            pass

    async def _stop(self, why: str, settle: bool = True, state: InstanceState = InstanceState.STOPPED,
                    event: Event = Event("instance.stopped", Outcome.OK)) -> None:
        handle = self.handle
        if handle is None:
            return
        self.records.set_state(self.name, InstanceState.STOPPING, why)
        await self._stop_handle(handle)
        self.handle = None
        self.address = None
        self.healthy = False
        self.users = None
        self.records.clear_task(self.name, state, why, event)
        if settle:
            self.settled.set()

    async def _stop_handle(self, handle: TaskHandle) -> None:
        await self.runtime.stop_task(handle, self.settings.stop_timeout)
        await self.runtime.destroy_task(handle)


def _what(running: RunningTask) -> str:
    return f"process {running.pid}" if running.pid is not None else f"the task at {running.address}"


class Supervisor:
    """All instance supervisors of one daemon, kept in step with the database."""

    def __init__(
        self,
        records: SupervisionRecords,
        runtime: Runtime,
        settings: SupervisionSettings,
        *,
        repair: Callable[[], list[str]] = list,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """`repair` finishes what a crash interrupted (creations, deletions) before anything starts;
        it returns the instances it repaired."""
        self.records = records
        self.runtime = runtime
        self.settings = settings
        self.repair = repair
        self.http = http or httpx.AsyncClient()
        self.instances: dict[str, InstanceSupervisor] = {}

    async def start(self) -> None:
        for name in self.repair():
            log.warning("rolled back the interrupted creation of %s", name)
            # Gone now, whatever the crash interrupted: nothing the runtime keeps for it may stay.
            await self._forget_instance(name)
        await self._forget_unknown_tasks()
        await self.reconcile()

    async def _forget_unknown_tasks(self) -> None:
        """Let a runtime whose tasks outlive the daemon (containers) remove those no record claims, before
        anything starts: an instance deleted, or a task started but not recorded, while it was down."""
        known = {row.name for row in self.records.supervised() if row.task is not None}
        try:
            await self.runtime.forget_unknown(known)
        except FleetError as e:
            log.warning("could not look for tasks no instance claims: %s", e.message)
        self._record_runtime_events()

    def _record_runtime_events(self) -> None:
        for event in self.runtime.take_events():
            self.records.record_event(f"instance.{event.action}", event.name, Outcome.INFO, event.message)

    def poke(self, name: str) -> None:
        self.get(name).poke()

    async def reconcile(self, poke: bool = False) -> None:
        """Supervise new instances and drop deleted ones; with `poke`, every supervisor re-reads its row.

        The periodic pass does not poke: that would cut a crash backoff short.
        """
        rows = self.records.supervised()
        names = {r.name for r in rows}
        for row in rows:
            sup = self.instances.get(row.name)
            if sup is not None:
                if poke:
                    sup.poke()
                continue
            recovered = None
            if row.task is not None:
                try:
                    recovered = await self.runtime.recover_task(row.task)
                except FleetError as e:
                    # The runtime cannot tell now (its cluster is away): keep the recorded task, so that
                    # nothing starts a second one; re-attaching finds out.
                    log.warning("could not ask the runtime about the task of %s: %s", row.name, e.message)
                    recovered = row.task
                if recovered is None:
                    self.records.clear_task(row.name, InstanceState.FAILED if row.failed else InstanceState.STOPPED,
                                            "process gone while the control plane was down",
                                            Event("instance.lost", Outcome.INFO))
            elif row.seems_active:
                self.records.clear_task(row.name, InstanceState.STOPPED, "no process recorded")
            sup = InstanceSupervisor(row.name, self.records, self.runtime, self.settings, self.http)
            self.instances[row.name] = sup
            if recovered is not None and await self._move_pending(row):
                # Moved (`instance move`) while its task ran, and the restart that carries the move out
                # was lost with the control plane: restart it now; its start moves it.
                sup.restart_requested = True
                sup.poke()
            sup.start(recovered)
        for name in list(self.instances):
            if name not in names:
                sup = self.instances.pop(name)
                await sup.remove()
                await self._forget_instance(name)

    async def _move_pending(self, row: SupervisedInstance) -> bool:
        """Is the instance to run on another node than the one holding its data, and can it now?"""
        if row.node is None or not self.runtime.capabilities.multi_node:
            return False
        try:
            held = await self.runtime.data_node(row.name)
            if held is None or held == row.node:
                return False
            # While the node asked for is down a restart would only bring it back where it is; so would
            # a node of another home than its data's (the runtime starts it only in that home).
            return any(n.name == row.node and n.healthy and n.storage in (None, row.storage)
                       for n in await self.runtime.nodes())
        except FleetError as e:
            log.warning("could not ask the runtime where %s is to run: %s", row.name, e.message)
            return False

    def get(self, name: str) -> InstanceSupervisor:
        sup = self.instances.get(name)
        if sup is None:
            raise NotFound(f"no instance named {name!r} is supervised", "see `foundry-fleet instance list`")
        return sup

    async def wait_settled(self, name: str, timeout: float) -> None:
        sup = self.get(name)
        try:
            await asyncio.wait_for(sup.settled.wait(), timeout)
        except TimeoutError:
            pass

    def sleep(self, name: str, why: str) -> None:
        """Put a running instance to sleep (it stays running if its Foundry counts a user when asked)."""
        self.get(name).request_sleep(why)

    def users(self, name: str) -> int | None:
        """Users connected to its Foundry, as its last health check heard; None: not running, or not said."""
        sup = self.instances.get(name)
        return sup.users if sup is not None else None

    def falling_asleep(self, name: str) -> bool:
        """Is it being stopped to sleep right now (a visit then starts it again once it is down)?"""
        sup = self.instances.get(name)
        return sup is not None and sup.falling_asleep

    def wake(self, name: str) -> bool:
        """Start a sleeping instance (or one falling asleep) again; False when it was neither."""
        sup = self.get(name)
        before = sup.wake_requested
        sup.request_wake(self.records.get(name).sleeping)
        return sup.wake_requested and not before

    async def restart(self, name: str) -> None:
        sup = self.get(name)
        sup.restart_requested = True
        sup.poke()

    async def remove(self, name: str) -> None:
        """Stop the instance's task for good and release what the runtime keeps for it (before it is
        deleted). A runtime that cannot release it now fails the removal: the instance stays, stopped,
        and deleting it again finishes the job."""
        sup = self.instances.pop(name, None)
        if sup is not None:
            await sup.remove()
        try:
            await self.runtime.forget_instance(name)
        finally:
            self._record_runtime_events()

    async def _forget_instance(self, name: str) -> None:
        try:
            await self.runtime.forget_instance(name)
        except FleetError as e:
            log.warning("could not release what the runtime keeps for %s: %s", name, e.message)
            self.records.record_event("instance.leftovers", name, Outcome.FAILED,
                                      f"the runtime still keeps something of it: {e.message}")
        self._record_runtime_events()

    def running(self) -> list[str]:
        """The instances that have a task now (starting, running or being stopped)."""
        return [name for name, sup in self.instances.items() if sup.handle is not None]

    async def stats(self, name: str) -> TaskStats | None:
        """The instance's memory and CPU as its runtime measures them now; None when it has no task."""
        sup = self.instances.get(name)
        if sup is None or sup.handle is None:
            return None
        return await self.runtime.task_stats(sup.handle)

    def logs(self, name: str, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
        """The instance's server log, as its runtime keeps it: the running task's, else by name."""
        sup = self.instances.get(name)
        return self.runtime.logs(sup.handle if sup is not None and sup.handle is not None else name, lines, follow)

    async def shutdown(self, stop_instances: bool) -> None:
        await asyncio.gather(*(s.close(stop_instances) for s in self.instances.values()))
        self.instances.clear()
        await self.http.aclose()
