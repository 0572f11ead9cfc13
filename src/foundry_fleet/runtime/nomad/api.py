"""A small client of Nomad's HTTP API (v1), over httpx with a transport tests can swap.

Only what the fleet needs, with the JSON shapes of hashicorp/nomad's `api/` module (Go field names,
durations in integer nanoseconds). Every call carries the configured region and namespace and has a
timeout; a blocking query's timeout covers Nomad's wait plus its jitter (wait/16). Failures become the
fleet's errors with a hint:

- `NomadUnreachable`: no answer (connect error, timeout) or a 5xx from a cluster without a leader. It
  is retried `retries` times with exponential backoff first; a request that may not be repeated (a
  dispatch) is retried only when it was never sent (the connection failed).
- `NomadRefused`: any other answer >= 400, carrying Nomad's own text.
- 404 is `None` for the calls that look one object up.

The ACL token travels in the `X-Nomad-Token` header only: it is never part of a message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from dataclasses import dataclass
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from foundry_fleet.domain.errors import ExternalFailure, InvalidInput

if TYPE_CHECKING:
    from foundry_fleet.config import NomadSection

log = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_HEADER = "X-Nomad-Token"
INDEX_HEADER = "X-Nomad-Index"
KNOWN_LEADER_HEADER = "X-Nomad-KnownLeader"
LAST_CONTACT_HEADER = "X-Nomad-LastContact"
MAX_WAIT = 600.0  # Nomad caps a blocking query's wait at 10 minutes
MAX_ERROR_TEXT = 500
MAX_PAYLOAD = 16 * 1024  # a dispatch payload's largest size (Nomad's DispatchPayloadSizeLimit)
# What a Nomad server answers (500) while the cluster has no leader: it will have one again soon.
_NO_LEADER = ("no cluster leader", "no path to region")


class NomadError(ExternalFailure):
    """Something went wrong talking to Nomad."""


class NomadUnreachable(NomadError):
    """Nomad did not answer, or answered that it cannot serve now (no leader)."""


class NomadRefused(NomadError):
    """Nomad answered with an error status; `message` carries Nomad's own text."""

    def __init__(self, message: str, hint: str | None, status: int) -> None:
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class NomadSettings:
    address: str
    region: str | None = None
    namespace: str = "default"
    token: str | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.2

    def __repr__(self) -> str:  # a dataclass repr would show the token
        token = "<set>" if self.token else None
        return (f"NomadSettings(address={self.address!r}, region={self.region!r}, namespace={self.namespace!r}, "
                f"token={token}, ca_file={self.ca_file!r}, timeout={self.timeout}, retries={self.retries}, "
                f"backoff={self.backoff})")

    @classmethod
    def from_config(cls, nomad_section: NomadSection) -> NomadSettings:
        """The settings of fleet.toml's [nomad]; the token is read from token_file, which must be a 0600 file
        of the fleet's user."""
        from foundry_fleet.private_files import read_private_file

        token = None
        if nomad_section.token_file is not None:
            token = read_private_file(nomad_section.token_file, "the Nomad ACL token file",
                                      "[nomad] token_file in fleet.toml")
        return cls(address=nomad_section.address, region=nomad_section.region, namespace=nomad_section.namespace,
                   token=token, ca_file=nomad_section.ca_file, timeout=nomad_section.timeout)


@dataclass(frozen=True)
class Indexed(Generic[T]):
    """A query's answer with its blocking-query metadata."""

    value: T
    index: int
    known_leader: bool
    last_contact_ms: int


def wait_param(wait: float) -> str:
    """Nomad's `wait` parameter (a Go duration): whole seconds as `300s`, anything finer in ms."""
    if wait <= 0:
        raise ValueError(f"a blocking query's wait must be positive, not {wait}")
    wait = min(wait, MAX_WAIT)
    return f"{int(wait)}s" if wait == int(wait) else f"{round(wait * 1000)}ms"


def blocking_timeout(wait: float, timeout: float) -> float:
    """How long the client waits for a blocking query: Nomad may hold it for wait + wait/16 (jitter),
    then it still needs the ordinary time to answer."""
    wait = min(wait, MAX_WAIT)
    return wait + wait / 16 + timeout


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise InvalidInput(f"the Nomad CA file {ca_file} cannot be used: {getattr(e, 'strerror', None) or e}",
                           "set [nomad] ca_file to the PEM file of the CA that signed Nomad's certificate") from None


