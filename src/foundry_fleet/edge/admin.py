"""Caddy's admin API, over its unix socket (httpx; tests can hand in any transport)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from foundry_fleet.domain.errors import ExternalFailure


class CaddyUnreachable(ExternalFailure):
    """Caddy's admin endpoint did not answer: the change is kept and pushed once it is back."""


class CaddyAdmin:
    def __init__(self, socket_path: Path, transport: httpx.BaseTransport | None = None, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._client = httpx.Client(
            transport=transport or httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://caddy-admin.invalid",
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._client.request(method, path, **kwargs)
        except (httpx.TransportError, OSError) as e:
            raise CaddyUnreachable(f"Caddy's admin endpoint at {self.socket_path} did not answer: {e}") from e
        if r.status_code >= 400:
            # Caddy explains a refused config in the body ({"error": "..."}).
            try:
                why = r.json().get("error", r.text)
            except ValueError:
                why = r.text
            raise ExternalFailure(f"Caddy refused {method} {path} ({r.status_code}): {why.strip()[:500]}")
        return r

    def ping(self) -> bool:
        try:
            self._request("GET", "/config/admin")
            return True
        except ExternalFailure:
            return False

    def load(self, config: dict[str, Any]) -> None:
        """Replace the whole configuration (Caddy treats an identical one as a no-op)."""
        self._request("POST", "/load", json=config)

    def upstreams(self) -> list[dict[str, Any]]:
        """Every upstream with its requests under way (`num_requests`; an open websocket is one)."""
        answer = self._request("GET", "/reverse_proxy/upstreams").json()
        return [u for u in answer if isinstance(u, dict)] if isinstance(answer, list) else []

    def config(self) -> dict[str, Any] | None:
        return self._request("GET", "/config/").json()
