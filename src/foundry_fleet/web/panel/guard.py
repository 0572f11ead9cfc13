"""The panel's door: who is signed in, and which forms it acts on.

Every page calls `signed_in`; every state-changing POST calls `checked_form`, which accepts only a form
sent from a page the panel showed this session: the browser's Origin is the fleet host's own, and the
form (or htmx's header) carries the session's CSRF token. Anything else gets a page saying nothing was
done. A GET never changes anything, so it needs neither.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.web_paths import PANEL_LOGIN
from foundry_fleet.services.panel_sessions import PANEL_COOKIE, PanelSessions, PanelUser, safe_panel_next
from foundry_fleet.web.auth import read_form, same_origin
from foundry_fleet.web.panel.render import render

# The panel's forms are short (names, a few options): a body beyond this is nobody's form of ours.
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 50
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"  # htmx requests may carry the token here instead (hx-headers)
NO_STORE = {"Cache-Control": "no-store"}


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _shown_path(request: Request, sessions: PanelSessions) -> str:
    """The panel page the browser shows (to come back to after signing in): the URL asked for, or for
    an htmx request or a form, the page it came from."""
    if request.method in ("GET", "HEAD") and not _is_htmx(request):
        query = request.url.query
        return request.url.path + (f"?{query}" if query else "")
    came_from = request.headers.get("hx-current-url") or request.headers.get("referer") or ""
    if came_from.startswith(sessions.origin + "/"):
        parts = urlsplit(came_from)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/"


def sign_in_first(request: Request, sessions: PanelSessions) -> Response:
    location = PANEL_LOGIN + "?" + urlencode({"next": safe_panel_next(_shown_path(request, sessions)) or "/"})
    if _is_htmx(request):
        # htmx would follow a redirect inside its own request and put the sign-in page into a fragment:
        # it is told to load the page instead.
        return Response(status_code=401, headers={**NO_STORE, "HX-Redirect": location})
    return RedirectResponse(location, status_code=303, headers=NO_STORE)


async def signed_in(request: Request, sessions: PanelSessions) -> PanelUser | Response:
    """The signed-in user, or the answer that sends the browser to sign in (and back here after)."""
    user = await asyncio.to_thread(sessions.user, request.cookies.get(PANEL_COOKIE))
    return user if user is not None else sign_in_first(request, sessions)


def refused(request: Request, sessions: PanelSessions, user: PanelUser | None, message: str,
            hint: str | None = None, status: int = 403) -> Response:
    """A page saying why nothing was done."""
    cookie = request.cookies.get(PANEL_COOKIE) if user is not None else None
    context: dict[str, Any] = {"user": user, "csrf": sessions.csrf_token(cookie), "section": None, "notice": None,
                               "problem": None, "message": message, "hint": hint,
                               "back": "/" if user is not None else PANEL_LOGIN}
    return render(request, "refused.html", context, status=status)


async def checked_form(request: Request, sessions: PanelSessions) -> tuple[PanelUser, dict[str, str]] | Response:
    """The signed-in user and the form's fields (without its token), if this POST may act; else the
    answer to give instead (a sign-in, or a 403 page), and nothing is to be done."""
    user = await signed_in(request, sessions)
    if isinstance(user, Response):
        return user
    if not same_origin(request, sessions.origin):
        return refused(request, sessions, user, "This was not sent from a page of this panel, so nothing was done.",
                       "If you pressed a button here, reload the page and press it again.")
    try:
        form = await read_form(request, MAX_FORM_BYTES, MAX_FORM_FIELDS)
    except InvalidInput as e:
        return refused(request, sessions, user, f"{e.message[:1].upper()}{e.message[1:]}, so nothing was done.",
                       "Send the form as the page shows it.")
    token = form.pop(CSRF_FIELD, "") or request.headers.get(CSRF_HEADER, "")
    if not sessions.csrf_ok(request.cookies.get(PANEL_COOKIE), token):
        return refused(request, sessions, user,
                       "This form does not belong to your current sign-in (it is from an older page, another "
                       "browser or another site), so nothing was done.", "Reload the page and try again.")
    return user, form
