"""The control API for adapters that live in the daemon's event loop (the Discord bot): async, and
acting for a Discord user, whose rights the API checks (services/access.py) on every call."""

from __future__ import annotations

from typing import Any

import httpx

from foundry_fleet.api.answer import answer
from foundry_fleet.api.endpoints import PRINCIPAL_HEADER


class AsyncControlClient:
    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: float = 300.0) -> None:
        # The transport is the daemon's own app in process (httpx.ASGITransport) or its socket.
        self._client = httpx.AsyncClient(transport=transport, base_url="http://fleet.invalid", timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(self, discord_id: str, admin: bool, method: str, path: str, **kwargs: Any) -> Any:
        """`method path` on behalf of a Discord user (`admin`: they hold the fleet's admin role)."""
        headers = {PRINCIPAL_HEADER: f"{discord_id};admin" if admin else discord_id}
        return answer(await self._client.request(method, path, headers=headers, **kwargs))
