"""Signing in to the panel and out of it, on the fleet host.

/login shows the ways in; /login/discord starts Discord's (it ends at /auth/callback, web/auth.py);
/login/link?t=... shows a button that uses a single-use link: the GET itself uses nothing up, since
chat apps fetch links to preview them. Signing in or out is a POST from the panel's own page.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError, InvalidInput
from foundry_fleet.domain.web_paths import PANEL_LOGIN, PANEL_LOGOUT
from foundry_fleet.services.panel_sessions import LINK_PATH, PANEL_COOKIE, PanelSessions, safe_panel_next
from foundry_fleet.web.auth import STATUS, read_form, same_origin, set_panel_cookie
from foundry_fleet.web.panel.guard import NO_STORE, checked_form, refused
from foundry_fleet.web.panel.render import render


def _context(**values: Any) -> dict[str, Any]:
    """What base.html expects of a page nobody is signed in to, and `values`."""
    return {"user": None, "csrf": "", "section": None, "notice": None, "problem": None, **values}


def _sentence(error: FleetError) -> str:
    text = error.message[:1].upper() + error.message[1:] + "."
    return f"{text} {error.hint[:1].upper()}{error.hint[1:]}." if error.hint else text


def _status(error: FleetError) -> int:
    return next((code for kind, code in STATUS.items() if isinstance(error, kind)), 500)


def login_routes(sessions: PanelSessions | None) -> list[Route]:
    """`sessions` None: the pages say signing in is not available, and nobody is signed in."""

    def login_page(request: Request, next_path: str, problem: str | None = None, status: int = 200) -> Response:
        discord = sessions is not None and sessions.discord_enabled
        return render(request, "login.html", _context(discord=discord, next=next_path, problem=problem),
                      status=status)

    async def login(request: Request) -> Response:
        next_path = safe_panel_next(request.query_params.get("next")) or "/"
        if sessions is not None:
            user = await asyncio.to_thread(sessions.user, request.cookies.get(PANEL_COOKIE))
            if user is not None:
                return RedirectResponse(next_path, status_code=303, headers=NO_STORE)
        return login_page(request, next_path)

    async def to_discord(request: Request) -> Response:
        next_path = request.query_params.get("next")
        if sessions is None or not sessions.discord_enabled:
            return login_page(request, "/", "Discord sign-in is not set up on this fleet.", 404)
        try:
            start = await asyncio.to_thread(sessions.begin_discord, next_path)
        except FleetError as e:
            return login_page(request, "/", _sentence(e), _status(e))
        response = RedirectResponse(start.authorize_url, status_code=302, headers=NO_STORE)
        response.set_cookie(start.cookie_name, start.cookie_value, max_age=start.max_age, path="/",
                            secure=True, httponly=True, samesite="lax")
        return response

    def link_page(request: Request, token: str | None, problem: str | None = None, status: int = 200) -> Response:
        return render(request, "link.html", _context(token=token, problem=problem), status=status)

    async def link_confirm(request: Request) -> Response:
        token = request.query_params.get("t", "")
        if sessions is None:
            return link_page(request, None, "Signing in to the panel is not available on this fleet.", 404)
        try:
            await asyncio.to_thread(sessions.check_link, token)  # says what is wrong before the button is pressed
        except FleetError as e:
            return link_page(request, None, _sentence(e), _status(e))
        return link_page(request, token)

    async def link_use(request: Request) -> Response:
        if sessions is None:
            return link_page(request, None, "Signing in to the panel is not available on this fleet.", 404)
        if not same_origin(request, sessions.origin):
            return refused(request, sessions, None, "This sign-in was not sent from this panel's page, so nobody "
                           "was signed in.", "Open the link again and press its Sign in button.")
        try:
            token = (await read_form(request)).get("t", "")
            cookie, max_age = await asyncio.to_thread(sessions.redeem_link, token)
        except InvalidInput as e:
            return refused(request, sessions, None, _sentence(e))
        except FleetError as e:
            return link_page(request, None, _sentence(e), _status(e))
        response = RedirectResponse("/", status_code=303, headers=NO_STORE)
        set_panel_cookie(response, cookie, max_age)
        return response

    async def logout(request: Request) -> Response:
        if sessions is None:
            return RedirectResponse(PANEL_LOGIN, status_code=303, headers=NO_STORE)
        checked = await checked_form(request, sessions)
        if isinstance(checked, Response):
            return checked
        await asyncio.to_thread(sessions.logout, request.cookies.get(PANEL_COOKIE))
        response = RedirectResponse(PANEL_LOGIN, status_code=303, headers=NO_STORE)
        response.delete_cookie(PANEL_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response

    return [
        Route(PANEL_LOGIN, login, methods=["GET"]),
        Route(PANEL_LOGIN + "/discord", to_discord, methods=["GET"]),
        Route(LINK_PATH, link_confirm, methods=["GET"]),
        Route(LINK_PATH, link_use, methods=["POST"]),
        Route(PANEL_LOGOUT, logout, methods=["POST"]),
    ]
