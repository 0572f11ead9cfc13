"""Every operation on an instance, in one place: the control API, and through it the CLI, the bot and
any web panel, call these and hold no operation logic of their own.

Each operation holds the instance's one lock (services/operation_lock.py): a second operation on a
busy instance is refused at once, naming what is under way ("alice is being upgraded"). The service
tells the supervisor what changed and waits for the instance to settle where the answer depends on it,
then brings the edge up to date, so a caller's answer reflects what players see.

Who asked (`actor`) is a parameter of each call: it is recorded with every event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from foundry_fleet.domain.errors import Conflict, ExternalFailure, FleetError, Unsupported
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.instance import DesiredState, InstanceState
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.changes import Changes
from foundry_fleet.services.data_export import Export
from foundry_fleet.services.data_import import DataImport, Imported, ImportFailed
from foundry_fleet.services.desired_state import DesiredStates
from foundry_fleet.services.edge_port import EdgeSync
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.memory_guard import MemoryGuard
from foundry_fleet.services.moves import Moves
from foundry_fleet.services.node_choice import checked_move, checked_node
from foundry_fleet.services.operation_lock import RESTORING, OperationLock
from foundry_fleet.services.provisioning import Provisioning
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.snapshot_files import SnapshotFiles
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.services.views import CreatedInstance, InstanceView
from foundry_fleet.storage.snapshots import SnapshotInfo

# Blocking store and storage work runs in a worker thread, never on the daemon's event loop.
_blocking = asyncio.to_thread


@dataclass(frozen=True)
class Deleted:
    name: str
    kept_at: str | None  # where the data was archived; None when purged
    final_snapshot: str | None

    def to_dict(self) -> dict[str, object]:
        return {"deleted": self.name, "kept_at": self.kept_at, "final_snapshot": self.final_snapshot}


@dataclass(frozen=True)
class Restored:
    safety_snapshot: str  # the data from before the restore
    instance: InstanceView
    snapshot: str = ""  # the full name of what was restored (the request may have said `latest` or a prefix)

    def to_dict(self) -> dict[str, object]:
        return {"safety_snapshot": self.safety_snapshot, "instance": self.instance.to_dict(), "snapshot": self.snapshot}


@dataclass(frozen=True)
class Upgraded:
    upgraded: bool  # False: it was rolled back
    snapshot: str  # taken before the switch; the data a rollback went back to
    reason: str
    instance: InstanceView

    def to_dict(self) -> dict[str, object]:
        return {"upgraded": self.upgraded, "snapshot": self.snapshot, "reason": self.reason,
                "instance": self.instance.to_dict()}


@dataclass(frozen=True)
class Lifecycle:
    """What the operations build on: the services that write an instance's rows and files, those that
    read them, and `changes`, told of each change the operations make themselves (the edge follows)."""

    provisioning: Provisioning
    desired: DesiredStates
    instances: InstanceViews
    hostnames: Hostnames
    releases: ReleaseRegistry
    events: EventLog
    changes: Changes


@dataclass(frozen=True)
class Moved:
    """What `instance move` did: `outcome` is "moved" (it runs on `node` now; a stopped instance moved to
    another home: its data is there, it runs there at its next start), "already there" (nothing to do),
    "pinned" (not running: it moves at its next start) or "not moved" (it did not come up there:
    `instance.state_reason` says why)."""

    outcome: str
    previous: str | None  # the node its data was on; None: on none yet
    node: str  # where it is to run
    now_on: str | None  # the node holding its data now: where it runs when it runs
    instance: InstanceView
    # Between homes: the home it left and the one holding it now, the snapshots its data was sent as
    # (oldest first), their bytes, and how long it did not run (stopped -> running again; None when it
    # was not running).
    previous_home: str | None = None
    home: str | None = None
    copied_snapshots: tuple[str, ...] = ()
    copied_bytes: int = 0
    downtime_seconds: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"outcome": self.outcome, "previous": self.previous, "node": self.node, "now_on": self.now_on,
                "instance": self.instance.to_dict(), "previous_home": self.previous_home, "home": self.home,
                "copied_snapshots": list(self.copied_snapshots), "copied_bytes": self.copied_bytes,
                "downtime_seconds": self.downtime_seconds}


@dataclass(frozen=True)
class StartVerdict:
    healthy: bool
    reason: str


class Operations:
    def __init__(
        self,
        lifecycle: Lifecycle,
        supervisor: Supervisor,
        backups: Backups,
        start_timeout: float,
        edge: EdgeSync | None = None,
        settle_timeout: float = 60.0,
        lock: OperationLock | None = None,
        moves: Moves | None = None,
        memory: MemoryGuard | None = None,
        imports: DataImport | None = None,
    ) -> None:
        """`moves`: moving data between homes (a fleet with [[nomad.homes]]); None, every node shares it.
        `memory`: what a wake must find free on the host; None, wakes are not judged (a cluster places them)."""
        self.lifecycle = lifecycle
        self.provisioning = lifecycle.provisioning
        self.desired = lifecycle.desired
        self.supervisor = supervisor
        self.backups = backups
        self.start_timeout = start_timeout  # how long an upgraded instance has to become healthy
        self.edge = edge
        self.settle_timeout = settle_timeout
        self.lock = lock or OperationLock()
        self.moves = moves
        self.memory = memory
        self.imports = imports

    def _backups(self, actor: str) -> Backups:
        """The backup service, recording its events under `actor`."""
        return self.backups.acting_as(actor)

    def busy(self, name: str) -> str | None:
        """What `name` is busy with right now, or None."""
        return self.lock.busy(name)

    # power --------------------------------------------------------------------------------

    async def create(
        self,
        actor: str,
        name: str,
        release: str,
        license_key: str | None = None,
        owner: str | None = None,
        admin_password: str | None = None,
        start: bool = True,
        extra_hosts: list[str] | None = None,
        node: str | None = None,
    ) -> CreatedInstance:
        """`node`: where the runtime is to place it (a node its nodes() lists, ready now); None, its choice."""
        with self.lock.hold(name, "being created"):
            if node is not None:
                runtime = self.supervisor.runtime
                node = checked_node(node, await runtime.nodes(), runtime.name, runtime.capabilities.multi_node)
            created = await _blocking(self.provisioning.create, actor, name, release, license_key, owner,
                                      admin_password, start, extra_hosts, node)
            await self.supervisor.reconcile()
            if start:
                await self.supervisor.wait_settled(created.instance.name, self.settle_timeout)
                created = CreatedInstance(await self._view(created.instance.name), created.admin_password)
            await self._sync_edge()
            return created

    async def start(self, actor: str, name: str, wait: bool = True) -> InstanceView:
        """Also wakes a sleeping instance (refused when the host has not the memory for it)."""
        with self.lock.hold(name, "starting"):
            sleeping = await self._admitted_if_asleep(actor, name)
            await _blocking(self.desired.set, actor, name, DesiredState.RUNNING)
            if sleeping:
                self.supervisor.wake(name)
            self.supervisor.poke(name)
            return await self._settled(name, wait)

    async def _admitted_if_asleep(self, actor: str, name: str) -> bool:
        """Whether the instance sleeps (and is to be woken); Conflict when the host has not the memory."""
        if (await self._view(name)).state != InstanceState.SLEEPING.value:
            return False
        if full := await self._admit_wake(actor, name):
            raise Conflict(f"{name} is asleep and stays so: {full}",
                           "stop an instance that is not in use, or raise the host's memory")
        return True

    async def wake(self, actor: str, name: str) -> str | None:
        """Start a sleeping instance (someone visits it), without waiting for it to come up. Returns why
        it stays asleep (the host is full), or None: it is waking, or was not asleep. Visits at once
        cause one start: the first holds the instance, the others are told it is busy (InstanceBusy)."""
        with self.lock.hold(name, "waking"):
            state = (await self._view(name)).state
            if not (state == InstanceState.SLEEPING.value
                    or (state == InstanceState.STOPPING.value and self.supervisor.falling_asleep(name))):
                return None
            if full := await self._admit_wake(actor, name):
                return full
            if self.supervisor.wake(name):
                await _blocking(self.lifecycle.events.record, "instance.wake", name, Outcome.OK, "", actor)
            return None

    async def _admit_wake(self, actor: str, name: str) -> str | None:
        if self.memory is None or (full := self.memory.admit(name)) is None:
            return None
        await _blocking(self.lifecycle.events.record, "instance.wake", name, Outcome.REFUSED, full, actor)
        return full

    async def stop(self, actor: str, name: str, wait: bool = True) -> InstanceView:
        with self.lock.hold(name, "stopping"):
            await _blocking(self.desired.set, actor, name, DesiredState.STOPPED)
            self.supervisor.poke(name)
            return await self._settled(name, wait)

    async def restart(self, actor: str, name: str, wait: bool = True) -> InstanceView:
        with self.lock.hold(name, "restarting"):
            sleeping = await self._admitted_if_asleep(actor, name)
            await _blocking(self.desired.set, actor, name, DesiredState.RUNNING, "restart")
            if sleeping:  # nothing runs to restart: woken, it starts
                self.supervisor.wake(name)
            else:
                await self.supervisor.restart(name)
            return await self._settled(name, wait)

    # Foundry's secrets --------------------------------------------------------------------

    async def set_license(self, actor: str, name: str, license_key: str) -> InstanceView:
        """Write the license key; a running instance is restarted, since Foundry reads it at start."""
        with self.lock.hold(name, "setting the license"):
            await _blocking(self.provisioning.set_license, actor, name, license_key)
            return await self._restart_if_running(name)

    async def reset_admin_password(self, actor: str, name: str, password: str | None) -> tuple[InstanceView, str | None]:
        """Set (or generate: returned, never stored in clear) the admin password; a running instance is
        restarted, since Foundry reads its admin key at start."""
        with self.lock.hold(name, "resetting the admin password"):
            generated = await _blocking(self.provisioning.set_admin_password, actor, name, password)
            return await self._restart_if_running(name), generated

    async def _restart_if_running(self, name: str) -> InstanceView:
        view = await self._view(name)
        if view.state not in (InstanceState.RUNNING.value, InstanceState.STARTING.value):
            return view  # it reads the new file at its next start
        await self.supervisor.restart(name)
        return await self._settled(name, True)

    async def move(self, actor: str, name: str, node: str) -> Moved:
        """Run the instance on another node. On a node of the same home: re-pinned there (kept in its desired
        state), then restarted, its runtime moving it as it starts (a start interrupted half-way is finished
        by the next one); a stopped instance is only re-pinned: it moves at its next start. On a node of
        another home its data is sent there first (`_move_home`)."""
        with self.lock.hold(name, "moving"):
            was = await self._view(name)
            runtime = self.supervisor.runtime
            multi = runtime.capabilities.multi_node
            source = await runtime.data_node(name) if multi else None
            target = checked_move(name, node, source, await runtime.nodes() if multi else [], runtime.name, multi,
                                  sends_data=self.moves is not None)
            if self.moves is not None and self.moves.home_of_node(target) != was.home:
                return await self._move_home(actor, was, source, target)
            if source == target:
                if was.node not in (None, target):  # a move elsewhere that had not happened yet is called off
                    await _blocking(self.desired.set_node, actor, name, target, source)
                return Moved("already there", source, target, source, await self._view(name))
            await _blocking(self.desired.set_node, actor, name, target, source)
            if was.desired != DesiredState.RUNNING.value or was.state == InstanceState.SLEEPING.value:
                return Moved("pinned", source, target, source, await self._view(name))  # it moves as it wakes
            await _blocking(self.desired.set, actor, name, DesiredState.RUNNING, f"moving to node {target}")
            await self.supervisor.restart(name)
            view = await self._settled(name, True)
            now_on = await runtime.data_node(name)
            moved = view.state == InstanceState.RUNNING.value and now_on == target
            if moved:
                await _blocking(self.lifecycle.events.record, "instance.moved", name, Outcome.OK,
                                f"{source or 'no node'} -> {target}", actor)
            return Moved("moved" if moved else "not moved", source, target, now_on, view)

    async def _move_home(self, actor: str, was: InstanceView, source: str | None, target: str) -> Moved:
        """Send the instance's data to the target node's home, with little downtime: a snapshot copied while
        it runs, then stopped, a final snapshot and only the difference copied, the commit (services/moves.py)
        and a start there. A failure before the commit discards the target's copy and leaves it running where
        it was; the journal lets the next daemon start do the same after a crash."""
        assert self.moves is not None
        moves, name = self.moves, was.name
        backups = self._backups(actor)
        # A sleeping instance moves like a stopped one (nothing to stop) and sleeps on where it is sent.
        running = was.desired == DesiredState.RUNNING.value and was.state != InstanceState.SLEEPING.value
        await _blocking(backups.check_room, name)  # a refused snapshot, before anything is under way
        target_home = moves.home_of_node(target)
        await _blocking(moves.reach, target_home)  # a home whose host does not answer: refused, nothing begun
        move = await _blocking(moves.begin, actor, name, was.home, target_home, source, target, running)
        snapshots: list[str] = []
        sent = 0
        stopped_at: float | None = None
        try:
            await _blocking(backups.take, name, "move")
            first = await _blocking(moves.copy, move, was.uid)
            snapshots, sent = list(first.snapshots), first.bytes
            # The release install needs nothing stopped (it lays out install/, not data/): done while it
            # still runs, it stays out of the downtime, and a failure still comes before the commit.
            await _blocking(moves.install_at_target, move)
            if running:
                stopped_at = time.monotonic()
                await self._stop_and_wait(actor, name, f"moving to node {target}")
                await _blocking(backups.take, name, "move")
                final = await _blocking(moves.copy, move, was.uid)
                snapshots, sent = snapshots + list(final.snapshots), sent + final.bytes
            move = await _blocking(moves.commit, actor, move, len(snapshots), sent)
        except Exception as e:
            why = e.message if isinstance(e, FleetError) else f"{type(e).__name__}: {e}"
            await _blocking(moves.roll_back, actor, move, why)
            if running:
                self.supervisor.poke(name)
                await self._settled(name, True)
            raise
        # Committed: whatever happens now, the move is finished (the source copy archived, the journal closed).
        downtime: float | None = None
        up = False
        try:
            view = await self._view(name)
            if running:
                await _blocking(self.desired.set, actor, name, DesiredState.RUNNING, f"moved to node {target}")
                self.supervisor.poke(name)
                view = await self._settled(name, True)
                downtime = None if stopped_at is None else round(time.monotonic() - stopped_at, 3)
            up = view.state == InstanceState.RUNNING.value
        finally:
            await _blocking(moves.finish, actor, move,
                            f"{len(snapshots)} snapshot(s), {sent} bytes copied"
                            + (f", {downtime:.1f} s down" if downtime is not None and up else ""))
            self.lifecycle.changes.notify()
        outcome = "moved" if up or not running else "not moved"
        return Moved(outcome, source, target, target, view, previous_home=move.source_home, home=move.target_home,
                     copied_snapshots=tuple(snapshots), copied_bytes=sent,
                     downtime_seconds=downtime if up else None)

    async def suspend(self, actor: str, name: str, reason: str) -> InstanceView:
        """Stop the instance and keep it stopped: its tenant cannot start it until it is resumed."""
        with self.lock.hold(name, "being suspended"):
            await _blocking(self.desired.suspend, actor, name, reason)
            self.supervisor.poke(name)
            return await self._settled(name, True)

    async def resume(self, actor: str, name: str) -> InstanceView:
        with self.lock.hold(name, "resuming"):
            await _blocking(self.desired.resume, actor, name)
            self.supervisor.poke(name)
            return await self._settled(name, True)

    async def delete(self, actor: str, name: str, purge: bool = False) -> Deleted:
        """Stop, take a final snapshot, then archive (or purge) the data and forget the instance."""
        with self.lock.hold(name, "being deleted"):
            # Stopped first, so no reconcile can start it again while it is being removed.
            await _blocking(self.desired.set, actor, name, DesiredState.STOPPED, "deleting")
            await self.supervisor.remove(name)
            final = await _blocking(self._backups(actor).final_backup, name, purge)
            kept = await _blocking(self.provisioning.delete, actor, name, purge)
            await self._sync_edge()
            return Deleted(name, kept, final)

    async def set_idle_after(self, actor: str, name: str, idle_after: str) -> InstanceView:
        """Its own idle time before it sleeps ("2h", "off", or "fleet" to follow the fleet's)."""
        return await _blocking(self.desired.set_idle_after, actor, name, idle_after)

    async def set_hosts(self, actor: str, name: str, extra_hosts: list[str]) -> InstanceView:
        with self.lock.hold(name, "changing its hostnames"):
            view = await _blocking(self.lifecycle.hostnames.acting_as(actor).set_extra_hosts, name, extra_hosts)
            self.lifecycle.changes.notify()
            await self._sync_edge()
            return view

    # backups ------------------------------------------------------------------------------

    async def take_backup(self, actor: str, name: str, label: str = "manual") -> SnapshotInfo:
        with self.lock.hold(name, "being backed up"):
            return await _blocking(self._backups(actor).take, name, label)

    async def set_backup_plan(self, actor: str, name: str, plan: str | None) -> str:
        """Give the instance its own plan, or None to follow the fleet's; returns the plan it now follows."""
        return await _blocking(self._backups(actor).set_plan, name, plan)

    async def restore(self, actor: str, name: str, snapshot: str) -> Restored:
        """Stop, keep the current data as a safety snapshot, restore, and start again if it ran."""
        try:
            with self.lock.hold(name, RESTORING):
                was = await self._view(name)
                snapshot = await _blocking(self.backups.choose, name, snapshot)  # NotFound before anything stops
                await self._sync_edge()  # its visitors are told it is being restored, not that it stopped
                await self._stop_and_wait(actor, name, f"restoring {snapshot}")
                try:
                    safety = await _blocking(self._backups(actor).restore, name, snapshot)
                finally:
                    # Never start on half-restored data (a failed restore whose data could not be put back).
                    whole = await _blocking(self.backups.snapshots.restoring, name) is None
                    if was.desired == DesiredState.RUNNING.value and whole:
                        await _blocking(self.desired.set, actor, name, DesiredState.RUNNING, "restored")
                        self.supervisor.poke(name)
                return Restored(safety, await self._settled(name, was.desired == DesiredState.RUNNING.value), snapshot)
        finally:
            await self._sync_edge()  # the restore's page gives way to the state it left

    async def upgrade(self, actor: str, name: str, release: str) -> Upgraded:
        """Snapshot, switch the release, start; back to the old release and data if it is not healthy."""
        with self.lock.hold(name, "being upgraded"):
            backups = self._backups(actor)
            was = await self._view(name)
            if was.release == release:
                raise Conflict(f"instance {name} already runs release {release}")
            await _blocking(self.lifecycle.releases.get, release)  # NotFound before anything stops
            await _blocking(backups.check_room, name)  # a refused pre-upgrade snapshot, before anything stops
            was_running = was.desired == DesiredState.RUNNING.value
            await self._stop_and_wait(actor, name, f"upgrading to {release}")
            snap = await _blocking(backups.take, name, "pre-upgrade")
            try:
                old = (await _blocking(self.desired.switch_release, actor, name, release)).previous
            except Exception:
                if was_running:
                    await self._start_and_judge(actor, name, "upgrade refused")
                raise
            verdict = await self._start_and_judge(actor, name, f"upgraded to {release}")
            if verdict.healthy:
                await _blocking(self.lifecycle.events.record, "instance.upgrade", name, Outcome.OK, f"{old} -> {release}",
                                actor)
                if not was_running:
                    await self._stop_and_wait(actor, name, "was stopped before the upgrade")
                return Upgraded(True, snap.name, verdict.reason, await self._settled(name, True))
            # Not healthy: the old release, and the data as it was before the new one touched it.
            await self._stop_and_wait(actor, name, f"rolling back from {release}")
            await _blocking(self.desired.switch_release, actor, name, old)
            await _blocking(backups.restore, name, snap.name)
            await _blocking(self.lifecycle.events.record, "instance.upgrade", name, Outcome.FAILED,
                            f"{release} was not healthy ({verdict.reason}); rolled back to {old} and snapshot {snap.name}",
                            actor)
            if was_running:
                await self._start_and_judge(actor, name, "rolled back")
            return Upgraded(False, snap.name, verdict.reason, await self._settled(name, True))

    # data in and out ----------------------------------------------------------------------

    async def import_data(self, actor: str, name: str, zip_path: Path, into: str = "Data",
                          replace: bool = False) -> Imported:
        """Unpack a zip into the instance's data: refused with nothing changed when it is unsafe or would
        overwrite without `replace`; else a snapshot, the copy (owned by the instance's uid), and the
        instance stopped only while a world it may hold open is overwritten. A copy that fails half way
        removes what it wrote, and the snapshot brings back what it had overwritten."""
        if self.imports is None:
            raise Unsupported("this daemon does not import data")
        imports, backups = self.imports, self._backups(actor)
        with self.lock.hold(name, "importing data"):
            was = await self._view(name)
            staged = await _blocking(imports.stage, was, zip_path, into, replace)
            try:
                await _blocking(backups.check_room, name)
                snap = await _blocking(backups.take, name, "pre-import")
                running = was.desired == DesiredState.RUNNING.value and was.state == InstanceState.RUNNING.value
                stop = running and staged.replaces_worlds
                if stop:
                    await self._stop_and_wait(actor, name, "importing data")
                try:
                    replaced = await _blocking(imports.apply, staged, was.uid)
                except ImportFailed as e:
                    why = e.cause.message if isinstance(e.cause, FleetError) else f"{type(e.cause).__name__}: {e}"
                    if e.replaced:
                        if running and not stop:
                            stop = True
                            await self._stop_and_wait(actor, name, "import failed: restoring")
                        await _blocking(backups.restore, name, snap.name)
                    await _blocking(self.lifecycle.events.record, "instance.import", name, Outcome.FAILED,
                                    f"{why}; rolled back to snapshot {snap.name}", actor)
                    raise ExternalFailure(f"the import into {name} failed half way ({why})",
                                          f"nothing of it was kept; the data is as in snapshot {snap.name}") from None
                finally:
                    if stop:
                        await _blocking(self.desired.set, actor, name, DesiredState.RUNNING, "data imported")
                        self.supervisor.poke(name)
                        await self._settled(name, True)
            finally:
                await _blocking(imports.discard, staged)
            detail = f"{staged.files} file(s) into {'/'.join(staged.into)}, {replaced} replaced; snapshot {snap.name}"
            await _blocking(self.lifecycle.events.record, "instance.import", name, Outcome.OK, detail, actor)
            return Imported(name, "/".join(staged.into), staged.files, staged.bytes, replaced, snap.name, stop)

    async def export(self, actor: str, name: str) -> Export:
        """The zip of a fresh snapshot (a consistent view of the data however long the zip takes), which
        is removed once the zip has been streamed (services/data_export.py)."""
        backups = self._backups(actor)
        with self.lock.hold(name, "being exported"):
            snap = await _blocking(backups.take, name, "export")
            await _blocking(self.lifecycle.events.record, "instance.export", name, Outcome.OK,
                            f"from snapshot {snap.name}, removed once the zip is sent", actor)

        def remove() -> None:
            try:
                backups.discard(name, snap.name)
            except Exception as e:
                self.lifecycle.events.record("instance.export", name, Outcome.FAILED,
                                             f"its snapshot {snap.name} could not be removed: {e}", actor)
                raise

        try:
            chunks = await _blocking(SnapshotFiles(backups.snapshots).export_stream, name, snap.name)
        except BaseException:
            await _blocking(remove)
            raise
        return Export(name, snap.name, chunks, remove)

    # steps --------------------------------------------------------------------------------

    async def _view(self, name: str) -> InstanceView:
        return await _blocking(self.lifecycle.instances.get, name)

    async def _sync_edge(self) -> None:
        # Answer once players can see the change: the edge serves the new state.
        if self.edge is not None:
            await self.edge.sync()

    async def _settled(self, name: str, wait: bool) -> InstanceView:
        if wait:
            await self.supervisor.wait_settled(name, self.settle_timeout)
            await self._sync_edge()
        return await self._view(name)

    async def _stop_and_wait(self, actor: str, name: str, why: str) -> None:
        await _blocking(self.desired.set, actor, name, DesiredState.STOPPED, why)
        self.supervisor.poke(name)
        await self.supervisor.wait_settled(name, self.settle_timeout)

    async def _start_and_judge(self, actor: str, name: str, why: str) -> StartVerdict:
        """Start and watch: healthy is success; failing, crashing once or not becoming healthy in time
        is failure, with the reason."""
        before = await self._view(name)
        await _blocking(self.desired.set, actor, name, DesiredState.RUNNING, why)
        self.supervisor.poke(name)
        timeout = self.start_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = await self._view(name)
            if view.state == "running":
                return StartVerdict(True, "healthy")
            if view.state == "failed" or view.restarts > before.restarts:
                return StartVerdict(False, view.state_reason)
            await asyncio.sleep(0.2)
        return StartVerdict(False, f"not healthy within {timeout:g}s")
