"""Endpoints as data: one table drives both the Starlette routes and the OpenAPI schema.

Starlette (not FastAPI) keeps the long-running daemon lean; the table keeps the schema honest,
since a route cannot exist without its entry.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundry_fleet import __version__
from foundry_fleet.domain.errors import Forbidden, FleetError, InvalidInput, http_status



@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # bool, int or str
    default: Any
    description: str = ""


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Callable[..., Awaitable[Any]]  # called with path params, query params, `body` and `actor`
    query: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    returns: Any = None  # a type, for the schema
    status: int = 200
    changes_state: bool = False  # handler takes `actor`: who asked, for the event log
    # What a Discord principal needs to call it: None, admins only; "anyone"; "mine", anyone, the answer
    # filtered to what they own; otherwise the action on the instance `{name}` (see services/access.py).
    tenant_action: str | None = None
    # The request body is a file sent as is (application/zip): the handler gets it as `upload`, a stream.
    upload: bool = False


def _parse_query(request: Request, params: tuple[Param, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in params:
        raw = request.query_params.get(p.name)
        if raw is None:
            out[p.name] = p.default
        elif p.kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise InvalidInput(f"query parameter {p.name} must be true or false, not {raw!r}")
            out[p.name] = raw.lower() in ("true", "1")
        elif p.kind is int:
            try:
                out[p.name] = int(raw)
            except ValueError:
                raise InvalidInput(f"query parameter {p.name} must be a whole number, not {raw!r}") from None
        else:
            out[p.name] = raw
    return out


class Guard(Protocol):
    """Says whether a principal may call an endpoint (raises Forbidden or NotFound if not)."""

    def principal(self, discord_id: str, has_admin_role: bool = False) -> Any: ...

    def require_admin(self, principal: Any, what: str = ...) -> None: ...

    def instance(self, principal: Any, name: str, action: str = ...) -> Any: ...


def _route(ep: Endpoint, guard: Guard | None) -> Route:
    async def endpoint(request: Request) -> Response:
        try:
            principal = _principal(request, guard)
            if principal is not None:
                assert guard is not None
                if ep.tenant_action is None:
                    guard.require_admin(principal, f"{ep.method} {ep.path}")
                elif ep.tenant_action not in ("mine", "anyone"):
                    await asyncio.to_thread(guard.instance, principal, request.path_params["name"], ep.tenant_action)
            kwargs: dict[str, Any] = dict(request.path_params)
            kwargs.update(_parse_query(request, ep.query))
            if ep.body is not None:
                try:
                    kwargs["body"] = ep.body.model_validate_json(await request.body())
                except ValidationError as e:
                    first = e.errors()[0]
                    where = ".".join(str(x) for x in first["loc"]) or "body"
                    raise InvalidInput(f"request body: {where}: {first['msg']}") from None
            if ep.upload:
                kwargs["upload"] = request.stream()
            if ep.changes_state:
                kwargs["actor"] = principal.actor if principal is not None else _actor(request)
            result = await ep.handler(**kwargs)
            if principal is not None and ep.tenant_action == "mine" and not principal.admin:
                result = [item for item in result if item.get("owner") == principal.discord_id]
        except FleetError as exc:
            return JSONResponse(exc.to_dict(), status_code=http_status(exc))
        if isinstance(result, Response):  # a file streamed back
            return result
        return JSONResponse(result, status_code=ep.status)

    return Route(ep.path, endpoint, methods=[ep.method])


ACTOR_HEADER = "x-fleet-actor"
_ACTOR = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")


def _actor(request: Request) -> str:
    """Who asked: the client names itself (the socket is the fleet owner's alone), or `api`."""
    claimed = request.headers.get(ACTOR_HEADER, "")
    return claimed if _ACTOR.match(claimed) else "api"


PRINCIPAL_HEADER = "x-fleet-principal"  # "<discord id>", or "<discord id>;admin" for a member of the admin role


def _principal(request: Request, guard: Guard | None) -> Any:
    """The Discord user a trusted adapter (the bot) acts for, or None for the fleet's own user."""
    claimed = request.headers.get(PRINCIPAL_HEADER)
    if claimed is None:
        return None
    if guard is None:
        raise Forbidden("this control API does not serve Discord users")
    user, _, role = claimed.partition(";")
    return guard.principal(user, has_admin_role=role == "admin")


def routes(endpoints: list[Endpoint], guard: Guard | None = None) -> list[Route]:
    return [_route(ep, guard) for ep in endpoints]


def openapi(endpoints: list[Endpoint], title: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for the table."""
    types = {bool: "boolean", int: "integer", str: "string"}
    error = {"$ref": "#/components/schemas/Error"}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                           "hint": {"type": ["string", "null"]}},
            "required": ["error", "message"],
        }
    }
    paths: dict[str, Any] = {}
    for ep in endpoints:
        op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__}
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in _path_params(ep.path)]
        params += [{"name": p.name, "in": "query", "required": False, "description": p.description,
                    "schema": {"type": types[p.kind], "default": p.default}} for p in ep.query]
        if params:
            op["parameters"] = params
        if ep.body is not None:
            schemas[ep.body.__name__] = ep.body.model_json_schema()
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{ep.body.__name__}"}}}}
        if ep.upload:
            op["requestBody"] = {"required": True, "content": {"application/zip": {
                "schema": {"type": "string", "format": "binary"}}}}
        ok: dict[str, Any] = {"description": "success"}
        if ep.returns is not None:
            ok["content"] = {"application/json": {"schema": TypeAdapter(ep.returns).json_schema()}}
        op["responses"] = {str(ep.status): ok, "default": {
            "description": "what was wrong, and what to do next",
            "content": {"application/json": {"schema": error}}}}
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
