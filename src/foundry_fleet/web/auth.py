"""The sign-in routes for tenants' backups: HTTP in, a WebLogin decision out.

On the fleet host: /auth/login, /auth/callback. On tenant hosts: /auth/ticket, /auth/logout (Caddy
passes the tenant host as X-Forwarded-Host). /auth/backups is Caddy's forward_auth check. The panel's
Discord sign-in comes back through /auth/callback too (Discord allows few redirect URIs): it ends there,
with the panel's cookie on the fleet host.

Signing out is a POST from a form the fleet showed (same Origin, and a token only that page has):
a GET, or a form on any other site (another tenant's host included), signs nobody out.
"""

from __future__ import annotations

import asyncio
import functools
import html
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from foundry_fleet.domain.tenant_pages import PAGE_CSP, Link, Operator
from foundry_fleet.domain.tenant_pages import page as tenant_page
from foundry_fleet.domain.errors import ExternalFailure, FleetError, Forbidden, InvalidInput, Unsupported
from foundry_fleet.services.panel_sessions import PANEL_COOKIE, PanelSessions
from foundry_fleet.services.web_login import (
    NONCE_COOKIE,
    NONCE_SECONDS,
    SESSION_COOKIE,
    Allow,
    PanelLoginDone,
    SignIn,
    WebLogin,
    normalise_host,
)

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
STATUS = {InvalidInput: 400, Forbidden: 403, Unsupported: 404, ExternalFailure: 502}
DENY_ALL = "Sign-in for backups is not available yet."
# Pages with a sign-out form: a same-origin POST must carry its Origin (with no-referrer it is "null").
WITH_FORM = {"Referrer-Policy": "same-origin"}
MAX_FORM_BYTES = 4096
MAX_FORM_FIELDS = 10
FORM_TYPE = "application/x-www-form-urlencoded"


def request_host(request: Request) -> str:
    """The host the browser asked for: Caddy sets X-Forwarded-Host to it on every route to this app."""
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0]
    return normalise_host(forwarded or request.headers.get("host", ""))


def html_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """One of domain/tenant_pages' pages: its own style, and nothing else, may load."""
    return HTMLResponse(body, status_code=status,
                        headers={**NO_STORE, "Content-Security-Policy": PAGE_CSP, **(headers or {})})


def page(status: int, title: str, message: str, hint: str | None = None, link: tuple[str, str] | None = None,
         headers: dict[str, str] | None = None, logout_token: str | None = None,
         operator: Operator = Operator()) -> HTMLResponse:
    """A small page; with `logout_token`, it has a sign-out button."""
    form = ""
    if logout_token is not None:
        form = logout_form(logout_token)
        headers = {**(headers or {}), **WITH_FORM}
    body = tenant_page(title, title, [message, *([hint] if hint else [])], operator,
                       link=Link(*link) if link else None, body_html=form, tone="bad" if status >= 400 else "")
    return html_response(body, status, headers)


def logout_form(token: str) -> str:
    return ("<form method=post action='/auth/logout'>"
            f"<input type=hidden name=token value='{html.escape(token, quote=True)}'>"
            "<button type=submit>Sign out</button></form>")


