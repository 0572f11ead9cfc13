"""Tenants' own backups at https://<tenant host>/backups/: a listing, file browsing, and a whole
snapshot as one zip streamed as it is made.

Reached only through the edge, after the fleet's auth check said yes (the edge strips any identity
header a client sends, and only the auth answer may set `X-Fleet-User`), over a unix socket only
the fleet's own user (Caddy's) can open. The instance is the one the request's host belongs to, so
one tenant's host never shows another's snapshots. Paths never leave the snapshot: `..` is refused,
every name is opened from its folder's descriptor, links are neither followed nor served, and FIFOs
(a ZFS snapshot holds whatever the tenant made) never block. Names are taken from the raw request path
and shown as UTF-8 with replacement, so any name a tenant made can be browsed; the zip walks the tree
without recursion, so no depth breaks it.
"""

from __future__ import annotations

import html
import io
import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote, unquote_to_bytes

from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.services.web_login import SESSION_COOKIE
from foundry_fleet.services.snapshot_files import CHUNK, SnapshotFile, SnapshotFiles, shown_name
from foundry_fleet.domain.tenant_pages import Operator, page
from foundry_fleet.web.auth import WITH_FORM, html_response, logout_form

IDENTITY = "x-fleet-user"


class _AnyPath(PathConvertor):
    """`path`, newlines included (a tenant's file name may hold one; `path` is `.*`)."""

    regex = r"[\s\S]*"


register_url_convertor("backup_path", _AnyPath())


def _safe_parts(segments: list[bytes]) -> list[str] | None:
    """The path's names (raw bytes, so any name a tenant made can be asked for), or None if it tries to
    climb out or is otherwise not a plain relative path."""
    parts = []
    for raw in segments:
        name = unquote_to_bytes(raw)
        if name in (b"", b"."):
            continue
        if name == b".." or b"/" in name or b"\\" in name or b"\x00" in name:
            return None
        parts.append(os.fsdecode(name))
    return parts


def _request_parts(request: Request) -> list[str] | None:
    """The names after `/backups/<snapshot>/`, from the raw request path (the decoded one loses bytes
    that are not UTF-8)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segments = raw.split(b"?", 1)[0].split(b"/")
    return _safe_parts(segments[3:])  # "", "backups", "<snapshot>", ...


def _file_chunks(f: io.BufferedReader | io.FileIO) -> Iterator[bytes]:
    """The file's bytes; a file object, not a bare descriptor, so that a response never sent (HEAD, a
    client gone) still closes it when the generator is dropped unstarted."""
    with f:
        while block := f.read(CHUNK):
            yield block


def create_backups_app(files: SnapshotFiles, instance_for_host: Callable[[str], str | None],
                       logout_token: Callable[[str | None], str] | None = None,
                       operator: Operator = Operator()) -> Starlette:
    """`logout_token`: the sign-out form's token for a session cookie (None: no sign-out button).
    `operator`: who hosts the fleet, at the foot of each page."""

    def sign_out(request: Request) -> str:
        return logout_form(logout_token(request.cookies.get(SESSION_COOKIE))) if logout_token else ""

    # The handlers are plain functions, which Starlette runs in its thread pool: looking up the host's
    # instance, listing snapshots (a `zfs` command, a view to mount) and reading a folder the tenant
    # filled never hold up the daemon's event loop, which also supervises every instance.

    def tenant(request: Request) -> str | Response:
        if not request.headers.get(IDENTITY):
            return PlainTextResponse("sign in first", status_code=403)
        host = request.headers.get("host", "").split(":")[0].lower()
        name = instance_for_host(host)
        return name if name else PlainTextResponse("no such game here", status_code=404)

    def listing(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snaps = files.list(name)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse([s.to_dict() for s in snaps])
        rows = "".join(
            f"<tr><td><a href='/backups/{quote(s.name)}/'>{html.escape(s.name)}</a></td>"
            f"<td><span class='nowrap'>{time.strftime('%Y-%m-%d', time.gmtime(s.created_at))}</span> "
            f"<span class='nowrap'>{time.strftime('%H:%M UTC', time.gmtime(s.created_at))}</span></td>"
            f"<td class='num hide-narrow'>{s.bytes_total:,} bytes</td>"
            f"<td><a href='/backups/{quote(s.name)}.zip'>download</a></td></tr>"
            for s in reversed(snaps)
        )
        table = ("<table><tr><th>snapshot</th><th>taken</th><th class='num hide-narrow'>size</th><th></th></tr>"
                 f"{rows}</table>") if snaps else ""
        text = ["Each snapshot can be browsed, or downloaded whole as a zip."] if snaps else ["No backups yet."]
        return html_response(page("Backups", "Backups", text, operator, body_html=table + sign_out(request),
                                  wide=True, tone="none"), headers=WITH_FORM)

    def browse(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snap = request.path_params["snapshot"]
        parts = _request_parts(request)
        if parts is None:
            return PlainTextResponse("not a path inside the backup", status_code=400)
        try:
            found = files.open(name, snap, parts)
        except FleetError:
            return PlainTextResponse("no such backup", status_code=404)
        if found is None:
            return PlainTextResponse("not found", status_code=404)
        if isinstance(found, SnapshotFile):
            kind = mimetypes.guess_type(shown_name(parts[-1]))[0] or "application/octet-stream"
            return StreamingResponse(_file_chunks(found.file), media_type=kind, headers={
                "Content-Length": str(found.size),
                "Content-Disposition": f"attachment; filename*=utf-8''{quote(os.fsencode(parts[-1]))}"})
        base = "/backups/" + quote(snap) + "/" + "".join(quote(os.fsencode(p)) + "/" for p in parts)
        items = "".join(
            f"<li><a href='{base}{quote(os.fsencode(e.name))}{'/' if e.is_dir else ''}'>{html.escape(shown_name(e.name))}"
            f"{'/' if e.is_dir else ''}</a></li>" for e in found.entries
        )
        where = "/".join([snap, *(shown_name(p) for p in parts)])
        back = "<p><a href='../'>up one folder</a></p>"
        return html_response(page(snap, where, [], operator, body_html=f"{back}<ul>{items}</ul>{sign_out(request)}",
                                  wide=True, tone="none"), headers=WITH_FORM)

    def download(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snap = request.path_params["snapshot"]
        if not files.exists(name, snap):
            return PlainTextResponse("no such backup", status_code=404)
        return StreamingResponse(files.zip_stream(name, snap), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}-{snap}.zip"'})

    return Starlette(routes=[
        Route("/backups/", listing, methods=["GET"]),
        Route("/backups/{snapshot}.zip", download, methods=["GET"]),
        Route("/backups/{snapshot}/", browse, methods=["GET"]),
        Route("/backups/{snapshot}/{path:backup_path}", browse, methods=["GET"]),
    ])