def _nomad_text(response: httpx.Response) -> str:
    text = response.text.strip() or response.reason_phrase
    return " ".join(text.split())[:MAX_ERROR_TEXT]


class NomadApi:
    def __init__(self, settings: NomadSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if settings.retries < 0 or settings.backoff < 0 or settings.timeout <= 0:
            raise ValueError("retries and backoff must not be negative and the timeout must be positive")
        self.settings = settings
        self.calls = 0  # requests sent (each retry counts), for the bench
        headers = {TOKEN_HEADER: settings.token} if settings.token else {}
        self.http = httpx.AsyncClient(
            base_url=settings.address.rstrip("/"),
            transport=transport,
            verify=_verify(settings.ca_file),
            headers=headers,
            timeout=settings.timeout,
            trust_env=False,  # a proxy from the environment must not see the token
        )
        self._sleep = asyncio.sleep  # the backoff's wait; a test may record it instead

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---------------------------------------------------------------- the transport

    def _params(self, extra: dict[str, Any] | None) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.settings.region:
            params["region"] = self.settings.region
        params["namespace"] = self.settings.namespace
        for key, value in (extra or {}).items():
            if value is None:
                continue
            params[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return params

    async def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                       json: Any = None, timeout: float | None = None, ok404: bool = False,
                       repeatable: bool = True) -> httpx.Response | None:
        """Send one request, retrying while Nomad is unreachable; None for a 404 when `ok404`."""
        where = f"{method} {path}"
        attempt = 0
        while True:
            try:
                response = await self._send(method, path, params, json, timeout, repeatable)
            except NomadUnreachable as e:
                if attempt >= self.settings.retries:
                    raise NomadUnreachable(
                        f"Nomad at {self.settings.address} did not answer {where}: {e.message}",
                        f"is Nomad running and reachable at {self.settings.address}? "
                        "([nomad] address in fleet.toml; the fleet's desired state is kept and applied once it answers)",
                    ) from None
                delay = self.settings.backoff * (2 ** attempt)
                attempt += 1
                log.debug("nomad: %s failed (%s); try %d of %d in %.2fs", where, e.message, attempt,
                          self.settings.retries, delay)
                await self._sleep(delay)
                continue
            if response.status_code == 404 and ok404:
                return None
            if response.status_code >= 400:
                text = _nomad_text(response)
                raise NomadRefused(f"Nomad refused {where} ({response.status_code}): {text}",
                                   _hint(response.status_code), response.status_code)
            return response

    async def _send(self, method: str, path: str, params: dict[str, Any] | None, json: Any,
                    timeout: float | None, repeatable: bool) -> httpx.Response:
        self.calls += 1
        try:
            response = await self.http.request(method, path, params=self._params(params), json=json,
                                               timeout=timeout if timeout is not None else self.settings.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # never sent: always safe to send again
            raise NomadUnreachable(_describe_transport_error(e)) from None
        except (httpx.TransportError, OSError) as e:
            if not repeatable:
                # It may have been applied (a dispatch that ran): the caller decides, not a blind retry.
                raise NomadError(f"Nomad at {self.settings.address} did not answer {method} {path}: "
                                 f"{_describe_transport_error(e)}",
                                 "it may have been applied: look at Nomad's jobs before trying again") from None
            raise NomadUnreachable(_describe_transport_error(e)) from None
        if response.status_code >= 500 and any(s in response.text.lower() for s in _NO_LEADER):
            raise NomadUnreachable(f"Nomad has no cluster leader ({response.status_code}: {_nomad_text(response)})")
        if response.status_code in (502, 503, 504):  # a proxy in front of Nomad: Nomad is not there
            raise NomadUnreachable(f"{response.status_code} {_nomad_text(response)}")
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response is None:
            return None
        return _decode(response, f"{method} {path}")

    async def _query(self, path: str, index: int, wait: float | None,
                     params: dict[str, Any] | None = None) -> Indexed[Any]:
        """A (blocking, when `wait` is set) query: the answer and the three headers Nomad sends with it."""
        query = dict(params or {})
        timeout = None
        # Without a wait, no index either: Nomad would block an index-only query for its default 5 minutes.
        if wait is not None:
            query["index"] = max(0, int(index))
            query["wait"] = wait_param(wait)
            timeout = blocking_timeout(wait, self.settings.timeout)
        response = await self._request("GET", path, params=query, timeout=timeout)
        assert response is not None
        return Indexed(value=_decode(response, f"GET {path}"), **_query_meta(response, path))

    # ---------------------------------------------------------------- jobs

    async def register_job(self, job: dict) -> dict:
        return await self._json("PUT", "/v1/jobs", json={"Job": job})

    async def job(self, job_id: str) -> dict | None:
        return await self._json("GET", f"/v1/job/{_segment(job_id)}", ok404=True)

    async def jobs(self, prefix: str = "") -> list[dict]:
        return await self._json("GET", "/v1/jobs", params={"prefix": prefix or None})

    async def deregister_job(self, job_id: str, purge: bool = False) -> dict | None:
        return await self._json("DELETE", f"/v1/job/{_segment(job_id)}", params={"purge": purge}, ok404=True)

    async def dispatch(self, job_id: str, meta: dict[str, str], payload: bytes) -> dict:
        if len(payload) > MAX_PAYLOAD:  # Nomad's own limit: refuse before anything is sent
            raise InvalidInput(f"a dispatch payload of {len(payload)} bytes is over Nomad's {MAX_PAYLOAD}",
                               "send less in the payload (what the node can read itself stays out of it)")
        body = {"JobID": job_id, "Meta": dict(meta), "Payload": base64.b64encode(payload).decode("ascii")}
        return await self._json("PUT", f"/v1/job/{_segment(job_id)}/dispatch", json=body, repeatable=False)

    # ---------------------------------------------------------------- allocations and evaluations

    async def allocations(self, index: int = 0, wait: float | None = None) -> Indexed[list[dict]]:
        """Every allocation of the namespace, as stubs with their AllocatedResources (`resources=true`:
        without it Nomad leaves them out, and a node's free memory could not be told exactly)."""
        return await self._query("/v1/allocations", index, wait, {"resources": True})

    async def job_allocations(self, job_id: str, index: int = 0, wait: float | None = None) -> Indexed[list[dict]]:
        return await self._query(f"/v1/job/{_segment(job_id)}/allocations", index, wait)

    async def allocation(self, alloc_id: str) -> dict | None:
        return await self._json("GET", f"/v1/allocation/{_segment(alloc_id)}", ok404=True)

    async def allocation_stats(self, alloc_id: str) -> dict | None:
        """The allocation's latest resource usage as its node's client measured it (an AllocResourceUsage);
        None when Nomad knows no such allocation or has no connection to its node (both a 404)."""
        return await self._json("GET", f"/v1/client/allocation/{_segment(alloc_id)}/stats", ok404=True)

    async def evaluation(self, eval_id: str) -> dict | None:
        return await self._json("GET", f"/v1/evaluation/{_segment(eval_id)}", ok404=True)

    async def task_log(self, alloc_id: str, task: str, stream: str = "stderr", tail_bytes: int = 4096) -> str:
        """The last `tail_bytes` of a task's stdout or stderr, as text."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"a task's log stream is stdout or stderr, not {stream!r}")
        response = await self._request(
            "GET", f"/v1/client/fs/logs/{_segment(alloc_id)}",
            params={"task": task, "type": stream, "plain": True, "origin": "end", "offset": max(0, int(tail_bytes))})
        assert response is not None
        return response.content.decode("utf-8", errors="replace")

    async def follow_task_log(self, alloc_id: str, task: str, stream: str, *, origin: str = "end",
                              offset: int = 0) -> AsyncIterator[bytes]:
        """A task's stdout or stderr as Nomad streams it (`follow=true`, plain bytes): from `offset`
        bytes before its end (`origin="end"`) or after its start, then every byte the task appends. It
        ends when the task is dead and all was sent, or when the caller stops iterating (the request
        is closed then). Nothing is retried: a stream cut short is the caller's to open again."""
        if stream not in ("stdout", "stderr") or origin not in ("start", "end"):
            raise ValueError(f"a task's log stream is stdout or stderr from its start or end, not {stream!r} "
                             f"from {origin!r}")
        path = f"/v1/client/fs/logs/{_segment(alloc_id)}"
        params = self._params({"task": task, "type": stream, "follow": True, "plain": True, "origin": origin,
                               "offset": max(0, int(offset))})
        self.calls += 1
        # Only connecting is timed: a quiet task sends nothing for as long as it likes.
        timeout = httpx.Timeout(self.settings.timeout, read=None)
        try:
            async with self.http.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise NomadRefused(f"Nomad refused GET {path} ({response.status_code}): {_nomad_text(response)}",
                                       _hint(response.status_code), response.status_code)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except (httpx.TransportError, OSError) as e:
            raise NomadUnreachable(f"Nomad at {self.settings.address} did not answer GET {path}: "
                                   f"{_describe_transport_error(e)}",
                                   f"is Nomad running and reachable at {self.settings.address}?") from None

    # ---------------------------------------------------------------- services and nodes

    async def services(self, name: str, index: int = 0, wait: float | None = None) -> Indexed[list[dict]]:
        return await self._query(f"/v1/service/{_segment(name)}", index, wait)

    async def nodes(self, index: int = 0, wait: float | None = None) -> Indexed[list[dict]]:
        return await self._query("/v1/nodes", index, wait, {"resources": True})

    async def node(self, node_id: str) -> dict | None:
        return await self._json("GET", f"/v1/node/{_segment(node_id)}", ok404=True)

    async def leader(self) -> str:
        return await self._json("GET", "/v1/status/leader")

    # ---------------------------------------------------------------- dynamic host volumes

    async def register_host_volume(self, volume: dict) -> dict:
        return await self._json("PUT", "/v1/volume/host/register", json={"Volume": volume})

    async def host_volumes(self, node_id: str | None = None) -> list[dict]:
        """Stubs (no Parameters, no HostPath): `host_volume` reads one whole."""
        return await self._json("GET", "/v1/volumes", params={"type": "host", "node_id": node_id})

    async def host_volume(self, volume_id: str) -> dict | None:
        """GET /v1/volume/host/<id>: the whole volume; None when Nomad has no such volume."""
        return await self._json("GET", f"/v1/volume/host/{_segment(volume_id)}", ok404=True)

    async def delete_host_volume(self, volume_id: str) -> None:
        await self._request("DELETE", f"/v1/volume/host/{_segment(volume_id)}")


def _segment(value: str) -> str:
    """One path segment: an id with `/` (a dispatched child's) or `?` must not change the path."""
    if not value:
        raise ValueError("an empty id cannot name a Nomad object")
    return quote(value, safe="")


def _decode(response: httpx.Response, where: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise NomadError(f"Nomad's answer to {where} is not JSON: {_nomad_text(response)[:200]}",
                         "is [nomad] address a Nomad server's HTTP API (port 4646)?") from None


def _query_meta(response: httpx.Response, path: str) -> dict[str, Any]:
    """The blocking-query headers; like Nomad's own client, an answer without them is refused (it did
    not come from Nomad, or through a proxy that drops them, and its index would be meaningless)."""
    values = {}
    for header in (INDEX_HEADER, KNOWN_LEADER_HEADER, LAST_CONTACT_HEADER):
        value = response.headers.get(header)
        if value is None:
            raise NomadError(f"Nomad's answer to GET {path} lacks the {header} header",
                             "is [nomad] address a Nomad server, and does a proxy in between keep its headers?")
        values[header] = value.strip()
    try:
        index = int(values[INDEX_HEADER])
        last_contact = int(values[LAST_CONTACT_HEADER])
    except ValueError:
        raise NomadError(f"Nomad's answer to GET {path} has a malformed {INDEX_HEADER} or {LAST_CONTACT_HEADER}",
                         "is [nomad] address a Nomad server?") from None
    return {"index": index, "known_leader": values[KNOWN_LEADER_HEADER].lower() == "true",
            "last_contact_ms": last_contact}


def _describe_transport_error(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _hint(status: int) -> str:
    if status == 403:
        return "the ACL token in [nomad] token_file lacks a permission (or is wrong): check its policy"
    if status == 400:
        return "Nomad refused what the fleet sent: this is a bug in the fleet, please report it with this message"
    if status == 404:
        return "it does not exist in Nomad's namespace and region set in [nomad]"
    return "see Nomad's server log"
