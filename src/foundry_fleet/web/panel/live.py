"""Server-sent events: what makes the panel's pages live without a reload.

/panel/events?view=overview   one `row-<name>` event per instance row that changed (its cells' HTML), or
                              `rows` (the whole table body) when instances came or went
/panel/events?instance=NAME   `card-<name>`: the instance page's status block
/instances/NAME/log/stream    `lines`: new lines of its server log, escaped, in batches

A stream re-reads when the bulletin says something changed (a state, a new sample), never more often,
and only sends what differs from what it sent before. Each is for one signed-in person and shows only
what they may see. A log stream is capped in lines per batch (a flooding server cannot flood a browser)
and in number (each holds a thread of its own while it follows a file).
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.web_paths import PANEL_EVENTS
from foundry_fleet.services.panel_cards import InstanceCard
from foundry_fleet.services.panel_sessions import PANEL_COOKIE, PanelUser
from foundry_fleet.web.panel.guard import signed_in
from foundry_fleet.web.panel.render import SECURITY_HEADERS, fragment
from foundry_fleet.web.panel.services import Panel, PanelServices

KEEPALIVE = 15.0  # seconds: a comment line keeps proxies from closing a quiet stream
LOG_BATCH_SECONDS = 0.2
LOG_BATCH_LINES = 200  # beyond this in one batch, the rest of the batch is counted, not sent
LOG_LINE_CHARS = 2000
MAX_LOG_STREAMS = 16
LOG_SESSION_CHECK = 30.0  # seconds between two looks at whether a log's viewer is still signed in
STREAM_HEADERS = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}


def sse(event: str, data: str) -> str:
    """One event; every line of `data` on a data: line of its own (the browser joins them with \\n)."""
    lines = data.split("\n")
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def row_html(card: InstanceCard, user: PanelUser, now: float) -> str:
    return fragment("_row.html", {"card": card, "user": user, "now": now}).replace("\n", " ")


def rows_html(cards: list[InstanceCard], user: PanelUser, now: float) -> str:
    return fragment("_rows.html", {"cards": cards, "user": user, "now": now}).replace("\n", " ")


def status_html(card: InstanceCard, user: PanelUser, now: float) -> str:
    return fragment("_status.html", {"card": card, "user": user, "now": now}).replace("\n", " ")


class LiveStreams:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self.log_streams = 0

    def routes(self) -> list[Route]:
        return [Route(PANEL_EVENTS, self.events, methods=["GET"]),
                Route("/instances/{name}/log/stream", self.log_stream, methods=["GET"])]

    async def _who(self, request: Request) -> tuple[PanelUser, PanelServices] | Response:
        if self.panel.sessions is None or self.panel.services is None:
            return PlainTextResponse("not available yet", status_code=503, headers={"Retry-After": "5"})
        user = await signed_in(request, self.panel.sessions)
        if isinstance(user, Response):
            # An EventSource does not follow a redirect to a sign-in page: it is told to stop instead.
            return PlainTextResponse("signed out", status_code=204)
        return user, self.panel.services

    async def events(self, request: Request) -> Response:
        got = await self._who(request)
        if isinstance(got, Response):
            return got
        user, svc = got
        instance = request.query_params.get("instance")
        cookie = request.cookies.get(PANEL_COOKIE)
        stream = (self._instance_events(svc, user, cookie, instance) if instance
                  else self._overview_events(svc, user, cookie))
        return StreamingResponse(stream, media_type="text/event-stream", headers=STREAM_HEADERS)

    async def _signed_in_still(self, cookie: str | None) -> bool:
        """A stream outlives no sign-out and no expiry: asked again at each change it would show."""
        assert self.panel.sessions is not None
        return await asyncio.to_thread(self.panel.sessions.user, cookie) is not None

    async def _overview_events(self, svc: PanelServices, user: PanelUser, cookie: str | None) -> AsyncIterator[str]:
        sent: dict[str, str] = {}
        version = svc.bulletin.version
        while True:
            if sent and not await self._signed_in_still(cookie):
                return
            cards = await asyncio.to_thread(svc.cards.cards, user.principal)
            now = time.time()
            if sent and set(sent) != {c.name for c in cards}:
                sent = {c.name: row_html(c, user, now) for c in cards}
                yield sse("rows", rows_html(cards, user, now))
            else:
                for card in cards:
                    row = row_html(card, user, now)
                    if sent.get(card.name) != row:
                        if card.name in sent:
                            yield sse(f"row-{card.name}", row)
                        sent[card.name] = row
            version = await self._next(svc, version)
            if version is None:
                yield ": keepalive\n\n"
                version = svc.bulletin.version

    async def _instance_events(self, svc: PanelServices, user: PanelUser, cookie: str | None,
                               name: str) -> AsyncIterator[str]:
        sent = None
        version = svc.bulletin.version
        while True:
            if sent is not None and not await self._signed_in_still(cookie):
                return
            try:
                card = await asyncio.to_thread(svc.cards.card, user.principal, name)
            except FleetError:
                return  # deleted, or not theirs: nothing to follow
            status = status_html(card, user, time.time())
            if sent is not None and status != sent:
                yield sse(f"card-{name}", status)
            sent = status
            version = await self._next(svc, version)
            if version is None:
                yield ": keepalive\n\n"
                version = svc.bulletin.version

    @staticmethod
    async def _next(svc: PanelServices, version: int) -> int | None:
        """The bulletin's next version; None when KEEPALIVE passed without one."""
        now = await svc.bulletin.wait_past(version, KEEPALIVE)
        return None if now == version else now

    async def log_stream(self, request: Request) -> Response:
        got = await self._who(request)
        if isinstance(got, Response):
            return got
        user, svc = got
        name = request.path_params["name"]
        try:
            await asyncio.to_thread(svc.cards.card, user.principal, name, "logs")
        except FleetError:
            return PlainTextResponse("no such instance", status_code=204)  # 204: the browser stops asking
        if self.log_streams >= MAX_LOG_STREAMS:
            return PlainTextResponse("too many open logs", status_code=503, headers={"Retry-After": "30"})
        return StreamingResponse(self._log_lines(svc, name, request.cookies.get(PANEL_COOKIE)),
                                 media_type="text/event-stream", headers=STREAM_HEADERS)

    async def _log_lines(self, svc: PanelServices, name: str, cookie: str | None) -> AsyncIterator[str]:
        self.log_streams += 1
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=10 * LOG_BATCH_LINES)
        reader = asyncio.create_task(self._read_log(svc, name, queue))
        checked = time.monotonic()
        try:
            while True:
                batch, skipped = await self._batch(queue)
                if batch is None:
                    return
                if time.monotonic() - checked > LOG_SESSION_CHECK:
                    if not await self._signed_in_still(cookie):
                        return
                    checked = time.monotonic()
                if batch or skipped:
                    text = "".join(html.escape(line[:LOG_LINE_CHARS]) + "\n" for line in batch)
                    if skipped:
                        text += f"[… {skipped} more lines not shown here]\n"
                    yield sse("lines", text.rstrip("\n") + "\n")
                else:
                    yield ": keepalive\n\n"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.log_streams -= 1

    @staticmethod
    async def _read_log(svc: PanelServices, name: str, queue: asyncio.Queue[str | None]) -> None:
        try:
            async for line in svc.logs(name, 0, True):
                try:
                    queue.put_nowait(line)
                except asyncio.QueueFull:
                    pass  # counted as skipped by the sender's cap anyway: a flood is not kept
        except FleetError:
            pass
        finally:
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass

    @staticmethod
    async def _batch(queue: asyncio.Queue[str | None]) -> tuple[list[str] | None, int]:
        """The lines that came within LOG_BATCH_SECONDS of the first (waiting up to KEEPALIVE for it)."""
        batch: list[str] = []
        skipped = 0
        try:
            first = await asyncio.wait_for(queue.get(), KEEPALIVE)
        except TimeoutError:
            return [], 0
        if first is None:
            return None, 0
        batch.append(first)
        deadline = asyncio.get_running_loop().time() + LOG_BATCH_SECONDS
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                line = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                break
            if line is None:
                queue.put_nowait(None)  # the end, for the next batch to see
                break
            if len(batch) < LOG_BATCH_LINES:
                batch.append(line)
            else:
                skipped += 1
        return batch, skipped
