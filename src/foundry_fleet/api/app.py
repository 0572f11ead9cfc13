"""The control API: a thin adapter that calls the service layer and the supervisor."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from foundry_fleet import __version__
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.runtime.base import Capability
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.services.supervisor import Supervisor

STATUS_CODES = {"invalid": 400, "not_found": 404, "conflict": 409, "unsupported": 422, "external": 502}


@dataclass
class DaemonInfo:
    pid: int
    started_at: float
    root: str
    capabilities: list[Capability] = field(default_factory=list)


class CreateInstance(BaseModel):
    name: str
    release: str
    license_key: str | None = None
    owner: str | None = None
    admin_password: str | None = Field(None, description="sent over the 0600 unix socket only; never stored in clear")
    start: bool = True


def create_app(fleet: Fleet, supervisor: Supervisor, info: DaemonInfo, settle_timeout: float = 60.0) -> FastAPI:
    app = FastAPI(title="foundry-fleet control API", version=__version__, docs_url=None, redoc_url=None)
    # Offloaded service calls touch SQLite; keep them off the event loop.
    run = asyncio.to_thread

    @app.exception_handler(FleetError)
    async def _fleet_error(_request: Request, exc: FleetError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=STATUS_CODES.get(exc.kind, 500))

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "pid": info.pid, "version": __version__, "started_at": info.started_at, "root": info.root}

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        instances = await run(fleet.list_instances)
        return {
            "daemon": {"running": True, "pid": info.pid, "started_at": info.started_at, "root": info.root},
            "capabilities": [c.__dict__ for c in info.capabilities],
            "instances": [i.to_dict() for i in instances],
        }

    @app.get("/v1/instances")
    async def list_instances() -> list[dict[str, Any]]:
        return [i.to_dict() for i in await run(fleet.list_instances)]

    @app.get("/v1/instances/{name}")
    async def get_instance(name: str) -> dict[str, Any]:
        return (await run(fleet.get_instance, name)).to_dict()

    @app.post("/v1/instances", status_code=201)
    async def create_instance(body: CreateInstance) -> dict[str, Any]:
        created = await run(fleet.create_instance, body.name, body.release, body.license_key, body.owner,
                            body.admin_password, body.start)
        await supervisor.reconcile()
        if body.start:
            await supervisor.wait_settled(body.name, settle_timeout)
            created = type(created)((await run(fleet.get_instance, body.name)), created.admin_password)
        return created.to_dict()

    @app.post("/v1/instances/{name}/start")
    async def start(name: str, wait: bool = True) -> dict[str, Any]:
        await run(fleet.set_desired, name, DesiredState.RUNNING)
        supervisor.poke(name)
        if wait:
            await supervisor.wait_settled(name, settle_timeout)
        return (await run(fleet.get_instance, name)).to_dict()

    @app.post("/v1/instances/{name}/stop")
    async def stop(name: str, wait: bool = True) -> dict[str, Any]:
        await run(fleet.set_desired, name, DesiredState.STOPPED)
        supervisor.poke(name)
        if wait:
            await supervisor.wait_settled(name, settle_timeout)
        return (await run(fleet.get_instance, name)).to_dict()

    @app.post("/v1/instances/{name}/restart")
    async def restart(name: str, wait: bool = True) -> dict[str, Any]:
        await run(fleet.set_desired, name, DesiredState.RUNNING, "restart")
        await supervisor.restart(name)
        if wait:
            await supervisor.wait_settled(name, settle_timeout)
        return (await run(fleet.get_instance, name)).to_dict()

    @app.delete("/v1/instances/{name}")
    async def delete(name: str, purge: bool = False) -> dict[str, Any]:
        # Stopped first, so no reconcile can start it again while it is being removed.
        await run(fleet.set_desired, name, DesiredState.STOPPED, "deleting")
        await supervisor.remove(name)
        kept = await run(fleet.delete_instance, name, purge)
        return {"deleted": name, "kept_at": kept}

    @app.get("/v1/events")
    async def events(target: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [e.to_dict() for e in await run(fleet.events, target, limit)]

    @app.post("/v1/reconcile")
    async def reconcile() -> dict[str, bool]:
        await supervisor.reconcile()
        return {"ok": True}

    return app
