"""Shared helpers for the release cache tests: zip builders and a real local HTTPS server.

Imported by the other test_releases_* modules; holds no tests itself.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import struct
import subprocess
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from foundry_fleet.wiring.services import FleetServices

from foundry_fleet.releases.policy import MIB, DownloadPolicy, UnpackLimits

# -- zips --------------------------------------------------------------------------------------------


def package_json(generation: object = 13, build: object = 345, release: object = None) -> bytes:
    if release is None:
        release = {"generation": generation, "build": build, "channel": "Stable", "suffix": ""}
    return json.dumps({"name": "foundryvtt", "version": f"{generation}.{build}", "release": release}).encode()


@dataclass(frozen=True)
class Entry:
    """One zip entry: a file (with a unix mode), a folder, or a symlink whose body is its target."""

    name: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"  # "file" | "dir" | "symlink"
    compress: int = zipfile.ZIP_DEFLATED


def file(name: str, data: bytes | str = b"", mode: int = 0o644) -> Entry:
    return Entry(name, data.encode() if isinstance(data, str) else data, mode)


def folder(name: str) -> Entry:
    return Entry(name if name.endswith("/") else name + "/", kind="dir", mode=0o755)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, target.encode(), 0o777, kind="symlink", compress=zipfile.ZIP_STORED)


def write_zip(path: Path, entries: list[Entry]) -> Path:
    """Write entries exactly as given (zipfile keeps '../x', '/x' and backslashes in ZipInfo names)."""
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are sometimes the point
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3  # unix, so the mode bits below are meaningful
            type_bits = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}[entry.kind]
            info.external_attr = (type_bits | entry.mode) << 16
            if entry.kind == "dir":
                info.external_attr |= 0x10  # MS-DOS directory flag
            info.compress_type = entry.compress
            zf.writestr(info, entry.data)
    return path


MAIN_JS = "// Foundry server entry\nconsole.log('foundry');\n"


def release_entries(layout: str = "node", generation: object = 13, build: object = 345, **pkg: object) -> list[Entry]:
    """A small but shaped-like-the-real-thing release for one of the three layouts."""
    pj = package_json(generation, build, **pkg)  # type: ignore[arg-type]
    if layout == "node":
        return [
            file("main.js", MAIN_JS),
            file("package.json", pj),
            folder("dist"),
            file("dist/foundry.mjs", "export default 1;\n" * 50),
            file("public/index.html", "<html></html>"),
        ]
    if layout == "linux":
        return [
            file("foundryvtt", b"\x7fELF fake electron binary", 0o755),
            file("resources/app/main.mjs", MAIN_JS),
            file("resources/app/package.json", pj),
            file("resources/app/dist/server.mjs", "export {};\n"),
            file("libffmpeg.so.1", b"\x7fELF lib", 0o755),
            symlink("libffmpeg.so", "libffmpeg.so.1"),  # stays inside: kept as a symlink
        ]
    if layout == "legacy":
        return [
            file("resources/app/main.js", MAIN_JS),
            file("resources/app/package.json", pj),
            file("resources/app/dist/init.mjs", "export {};\n"),
        ]
    raise ValueError(layout)


def make_release_zip(
    path: Path,
    layout: str = "node",
    generation: object = 13,
    build: object = 345,
    wrapper: str | None = None,
    extra: list[Entry] | None = None,
) -> Path:
    entries = release_entries(layout, generation, build) + list(extra or [])
    if wrapper:
        entries = [Entry(f"{wrapper}/{e.name}", e.data, e.mode, e.kind, e.compress) for e in entries]
        # What macOS Archive Utility adds: it must not count as a second top-level folder.
        entries.append(file(f"__MACOSX/{wrapper}/._main.js", b"\x00\x05\x16\x07"))
    return write_zip(path, entries)


def patch_declared_size(path: Path, name: str, declared: int) -> None:
    """Make the zip's headers (local and central) lie about the uncompressed size of `name`."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        start_dir = zf.start_dir
    data = bytearray(path.read_bytes())
    assert data[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, info.header_offset + 22, declared)
    pos = start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len].decode() == name:
            struct.pack_into("<I", data, pos + 24, declared)
        pos += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(data))


# -- assertions --------------------------------------------------------------------------------------


