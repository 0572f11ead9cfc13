"""The instance pages: the overview, one instance with its actions, log and backups, and the restore
confirmation. Every action is a POST checked by `checked_form` (session, Origin, CSRF token); who may do
what is the Access service's decision, as for the bot and the control API.

Long operations (upgrade, restore) go on in the daemon after the answer: the page shows their progress
live, and their outcome is in the event log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError, NotFound, http_status
from foundry_fleet.services.panel_sessions import PANEL_COOKIE, PanelUser
from foundry_fleet.web.panel.guard import checked_form, signed_in
from foundry_fleet.web.panel.render import render
from foundry_fleet.web.panel.services import Panel, PanelServices

log = logging.getLogger(__name__)

LOG_LINES = 200  # shown when the page opens; the stream goes on from there
ANSWER_WITHIN = 1.5  # seconds an upgrade or restore may take to fail at once before the page is answered
# What a redirect after an action may say (a code in the URL, never text from it).
NOTICES = {
    "start": "Starting.", "stop": "Stopping.", "restart": "Restarting.", "backup": "Snapshot taken.",
    "upgrade": "Upgrade under way: this page follows it; the event log has the outcome.",
    "restore": "Restore under way: this page follows it; the event log has the outcome.",
    "suspend": "Suspended.", "resume": "Resumed.",
}


def context(request: Request, panel: Panel, user: PanelUser, section: str, **values: Any) -> dict[str, Any]:
    assert panel.sessions is not None
    return {"user": user, "csrf": panel.sessions.csrf_token(request.cookies.get(PANEL_COOKIE)),
            "section": section, "notice": NOTICES.get(request.query_params.get("done", "")), "problem": None,
            "now": time.time(), **values}


def starting(request: Request) -> Response:
    return render(request, "message.html", {"user": None, "csrf": "", "section": "", "notice": None,
                                            "problem": None, "title": "Starting",
                                            "message": "The fleet is starting; try again in a moment."},
                  status=503, headers={"Retry-After": "5"})


def problem_text(error: FleetError) -> str:
    text = error.message[:1].upper() + error.message[1:]
    return f"{text}. {error.hint}" if error.hint else f"{text}."


def panel_off(request: Request) -> Response:
    return render(request, "message.html", {"user": None, "csrf": "", "section": "", "notice": None,
                                            "problem": None, "title": "Panel off",
                                            "message": "The web panel is turned off on this fleet."}, status=404)


async def panel_user(request: Request, panel: Panel) -> tuple[PanelUser, PanelServices] | Response:
    """Who is signed in, and the services their page calls; else the answer to give instead (the panel
    is off, a sign-in, or the fleet still starting)."""
    if panel.sessions is None:
        return panel_off(request)
    user = await signed_in(request, panel.sessions)
    if isinstance(user, Response):
        return user
    if panel.services is None:
        return starting(request)
    return user, panel.services


class InstancePages:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self._under_way: set[asyncio.Task[Any]] = set()  # long operations the answer did not wait for

    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview, methods=["GET"]),
            Route("/instances/{name}", self.instance, methods=["GET"]),
            Route("/instances/{name}/restore", self.restore_confirm, methods=["GET"]),
            Route("/instances/{name}/{action}", self.act, methods=["POST"]),
        ]

    async def overview(self, request: Request) -> Response:
        got = await panel_user(request, self.panel)
        if isinstance(got, Response):
            return got
        user, svc = got
        cards = await asyncio.to_thread(svc.cards.cards, user.principal)
        return render(request, "overview.html", context(request, self.panel, user, "overview", cards=cards))

    async def instance(self, request: Request, problem: FleetError | None = None) -> Response:
        got = await panel_user(request, self.panel)
        if isinstance(got, Response):
            return got
        user, svc = got
        name = request.path_params["name"]
        try:
            card = await asyncio.to_thread(svc.cards.card, user.principal, name)
        except FleetError as e:
            return self._refused(request, user, e)
        snapshots, releases, plan = await asyncio.gather(
            asyncio.to_thread(svc.backups.list, name), asyncio.to_thread(svc.releases.list),
            asyncio.to_thread(svc.backups.plan_for, name))
        return render(request, "instance.html", context(
            request, self.panel, user, "overview", card=card, snapshots=snapshots, releases=releases,
            plan=str(plan), log_lines=await self._log_tail(svc, name),
            backups_url=f"https://{card.view.host}{svc.port_suffix}/backups/", port_suffix=svc.port_suffix,
            problem=problem_text(problem) if problem else None),
            status=http_status(problem) if problem else 200)

    async def _log_tail(self, svc: PanelServices, name: str) -> list[str]:
        try:
            return [line async for line in svc.logs(name, LOG_LINES)]
        except FleetError:
            return []  # no log yet (never started), or its runtime keeps none any more

    async def restore_confirm(self, request: Request) -> Response:
        got = await panel_user(request, self.panel)
        if isinstance(got, Response):
            return got
        user, svc = got
        name, snapshot = request.path_params["name"], request.query_params.get("snapshot", "")
        try:
            card = await asyncio.to_thread(svc.cards.card, user.principal, name, "restore")
            if snapshot not in {s.name for s in await asyncio.to_thread(svc.backups.list, name)}:
                raise NotFound(f"{name} has no snapshot named {snapshot!r}", "pick one from the instance's page")
        except FleetError as e:
            return self._refused(request, user, e)
        return render(request, "restore.html", context(
            request, self.panel, user, "overview", card=card, snapshot=snapshot,
            safety_name=svc.backups.snapshot_name("safety", time.time())))

    async def act(self, request: Request) -> Response:
        if self.panel.sessions is None or self.panel.services is None:
            return await panel_user(request, self.panel)  # type: ignore[return-value]  # the same refusal as a GET
        checked = await checked_form(request, self.panel.sessions)
        if isinstance(checked, Response):
            return checked
        user, form = checked
        svc = self.panel.services
        name, action = request.path_params["name"], request.path_params["action"]
        actor = user.principal.actor
        ops = svc.operations
        try:
            await asyncio.to_thread(svc.cards.card, user.principal, name, action)  # NotFound / Forbidden first
            match action:
                case "start":
                    await ops.start(actor, name, wait=False)
                case "stop":
                    await ops.stop(actor, name, wait=False)
                case "restart":
                    await ops.restart(actor, name, wait=False)
                case "backup":
                    await ops.take_backup(actor, name)
                case "suspend":
                    await ops.suspend(actor, name, form.get("reason", "")[:200])
                case "resume":
                    await ops.resume(actor, name)
                case "upgrade":
                    await self._under_way_or_failed(lambda: ops.upgrade(actor, name, form.get("release", "")))
                case "restore":
                    await self._under_way_or_failed(lambda: ops.restore(actor, name, form.get("snapshot", "")))
                case _:
                    raise NotFound(f"the panel has no action {action!r}")
        except FleetError as e:
            if isinstance(e, NotFound) and action not in NOTICES:
                return self._refused(request, user, e)
            request.scope["method"] = "GET"
            return await self.instance(request, problem=e)
        return RedirectResponse(f"/instances/{quote(name)}?done={action}", status_code=303)

    async def _under_way_or_failed(self, operation: Callable[[], Awaitable[object]]) -> None:
        """Start a long operation; raise what it raises within ANSWER_WITHIN (a wrong release, an instance
        busy with something else), else let it finish after the answer."""
        task = asyncio.ensure_future(operation())
        done, _ = await asyncio.wait({task}, timeout=ANSWER_WITHIN)
        if done:
            task.result()
            return
        self._under_way.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._under_way.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Operations record their outcome as events; this is for what escaped them.
            log.warning("a panel operation failed: %s", error)

    def _refused(self, request: Request, user: PanelUser, error: FleetError) -> Response:
        return render(request, "message.html", context(
            request, self.panel, user, "overview", title="Not available", message=problem_text(error)),
            status=http_status(error))
