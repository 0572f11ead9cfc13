"""Tenants' own backups at https://<tenant host>/backups/: a listing, file browsing, and a whole
snapshot as one zip streamed as it is made.

Reached only through the edge, after the fleet's auth check said yes (the edge strips any identity
header a client sends, and only the auth answer may set `X-Fleet-User`), over a unix socket only
the fleet's own user (Caddy's) can open. The instance is the one the request's host belongs to, so
one tenant's host never shows another's snapshots. Paths never leave the snapshot: `..` is refused
and links are neither followed nor served.
"""

from __future__ import annotations

import html
import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.services.web_login import SESSION_COOKIE
from foundry_fleet.storage.snapshots import META, DirectorySnapshots
from foundry_fleet.web.auth import WITH_FORM, logout_form

IDENTITY = "x-fleet-user"
CHUNK = 256 * 1024


def _safe_parts(path: str) -> list[str] | None:
    """The path's parts, or None if it tries to climb out (or is otherwise not a plain relative path)."""
    parts = [p for p in PurePosixPath("/" + path).parts[1:] if p not in ("", ".")]
    if any(p == ".." or "\\" in p or "\x00" in p for p in parts):
        return None
    return parts


def _resolve(root: Path, parts: list[str]) -> Path | None:
    """The entry under `root`, refusing every symbolic link on the way (nothing is followed)."""
    current = root
    for part in parts:
        current = current / part
        try:
            st = os.lstat(current)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
    return current


class _Sink:
    """A write-only stream for zipfile that hands out what was written so far (no seeking: zipfile
    then writes data descriptors, which is what makes streaming possible)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def zip_stream(root: Path) -> Iterator[bytes]:
    """A zip of every regular file under `root` (links skipped), produced piece by piece."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # type: ignore[arg-type]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if rel == META or not stat.S_ISREG(os.lstat(full).st_mode):
                    continue
                info = zipfile.ZipInfo.from_file(full, rel)
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(full, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as src, \
                        zf.open(info, "w") as dst:
                    while block := src.read(CHUNK):
                        dst.write(block)
                        if sum(len(c) for c in sink.chunks) >= CHUNK:
                            yield sink.take()
            if sink.chunks:
                yield sink.take()
    yield sink.take()


def create_backups_app(snapshots: DirectorySnapshots, instance_for_host: Callable[[str], str | None],
                       logout_token: Callable[[str | None], str] | None = None) -> Starlette:
    """`logout_token`: the sign-out form's token for a session cookie (None: no sign-out button)."""

    def sign_out(request: Request) -> str:
        return logout_form(logout_token(request.cookies.get(SESSION_COOKIE))) if logout_token else ""

    def tenant(request: Request) -> str | Response:
        if not request.headers.get(IDENTITY):
            return PlainTextResponse("sign in first", status_code=403)
        host = request.headers.get("host", "").split(":")[0].lower()
        name = instance_for_host(host)
        return name if name else PlainTextResponse("no such game here", status_code=404)

    async def listing(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snaps = snapshots.list(name)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse([s.to_dict() for s in snaps])
        rows = "".join(
            f"<tr><td><a href='/backups/{quote(s.name)}/'>{html.escape(s.name)}</a></td>"
            f"<td>{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(s.created_at))}</td>"
            f"<td>{s.bytes_total:,} bytes</td><td><a href='/backups/{quote(s.name)}.zip'>download</a></td></tr>"
            for s in reversed(snaps)
        )
        return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>Backups</title><h1>Backups</h1>"
                            f"<table><tr><th>snapshot</th><th>taken</th><th>size</th><th></th></tr>{rows}</table>"
                            f"{sign_out(request)}", headers=WITH_FORM)

    async def browse(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snap = request.path_params["snapshot"]
        parts = _safe_parts(request.path_params.get("path", ""))
        if parts is None:
            return PlainTextResponse("not a path inside the backup", status_code=400)
        try:
            root = snapshots.path(name, snap)
        except FleetError:
            return PlainTextResponse("no such backup", status_code=404)
        target = _resolve(root, parts)
        if target is None or (target.name == META and len(parts) == 1):
            return PlainTextResponse("not found", status_code=404)
        if target.is_dir():
            entries = sorted((e for e in os.scandir(target) if e.name != META and not e.is_symlink()), key=lambda e: e.name)
            base = "/backups/" + quote(snap) + "/" + "".join(quote(p) + "/" for p in parts)
            items = "".join(
                f"<li><a href='{base}{quote(e.name)}{'/' if e.is_dir() else ''}'>{html.escape(e.name)}"
                f"{'/' if e.is_dir() else ''}</a></li>" for e in entries
            )
            return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{html.escape(snap)}</title>"
                                f"<h1>{html.escape(snap)}/{html.escape('/'.join(parts))}</h1><ul>{items}</ul>"
                                f"{sign_out(request)}", headers=WITH_FORM)
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(target, filename=target.name)

    async def download(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snap = request.path_params["snapshot"]
        try:
            root = snapshots.path(name, snap)
        except FleetError:
            return PlainTextResponse("no such backup", status_code=404)
        return StreamingResponse(zip_stream(root), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}-{snap}.zip"'})

    return Starlette(routes=[
        Route("/backups/", listing, methods=["GET"]),
        Route("/backups/{snapshot}.zip", download, methods=["GET"]),
        Route("/backups/{snapshot}/", browse, methods=["GET"]),
        Route("/backups/{snapshot}/{path:path}", browse, methods=["GET"]),
    ])
