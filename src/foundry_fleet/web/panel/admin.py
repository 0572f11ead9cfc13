"""The fleet admins' pages: invites, releases, the event log, the host's health, the runtime's nodes.

Only admins see them: anyone else signed in gets a 403 for every page and every form, before any
service is asked anything. Each POST is checked by `checked_form` (session, Origin, CSRF token) like the
instance pages' actions, and acts as the signed-in admin, so the event log names them.

A page whose service the daemon did not hand over says so (503) instead of failing: the panel is served
from the daemon's first moment, and a fleet may run without some of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError, InvalidInput, http_status
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.invites import CreatedInvite
from foundry_fleet.services.panel_sessions import PanelUser
from foundry_fleet.services.release_jobs import ReleaseJob
from foundry_fleet.web.panel.guard import checked_form
from foundry_fleet.web.panel.instances import context, panel_user, problem_text
from foundry_fleet.web.panel.render import render
from foundry_fleet.web.panel.services import Panel, PanelServices

# What a redirect after a form may say (a code in the URL, never text from it).
ADMIN_NOTICES = {
    "revoked": "Invite revoked.",
    "adding": "Download started: its progress shows below; the release appears in the list when it is added.",
    "removed": "Release removed.",
}
EXPIRY_CHOICES = (("1h", "1 hour"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"), ("90d", "90 days"))
EVENT_LIMITS = (25, 50, 100, 200, 500)
ACTION_PREFIXES = ("instance.", "backup.", "release.", "invite.", "wizard.", "edge.", "daemon.", "panel.")
MAX_FILTER_CHARS = 100  # as long as an event's target may be
POLL_EVERY = "1s"


def when(at: float | None) -> str:
    """A moment as every admin reads it the same, whatever their time zone."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "–"


