"""The edge driver: keeps Caddy serving the fleet's desired routes.

Changes that arrive together are batched into one load, an unchanged config sends nothing, and
while Caddy is unreachable the newest config waits and is pushed as soon as Caddy is back. If Caddy
dies it is started again, with the last config it accepted, and then gets the current one.

A config that fails the fleet's own check (`config_check`) is not sent; one Caddy refuses is not
loaded (Caddy keeps serving the one before). Either way the last good config keeps serving every
tenant, the refusal is reported once (`on_problem`: an event, so a status update) and shown in the
edge's status, and the same config is not tried again until something changes or a backoff passes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.edge.admin import CaddyAdmin, CaddyUnreachable
from foundry_fleet.edge.caddy_config import EdgeSettings, TenantSite, build_caddy_config
from foundry_fleet.edge.config_check import config_problems
from foundry_fleet.edge.host import CaddyHost
from foundry_fleet.edge.process import ManagedCaddy, ProcessCaddy

log = logging.getLogger("foundry_fleet.edge")

BATCH_WINDOW = 0.05  # seconds: changes arriving within this window go out as one load
RETRY_EVERY = 1.0
WATCH_EVERY = 1.0
MAX_RESTART_DELAY = 60.0
# A refused config is tried again only after this, doubling up to the maximum (or at once when the
# desired state changes): a refusal is rarely passing, and Caddy need not be asked every second.
REFUSED_RETRY = 30.0
MAX_REFUSED_RETRY = 900.0


@dataclass(frozen=True)
class EdgeStatus:
    in_sync: bool  # Caddy serves the config the fleet's state asks for
    problem: str | None = None  # why not
    since: float | None = None  # since when (epoch seconds)
    loads: int = 0  # configs loaded into Caddy since the daemon started (unchanged ones are never sent)


@dataclass(frozen=True)
class _Refusal:
    digest: str
    reason: str
    retry_at: float  # monotonic
    delay: float


@dataclass(frozen=True)
class CertificateState:
    host: str
    state: str  # "valid", "invalid", "none" (no certificate for the name), "unreachable"
    not_after: str | None = None
    issuer: str | None = None
    detail: str | None = None


class Edge:
    def __init__(
        self,
        settings: EdgeSettings,
        caddy: ManagedCaddy | CaddyHost,
        admin: CaddyAdmin,
        desired_sites: Callable[[], list[TenantSite]],
        on_problem: Callable[[str | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.caddy = caddy
        # Where Caddy runs (the fleet's own process, or a Nomad job): the edge only starts, adopts,
        # watches and stops it through this; the config goes through the admin API either way.
        self.host: CaddyHost = ProcessCaddy(caddy) if isinstance(caddy, ManagedCaddy) else caddy
        self.admin = admin
        self.desired_sites = desired_sites
        # Told (from a worker thread) when a config is refused, and with None once one loads again.
        self.on_problem = on_problem
        self._dirty = asyncio.Event()
        self._push_lock = asyncio.Lock()
        self._pushed_digest: str | None = None
        self._refused: _Refusal | None = None
        self._unreachable: str | None = None
        self._reported: str | None = None
        self._problem_since: float | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._verify: tuple[tuple[int, int] | None, ssl.SSLContext] | None = None
        self.loads = 0  # real loads sent (skipped identical ones do not count)

    def config(self) -> dict[str, Any]:
        return build_caddy_config(self.settings, self.desired_sites())

    def status(self) -> EdgeStatus:
        """Whether Caddy serves what the fleet's state asks for, and if not, why (reads the state: call
        it off the event loop)."""
        in_sync = _digest(self.config()) == self._pushed_digest
        problem = self._refused.reason if self._refused else self._unreachable
        if in_sync:
            return EdgeStatus(True, loads=self.loads)
        return EdgeStatus(False, problem or "a change is on its way to Caddy", self._problem_since if problem else None,
                          loads=self.loads)

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if await self.host.adopt():
            log.info("edge: re-attached to %s", self.host.describe())
            await self.host.wait_ready(self.admin.ping)
            await self._note_served()
        else:
            await self._launch_ready()
        await self.push()
        self._tasks = [asyncio.create_task(self._pusher()), asyncio.create_task(self._watch())]

    async def _launch(self) -> None:
        # Start with the last config Caddy accepted (on disk): the desired one follows by /load, so
        # one that Caddy refuses cannot keep it from starting.
        pid = await self.host.start()
        self._pushed_digest = None
        log.info("edge: started Caddy%s", f" (pid {pid})" if pid else f": {self.host.describe()}")

    async def _launch_ready(self) -> None:
        await self._launch()
        try:
            await self.host.wait_ready(self.admin.ping)
        except ExternalFailure as e:
            # Even the last accepted config does not start any more (another Caddy version, a port
            # taken meanwhile): start with none, and let the push bring the current one or say why not.
            log.warning("edge: Caddy does not start with its last config (%s); starting it with an empty one",
                        e.message)
            await self.host.stop()
            await self.host.forget_config()
            await self._launch()
            await self.host.wait_ready(self.admin.ping)
        await self._note_served()

    async def _note_served(self) -> None:
        """What a Caddy that just (re)started or was adopted serves: if it is what the fleet last pushed
        (it resumed it), the push that follows sends nothing; anything else is pushed."""
        async with self._push_lock:  # a push meanwhile would otherwise be taken for this older config
            try:
                served = await asyncio.to_thread(self.admin.config)
            except ExternalFailure:
                served = None
            self._pushed_digest = _digest(served) if served else None

    async def close(self, stop_caddy: bool) -> None:
        if self._retry is not None:
            self._retry.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        if stop_caddy:
            await self.host.stop()
        await self.host.detach()
        self.admin.close()

    # pushing ------------------------------------------------------------------------------

    def request_update(self) -> None:
        """Something changed (thread-safe through the loop): push within the batch window."""
        self._dirty.set()

    async def push(self) -> bool:
        """Send the desired config if it differs from the last one sent. False if it is not what Caddy
        serves now: Caddy was unreachable, or the config was refused (see `status`).

        One push at a time: the config is read and loaded under the lock, so an older config can
        never be loaded after a newer one.
        """
        async with self._push_lock:
            config = await asyncio.to_thread(self.config)
            digest = _digest(config)
            if digest == self._pushed_digest:
                await self._settled()
                return True
            refused = self._refused
            if refused is not None and refused.digest == digest and time.monotonic() < refused.retry_at:
                return False  # known bad: not again before something changes or the backoff passes
            problems = config_problems(config)
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                await self._refuse(digest, "the generated config was not sent: " + "; ".join(problems[:3]) + more)
                return False
            try:
                await asyncio.to_thread(self.admin.load, config)
            except CaddyUnreachable as e:
                log.warning("edge: %s; the change is kept and sent when Caddy is back", e.message)
                if self._unreachable is None:
                    self._problem_since = self._problem_since or time.time()
                self._unreachable = e.message
                return False
            except ExternalFailure as e:
                await self._refuse(digest, e.message)
                return False
            self.host.write_config(config)
            self._pushed_digest = digest
            self.loads += 1
            await self._settled()
            return True

    async def _refuse(self, digest: str, reason: str) -> None:
        """Caddy keeps the last good config; say so once, and wait before trying this one again."""
        previous = self._refused
        delay = min(previous.delay * 2, MAX_REFUSED_RETRY) if previous and previous.digest == digest else REFUSED_RETRY
        self._refused = _Refusal(digest, reason, time.monotonic() + delay, delay)
        self._unreachable = None
        log.error("edge: %s; Caddy keeps serving the last good config (tried again on the next change, or in %.0fs)",
                  reason, delay)
        # Told once until a config loads again: every change meanwhile is refused too, often in other
        # words (Caddy's messages vary), and the status shows the latest reason.
        if self._reported is None:
            self._problem_since = time.time()
            await self._tell(reason)
        self._reported = reason

    async def _settled(self) -> None:
        """Caddy serves the desired config: a reported refusal is over."""
        self._refused = None
        self._unreachable = None
        self._problem_since = None
        if self._reported is not None:
            self._reported = None
            log.info("edge: Caddy serves the current config again")
            await self._tell(None)

    async def _tell(self, problem: str | None) -> None:
        if self.on_problem is None:
            return
        try:
            await asyncio.to_thread(self.on_problem, problem)
        except Exception:  # noqa: BLE001 - reporting must not stop the edge
            log.exception("edge: could not report the edge's state")

    async def sync(self) -> None:
        """Push now (no batching wait): for callers that answer a person once the edge shows a change."""
        try:
            if not await self.push():
                self._dirty.set()  # the pusher retries (a refused config: after its backoff)
        except ExternalFailure as e:
            log.error("edge: %s", e.message)

    async def _pusher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(BATCH_WINDOW)
            self._dirty.clear()
            try:
                ok = await self.push()
            except Exception:  # noqa: BLE001 - the pusher must outlive any one bad round
                log.exception("edge: pushing the config failed")
                ok = True
            if ok:
                continue
            if self._refused is not None:
                # A change sets the flag at once; otherwise try the refused config after its backoff.
                if self._retry is not None:
                    self._retry.cancel()
                wait = max(0.0, self._refused.retry_at - time.monotonic())
                self._retry = asyncio.get_running_loop().call_later(wait, self._dirty.set)
            else:
                await asyncio.sleep(RETRY_EVERY)
                self._dirty.set()

    async def _watch(self) -> None:
        """Restart Caddy if it dies; it comes back with the full config. Failing restarts back off."""
        delay = WATCH_EVERY
        while True:
            await asyncio.sleep(delay)
            if self.host.alive():
                delay = WATCH_EVERY
                continue
            log.warning("edge: Caddy is gone; starting it again")
            try:
                await self._launch_ready()
                await self.push()
                delay = WATCH_EVERY
            except ExternalFailure as e:
                delay = min(delay * 2, MAX_RESTART_DELAY)
                log.error("edge: could not restart Caddy (next try in %.0fs): %s", delay, e.message)

    async def requests_in_flight(self) -> dict[str, int]:
        """Requests under way, by the upstream address they are proxied to ("host:port"); an open
        websocket is one for as long as it stays open (what idle detection needs to know)."""
        counts: dict[str, int] = {}
        for upstream in await asyncio.to_thread(self.admin.upstreams):
            address, n = upstream.get("address"), upstream.get("num_requests")
            if isinstance(address, str) and isinstance(n, int):
                counts[address] = counts.get(address, 0) + n
        return counts

    # status -------------------------------------------------------------------------------

    def certificate(self, host: str, timeout: float = 3.0) -> CertificateState:
        """What Caddy serves for `host` right now, checked over TLS the way a browser would
        (trusting the public CAs and, in internal mode, the fleet's own local CA)."""
        ctx = self._verify_context()
        try:
            with socket.create_connection(("127.0.0.1", self.settings.https_port), timeout=timeout) as raw:
                with ctx.wrap_socket(raw, server_hostname=host) as tls:
                    cert = tls.getpeercert() or {}
        except ssl.SSLCertVerificationError as e:
            return CertificateState(host, "invalid", detail=e.verify_message)
        except ssl.SSLError:
            return CertificateState(host, "none")
        except OSError:
            return CertificateState(host, "unreachable")
        names = {k: v for rdn in cert.get("issuer", ()) for k, v in rdn}
        issuer = names.get("organizationName") or names.get("commonName")
        not_after = cert.get("notAfter")
        if isinstance(not_after, str):
            not_after = time.strftime("%Y-%m-%d", time.gmtime(ssl.cert_time_to_seconds(not_after)))
        return CertificateState(host, "valid", not_after, issuer)


    def _verify_context(self) -> ssl.SSLContext:
        """The public CAs and the fleet's local CA as it is on disk now. Loading the public CAs takes
        tens of milliseconds, so the context is kept until the local CA file changes."""
        local_root = self.host.local_ca_root()
        try:
            st = local_root.stat()
            key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        cached = self._verify
        if cached is not None and cached[0] == key:
            return cached[1]
        ctx = ssl.create_default_context()
        if key is not None:
            try:
                ctx.load_verify_locations(cafile=str(local_root))
            except (ssl.SSLError, OSError):
                pass  # a damaged local CA: its certificates then fail to verify, which is what status shows
        self._verify = (key, ctx)
        return ctx


def _digest(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
