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
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

from starlette.applications import Starlette
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.services.web_login import SESSION_COOKIE
from foundry_fleet.storage.snapshots import META, DirectorySnapshots
from foundry_fleet.storage.tenant_tree import DIR_FLAGS, FILE_FLAGS, Kind, walk
from foundry_fleet.web.auth import WITH_FORM, logout_form

IDENTITY = "x-fleet-user"
CHUNK = 256 * 1024


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


def _shown(name: str) -> str:
    """A name as text a page or a zip can hold (bytes that are not UTF-8 shown as U+FFFD)."""
    return os.fsencode(name).decode("utf-8", "replace")


def _open(root: Path, parts: list[str]) -> int | None:
    """The entry under `root`, opened step by step from directory descriptors, refusing every symbolic
    link on the way and at the end (nothing is followed), and never blocking on a FIFO."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return None
    for i, part in enumerate(parts):
        try:
            child = os.open(part, DIR_FLAGS if i < len(parts) - 1 else FILE_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


class _Sink:
    """A write-only stream for zipfile that hands out what was written so far (no seeking: zipfile
    then writes data descriptors, which is what makes streaming possible)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.chunks, self.size = b"".join(self.chunks), [], 0
        return out


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(min(max(mtime, 315532800 + 86400), 4102444800))  # what a zip can say: 1980 to 2099
    return t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec


def zip_stream(root: Path) -> Iterator[bytes]:
    """A zip of every regular file under `root` (links skipped, never followed), produced piece by piece."""
    sink = _Sink()
    fd = os.open(root, DIR_FLAGS)
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # type: ignore[arg-type]
            for entry in walk(fd, skip=lambda parts: parts in ((META,), (".zfs",)), open_files=True):
                if entry.kind is not Kind.FILE or entry.st is None:
                    continue
                info = zipfile.ZipInfo("/".join(_shown(p) for p in entry.parts), _zip_time(entry.st.st_mtime))
                info.external_attr = (stat.S_IMODE(entry.st.st_mode) | stat.S_IFREG) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = entry.st.st_size
                with zf.open(info, "w", force_zip64=entry.st.st_size > 1 << 30) as dst:
                    while block := os.read(entry.fd, CHUNK):
                        dst.write(block)
                        if sink.size >= CHUNK:
                            yield sink.take()
                if sink.size:
                    yield sink.take()
        yield sink.take()
    finally:
        os.close(fd)


def _file_chunks(f: io.BufferedReader | io.FileIO) -> Iterator[bytes]:
    """The file's bytes; a file object, not a bare descriptor, so that a response never sent (HEAD, a
    client gone) still closes it when the generator is dropped unstarted."""
    with f:
        while block := f.read(CHUNK):
            yield block


def create_backups_app(snapshots: DirectorySnapshots, instance_for_host: Callable[[str], str | None],
                       logout_token: Callable[[str | None], str] | None = None) -> Starlette:
    """`logout_token`: the sign-out form's token for a session cookie (None: no sign-out button)."""

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

    def browse(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snap = request.path_params["snapshot"]
        parts = _request_parts(request)
        if parts is None:
            return PlainTextResponse("not a path inside the backup", status_code=400)
        try:
            root = snapshots.path(name, snap)
        except FleetError:
            return PlainTextResponse("no such backup", status_code=404)
        if parts[:1] in ([META], [".zfs"]):
            return PlainTextResponse("not found", status_code=404)
        fd = _open(root, parts)
        if fd is None:
            return PlainTextResponse("not found", status_code=404)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            shown = _shown(parts[-1])
            kind = mimetypes.guess_type(shown)[0] or "application/octet-stream"
            return StreamingResponse(_file_chunks(os.fdopen(fd, "rb", buffering=0)), media_type=kind, headers={
                "Content-Length": str(st.st_size),
                "Content-Disposition": f"attachment; filename*=utf-8''{quote(os.fsencode(parts[-1]))}"})
        try:
            if not stat.S_ISDIR(st.st_mode):
                return PlainTextResponse("not found", status_code=404)
            with os.scandir(fd) as it:
                entries = sorted(((e.name, e.is_dir(follow_symlinks=False)) for e in it
                                  if not e.is_symlink() and not (not parts and e.name in (META, ".zfs"))))
        finally:
            os.close(fd)
        base = "/backups/" + quote(snap) + "/" + "".join(quote(os.fsencode(p)) + "/" for p in parts)
        items = "".join(
            f"<li><a href='{base}{quote(os.fsencode(n))}{'/' if is_dir else ''}'>{html.escape(_shown(n))}"
            f"{'/' if is_dir else ''}</a></li>" for n, is_dir in entries
        )
        title = html.escape(snap)
        return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>{title}</title>"
                            f"<h1>{title}/{html.escape('/'.join(_shown(p) for p in parts))}</h1><ul>{items}</ul>"
                            f"{sign_out(request)}", headers=WITH_FORM)

    def download(request: Request) -> Response:
        name = tenant(request)
        if isinstance(name, Response):
            return name
        snap = request.path_params["snapshot"]
        try:
            root = snapshots.path(name, snap)
        except FleetError:
            return PlainTextResponse("no such backup", status_code=404)
        try:
            os.close(os.open(root, DIR_FLAGS))
        except OSError:
            return PlainTextResponse("no such backup", status_code=404)
        return StreamingResponse(zip_stream(root), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}-{snap}.zip"'})

    return Starlette(routes=[
        Route("/backups/", listing, methods=["GET"]),
        Route("/backups/{snapshot}.zip", download, methods=["GET"]),
        Route("/backups/{snapshot}/", browse, methods=["GET"]),
        Route("/backups/{snapshot}/{path:backup_path}", browse, methods=["GET"]),
    ])
