"""The control API: a thin adapter that parses a request, calls the operations (or a read of the
service layer) and renders the answer as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from foundry_fleet import __version__
from foundry_fleet.api.endpoints import Endpoint, Param, openapi, routes
from foundry_fleet.api.streaming import ClosingStream
from foundry_fleet.domain.errors import InvalidInput, Unsupported
from foundry_fleet.domain.instance import DAEMON_FIGURES
from foundry_fleet.services.access import Access
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.config_reload import ConfigChanges
from foundry_fleet.services.edge_status import edge_report
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.operations import Operations
from foundry_fleet.services.panel_sessions import LINK_SECONDS
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.services.daemon_info import DaemonInfo
from foundry_fleet.services.edge_port import FleetEdge
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.services.views import EventView, InstanceStatusView, InstanceView

if TYPE_CHECKING:
    from foundry_fleet.services.runtime_images import ReleaseImage


class CreateInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    release: str
    license_key: str | None = None
    owner: str | None = None
    admin_password: str | None = Field(None, description="sent over the 0600 unix socket only; never stored in clear")
    start: bool = True
    extra_hosts: list[str] = Field(default_factory=list, description="hostnames besides <name>.<domain>")
    node: str | None = Field(None, description="the node to place it on (as `status` lists the runtime's nodes); "
                                               "null lets the runtime choose")


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


class MoveInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="the node to run it on, as `status` lists the runtime's nodes")


class SetHosts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extra_hosts: list[str]


class SetIdleAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idle_after: str = Field(max_length=40, description="a duration such as 2h or 60min, off, or fleet")


class SetLicense(BaseModel):
    model_config = ConfigDict(extra="forbid")

    license_key: str = Field(max_length=200, description="sent over the 0600 unix socket only")


class ResetAdminPassword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, max_length=1000, description="null: generate one, answered once")


@dataclass(frozen=True)
class Reads:
    """The services the control API reads from (every change goes through the operations)."""

    instances: InstanceViews
    hostnames: Hostnames
    events: EventLog
    releases: ReleaseRegistry
    access: Access  # who may call which endpoint


WAIT = Param("wait", bool, True, "answer once the instance has settled (running, stopped or failed)")


def create_app(
    reads: Reads,
    operations: Operations,
    supervisor: Supervisor,
    backups: Backups,
    info: DaemonInfo,
    edge: FleetEdge | None = None,
    runtime_images: Callable[[], Awaitable[list[ReleaseImage]]] | None = None,
    runtime_nodes: Callable[[], Awaitable[tuple[list[dict[str, Any]] | None, str | None]]] | None = None,
    panel_link: Callable[[str], str] | None = None,
    figures: Callable[[list[InstanceView]], dict[str, dict[str, Any]]] | None = None,
    reload: Callable[[str], ConfigChanges] | None = None,
) -> Starlette:
    """`figures`: each instance's figures by name (domain.instance.DAEMON_FIGURES), from what the daemon holds in memory
    (the web panel's cards); None: every figure null.
    `runtime_images`: for a runtime that runs images, whether each cached release's image is there;
    `runtime_nodes`: the machines the runtime runs instances on (name, address, health, free memory);
    `panel_link`: a single-use sign-in link to the web panel, for the actor asking;
    `reload`: read fleet.toml again (services/config_reload.py), for the actor asking."""
    ops = operations
    # Reads touch SQLite; keep them off the event loop.
    run = asyncio.to_thread
    unknown = dict.fromkeys(DAEMON_FIGURES)

    async def with_figures(views: list[InstanceView]) -> list[dict[str, Any]]:
        # One read of the rows feeds both. The figures are lookups in memory, but for the snapshots' reading
        # when it is due again (a listing): in a worker thread, like every read of the disk.
        found = await run(figures, views) if figures is not None else {}
        return [{**v.to_dict(), **found.get(v.name, unknown)} for v in views]

    async def health() -> dict[str, Any]:
        return {"ok": True, "pid": info.pid, "version": __version__, "started_at": info.started_at, "root": info.root}

    async def status() -> dict[str, Any]:
        instances = await run(reads.instances.list)
        hosts: list[dict[str, Any]] = []
        if edge is not None:
            # Asked over TLS, like a browser: what each host really serves right now.
            names = sorted(await run(reads.hostnames.known_hosts))
            certs = await asyncio.gather(*(run(edge.certificate, h) for h in names))
            hosts = [c.__dict__ for c in certs]
        edge_state = await run(edge.status) if edge is not None else None
        return {
            "daemon": {"running": True, "pid": info.pid, "started_at": info.started_at, "root": info.root},
            "capabilities": [c.__dict__ for c in info.capabilities],
            "runtime": await runtime_block(),
            "instances": await with_figures(instances),
            "hosts": hosts,
            "edge": await run(edge_report, reads.hostnames, edge_state),
        }

    async def runtime_block() -> dict[str, Any] | None:
        if info.runtime is None:
            return None
        block = info.runtime.to_dict()
        block["images"] = [i.to_dict() for i in await runtime_images()] if runtime_images is not None else None
        block["nodes"], block["nodes_problem"] = await runtime_nodes() if runtime_nodes is not None else (None, None)
        return block

    async def list_instances() -> list[dict[str, Any]]:
        return await with_figures(await run(reads.instances.list))

    async def get_instance(name: str) -> dict[str, Any]:
        return (await with_figures([await run(reads.instances.get, name)]))[0]

    async def create_instance(body: CreateInstance, actor: str) -> dict[str, Any]:
        created = await ops.create(actor, body.name, body.release, body.license_key, body.owner, body.admin_password,
                                   body.start, body.extra_hosts, body.node)
        return created.to_dict()

    async def start_instance(name: str, wait: bool, actor: str) -> dict[str, Any]:
        return (await ops.start(actor, name, wait)).to_dict()

    async def stop_instance(name: str, wait: bool, actor: str) -> dict[str, Any]:
        return (await ops.stop(actor, name, wait)).to_dict()

    async def restart_instance(name: str, wait: bool, actor: str) -> dict[str, Any]:
        return (await ops.restart(actor, name, wait)).to_dict()

    async def delete_instance(name: str, purge: bool, actor: str) -> dict[str, Any]:
        return (await ops.delete(actor, name, purge)).to_dict()

    moves_under_way: set[asyncio.Task[Any]] = set()

    async def move_instance(name: str, body: MoveInstance, actor: str) -> dict[str, Any]:
        # A move between homes stops the instance, sends its data and starts it elsewhere: a client that
        # gives up waiting (a timeout, a closed connection) must not cut that short half way.
        move = asyncio.ensure_future(ops.move(actor, name, body.node))
        moves_under_way.add(move)
        move.add_done_callback(moves_under_way.discard)
        return (await asyncio.shield(move)).to_dict()

    async def set_hosts(name: str, body: SetHosts, actor: str) -> dict[str, Any]:
        return (await ops.set_hosts(actor, name, body.extra_hosts)).to_dict()

    async def set_idle_after(name: str, body: SetIdleAfter, actor: str) -> dict[str, Any]:
        return (await ops.set_idle_after(actor, name, body.idle_after)).to_dict()

    async def set_license(name: str, body: SetLicense, actor: str) -> dict[str, Any]:
        return (await ops.set_license(actor, name, body.license_key)).to_dict()

    async def reset_admin_password(name: str, body: ResetAdminPassword, actor: str) -> dict[str, Any]:
        view, generated = await ops.reset_admin_password(actor, name, body.password)
        return {"instance": view.to_dict(), "admin_password": generated}

    async def take_snapshot(name: str, body: TakeSnapshot, actor: str) -> dict[str, Any]:
        return (await ops.take_backup(actor, name, body.label)).to_dict()

    async def list_snapshots(name: str) -> list[dict[str, Any]]:
        return [s.to_dict() for s in await run(backups.list, name)]

    async def backup_status(name: str | None) -> dict[str, Any]:
        return await run(backups.status, name)

    async def set_plan(name: str, body: SetPlan, actor: str) -> dict[str, Any]:
        return {"plan": await ops.set_backup_plan(actor, name, body.plan)}

    async def restore(name: str, body: Restore, actor: str) -> dict[str, Any]:
        return (await ops.restore(actor, name, body.snapshot)).to_dict()

    async def upgrade(name: str, body: Upgrade, actor: str) -> dict[str, Any]:
        return (await ops.upgrade(actor, name, body.release)).to_dict()

    async def import_data(name: str, into: str, replace: bool, url: str | None, source: str | None,
                          upload: AsyncIterator[bytes], actor: str) -> dict[str, Any]:
        # The zip comes in the request (or from a link the daemon downloads), never as a path: the daemon
        # (root, with a /tmp of its own under systemd) opens no file on a caller's say-so.
        if ops.imports is None:
            raise Unsupported("this daemon does not import data")
        if url:
            await run(reads.instances.get, name)  # NotFound before a download
        if source and not url:
            raise InvalidInput("a source goes with a link", "give the url the zip is at")
        path = await run(ops.imports.fetch, name, url, source) if url else await run(ops.imports.upload_path, name)
        try:
            with await run(open, path, "ab") as f:
                size = 0
                async for chunk in upload:
                    size += len(chunk)
                    if url and size:
                        raise InvalidInput("give a link or send a zip, not both")
                    if size > ops.imports.limits.max_unpacked_bytes:
                        raise InvalidInput("the zip is larger than the import limit",
                                           "raise [releases] max_unpacked_mb in fleet.toml")
                    await run(f.write, chunk)
            return (await ops.import_data(actor, name, path, into, replace)).to_dict()
        finally:
            await run(path.unlink, True)

    async def export_data(name: str, actor: str) -> StreamingResponse:
        export = await ops.export(actor, name)
        return ClosingStream(export.stream(), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{name}-{export.snapshot}.zip"'})

    async def edge_config() -> dict[str, Any]:
        return await run(edge.config) if edge is not None else {}

    async def list_events(target: str | None, limit: int) -> list[dict[str, Any]]:
        return [e.to_dict() for e in await run(reads.events.recent, target, limit)]

    async def instance_logs(name: str, lines: int) -> dict[str, Any]:
        await run(reads.instances.get, name)  # NotFound for an instance that does not exist
        return {"name": name, "lines": [line async for line in supervisor.logs(name, max(0, min(lines, 1000)))]}

    async def list_releases() -> list[dict[str, Any]]:
        return [r.to_dict() for r in await run(reads.releases.list)]

    async def suspend(name: str, body: Suspend, actor: str) -> dict[str, Any]:
        return (await ops.suspend(actor, name, body.reason)).to_dict()

    async def resume(name: str, actor: str) -> dict[str, Any]:
        return (await ops.resume(actor, name)).to_dict()

    async def panel_login_link(actor: str) -> dict[str, Any]:
        if panel_link is None:
            raise Unsupported("this daemon does not serve the web panel", "see [panel] in fleet.toml")
        return {"url": await run(panel_link, actor), "expires_in": LINK_SECONDS}

    async def reload_config(actor: str) -> dict[str, Any]:
        if reload is None:
            raise Unsupported("this daemon cannot read fleet.toml again", "restart it (`foundry-fleet up`)")
        changes = await run(reload, actor)
        return {**changes.to_dict(), "summary": changes.describe()}

    async def reconcile() -> dict[str, bool]:
        await supervisor.reconcile(poke=True)
        return {"ok": True}

    table = [
        Endpoint("GET", "/v1/health", "Is the daemon up?", health),
        Endpoint("GET", "/v1/status", "The daemon, the host's capabilities and every instance", status),
        Endpoint("GET", "/v1/instances", "Every instance (a tenant sees their own)", list_instances,
                 returns=list[InstanceStatusView], tenant_action="mine"),
        Endpoint("POST", "/v1/instances", "Create an instance (and start it unless start is false)",
                 create_instance, body=CreateInstance, status=201, changes_state=True),
        Endpoint("GET", "/v1/instances/{name}", "One instance", get_instance, returns=InstanceStatusView,
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
        # Fleet-level, like suspend: which machine a tenant runs on is the fleet admins' business.
        Endpoint("POST", "/v1/instances/{name}/move",
                 "Run an instance on another node: re-pinned, then restarted there; to a node of another home its "
                 "data is sent there first, and the answer says what was copied and the downtime (a stopped one "
                 "moves at its next start)", move_instance, body=MoveInstance, changes_state=True),
        Endpoint("PUT", "/v1/instances/{name}/hosts", "Set the hostnames an instance answers on besides its own",
                 set_hosts, body=SetHosts, returns=InstanceView, changes_state=True),
        # Admins only: how long instances may hold memory unused is the host's business.
        Endpoint("PUT", "/v1/instances/{name}/idle-after",
                 "Set how long an instance may be idle before it sleeps (a duration, off, or fleet)",
                 set_idle_after, body=SetIdleAfter, returns=InstanceView, changes_state=True),
        # Admins only: the key and the admin password are the fleet admins' to hand out.
        Endpoint("PUT", "/v1/instances/{name}/license",
                 "Write the instance's license key (restarted if it runs: Foundry reads it at start)",
                 set_license, body=SetLicense, returns=InstanceView, changes_state=True),
        Endpoint("POST", "/v1/instances/{name}/admin-password",
                 "Set the instance's admin password, or generate one (answered once); restarted if it runs",
                 reset_admin_password, body=ResetAdminPassword, changes_state=True),
        # A tenant imports into their own (a snapshot is taken first); the export stays admins' only: it
        # holds every file of the game.
        Endpoint("POST", "/v1/instances/{name}/import",
                 "Unpack a zip (the request body) into the instance's data: refused unless safe, no overwrite "
                 "without replace, a snapshot first, files owned by the instance's uid", import_data,
                 query=(Param("into", str, "Data", "where, under the data dir (Data or below)"),
                        Param("replace", bool, False, "overwrite files that exist"),
                        Param("url", str, None, "an https link to download the zip from (then no body), by the "
                                                "release downloads' rules"),
                        Param("source", str, None, "discord-attachment: the url is a file attached in Discord, "
                                                   "allowed from Discord's file hosts only")),
                 upload=True, changes_state=True, tenant_action="import"),
        Endpoint("POST", "/v1/instances/{name}/export",
                 "A zip of the instance's Data and Config (no licence, no admin password) from a snapshot "
                 "taken for it, removed once the zip is sent",
                 export_data, changes_state=True),
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
        # Admins only: fleet.toml is the host owner's.
        Endpoint("POST", "/v1/reload", "Read fleet.toml again: apply what can change live, name what needs a restart",
                 reload_config, changes_state=True),
        # Admins only (tenant_action None): the link signs its holder in as a fleet admin.
        Endpoint("POST", "/v1/panel/login-link",
                 "A link that signs a fleet admin in to the web panel, once, within expires_in seconds",
                 panel_login_link, changes_state=True),
    ]
    schema = openapi(table, "foundry-fleet control API")

    async def openapi_json(_request: Request) -> JSONResponse:
        return JSONResponse(schema)

    return Starlette(routes=[*routes(table, reads.access), Route("/openapi.json", openapi_json, methods=["GET"])])