def same_origin(request: Request, origin: str) -> bool:
    """Did the browser send this from a page of `origin` (https://host[:port])? Browsers send Origin
    with every POST; very old ones only a Referer. Neither (or `null`): no."""
    sent = request.headers.get("origin")
    if sent is not None:
        return sent == origin
    return request.headers.get("referer", "").startswith(origin + "/")


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES,
                    max_fields: int = MAX_FORM_FIELDS) -> dict[str, str]:
    """The fields of an urlencoded form (the first value of each), read no further than `max_bytes`:
    a body larger than any form of ours is refused before it is all in memory. InvalidInput says why
    a body is not read."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        raise InvalidInput("this was not sent as a form", "send it with the form's button")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidInput(f"this form is larger than {max_bytes} bytes", "send less")
    try:
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True, max_num_fields=max_fields)
    except ValueError:
        raise InvalidInput(f"this form has more than {max_fields} fields", "send the form as the page shows it") \
            from None
    return {name: values[0] for name, values in fields.items()}


async def form_field(request: Request, name: str) -> str:
    try:
        return (await read_form(request)).get(name, "")
    except InvalidInput:
        return ""


def error_page(error: FleetError, operator: Operator = Operator()) -> HTMLResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 500)
    return page(status, "Sign-in", error.message[:1].upper() + error.message[1:] + ".", error.hint,
                operator=operator)


def set_panel_cookie(response: Response, value: str, max_age: int) -> None:
    # No Domain: the fleet host's alone (what `__Host-` demands, with Secure and Path=/).
    response.set_cookie(PANEL_COOKIE, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="lax")


def auth_routes(login: WebLogin | None, panel: PanelSessions | None = None,
                operator: Operator = Operator()) -> list[Route]:
    """`panel` None: a sign-in to the panel that comes back to the callback is refused. `operator`: who
    hosts the fleet, on its pages."""
    shown = functools.partial(page, operator=operator)

    async def backups_check(request: Request) -> Response:
        """Caddy's forward_auth: 2xx lets the request through with X-Fleet-User; anything else goes back
        to the browser as it is."""
        if login is None or not login.enabled:
            # Nobody is allowed until tenants can sign in: the route is safe from the first day.
            return PlainTextResponse(DENY_ALL, status_code=403, headers=NO_STORE)
        session = request.cookies.get(SESSION_COOKIE)
        decision = await asyncio.to_thread(
            login.decide, session, request_host(request),
            request.headers.get("x-forwarded-method", ""), request.headers.get("x-forwarded-uri", ""),
            request.cookies.get(NONCE_COOKIE))
        if isinstance(decision, Allow):
            return PlainTextResponse("ok", headers={**NO_STORE, "X-Fleet-User": decision.user})
        if isinstance(decision, SignIn):
            # Caddy hands this answer to the browser as it is: the nonce cookie lands on the tenant host.
            response = RedirectResponse(decision.location, status_code=302, headers=NO_STORE)
            response.set_cookie(NONCE_COOKIE, decision.nonce, max_age=NONCE_SECONDS, path="/",
                                secure=True, httponly=True, samesite="lax")
            return response
        if decision.user is not None:
            return shown(decision.status, "Not yours", decision.message,
                        f"Signed in as Discord user {decision.user}.", logout_token=login.logout_token(session))
        return shown(decision.status, "Backups", decision.message)

    async def login_start(request: Request) -> Response:
        if login is None:
            return shown(404, "Sign-in", "Discord sign-in is not set up on this fleet.")
        try:
            start = await asyncio.to_thread(login.begin, request.query_params.get("host", ""),
                                            request.query_params.get("next"), request.query_params.get("bind"))
        except FleetError as e:
            return error_page(e, operator)
        response = RedirectResponse(start.authorize_url, status_code=302, headers=NO_STORE)
        response.set_cookie(start.cookie_name, start.cookie_value, max_age=start.max_age, path="/",
                            secure=True, httponly=True, samesite="lax")
        return response

    async def callback(request: Request) -> Response:
        if login is None:
            return shown(404, "Sign-in", "Discord sign-in is not set up on this fleet.")
        try:
            done = await asyncio.to_thread(login.finish, dict(request.query_params), dict(request.cookies))
            if isinstance(done, PanelLoginDone):
                return await panel_signed_in(done)
        except FleetError as e:
            return error_page(e, operator)
        response = RedirectResponse(done.location, status_code=302, headers=NO_STORE)
        response.delete_cookie(done.cookie_name, path="/", secure=True, httponly=True, samesite="lax")
        return response

    async def panel_signed_in(done: PanelLoginDone) -> Response:
        """The panel's sign-in ends here, on the fleet host: its session at once, no ticket."""
        if panel is None:
            raise Unsupported("the web panel is not served by this fleet")
        signed_in = await asyncio.to_thread(panel.finish_discord, done)
        response = RedirectResponse(panel.url(signed_in.next), status_code=302, headers=NO_STORE)
        set_panel_cookie(response, signed_in.cookie_value, signed_in.max_age)
        response.delete_cookie(done.cookie_name, path="/", secure=True, httponly=True, samesite="lax")
        return response

    async def ticket(request: Request) -> Response:
        if login is None:
            return shown(404, "Sign-in", "Discord sign-in is not set up on this fleet.")
        try:
            signed_in = await asyncio.to_thread(login.redeem, request.query_params.get("t", ""), request_host(request),
                                                request.cookies.get(NONCE_COOKIE))
        except FleetError as e:
            return error_page(e, operator)
        response = RedirectResponse(signed_in.next, status_code=302, headers=NO_STORE)
        # No Domain: the cookie belongs to this tenant host alone.
        response.set_cookie(SESSION_COOKIE, signed_in.cookie_value, max_age=signed_in.max_age, path="/",
                            secure=True, httponly=True, samesite="lax")
        response.delete_cookie(NONCE_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response

    async def logout_confirm(request: Request) -> Response:
        """A GET signs nobody out (an <img> on any page would): it shows the button that does."""
        token = login.logout_token(request.cookies.get(SESSION_COOKIE)) if login is not None and login.enabled else ""
        return shown(200, "Sign out", "Sign out of this game's backups?", logout_token=token)

    async def logout(request: Request) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        if login is not None and login.enabled:
            host = request_host(request)
            token = await form_field(request, "token")
            if not same_origin(request, login.url(host, "")) or not login.logout_allowed(session, token):
                return shown(403, "Sign out", "This sign-out did not come from this game's backups page, "
                            "so you are still signed in.", "To sign out, press the button below.",
                            logout_token=login.logout_token(session))
            await asyncio.to_thread(login.logout, session, host)
        response = shown(200, "Signed out", "You are signed out of this game's backups.",
                        link=("/backups/", "Sign in again"))
        response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response

    return [
        Route("/auth/backups", backups_check, methods=["GET"]),
        Route("/auth/login", login_start, methods=["GET"]),
        Route("/auth/callback", callback, methods=["GET"]),
        Route("/auth/ticket", ticket, methods=["GET"]),
        Route("/auth/logout", logout_confirm, methods=["GET"]),
        Route("/auth/logout", logout, methods=["POST"]),
    ]
