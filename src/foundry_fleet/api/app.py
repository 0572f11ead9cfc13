"""The control API: a thin adapter that calls the service layer and the supervisor."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from foundry_fleet import __version__
from foundry_fleet.api.endpoints import Endpoint, Param, openapi, routes
from foundry_fleet.domain.errors import Conflict
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.edge.driver import Edge
from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.edge_status import edge_report
from foundry_fleet.runtime.base import Capability
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.services.views import CreatedInstance, EventView, InstanceView


@dataclass
class DaemonInfo:
    pid: int
    started_at: float
    root: str
    capabilities: list[Capability] = field(default_factory=list)


class CreateInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    release: str
    license_key: str | None = None
    owner: str | None = None
    admin_password: str | None = Field(None, description="sent over the 0600 unix socket only; never stored in clear")
    start: bool = True
    extra_hosts: list[str] = Field(default_factory=list, description="hostnames besides <name>.<domain>")


class TakeSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str = "manual"


class SetPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str | None = Field(None, description="znapzend syntax; null follows the fleet's default plan")


class Restore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot: str


class Upgrade(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str


class Suspend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=200)


class SetHosts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extra_hosts: list[str]


WAIT = Param("wait", bool, True, "answer once the instance has settled (running, stopped or failed)")


def create_app(
    fleet: Fleet,
    supervisor: Supervisor,
    info: DaemonInfo,
    edge: Edge | None = None,
    backups: Backups | None = None,
    settle_timeout: float = 60.0,
) -> Starlette:
    if backups is None:
        raise ValueError("create_app needs the backup service (built by the wiring)")

    def backups_for(acting: Fleet) -> Backups:
        assert backups is not None
        return backups.acting_as(acting.actor)
    # One operation at a time per instance: an upgrade or restore takes several steps that a
    # start, stop or delete arriving in between must not interleave with.
    operation_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def one_at_a_time(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def locked(name: str, **kwargs: Any) -> Any:
            async with operation_locks[name]:
                return await handler(name, **kwargs)

        return locked
    # Service calls touch SQLite; keep them off the event loop.
    run = asyncio.to_thread

    async def health() -> dict[str, Any]:
        return {"ok": True, "pid": info.pid, "version": __version__, "started_at": info.started_at, "root": info.root}

    async def status() -> dict[str, Any]:
        instances = await run(fleet.list_instances)
        hosts: list[dict[str, Any]] = []
        if edge is not None:
            # Asked over TLS, like a browser: what each host really serves right now.
            names = sorted(await run(fleet.known_hosts))
            certs = await asyncio.gather(*(run(edge.certificate, h) for h in names))
            hosts = [c.__dict__ for c in certs]
        edge_state = await run(edge.status) if edge is not None else None
        return {
            "daemon": {"running": True, "pid": info.pid, "started_at": info.started_at, "root": info.root},
            "capabilities": [c.__dict__ for c in info.capabilities],
            "instances": [i.to_dict() for i in instances],
            "hosts": hosts,
            "edge": await run(edge_report, fleet.hostnames, edge_state),
        }

    async def list_instances() -> list[dict[str, Any]]:
        return [i.to_dict() for i in await run(fleet.list_instances)]

    async def get_instance(name: str) -> dict[str, Any]:
        return (await run(fleet.get_instance, name)).to_dict()

    async def create_instance(body: CreateInstance, actor: str) -> dict[str, Any]:
        created = await run(fleet.acting_as(actor).create_instance, body.name, body.release, body.license_key, body.owner,
                            body.admin_password, body.start, body.extra_hosts)
        await supervisor.reconcile()
        if body.start:
            await supervisor.wait_settled(body.name, settle_timeout)
            created = CreatedInstance(await run(fleet.get_instance, body.name), created.admin_password)
        await edge_sync()
        return created.to_dict()

    async def edge_sync() -> None:
        # Answer once players can see the change: the edge serves the new state.
        if edge is not None:
            await edge.sync()

    async def settle(name: str, wait: bool) -> dict[str, Any]:
        if wait:
            await supervisor.wait_settled(name, settle_timeout)
            await edge_sync()
        return (await run(fleet.get_instance, name)).to_dict()

    @one_at_a_time
    async def start_instance(name: str, wait: bool, actor: str) -> dict[str, Any]:
        await run(fleet.acting_as(actor).set_desired, name, DesiredState.RUNNING)
        supervisor.poke(name)
        return await settle(name, wait)

    @one_at_a_time
    async def stop_instance(name: str, wait: bool, actor: str) -> dict[str, Any]:
        await run(fleet.acting_as(actor).set_desired, name, DesiredState.STOPPED)
        supervisor.poke(name)
        return await settle(name, wait)

    @one_at_a_time
    async def restart_instance(name: str, wait: bool, actor: str) -> dict[str, Any]:
        await run(fleet.acting_as(actor).set_desired, name, DesiredState.RUNNING, "restart")
        await supervisor.restart(name)
        return await settle(name, wait)

    @one_at_a_time
    async def delete_instance(name: str, purge: bool, actor: str) -> dict[str, Any]:
        acting = fleet.acting_as(actor)
        # Stopped first, so no reconcile can start it again while it is being removed.
        await run(acting.set_desired, name, DesiredState.STOPPED, "deleting")
        await supervisor.remove(name)
        final = await run(backups_for(acting).final_backup, name, purge)
        kept = await run(acting.delete_instance, name, purge)
        await edge_sync()
        return {"deleted": name, "kept_at": kept, "final_snapshot": final}

    async def set_hosts(name: str, body: SetHosts, actor: str) -> dict[str, Any]:
        view = await run(fleet.acting_as(actor).set_extra_hosts, name, body.extra_hosts)
        await edge_sync()
        return view.to_dict()

    async def take_snapshot(name: str, body: TakeSnapshot, actor: str) -> dict[str, Any]:
        return (await run(backups_for(fleet.acting_as(actor)).take, name, body.label)).to_dict()

    async def list_snapshots(name: str) -> list[dict[str, Any]]:
        return [s.to_dict() for s in await run(backups.list, name)]

    async def backup_status(name: str | None) -> dict[str, Any]:
        return await run(backups.status, name)

    async def set_plan(name: str, body: SetPlan, actor: str) -> dict[str, Any]:
        return {"plan": await run(backups_for(fleet.acting_as(actor)).set_plan, name, body.plan)}

    @one_at_a_time
    async def restore(name: str, body: Restore, actor: str) -> dict[str, Any]:
        """Stop, keep the current data as a safety snapshot, restore, and start again if it ran."""
        acting = fleet.acting_as(actor)
        was = await run(fleet.get_instance, name)
        await run(backups.snapshots.path, name, body.snapshot)  # 404 before anything stops
        await run(acting.set_desired, name, DesiredState.STOPPED, f"restoring {body.snapshot}")
        supervisor.poke(name)
        await supervisor.wait_settled(name, settle_timeout)
        try:
            safety = await run(backups_for(acting).restore, name, body.snapshot)
        finally:
            # Never start on half-restored data (a failed restore whose data could not be put back).
            whole = await run(backups.snapshots.restoring, name) is None
            if was.desired == DesiredState.RUNNING.value and whole:
                await run(acting.set_desired, name, DesiredState.RUNNING, "restored")
                supervisor.poke(name)
        view = await settle(name, was.desired == DesiredState.RUNNING.value)
        return {"safety_snapshot": safety, "instance": view}

    async def stop_and_wait(acting: Fleet, name: str, why: str) -> None:
        await run(acting.set_desired, name, DesiredState.STOPPED, why)
        supervisor.poke(name)
        await supervisor.wait_settled(name, settle_timeout)

    async def start_and_judge(acting: Fleet, name: str, why: str) -> tuple[bool, str]:
        """Start and watch: healthy is success; failing, crashing once or not becoming healthy in
        time is failure (with the reason)."""
        before = await run(fleet.get_instance, name)
        await run(acting.set_desired, name, DesiredState.RUNNING, why)
        supervisor.poke(name)
        deadline = time.monotonic() + fleet.config.supervisor.start_timeout
        while time.monotonic() < deadline:
            view = await run(fleet.get_instance, name)
            if view.state == "running":
                return True, "healthy"
            if view.state == "failed" or view.restarts > before.restarts:
                return False, view.state_reason
            await asyncio.sleep(0.2)
        return False, f"not healthy within {fleet.config.supervisor.start_timeout:g}s"

    @one_at_a_time
    async def upgrade(name: str, body: Upgrade, actor: str) -> dict[str, Any]:
        """Snapshot, switch the release, start; back to the old release and data if it is not healthy."""
        acting = fleet.acting_as(actor)
        was = await run(fleet.get_instance, name)
        if was.release == body.release:
            raise Conflict(f"instance {name} already runs release {body.release}")
        await run(fleet.get_release, body.release)  # 404 before anything stops
        await run(backups_for(acting).check_room, name)  # a refused pre-upgrade snapshot, before anything stops
        await stop_and_wait(acting, name, f"upgrading to {body.release}")
        snap = await run(backups_for(acting).take, name, "pre-upgrade")
        try:
            old = await run(acting.switch_release, name, body.release)
        except Exception:
            if was.desired == DesiredState.RUNNING.value:
                await start_and_judge(acting, name, "upgrade refused")
            raise
        ok, why = await start_and_judge(acting, name, f"upgraded to {body.release}")
        if ok:
            await run(acting.record_event, "instance.upgrade", name, Outcome.OK, f"{old} -> {body.release}")
            if was.desired != DesiredState.RUNNING.value:
                await stop_and_wait(acting, name, "was stopped before the upgrade")
            return {"upgraded": True, "snapshot": snap.name, "reason": why, "instance": await settle(name, True)}
        # Not healthy: the old release, and the data as it was before the new one touched it.
        await stop_and_wait(acting, name, f"rolling back from {body.release}")
        await run(acting.switch_release, name, old)
        await run(backups_for(acting).restore, name, snap.name)
        await run(acting.record_event, "instance.upgrade", name, Outcome.FAILED,
                  f"{body.release} was not healthy ({why}); rolled back to {old} and snapshot {snap.name}")
        if was.desired == DesiredState.RUNNING.value:
            await start_and_judge(acting, name, "rolled back")
        return {"upgraded": False, "snapshot": snap.name, "reason": why, "instance": await settle(name, True)}

    async def edge_config() -> dict[str, Any]:
        return await run(edge.config) if edge is not None else {}

    async def list_events(target: str | None, limit: int) -> list[dict[str, Any]]:
        return [e.to_dict() for e in await run(fleet.events, target, limit)]

    async def instance_logs(name: str, lines: int) -> dict[str, Any]:
        return {"name": name, "lines": await run(fleet.log_tail, name, min(lines, 1000))}

    async def list_releases() -> list[dict[str, Any]]:
        return [r.to_dict() for r in await run(fleet.list_releases)]

    @one_at_a_time
    async def suspend(name: str, body: Suspend, actor: str) -> dict[str, Any]:
        await run(fleet.acting_as(actor).suspend, name, body.reason)
        supervisor.poke(name)
        return await settle(name, True)

    @one_at_a_time
    async def resume(name: str, actor: str) -> dict[str, Any]:
        await run(fleet.acting_as(actor).resume, name)
        supervisor.poke(name)
        return await settle(name, True)

    async def reconcile() -> dict[str, bool]:
        await supervisor.reconcile(poke=True)
        return {"ok": True}

    table = [
        Endpoint("GET", "/v1/health", "Is the daemon up?", health),
        Endpoint("GET", "/v1/status", "The daemon, the host's capabilities and every instance", status),
        Endpoint("GET", "/v1/instances", "Every instance (a tenant sees their own)", list_instances,
                 returns=list[InstanceView], tenant_action="mine"),
        Endpoint("POST", "/v1/instances", "Create an instance (and start it unless start is false)",
                 create_instance, body=CreateInstance, status=201, changes_state=True),
        Endpoint("GET", "/v1/instances/{name}", "One instance", get_instance, returns=InstanceView,
                 tenant_action="view"),
        Endpoint("GET", "/v1/instances/{name}/logs", "The last lines of an instance's server log", instance_logs,
                 query=(Param("lines", int, 50, "how many (at most 1000)"),), tenant_action="logs"),
        Endpoint("POST", "/v1/instances/{name}/suspend", "Stop an instance and keep it stopped until resumed",
                 suspend, body=Suspend, returns=InstanceView, changes_state=True),
        Endpoint("POST", "/v1/instances/{name}/resume", "Lift a suspension and start the instance",
                 resume, returns=InstanceView, changes_state=True),
        Endpoint("GET", "/v1/releases", "Releases in the cache", list_releases, tenant_action="anyone"),
        Endpoint("POST", "/v1/instances/{name}/start", "Start an instance (also after it failed)",
                 start_instance, query=(WAIT,), returns=InstanceView, changes_state=True, tenant_action="start"),
        Endpoint("POST", "/v1/instances/{name}/stop", "Stop an instance gracefully",
                 stop_instance, query=(WAIT,), returns=InstanceView, changes_state=True, tenant_action="stop"),
        Endpoint("POST", "/v1/instances/{name}/restart", "Restart an instance",
                 restart_instance, query=(WAIT,), returns=InstanceView, changes_state=True,
                 tenant_action="restart"),
        Endpoint("DELETE", "/v1/instances/{name}", "Delete an instance; its data is archived unless purge",
                 delete_instance, query=(Param("purge", bool, False, "destroy the data too"),), changes_state=True),
        Endpoint("PUT", "/v1/instances/{name}/hosts", "Set the hostnames an instance answers on besides its own",
                 set_hosts, body=SetHosts, returns=InstanceView, changes_state=True),
        Endpoint("GET", "/v1/edge/config", "The Caddy configuration the edge serves", edge_config),
        Endpoint("POST", "/v1/instances/{name}/backups", "Take a manual snapshot (never thinned)",
                 take_snapshot, body=TakeSnapshot, status=201, changes_state=True, tenant_action="backup"),
        Endpoint("GET", "/v1/instances/{name}/backups", "An instance's snapshots, oldest first", list_snapshots,
                 tenant_action="backups"),
        Endpoint("GET", "/v1/backups/status", "Snapshots per instance, and where each backup destination stands",
                 backup_status, query=(Param("name", str, None, "only this instance"),)),
        Endpoint("PUT", "/v1/instances/{name}/backup-plan", "Set (or clear) an instance's own snapshot plan",
                 set_plan, body=SetPlan, changes_state=True, tenant_action="backup-plan"),
        Endpoint("POST", "/v1/instances/{name}/upgrade",
                 "Upgrade to another release: snapshot first, roll back if it does not become healthy",
                 upgrade, body=Upgrade, changes_state=True, tenant_action="upgrade"),
        Endpoint("POST", "/v1/instances/{name}/restore",
                 "Restore a snapshot: stop, keep the current data as a safety snapshot, restore, restart",
                 restore, body=Restore, changes_state=True, tenant_action="restore"),
        Endpoint("GET", "/v1/events", "The event log, oldest first", list_events,
                 query=(Param("target", str, None, "only events about this target"), Param("limit", int, 50)),
                 returns=list[EventView]),
        Endpoint("POST", "/v1/reconcile", "Re-read the desired state now", reconcile),
    ]
    schema = openapi(table, "foundry-fleet control API")

    async def openapi_json(_request: Request) -> JSONResponse:
        return JSONResponse(schema)

    return Starlette(routes=[*routes(table, Access(fleet.instances, frozenset(fleet.config.discord.admin_users))), Route("/openapi.json", openapi_json, methods=["GET"])])
