"""A small client of Podman's libpod REST API (v4), over the unix socket of `podman system service`.

Only what the driver needs. Every failure becomes one of the fleet's errors with a hint: the socket
not answering is `PodmanUnreachable` (the service supervisor starts it again), an answer >= 400 an
`ExternalFailure` carrying Podman's own message (`NoSuchContainer` for 404 on a container).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from foundry_fleet.domain.errors import ExternalFailure

API_BASE = "http://d/v4.0.0/libpod"


class PodmanUnreachable(ExternalFailure):
    """Podman's API socket did not answer."""


class PodmanRefused(ExternalFailure):
    def __init__(self, message: str, hint: str | None, status: int) -> None:
        super().__init__(message, hint)
        self.status = status


class NoSuchObject(PodmanRefused):
    """404: the container (or network) does not exist."""


class PodmanApi:
    def __init__(self, socket_path: Path, transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url=API_BASE,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, ok404: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            r = await self.http.request(method, path, **kwargs)
        except (httpx.TransportError, OSError) as e:
            raise PodmanUnreachable(f"Podman's API at {self.socket_path} did not answer: {e}",
                                    "is `podman system service` running? the fleet starts it when it is not") from e
        if r.status_code == 404 and ok404:
            return r
        if r.status_code >= 400:
            try:
                body = r.json()
                why = body.get("message") or body.get("cause") or r.text
            except (ValueError, AttributeError):
                why = r.text
            why = str(why).strip()[:500]
            cls = NoSuchObject if r.status_code == 404 else PodmanRefused
            raise cls(f"Podman refused {method} {path.split('?')[0]} ({r.status_code}): {why}",
                      "see the podman service's log under the fleet's run/podman", r.status_code)
        return r

    # ---------------------------------------------------------------- the service

    async def ping(self) -> bool:
        try:
            r = await self.http.get("/_ping", timeout=2.0)
        except (httpx.TransportError, OSError):
            return False
        return r.status_code == 200

    async def version(self) -> dict[str, Any]:
        return (await self.request("GET", "/version")).json()

    async def info(self) -> dict[str, Any]:
        return (await self.request("GET", "/info")).json()

    # ---------------------------------------------------------------- containers

    async def create(self, body: dict[str, Any]) -> str:
        """The new container's id."""
        return (await self.request("POST", "/containers/create", json=body)).json()["Id"]

    async def start(self, ident: str) -> None:
        await self.request("POST", f"/containers/{ident}/start")

    async def inspect(self, ident: str) -> dict[str, Any] | None:
        """The container's inspect document, None when there is none by that name or id."""
        r = await self.request("GET", f"/containers/{ident}/json", ok404=True)
        return None if r.status_code == 404 else r.json()

    async def wait(self, ident: str) -> int:
        """Until the container has stopped (its main process exited); its exit code. No timeout."""
        r = await self.request("POST", f"/containers/{ident}/wait",
                               params=[("condition", "stopped"), ("condition", "exited")], timeout=None)
        return int(r.text.strip() or 0)

    async def stop(self, ident: str, timeout: int) -> None:
        """The container's stop signal, then SIGKILL after `timeout` seconds; returns once stopped."""
        r = await self.request("POST", f"/containers/{ident}/stop", params={"timeout": timeout},
                               ok404=True, timeout=timeout + 60.0)
        if r.status_code == 404:
            return

    async def kill(self, ident: str, signal: int) -> None:
        try:
            await self.request("POST", f"/containers/{ident}/kill", params={"signal": str(signal)})
        except PodmanRefused as e:
            if e.status not in (404, 409):  # gone, or not running any more
                raise

    async def remove(self, ident: str, stop_timeout: int | None = None) -> None:
        """Remove (force: stop first, SIGKILL after `stop_timeout` seconds, default the container's
        own) the container; nothing when there is none."""
        params = {"force": "true", "v": "false"}
        if stop_timeout is not None:
            params["timeout"] = str(stop_timeout)
        await self.request("DELETE", f"/containers/{ident}", params=params, ok404=True)

    async def list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of `labels`."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        r = await self.request("GET", "/containers/json", params={"all": "true", "filters": json.dumps(filters)})
        return r.json() or []

    async def stats(self, ident: str) -> dict[str, Any] | None:
        r = await self.request("GET", "/containers/stats",
                               params={"containers": ident, "stream": "false"}, ok404=True)
        if r.status_code == 404:
            return None
        found = (r.json() or {}).get("Stats") or []
        return found[0] if found else None

    # ---------------------------------------------------------------- networks

    async def network(self, name: str) -> dict[str, Any] | None:
        r = await self.request("GET", f"/networks/{name}/json", ok404=True)
        return None if r.status_code == 404 else r.json()

    async def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        return (await self.request("POST", "/networks/create", json=body)).json()

    async def remove_network(self, name: str) -> None:
        await self.request("DELETE", f"/networks/{name}", ok404=True)
