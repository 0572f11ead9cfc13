"""The edge driver: keeps Caddy serving the fleet's desired routes.

Changes that arrive together are batched into one load, an unchanged config sends nothing, and
while Caddy is unreachable the newest config waits and is pushed as soon as Caddy is back. If Caddy
dies it is started again and gets the full config.
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
from foundry_fleet.edge.process import ManagedCaddy

log = logging.getLogger("foundry_fleet.edge")

BATCH_WINDOW = 0.05  # seconds: changes arriving within this window go out as one load
RETRY_EVERY = 1.0
WATCH_EVERY = 1.0
MAX_RESTART_DELAY = 60.0


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
        caddy: ManagedCaddy,
        admin: CaddyAdmin,
        desired_sites: Callable[[], list[TenantSite]],
    ) -> None:
        self.settings = settings
        self.caddy = caddy
        self.admin = admin
        self.desired_sites = desired_sites
        self._dirty = asyncio.Event()
        self._push_lock = asyncio.Lock()
        self._pushed_digest: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.loads = 0  # real loads sent (skipped identical ones do not count)

    def config(self) -> dict[str, Any]:
        return build_caddy_config(self.settings, self.desired_sites())

    # lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.caddy.adopt():
            log.info("edge: re-attached to Caddy (pid %s)", self.caddy.pid)
        else:
            self._launch()
        await asyncio.to_thread(self.caddy.wait_ready, self.admin.ping)
        await self.push()
        self._tasks = [asyncio.create_task(self._pusher()), asyncio.create_task(self._watch())]

    def _launch(self) -> None:
        # Start with the current desired config on disk, so Caddy serves it from its first moment.
        self.caddy.write_config(self.config())
        pid = self.caddy.start()
        self._pushed_digest = None
        log.info("edge: started Caddy (pid %s)", pid)

    async def close(self, stop_caddy: bool) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        if stop_caddy:
            await asyncio.to_thread(self.caddy.stop)
        self.admin.close()

    # pushing ------------------------------------------------------------------------------

    def request_update(self) -> None:
        """Something changed (thread-safe through the loop): push within the batch window."""
        self._dirty.set()

    async def push(self) -> bool:
        """Send the desired config if it differs from the last one sent; False if Caddy was unreachable.

        One push at a time: the config is read and loaded under the lock, so an older config can
        never be loaded after a newer one.
        """
        async with self._push_lock:
            config = await asyncio.to_thread(self.config)
            blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(blob.encode()).hexdigest()
            if digest == self._pushed_digest:
                return True
            try:
                await asyncio.to_thread(self.admin.load, config)
            except CaddyUnreachable as e:
                log.warning("edge: %s; the change is kept and sent when Caddy is back", e.message)
                return False
            self.caddy.write_config(config)
            self._pushed_digest = digest
            self.loads += 1
            return True

    async def sync(self) -> None:
        """Push now (no batching wait): for callers that answer a person once the edge shows a change."""
        try:
            if not await self.push():
                self._dirty.set()  # the pusher keeps retrying
        except ExternalFailure as e:
            log.error("edge: %s", e.message)

    async def _pusher(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(BATCH_WINDOW)
            self._dirty.clear()
            try:
                ok = await self.push()
            except ExternalFailure as e:
                # Caddy refused the config: a bug in the builder, not a passing fault. Keep serving
                # the last good config, and say so loudly.
                log.error("edge: %s", e.message)
                ok = True
            if not ok:
                await asyncio.sleep(RETRY_EVERY)
                self._dirty.set()

    async def _watch(self) -> None:
        """Restart Caddy if it dies; it comes back with the full config. Failing restarts back off."""
        delay = WATCH_EVERY
        while True:
            await asyncio.sleep(delay)
            if self.caddy.alive():
                delay = WATCH_EVERY
                continue
            log.warning("edge: Caddy is gone; starting it again")
            try:
                self._launch()
                await asyncio.to_thread(self.caddy.wait_ready, self.admin.ping)
                await self.push()
                delay = WATCH_EVERY
            except ExternalFailure as e:
                delay = min(delay * 2, MAX_RESTART_DELAY)
                log.error("edge: could not restart Caddy (next try in %.0fs): %s", delay, e.message)

    # status -------------------------------------------------------------------------------

    def certificate(self, host: str, timeout: float = 3.0) -> CertificateState:
        """What Caddy serves for `host` right now, checked over TLS the way a browser would
        (trusting the public CAs and, in internal mode, the fleet's own local CA)."""
        ctx = ssl.create_default_context()
        local_root = self.caddy.local_ca_root()
        if local_root.exists():
            ctx.load_verify_locations(cafile=str(local_root))
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
