"""Client for the control API over its unix socket (httpx with a UDS transport)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if "httpx" not in sys.modules:
    # httpx imports its own command-line tool when click and rich are installed (they are: the CLI uses
    # them), and with it pygments: a third of a CLI command's start. Nothing here runs that tool, so its
    # module is marked missing, which httpx expects (it then defines a stub `httpx.main`).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

from foundry_fleet.domain.errors import ERROR_KINDS, DaemonNotRunning, FleetError


class ControlClient:
    def __init__(
        self,
        socket_path: Path,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        actor: str = "api",
    ) -> None:
        self.socket_path = socket_path
        self._client = httpx.Client(
            # Plain HTTP over a unix socket: no TLS, so no certificate store to load (it would cost a
            # CLI command a fifth of its time).
            transport=transport or httpx.HTTPTransport(uds=str(socket_path), verify=False),
            base_url="http://fleet.invalid",
            timeout=timeout,
            headers={"X-Fleet-Actor": actor},  # who asked, for the daemon's event log
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._client.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonNotRunning(
                f"the fleet daemon is not running (no answer on {self.socket_path})",
                "this needs the daemon: start it with `foundry-fleet up` (or `make run`), then try again",
            ) from e
        return answer(r)

    def reachable(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            self._call("GET", "/v1/health")
            return True
        except DaemonNotRunning:
            return False

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def list_instances(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/instances")

    def get_instance(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/instances/{name}")

    def create_instance(self, **body: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/instances", json=body)

    def action(self, name: str, verb: str, wait: bool = True) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/{verb}", params={"wait": wait})

    def suspend(self, name: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/suspend", json={"reason": reason})

    def resume(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/resume")

    def delete_instance(self, name: str, purge: bool) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/instances/{name}", params={"purge": purge})

    def set_hosts(self, name: str, extra_hosts: list[str]) -> dict[str, Any]:
        return self._call("PUT", f"/v1/instances/{name}/hosts", json={"extra_hosts": extra_hosts})

    def edge_config(self) -> dict[str, Any]:
        return self._call("GET", "/v1/edge/config")

    def take_snapshot(self, name: str, label: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/backups", json={"label": label})

    def list_snapshots(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/instances/{name}/backups")

    def backup_status(self, name: str | None) -> dict[str, Any]:
        return self._call("GET", "/v1/backups/status", params={"name": name} if name else {})

    def set_backup_plan(self, name: str, plan: str | None) -> dict[str, Any]:
        return self._call("PUT", f"/v1/instances/{name}/backup-plan", json={"plan": plan})

    def upgrade(self, name: str, release: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/upgrade", json={"release": release})

    def restore(self, name: str, snapshot: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/restore", json={"snapshot": snapshot})

    def events(self, target: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if target:
            params["target"] = target
        return self._call("GET", "/v1/events", params=params)

    def openapi(self) -> dict[str, Any]:
        return self._call("GET", "/openapi.json")


def answer(r: httpx.Response) -> Any:
    """The JSON of a control API response, or the FleetError it carries, as the kind it was raised as."""
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            raise FleetError(f"control API answered {r.status_code}: {r.text[:200]}") from None
        cls = ERROR_KINDS.get(body.get("error", ""), FleetError)
        raise cls(body.get("message", r.text), body.get("hint"))
    return r.json()