def percent(job: ReleaseJob) -> int | None:
    if not job.total_bytes:
        return None
    return min(100, job.done_bytes * 100 // job.total_bytes)


class AdminPages:
    def __init__(self, panel: Panel) -> None:
        self.panel = panel

    def routes(self) -> list[Route]:
        return [
            Route("/admin", self.home, methods=["GET"]),
            Route("/admin/invites", self.invites, methods=["GET"]),
            Route("/admin/invites", self.create_invite, methods=["POST"]),
            Route("/admin/invites/revoke", self.revoke_invite, methods=["POST"]),
            Route("/admin/releases", self.releases, methods=["GET"]),
            Route("/admin/releases", self.add_release, methods=["POST"]),
            Route("/admin/releases/remove", self.remove_release, methods=["POST"]),
            Route("/admin/releases/jobs/{job}", self.release_job, methods=["GET"]),
            Route("/admin/events", self.events, methods=["GET"]),
            Route("/admin/health", self.health, methods=["GET"]),
            Route("/admin/nodes", self.nodes, methods=["GET"]),
        ]

    # who may -------------------------------------------------------------------------------------

    async def _admin(self, request: Request) -> tuple[PanelUser, PanelServices] | Response:
        got = await panel_user(request, self.panel)
        if not isinstance(got, Response) and not got[0].admin:
            return self._not_admin(request, got[0])
        return got

    async def _admin_form(self, request: Request) -> tuple[PanelUser, PanelServices, dict[str, str]] | Response:
        if self.panel.sessions is None or self.panel.services is None:
            got = await self._admin(request)  # the same refusal as a GET
            assert isinstance(got, Response)
            return got
        checked = await checked_form(request, self.panel.sessions)
        if isinstance(checked, Response):
            return checked
        user, form = checked
        if not user.admin:
            return self._not_admin(request, user)
        return user, self.panel.services, form

    def _not_admin(self, request: Request, user: PanelUser) -> Response:
        return render(request, "message.html", self._context(
            request, user, "", title="Fleet admins only",
            message="Only the fleet's admins may use this page; nothing was done."), status=403)

    def _context(self, request: Request, user: PanelUser, section: str, **values: Any) -> dict[str, Any]:
        found = context(request, self.panel, user, section, **values)
        found["notice"] = ADMIN_NOTICES.get(request.query_params.get("done", ""))
        found["when"] = when
        return found

    def _unavailable(self, request: Request, user: PanelUser, section: str, what: str) -> Response:
        return render(request, "message.html", self._context(
            request, user, section, title="Not available",
            message=f"{what} are not available on this panel: the daemon did not hand them over. "
                    f"The command line has them (`foundry-fleet --help`)."), status=503)

    async def home(self, request: Request) -> Response:
        got = await self._admin(request)
        if isinstance(got, Response):
            return got
        return RedirectResponse("/admin/invites", status_code=303)

    # invites -------------------------------------------------------------------------------------

    async def invites(self, request: Request, user: PanelUser | None = None, problem: FleetError | None = None,
                      form: dict[str, str] | None = None, created: CreatedInvite | None = None) -> Response:
        if user is None:
            got = await self._admin(request)
            if isinstance(got, Response):
                return got
            user, svc = got
        else:
            assert self.panel.services is not None
            svc = self.panel.services
        if svc.invites is None:
            return self._unavailable(request, user, "invites", "Invites")
        show_all = request.query_params.get("show") == "all"
        listed = await asyncio.to_thread(svc.invites.list, show_all)
        return render(request, "admin/invites.html", self._context(
            request, user, "invites", invites=listed, show_all=show_all, created=created,
            form=form or {}, expiries=EXPIRY_CHOICES, problem=problem_text(problem) if problem else None),
            status=http_status(problem) if problem else 200)

    async def create_invite(self, request: Request) -> Response:
        got = await self._admin_form(request)
        if isinstance(got, Response):
            return got
        user, svc, form = got
        if svc.invites is None:
            return self._unavailable(request, user, "invites", "Invites")
        shareable = form.get("kind") == "code"
        discord_user = form.get("discord_user", "").strip()
        try:
            # Answered on this very page, not after a redirect: a code is shown once and kept nowhere.
            created = await asyncio.to_thread(svc.invites.acting_as(user.principal.actor).create,
                                              None if shareable else discord_user, form.get("expires", "7d")[:20],
                                              shareable)
        except FleetError as e:
            return await self.invites(request, user, problem=e, form=form)
        return await self.invites(request, user, created=created)

    async def revoke_invite(self, request: Request) -> Response:
        got = await self._admin_form(request)
        if isinstance(got, Response):
            return got
        user, svc, form = got
        if svc.invites is None:
            return self._unavailable(request, user, "invites", "Invites")
        try:
            invite_id = int(form.get("invite", ""))
            await asyncio.to_thread(svc.invites.acting_as(user.principal.actor).revoke, invite_id)
        except ValueError:
            return await self.invites(request, user, problem=_bad_form("the invite to revoke"))
        except FleetError as e:
            return await self.invites(request, user, problem=e)
        return RedirectResponse("/admin/invites?done=revoked", status_code=303)

    # releases ------------------------------------------------------------------------------------

    async def releases(self, request: Request, user: PanelUser | None = None,
                       problem: FleetError | None = None) -> Response:
        if user is None:
            got = await self._admin(request)
            if isinstance(got, Response):
                return got
            user, svc = got
        else:
            assert self.panel.services is not None
            svc = self.panel.services
        listed = await asyncio.to_thread(svc.releases.list)
        jobs = await asyncio.to_thread(svc.release_jobs.list) if svc.release_jobs is not None else []
        return render(request, "admin/releases.html", self._context(
            request, user, "releases", releases=listed, jobs=jobs, can_add=svc.release_jobs is not None,
            percent=percent, poll=POLL_EVERY, problem=problem_text(problem) if problem else None),
            status=http_status(problem) if problem else 200)

    async def add_release(self, request: Request) -> Response:
        got = await self._admin_form(request)
        if isinstance(got, Response):
            return got
        user, svc, form = got
        if svc.release_jobs is None:
            return self._unavailable(request, user, "releases", "Release downloads")
        try:
            # The link's own checks (https, allowed hosts, public addresses) answer here, on the form.
            await asyncio.to_thread(svc.release_jobs.start, form.get("url", "")[:4000], user.principal.actor)
        except FleetError as e:
            return await self.releases(request, user, problem=e)
        return RedirectResponse("/admin/releases?done=adding", status_code=303)

    async def remove_release(self, request: Request) -> Response:
        got = await self._admin_form(request)
        if isinstance(got, Response):
            return got
        user, svc, form = got
        try:
            # The registry refuses a release an instance still uses.
            await asyncio.to_thread(svc.releases.acting_as(user.principal.actor).remove, form.get("version", ""))
        except FleetError as e:
            return await self.releases(request, user, problem=e)
        return RedirectResponse("/admin/releases?done=removed", status_code=303)

    async def release_job(self, request: Request) -> Response:
        """One job's progress, for the releases page to poll until it is done."""
        got = await self._admin(request)
        if isinstance(got, Response):
            return got
        user, svc = got
        if svc.release_jobs is None:
            return self._unavailable(request, user, "releases", "Release downloads")
        job_id = request.path_params["job"]
        try:
            job = await asyncio.to_thread(svc.release_jobs.get, job_id)
        except FleetError as e:
            # Answered 200, so the poller's element is replaced by this and polls no more.
            return render(request, "admin/_job_gone.html", {"job_id": job_id, "message": problem_text(e)})
        # Once it is done, the release list on the page gains the new release without a reload.
        releases = await asyncio.to_thread(svc.releases.list) if job.finished else None
        return render(request, "admin/_job.html", self._context(
            request, user, "releases", job=job, percent=percent, poll=POLL_EVERY, releases=releases, swap_rows=True))

    # events --------------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        got = await self._admin(request)
        if isinstance(got, Response):
            return got
        user, svc = got
        if svc.events is None:
            return self._unavailable(request, user, "events", "The event log's pages")
        q = request.query_params
        filters = {"target": q.get("target", "").strip()[:MAX_FILTER_CHARS],
                   "action": q.get("action", "").strip()[:MAX_FILTER_CHARS],
                   "outcome": q.get("outcome", "") if q.get("outcome", "") in {o.value for o in Outcome} else "",
                   "limit": _limit(q.get("limit", ""))}
        found, cards = await asyncio.gather(
            asyncio.to_thread(svc.events.search, filters["target"] or None, filters["action"] or None,
                              filters["outcome"] or None, int(filters["limit"])),
            asyncio.to_thread(svc.cards.cards, user.principal))
        return render(request, "admin/events.html", self._context(
            request, user, "events", events=found, filters=filters, outcomes=[o.value for o in Outcome],
            limits=EVENT_LIMITS, prefixes=ACTION_PREFIXES, instances=[c.name for c in cards]))

    # the host --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return await self._facts_page(request, "health", "The host's health checks", "Host health",
                                      lambda svc: svc.health, "admin/health.html", "report")

    async def nodes(self, request: Request) -> Response:
        return await self._facts_page(request, "nodes", "The runtime's facts", "Nodes and runtime",
                                      lambda svc: svc.runtime_facts, "admin/nodes.html", "facts")

    async def _facts_page(self, request: Request, section: str, what: str, title: str,
                          source: Callable[[PanelServices], Callable[[], Awaitable[Any]] | None],
                          template: str, name: str) -> Response:
        """A page of what a callable the daemon handed over finds (each run of it may take a while)."""
        got = await self._admin(request)
        if isinstance(got, Response):
            return got
        user, svc = got
        read = source(svc)
        if read is None:
            return self._unavailable(request, user, section, what)
        try:
            found = await read()
        except FleetError as e:
            return render(request, "message.html", self._context(
                request, user, section, title=title, message=problem_text(e)), status=http_status(e))
        return render(request, template, self._context(request, user, section, **{name: found}))


def _limit(text: str) -> str:
    return text if text.isdigit() and int(text) in EVENT_LIMITS else "100"


def _bad_form(what: str) -> FleetError:
    return InvalidInput(f"the form did not say {what}", "reload the page and try again")
