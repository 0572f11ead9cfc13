"""The reconcile loop: one supervisor per instance drives its process toward the desired state.

Like a Wings server object, an `InstanceSupervisor` owns its instance's power state: it starts the
process, health-checks it, restarts it after a crash with backoff, marks it failed in a crash loop,
and stops it gracefully. After the control plane restarts it re-attaches to a process that is still
running instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.crash_policy import decide_after_crash
from foundry_fleet.domain.errors import FleetError, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.foundry_options import ROUTE_PREFIX
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.runtime.base import ResourceLimits, Runtime, TaskExit, TaskHandle, TaskSpec
from foundry_fleet.services.fleet import Fleet

log = logging.getLogger("foundry_fleet.supervisor")

STATUS_PATH = f"/{ROUTE_PREFIX}/api/status"
FOUNDRY_FLAGS = ("--noupdate", "--noupnp", "--noipdiscovery")


def build_task_spec(config: FleetConfig, fleet: Fleet, name: str) -> TaskSpec:
    view, release, node = fleet.launch_plan(name)
    paths = fleet.storage.paths(name)
    entry = paths.install / release.entry
    uid = view.uid
    lim = config.limits
    return TaskSpec(
        name=name,
        argv=[node, str(entry), f"--port={view.port}", f"--dataPath={paths.data}", *FOUNDRY_FLAGS],
        install_dir=paths.install,
        data_dir=paths.data,
        shared_dir=fleet.storage.shared_dir(),
        log_dir=config.paths.instance_logs(name),
        port=view.port,
        uid=uid,
        gid=uid,
        env={"NODE_ENV": "production"},
        limits=ResourceLimits(memory_mb=lim.memory_mb, cpu_percent=lim.cpu_percent, pids=lim.pids),
        log_max_bytes=config.logs.max_kb * 1024,
        log_keep=config.logs.keep,
    )


class InstanceSupervisor:
    def __init__(self, name: str, fleet: Fleet, runtime: Runtime, http: httpx.AsyncClient) -> None:
        self.name = name
        self.fleet = fleet
        self.runtime = runtime
        self.http = http
        self.config = fleet.config
        self.handle: TaskHandle | None = None
        self.spec: TaskSpec | None = None
        self.wake = asyncio.Event()
        self.settled = asyncio.Event()  # set whenever the instance reaches a resting state
        self.restart_requested = False
        self.removed = False
        self.lock = asyncio.Lock()  # one operation at a time on this instance
        self._task: asyncio.Task[None] | None = None

    # control ------------------------------------------------------------------------------

    def start(self, recovered: TaskHandle | None) -> None:
        self.handle = recovered
        self._task = asyncio.create_task(self._run(), name=f"supervise:{self.name}")

    def poke(self) -> None:
        self.settled.clear()
        self.wake.set()

    async def close(self, stop_instance: bool) -> None:
        """Stop supervising; stop the process too when asked (otherwise it is left to be re-attached)."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if stop_instance and self.handle:
            await self._stop("fleet shutting down")

    async def remove(self) -> None:
        """Stop the process for good (before the instance is deleted)."""
        self.removed = True
        await self.close(stop_instance=True)

    # the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        if self.handle is not None:
            # Re-attached: find out whether it is healthy before calling it running.
            try:
                self.spec = build_task_spec(self.config, self.fleet, self.name)
            except FleetError:
                self.spec = None  # still supervised; log upkeep waits for the next start
            self.fleet.observe(self.name, InstanceState.STARTING, f"re-attached to process {self.handle.pid}",
                               task=self.handle.to_dict(), event=("instance.reattach", Outcome.OK))
            await self._watch(started_at=time.monotonic(), healthy=False)
        while True:
            self.wake.clear()
            try:
                row = self._row()
            except NotFound:
                return
            desired, state = row
            if desired == DesiredState.RUNNING.value and state != InstanceState.FAILED.value:
                self.restart_requested = False  # whatever ran is gone; this start is the restart
                async with self.lock:
                    ok = await self._launch()
                if ok:
                    await self._watch(started_at=time.monotonic(), healthy=False)
                    continue
            else:
                self.restart_requested = False
                if state in (InstanceState.STARTING.value, InstanceState.RUNNING.value, InstanceState.STOPPING.value):
                    # e.g. stopped during a crash backoff: nothing runs, say so.
                    self.fleet.observe(self.name, InstanceState.STOPPED, "stopped")
                self.settled.set()
            await self.wake.wait()

    def _row(self) -> tuple[str, str]:
        view = self.fleet.get_instance(self.name)
        return view.desired, view.state

    async def _launch(self) -> bool:
        """Start the process; False (with the instance failed) when it cannot even be spawned."""
        try:
            self.spec = build_task_spec(self.config, self.fleet, self.name)
            Path(self.spec.log_dir).mkdir(parents=True, exist_ok=True)
            self.fleet.observe(self.name, InstanceState.STARTING, "starting")
            self.handle = await self.runtime.start_task(self.spec)
        except FleetError as e:
            self.fleet.observe(self.name, InstanceState.FAILED, e.message, task=None, event=("instance.start", Outcome.FAILED))
            self.settled.set()
            return False
        except OSError as e:
            self.fleet.observe(self.name, InstanceState.FAILED, f"could not start: {e}", task=None,
                               event=("instance.start", Outcome.FAILED))
            self.settled.set()
            return False
        self.fleet.observe(self.name, InstanceState.STARTING, f"process {self.handle.pid} started",
                           task=self.handle.to_dict(), event=("instance.spawn", Outcome.OK))
        return True

    async def _watch(self, started_at: float, healthy: bool) -> None:
        """Follow a live process until it exits, is stopped, or must be restarted."""
        assert self.handle is not None
        handle = self.handle
        exit_waiter = asyncio.create_task(self.runtime.wait_task(handle))
        sup = self.config.supervisor
        failures = 0
        try:
            while True:
                interval = sup.health_interval if healthy else 0.02
                wake_waiter = asyncio.create_task(self.wake.wait())
                done, _ = await asyncio.wait({exit_waiter, wake_waiter}, timeout=interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if wake_waiter not in done:
                    wake_waiter.cancel()
                if exit_waiter in done:
                    await self._on_exit(exit_waiter.result(), handle)
                    return
                if wake_waiter in done:
                    self.wake.clear()
                    desired, _state = self._row()
                    if desired != DesiredState.RUNNING.value or self.restart_requested or self.removed:
                        exit_waiter.cancel()
                        restarting = self.restart_requested and not self.removed
                        async with self.lock:
                            await self._stop("restarting" if restarting else "stop requested", settle=not restarting)
                        if restarting:
                            self.fleet.record_event("instance.restart", self.name, Outcome.OK, actor="supervisor")
                        return
                    if healthy:
                        self.settled.set()
                    continue
                now = time.monotonic()
                ok = await self._healthy()
                if not healthy:
                    if ok:
                        healthy = True
                        self.fleet.observe(self.name, InstanceState.RUNNING, "healthy",
                                           event=("instance.healthy", Outcome.OK))
                        self.settled.set()
                    elif now - started_at > sup.start_timeout:
                        exit_waiter.cancel()
                        await self._crashed(handle, f"not healthy within {sup.start_timeout:.0f}s", stop=True)
                        return
                    continue
                failures = 0 if ok else failures + 1
                if failures >= sup.health_failures:
                    exit_waiter.cancel()
                    await self._crashed(handle, f"{failures} health checks failed in a row", stop=True)
                    return
        finally:
            if not exit_waiter.done():
                exit_waiter.cancel()

    async def _healthy(self) -> bool:
        view_port = self.spec.port if self.spec else self.fleet.get_instance(self.name).port
        try:
            r = await self.http.get(f"http://127.0.0.1:{view_port}{STATUS_PATH}", timeout=self.config.supervisor.health_timeout)
            return r.status_code == 200 and isinstance(r.json(), dict)
        except (httpx.HTTPError, ValueError):
            return False

    async def _on_exit(self, result: TaskExit, handle: TaskHandle) -> None:
        self.runtime.destroy_task(handle)
        self.handle = None
        await self._crashed(handle, result.describe(), stop=False)

    async def _crashed(self, handle: TaskHandle, why: str, stop: bool) -> None:
        if stop:
            await self._stop_handle(handle)
        self.handle = None
        try:
            crash_times = self.fleet.crash_times(self.name)
        except NotFound:
            return  # deleted meanwhile
        now = time.time()
        decision = decide_after_crash(self.config.supervisor.crash_policy(), tuple(crash_times), now,
                                      ran_for=now - handle.started_at)
        if decision.give_up:
            window = self.config.supervisor.crash_loop_minutes
            reason = f"crash loop: {len(decision.recent)} crashes in {window:g} min (last: {why})"
            self.fleet.observe(self.name, InstanceState.FAILED, reason, task=None, crash_times=list(decision.recent),
                               event=("instance.failed", Outcome.FAILED))
            self.settled.set()
            return
        reason = f"crashed ({why}); restarting in {decision.delay:g}s"
        self.fleet.observe(self.name, InstanceState.STARTING, reason, task=None, restarts_delta=1,
                           crash_times=list(decision.recent), event=("instance.crashed", Outcome.FAILED))
        # Back off; a stop (or any other change) during the wait wakes us, and the main loop
        # re-reads the desired state before starting again.
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=decision.delay)
        except TimeoutError:
            pass

    async def _stop(self, why: str, settle: bool = True) -> None:
        handle = self.handle
        if handle is None:
            return
        self.fleet.observe(self.name, InstanceState.STOPPING, why)
        await self._stop_handle(handle)
        self.handle = None
        self.fleet.observe(self.name, InstanceState.STOPPED, why, task=None, event=("instance.stopped", Outcome.OK))
        if settle:
            self.settled.set()

    async def _stop_handle(self, handle: TaskHandle) -> None:
        await self.runtime.stop_task(handle, self.config.instances.stop_timeout)
        self.runtime.destroy_task(handle)


