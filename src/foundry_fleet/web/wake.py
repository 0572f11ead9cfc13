"""The wake handler's HTTP side: what a visitor of an instance that does not serve sees.

/wake/visit: where the edge sends a visit to such an instance (Caddy rewrites the path and passes the
  host and the path asked for as X-Forwarded-Host and X-Forwarded-Uri). A browser (it accepts HTML) gets
  at once a small "starting your table" page that refreshes itself to /wake/wait; anything else gets 503
  with Retry-After.
/wake/wait?to=PATH: on every tenant host. Holds the request until the instance serves (or WAIT_FOR
  passes: the page again), then redirects to PATH, which the edge now sends to Foundry. A browser keeps
  showing the page while it waits, so the visitor lands in Foundry as soon as it answers, without
  JavaScript and without a refresh interval's delay.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from foundry_fleet.domain.web_paths import WAKE_VISIT_PATH, WAKE_WAIT_PATH
from foundry_fleet.services.wakes import Verdict, WakeAnswer, Wakes
from foundry_fleet.domain.tenant_pages import Operator, page, state_page
from foundry_fleet.web.auth import NO_STORE, html_response, request_host

WAIT_FOR = 20.0  # seconds a waiting request is held before the page is sent again
RETRY_AFTER = 5  # seconds, for clients that do not read pages
FULL_RETRY = 60  # a full host frees memory slowly: the page tries again after this
MAX_PATH = 2048
DEFAULT_PATH = "/-/"

_HEADLINE = {
    Verdict.STARTING: "Starting your table…",
    Verdict.FULL: "This server is full right now",
    Verdict.FAILED: "This table could not start",
    Verdict.UNAVAILABLE: "This table is not available",
    Verdict.UNKNOWN: "No table here",
}


def foundry_path(raw: str | None) -> str:
    """Where a visitor is sent once the instance serves: a path under Foundry's prefix on the same host,
    never another site (`//evil.example`, `/\\evil.example`) nor anything outside the prefix."""
    if not raw or len(raw) > MAX_PATH or not (raw == "/-" or raw.startswith("/-/")):
        return DEFAULT_PATH
    if "\\" in raw or any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        return DEFAULT_PATH
    # A browser resolves `..` (written %2e%2e too) before it asks: `/-/../backups/` would leave the prefix.
    if ".." in unquote(raw.split("?", 1)[0]).split("/"):
        return DEFAULT_PATH
    return raw


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "").lower()


def _page(answer: WakeAnswer, wait_url: str, operator: Operator) -> HTMLResponse:
    if answer.verdict is Verdict.STARTING:
        refresh: str | None = f"0; url={wait_url}"
        texts = [f"The game at {answer.host} is starting now (it sleeps while nobody plays, or was restarting).",
                 "This page follows it and opens the game as soon as it is ready; that usually takes a few seconds."]
        tone = "warn"
    elif answer.verdict is Verdict.FULL:
        refresh = f"{FULL_RETRY}; url={wait_url}"
        texts = [f"The server hosting {answer.host} has no memory free to start it right now; your host has "
                 "been told.",
                 f"This page tries again every {FULL_RETRY} seconds."]
        tone = "warn"
    elif answer.verdict is Verdict.FAILED:
        refresh = None
        texts = [f"The game at {answer.host} could not start: {answer.detail or 'it stopped'}; your host has been told.",
                 "Its game master can see why and start it again."]
        tone = "bad"
    elif answer.verdict is Verdict.UNAVAILABLE:
        refresh = None
        texts = [state_page("suspended", operator).text]
        tone = "bad"
    else:
        refresh = None
        texts = ["There is no game at this address."]
        tone = "none"
    headline = _HEADLINE[answer.verdict]
    body = page(headline, headline, texts, operator, refresh=refresh, tone=tone)
    headers: dict[str, str] = {}
    if refresh:
        headers["Retry-After"] = str(FULL_RETRY if answer.verdict is Verdict.FULL else RETRY_AFTER)
    status = 404 if answer.verdict is Verdict.UNKNOWN else 503
    return html_response(body, status, headers)


def _plain(answer: WakeAnswer) -> Response:
    retry = FULL_RETRY if answer.verdict is Verdict.FULL else RETRY_AFTER
    status = 404 if answer.verdict is Verdict.UNKNOWN else 503
    headers = {**NO_STORE}
    if answer.verdict in (Verdict.STARTING, Verdict.FULL):
        headers["Retry-After"] = str(retry)
    return PlainTextResponse(f"{answer.verdict.value}\n", status_code=status, headers=headers)


def wake_routes(wakes: Wakes | None, wait_for: float = WAIT_FOR, operator: Operator = Operator()) -> list[Route]:
    if wakes is None:
        return []

    def answer(request: Request, result: WakeAnswer, path: str) -> Response:
        if result.verdict is Verdict.UP:
            # The edge sends this path to Foundry now; 303: whatever the method was, the browser GETs it.
            return RedirectResponse(path, status_code=303, headers=NO_STORE)
        if not _wants_html(request):
            return _plain(result)
        return _page(result, f"{WAKE_WAIT_PATH}?to={quote(path, safe='/')}", operator)

    async def visit(request: Request) -> Response:
        path = foundry_path(request.headers.get("x-forwarded-uri"))
        host = request_host(request)
        result = await wakes.visit(host)
        if result.verdict is Verdict.UP:  # it serves, and the edge has not heard yet: bring it up to date
            result = await wakes.wait(host, 0)
        return answer(request, result, path)

    async def wait(request: Request) -> Response:
        path = foundry_path(request.query_params.get("to"))
        return answer(request, await wakes.wait(request_host(request), wait_for), path)

    return [Route(WAKE_VISIT_PATH, visit, methods=["GET", "HEAD"]), Route(WAKE_WAIT_PATH, wait, methods=["GET", "HEAD"])]
