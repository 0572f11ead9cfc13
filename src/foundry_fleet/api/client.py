"""Client for the control API over its unix socket, for the CLI.

Plain HTTP/1.1 from the standard library rather than httpx: a CLI command that asks the daemon one
question would otherwise spend more time importing its HTTP client (httpx, httpcore, h11, anyio, idna)
than everything else it does. The bot, in the daemon's event loop, uses api/async_client.py (httpx).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from foundry_fleet.api.answer import answer
from foundry_fleet.domain.errors import DaemonNotRunning, ExternalFailure

__all__ = ["ControlClient", "answer"]


@dataclass(frozen=True)
class _Response:
    status_code: int
    text: str


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("fleet.invalid", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


MOVE_TIMEOUT = 6 * 3600.0


class ControlClient:
    def __init__(self, socket_path: Path, timeout: float = 120.0, actor: str = "api") -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.actor = actor  # who asked, for the daemon's event log

    def close(self) -> None:
        pass  # one connection per call: nothing is kept open

    def _call(self, method: str, path: str, params: dict[str, Any] | None = None, json_body: Any = None,
              timeout: float | None = None, upload: BinaryIO | None = None, sink: BinaryIO | None = None) -> Any:
        """`upload`: a file sent as the body; `sink`: where a successful answer's body is copied to."""
        url = quote(path, safe="/{}")
        if params:
            url += "?" + urlencode({k: _query_value(v) for k, v in params.items()})
        headers = {"X-Fleet-Actor": self.actor, "Host": "fleet.invalid"}
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if upload is not None:
            body = upload  # type: ignore[assignment]
            headers["Content-Type"] = "application/zip"
            headers["Content-Length"] = str(os.fstat(upload.fileno()).st_size)
        timeout = timeout or self.timeout
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            try:
                conn.request(method, url, body=body, headers=headers)
            except PermissionError as e:
                raise ExternalFailure(f"cannot open the control socket {self.socket_path}: {e.strerror}",
                                      "run the command as the user the fleet daemon runs as") from None
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise DaemonNotRunning(
                    f"the fleet daemon is not running (no answer on {self.socket_path})",
                    "this needs the daemon: start it with `foundry-fleet up` (or `make run`), then try again",
                ) from e
            try:
                r = conn.getresponse()
                if sink is not None and r.status == 200:
                    shutil.copyfileobj(r, sink, 1 << 20)
                    return None
                text = r.read().decode("utf-8", errors="replace")
            except TimeoutError:
                raise ExternalFailure(f"the fleet daemon did not answer within {timeout:g} s",
                                      "it may still be at work: see `foundry-fleet events`") from None
            except (http.client.HTTPException, ConnectionError) as e:
                raise ExternalFailure(f"the fleet daemon closed the connection before answering ({e!r})",
                                      "see the daemon's log; `foundry-fleet events` shows what was done") from None
            return answer(_Response(r.status, text))
        finally:
            conn.close()

    def reachable(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            self._call("GET", "/v1/health")
            return True
        except DaemonNotRunning:
            return False

    def reload(self) -> dict[str, Any]:
        return self._call("POST", "/v1/reload")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def list_instances(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/instances")

    def get_instance(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/instances/{name}")

    def instance_logs(self, name: str, lines: int) -> list[str]:
        return self._call("GET", f"/v1/instances/{name}/logs", params={"lines": lines})["lines"]

    def create_instance(self, **body: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/instances", json_body=body)

    def action(self, name: str, verb: str, wait: bool = True) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/{verb}", params={"wait": wait})

    def suspend(self, name: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/suspend", json_body={"reason": reason})

    def resume(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/resume")

    def delete_instance(self, name: str, purge: bool) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/instances/{name}", params={"purge": purge})

    def move(self, name: str, node: str) -> dict[str, Any]:
        # A move to another home copies the instance's data: it takes as long as that data takes to send.
        return self._call("POST", f"/v1/instances/{name}/move", json_body={"node": node},
                          timeout=max(self.timeout, MOVE_TIMEOUT))

    def set_hosts(self, name: str, extra_hosts: list[str]) -> dict[str, Any]:
        return self._call("PUT", f"/v1/instances/{name}/hosts", json_body={"extra_hosts": extra_hosts})

    def set_idle_after(self, name: str, idle_after: str) -> dict[str, Any]:
        return self._call("PUT", f"/v1/instances/{name}/idle-after", json_body={"idle_after": idle_after})

    def set_license(self, name: str, license_key: str) -> dict[str, Any]:
        return self._call("PUT", f"/v1/instances/{name}/license", json_body={"license_key": license_key})

    def reset_admin_password(self, name: str, password: str | None) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/admin-password", json_body={"password": password})

    def edge_config(self) -> dict[str, Any]:
        return self._call("GET", "/v1/edge/config")

    def take_snapshot(self, name: str, label: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/backups", json_body={"label": label})

    def list_snapshots(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/instances/{name}/backups")

    def backup_status(self, name: str | None) -> dict[str, Any]:
        return self._call("GET", "/v1/backups/status", params={"name": name} if name else None)

    def set_backup_plan(self, name: str, plan: str | None) -> dict[str, Any]:
        return self._call("PUT", f"/v1/instances/{name}/backup-plan", json_body={"plan": plan})

    def upgrade(self, name: str, release: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/upgrade", json_body={"release": release})

    def restore(self, name: str, snapshot: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/instances/{name}/restore", json_body={"snapshot": snapshot})

    def import_data(self, name: str, zip_file: BinaryIO | None, into: str, replace: bool,
                    url: str | None = None) -> dict[str, Any]:
        # A big zip takes as long to unpack and copy as it is big, like a move's data.
        params: dict[str, Any] = {"into": into, "replace": replace, **({"url": url} if url else {})}
        return self._call("POST", f"/v1/instances/{name}/import", params=params, upload=zip_file,
                          timeout=max(self.timeout, MOVE_TIMEOUT))

    def export_data(self, name: str, out: BinaryIO) -> None:
        self._call("POST", f"/v1/instances/{name}/export", sink=out, timeout=max(self.timeout, MOVE_TIMEOUT))

    def events(self, target: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if target:
            params["target"] = target
        return self._call("GET", "/v1/events", params=params)

    def panel_login_link(self) -> dict[str, Any]:
        return self._call("POST", "/v1/panel/login-link")

    def openapi(self) -> dict[str, Any]:
        return self._call("GET", "/openapi.json")