class Supervisor:
    """All instance supervisors of one daemon, kept in step with the database."""

    def __init__(self, fleet: Fleet, runtime: Runtime) -> None:
        self.fleet = fleet
        self.runtime = runtime
        self.http = httpx.AsyncClient()
        self.instances: dict[str, InstanceSupervisor] = {}

    async def start(self) -> None:
        repaired = self.fleet.repair_interrupted()
        for name in repaired:
            log.warning("rolled back the interrupted creation of %s", name)
        await self.reconcile()

    def poke(self, name: str) -> None:
        self.get(name).poke()

    async def reconcile(self, poke: bool = False) -> None:
        """Supervise new instances and drop deleted ones; with `poke`, every supervisor re-reads its row.

        The periodic pass does not poke: that would cut a crash backoff short.
        """
        rows = self.fleet.supervision_rows()
        names = {r[0] for r in rows}
        for name, _desired, state, task, _crashes in rows:
            sup = self.instances.get(name)
            if sup is not None:
                if poke:
                    sup.poke()
                continue
            recovered = None
            if task:
                recovered = self.runtime.recover_task(TaskHandle.from_dict(task))
                if recovered is None:
                    self.fleet.observe(name, InstanceState.STOPPED if state != InstanceState.FAILED.value else InstanceState.FAILED,
                                       "process gone while the control plane was down", task=None,
                                       event=("instance.lost", Outcome.INFO))
            elif state in (InstanceState.RUNNING.value, InstanceState.STARTING.value, InstanceState.STOPPING.value):
                self.fleet.observe(name, InstanceState.STOPPED, "no process recorded", task=None)
            if recovered is None:
                # A control plane that died between spawning a process and recording it leaves one
                # nobody knows about; it would hold the port, so it goes before anything starts.
                strays = self.runtime.kill_strays(name, self.fleet.storage.paths(name).data)
                if strays:
                    self.fleet.record_event("instance.strays", name, Outcome.INFO,
                                            f"stopped {strays} unrecorded process(es)", actor="supervisor")
            sup = InstanceSupervisor(name, self.fleet, self.runtime, self.http)
            self.instances[name] = sup
            sup.start(recovered)
        for name in list(self.instances):
            if name not in names:
                sup = self.instances.pop(name)
                await sup.remove()

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

    async def restart(self, name: str) -> None:
        sup = self.get(name)
        sup.restart_requested = True
        sup.poke()

    async def remove(self, name: str) -> None:
        sup = self.instances.pop(name, None)
        if sup is not None:
            await sup.remove()

    async def shutdown(self, stop_instances: bool) -> None:
        await asyncio.gather(*(s.close(stop_instances) for s in self.instances.values()))
        self.instances.clear()
        await self.http.aclose()