def tree_listing(root: Path) -> list[str]:
    """Every path below root (relative), symlinks not followed."""
    if not root.exists():
        return []
    found = []
    for current, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(current, name), root))
    return sorted(found)


def assert_cache_clean(cache_dir: Path, allowed_versions: tuple[str, ...] = ()) -> None:
    """Nothing was left behind: no zips, trees, manifests, work folders or source records beyond
    `allowed_versions` (lock files under locks/ are allowed: they are how processes coordinate)."""
    versions = cache_dir / "versions"
    expected = sorted([v for v in allowed_versions] + [f"{v}.json" for v in allowed_versions])
    present = sorted(p.name for p in versions.iterdir()) if versions.exists() else []
    assert present == expected, f"versions/ holds {present}"
    zips = sorted(p.name for p in (cache_dir / "zips").iterdir()) if (cache_dir / "zips").exists() else []
    assert len(zips) == len(allowed_versions), f"zips/ holds {zips}"
    leftovers = tree_listing(cache_dir / "tmp")
    assert leftovers == [], f"tmp/ holds {leftovers}"
    if not allowed_versions:
        assert not (cache_dir / "sources.json").exists() or json.loads((cache_dir / "sources.json").read_text()) == {}


def assert_read_only_tree(root: Path) -> None:
    for current, _dirs, files in os.walk(root, followlinks=False):
        mode = stat.S_IMODE(os.lstat(current).st_mode)
        assert mode == 0o555, f"{current} has mode {oct(mode)}"
        for name in files:
            st = os.lstat(os.path.join(current, name))
            if stat.S_ISLNK(st.st_mode):
                continue
            assert stat.S_IMODE(st.st_mode) in (0o444, 0o555), f"{name} has mode {oct(st.st_mode)}"


def small_limits(**overrides: object) -> UnpackLimits:
    values: dict[str, object] = {"max_unpacked_bytes": 20 * MIB, "max_entries": 1000}
    values.update(overrides)
    return UnpackLimits(**values)  # type: ignore[arg-type]


# -- a real HTTPS server -----------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True  # False: the body ends when the connection closes
    delay: float = 0.0  # seconds to wait before answering


class LocalHTTPS:
    """A threaded HTTPS server on 127.0.0.1 that serves configured routes and records every request."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner._record(self.path)
                route = owner.routes.get(urlsplit(self.path).path)
                if route is None:
                    route = Route(status=404, body=b"not found")
                if route.delay:
                    time.sleep(route.delay)
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.send_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client stopped reading (a refused oversize download)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that hang up or distrust the certificate are part of the tests

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for p in self.requests if path is None or urlsplit(p).path == path)

    def reset(self) -> None:
        with self._lock:
            self.routes.clear()
            self.requests.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    assert shutil.which("openssl"), "the openssl command is needed to make the test certificate"
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def https_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHTTPS]:
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    server = LocalHTTPS(cert, key)
    yield server
    server.close()


@pytest.fixture
def https_server(https_server_session: LocalHTTPS) -> LocalHTTPS:
    """The session's server with no routes and no recorded requests."""
    https_server_session.reset()
    return https_server_session


def local_policy(server: LocalHTTPS, **overrides: object) -> DownloadPolicy:
    """A policy that trusts the local server (what fleet.toml's test-only settings allow)."""
    values: dict[str, object] = {
        "allowed_hosts": ("127.0.0.1", "localhost"),
        "allow_private_addresses": True,
        "max_download_bytes": 10 * MIB,
        "extra_ca_file": server.cert,
    }
    values.update(overrides)
    return DownloadPolicy(**values)  # type: ignore[arg-type]


def services_with_release(work: Path) -> FleetServices:
    """The services of a new fleet under `work` (as one process of it opens them), with the stand-in
    release 13.345 added: what tests that create instances in their own process start from."""
    from foundry_fleet.config import load_config
    from foundry_fleet.domain.release import ReleaseLayout
    from foundry_fleet.services.init import init_fleet
    from foundry_fleet.wiring.services import open_services
    from tests.support.foundry_standin import build_release_zip

    services = open_services(load_config(init_fleet(work / "fleet")), actor="test")
    services.releases.add(str(build_release_zip(work, ReleaseLayout.NODE, 13, 345)))
    return services
