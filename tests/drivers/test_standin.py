"""The stand-in Foundry releases: real zips, real node processes, real sockets."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from foundry_fleet.domain.release import ReleaseLayout

from tests.support.foundry_standin import (
    NODE,
    SOCKET_PATH,
    STATUS_PATH,
    build_release_zip,
    entry_in_zip,
    free_port,
    run_in_instance,
    run_node_in_instance,
    spawn_standin,
    standin_source_dir,
    wait_for_status,
    wrap_folder,
    write_options,
    zip_name,
)

LAYOUTS = list(ReleaseLayout)
LAYOUT_WRAPS = [
    pytest.param(layout, wrap, id=f"{layout.value}{'-wrapped' if wrap else ''}")
    for layout in LAYOUTS
    for wrap in (False, True)
]
LAYOUT_IDS = [layout.value for layout in LAYOUTS]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="session")
def unpacked(tmp_path_factory: pytest.TempPathFactory):
    """`unpacked(layout, wrap, generation, build)` -> path of the entry in an unpacked release."""
    cache: dict[tuple[ReleaseLayout, bool, int, int], Path] = {}
    root = tmp_path_factory.mktemp("releases")

    def get(layout: ReleaseLayout, wrap: bool = False, generation: int = 13, build: int = 345) -> Path:
        key = (layout, wrap, generation, build)
        if key not in cache:
            zdir = root / "zips"
            zpath = build_release_zip(zdir, layout, generation, build, wrap=wrap)
            dest = root / f"{layout.value}-{int(wrap)}-{generation}.{build}"
            with zipfile.ZipFile(zpath) as zf:
                zf.extractall(dest)
            entry = dest / entry_in_zip(layout, generation, build, wrap)
            assert entry.is_file(), f"{entry} missing after unzip"
            cache[key] = entry
        return cache[key]

    return get


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    spawned_at: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, path: str, method: str = "GET", timeout: float = 5.0
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict:
        status, headers, body = self.request(path)
        assert status == 200, (path, status, body[:300])
        assert headers["content-type"].startswith("application/json")
        return json.loads(body)

    def status(self) -> dict:
        return self.get_json(STATUS_PATH)

    def ws_url(self, path: str = SOCKET_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s; log:\n{self.log()}") from None


class Runner:
    """Starts stand-in processes and always kills them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def data_dir(self, route_prefix: str | None = "-", **options: object) -> Path:
        self.count += 1
        d = self.tmp_path / f"data{self.count}"
        d.mkdir()
        write_options(d, route_prefix, **options)
        return d

    def spawn(
        self,
        entry: Path,
        data_dir: Path | None,
        *,
        port: int | None = -1,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> Running:
        if port == -1:
            port = free_port()
        self.count += 1
        log_path = self.tmp_path / f"standin{self.count}.log"
        t0 = time.monotonic()
        proc = spawn_standin(
            entry,
            port,
            data_dir,
            stdout_path=log_path,
            extra_args=extra_args,
            env=env,
            wrapper=wrapper,
        )
        self.procs.append(proc)
        return Running(proc, port or 0, data_dir or self.tmp_path, log_path, t0)

    def start(self, entry: Path, data_dir: Path | None = None, **kwargs) -> Running:
        """Spawn and wait until /-/api/status answers."""
        if data_dir is None:
            data_dir = self.data_dir()
        run = self.spawn(entry, data_dir, **kwargs)
        try:
            wait_for_status(run.port, run.proc, timeout=15)
        except (RuntimeError, TimeoutError) as e:
            raise AssertionError(f"{e}; log:\n{run.log()}") from None
        return run

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - would leak; make it loud
                raise AssertionError(f"process {proc.pid} did not die after SIGKILL") from None


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    try:
        yield r
    finally:
        r.close()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def ws_connect(url: str, **kwargs):
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 5)
    return connect(url, proxy=None, compression=None, **kwargs)


class RawWs:
    """A hand-made websocket client for what `websockets` refuses to send."""

    def __init__(self, port: int, path: str = SOCKET_PATH, extra: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16))
        self.expected_accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        req = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: WebSocket\r\n"
            f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.sock.sendall(req + extra)  # `extra`: frames sent in the same packet as the handshake
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"connection closed during handshake: {self.buf!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status_line = lines[0]
        self.headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}

    @staticmethod
    def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
        b0 = (0x80 if fin else 0) | rsv | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._need(2)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._need(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._need(8))
        return bool(b0 & 0x80), b0 & 0x0F, self._need(n)

    def recv_close_code(self) -> int:
        while True:
            _, opcode, payload = self.recv_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def at_eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------------------------
# The zips


@pytest.mark.parametrize(("layout", "wrap"), LAYOUT_WRAPS)
def test_zip_has_the_layout(tmp_path: Path, layout: ReleaseLayout, wrap: bool) -> None:
    path = build_release_zip(tmp_path, layout, 13, 345, wrap=wrap)
    assert path == tmp_path / zip_name(layout, 13, 345, wrap)
    assert path.name.startswith(f"FoundryVTT-{layout.value}-13.345")
    assert path.suffix == ".zip"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind

    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        top = f"{wrap_folder(13, 345)}/" if wrap else ""
        if wrap:
            assert {n.split("/")[0] for n in names} == {"FoundryVTT-13.345"}
        else:
            assert not any(n.startswith("FoundryVTT-") for n in names)
        entry = entry_in_zip(layout, 13, 345, wrap)
        assert entry == top + layout.entry
        app = entry.rpartition("/")[0]
        app = f"{app}/" if app else ""
        files = {n for n in names if not n.endswith("/")}
        assert entry in files
        assert f"{app}server.cjs" in files
        assert f"{app}package.json" in files

        pkg = json.loads(zf.read(f"{app}package.json"))
        assert pkg["name"] == "foundryvtt"
        assert pkg["version"] == "13.345"
        assert pkg["main"] == layout.entry.rpartition("/")[2]
        assert pkg["release"]["generation"] == 13
        assert pkg["release"]["build"] == 345
        assert "type" not in pkg  # main.js must stay CommonJS

        loader = zf.read(entry).decode()
        assert "server.cjs" in loader
        assert zf.read(f"{app}server.cjs") == (standin_source_dir() / "server.cjs").read_bytes()

        if layout is ReleaseLayout.NODE:
            assert not any(n.startswith(f"{top}resources/") for n in names)
            assert f"{top}main.js" in files
        else:
            assert f"{top}main.js" not in files
            assert f"{top}package.json" not in files
        if layout is ReleaseLayout.LINUX:
            info = zf.getinfo(f"{top}foundryvtt")
            assert (info.external_attr >> 16) & 0o111, "the Electron binary must be executable"
            assert any(n.endswith(".so") for n in files)
            assert any(n.endswith(".pak") for n in files)
            assert "import " in loader
        else:
            assert f"{top}foundryvtt" not in files
            assert "require(" in loader


def test_zip_filler_is_real_incompressible_bytes(tmp_path: Path) -> None:
    path = build_release_zip(
        tmp_path, ReleaseLayout.LINUX, 13, 350, wrap=True, filler_files=5, filler_bytes=300_000
    )
    with zipfile.ZipFile(path) as zf:
        filler = sorted(
            n for n in zf.namelist() if n.startswith("FoundryVTT-13.350/resources/app/public/filler/")
            and not n.endswith("/")
        )
        assert len(filler) == 5
        blobs = [zf.read(n) for n in filler]
    assert all(len(b) == 300_000 for b in blobs)
    assert len({hashlib.sha256(b).digest() for b in blobs}) == 5  # all different
    for b in blobs:
        assert len(zlib.compress(b, 9)) > 0.99 * len(b)
    assert path.stat().st_size > 5 * 300_000

    node_zip = build_release_zip(tmp_path, ReleaseLayout.NODE, 13, 350, filler_files=2, filler_bytes=10)
    with zipfile.ZipFile(node_zip) as zf:
        assert sorted(n for n in zf.namelist() if n.startswith("public/filler/") and n[-1] != "/") == [
            "public/filler/filler-0000.bin",
            "public/filler/filler-0001.bin",
        ]


def test_zip_is_reproducible(tmp_path: Path) -> None:
    a = build_release_zip(tmp_path / "a", ReleaseLayout.NODE, 13, 345, filler_files=2, filler_bytes=1000)
    b = build_release_zip(tmp_path / "b", ReleaseLayout.NODE, 13, 345, filler_files=2, filler_bytes=1000)
    c = build_release_zip(tmp_path / "c", ReleaseLayout.NODE, 13, 346, filler_files=2, filler_bytes=1000)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


# ------------------------------------------------------------------------------------------------
# The server, through every layout


@pytest.mark.parametrize(("layout", "wrap"), LAYOUT_WRAPS)
def test_serves_like_foundry(runner: Runner, unpacked, layout: ReleaseLayout, wrap: bool) -> None:
    entry = unpacked(layout, wrap)
    data = runner.data_dir()
    run = runner.start(
        entry,
        data,
        extra_args=[
            "--noupdate", "--noupnp", "--noipdiscovery", "--headless", "--logsize=1k",
            "--maxlogs=1", "--world=", "--adminPassword=secret",
        ],
    )  # fmt: skip

    st = run.status()
    assert st == {
        "active": False,
        "version": "13.345",
        "world": None,
        "system": None,
        "users": 0,
        "uptime": st["uptime"],
    }
    assert isinstance(st["uptime"], (int, float)) and 0 <= st["uptime"] < 60

    # Outside the route prefix: 404, as Foundry with a routePrefix.
    for path in ("/api/status", "/", "/join", "/socket.io/", "/--/api/status"):
        assert run.request(path)[0] == 404, path
    status, headers, _ = run.request("/-")
    assert status == 302 and headers["location"] == "/-/"
    assert run.request("/-/nothing-here")[0] == 404

    status, headers, body = run.request("/-/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert "<title>Foundry Virtual Tabletop (stand-in)</title>" in page
    assert 'id="ws"' in page and '"/-/"' in page and "socket.io/" in page and "wss:" in page

    with ws_connect(run.ws_url()) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        assert run.status()["users"] == 1
        with ws_connect(run.ws_url("/-/socket.io/?EIO=4&transport=websocket")) as ws2:
            ws2.send("second")
            assert ws2.recv(timeout=5) == "second"
            assert run.status()["users"] == 2
        wait_until(lambda: run.status()["users"] == 1)
    wait_until(lambda: run.status()["users"] == 0)

    probe = run.get_json("/-/__probe?read=no/such/file&write=no/such/dir/f&list=Config&write=Config")
    assert probe["pid"] == run.proc.pid
    assert probe["ppid"] == os.getpid()
    assert probe["uid"] == os.getuid() and probe["gid"] == os.getgid()
    assert probe["dataPath"] == str(data)
    assert probe["argv"][1] == str(entry)
    assert f"--dataPath={data}" in probe["argv"]
    assert probe["cwd"] == str(entry.parent)
    assert probe["read"]["no/such/file"] == {
        "path": str(data / "no/such/file"),
        "ok": False,
        "code": "ENOENT",
        "message": probe["read"]["no/such/file"]["message"],
    }
    assert probe["write"]["no/such/dir/f"]["code"] == "ENOENT"
    assert probe["write"]["Config"]["ok"] is True  # a directory: scratch file made and removed
    assert sorted(os.listdir(data / "Config")) == ["options.json"]
    assert probe["list"]["Config"] == {
        "path": str(data / "Config"),
        "ok": True,
        "code": None,
        "entries": ["options.json"],
        "count": 1,
    }

    assert (data / "Logs").is_dir()
    log = run.log()
    assert f"listening on port {run.port} (prefix /-/)" in log
    assert "Foundry Virtual Tabletop (stand-in) 13.345" in log
    assert "GET /-/api/status 200" in log
    assert "GET /join 404" in log

    run.proc.send_signal(signal.SIGTERM)
    assert run.wait_exit(2) == 0
    assert "shutting down" in run.log()


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_crash_hook_exits_with_the_code(runner: Runner, unpacked, layout: ReleaseLayout) -> None:
    run = runner.start(unpacked(layout))
    status, _, body = run.request("/-/__crash?code=7")
    assert status == 200 and json.loads(body)["exiting"] == 7
    assert run.wait_exit(5) == 7

    run = runner.start(unpacked(layout))
    assert run.request("/-/__crash")[0] == 200
    assert run.wait_exit(5) == 1
    assert runner.start(unpacked(layout)).request("/-/__crash?code=abc")[0] == 400


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_crash_on_start(runner: Runner, unpacked, layout: ReleaseLayout) -> None:
    data = runner.data_dir()
    (data / "crash-on-start").touch()
    run = runner.spawn(unpacked(layout), data)
    assert run.wait_exit(5) == 3
    assert "crash-on-start" in run.log()
    assert "listening" not in run.log()

    (data / "crash-on-start").unlink()
    run = runner.start(unpacked(layout), data)
    assert run.status()["version"] == "13.345"


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_sigint_exits_zero(runner: Runner, unpacked, layout: ReleaseLayout) -> None:
    run = runner.start(unpacked(layout))
    run.proc.send_signal(signal.SIGINT)
    assert run.wait_exit(1.5) == 0
    assert "shutting down" in run.log()


def test_refuses_to_start_without_data_path(runner: Runner, unpacked) -> None:
    run = runner.spawn(unpacked(ReleaseLayout.NODE), None)
    assert run.wait_exit(5) == 2
    assert "--dataPath" in run.log()


def test_refuses_a_broken_options_file(runner: Runner, unpacked) -> None:
    data = runner.data_dir()
    (data / "Config" / "options.json").write_text("{not json")
    run = runner.spawn(unpacked(ReleaseLayout.NODE), data)
    assert run.wait_exit(5) == 2
    assert "options.json" in run.log()


def test_version_comes_from_the_release(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.LEGACY_NODE, True, 12, 331))
    assert run.status()["version"] == "12.331"


def test_port_from_options_and_command_line_wins(runner: Runner, unpacked) -> None:
    entry = unpacked(ReleaseLayout.NODE)
    options_port, cli_port = free_port(), free_port()
    data = runner.data_dir(port=options_port)

    run = runner.spawn(entry, data, port=None)
    wait_for_status(options_port, run.proc)
    assert f"listening on port {options_port}" in run.log()
    run.proc.terminate()
    assert run.wait_exit(2) == 0

    run = runner.start(entry, data, port=cli_port)
    assert f"listening on port {cli_port}" in run.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", options_port), timeout=1).close()


def test_no_route_prefix_serves_at_the_root(runner: Runner, unpacked) -> None:
    data = runner.data_dir(route_prefix=None)
    run = runner.spawn(unpacked(ReleaseLayout.NODE), data)
    st = wait_for_status(run.port, run.proc, path="/api/status")
    assert st["version"] == "13.345"
    assert run.request(STATUS_PATH)[0] == 404
    assert "(prefix /)" in run.log()
    with ws_connect(f"ws://127.0.0.1:{run.port}/socket.io/") as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"


def test_route_prefix_with_slashes_is_normalised(runner: Runner, unpacked) -> None:
    data = runner.data_dir(route_prefix="/game/")
    run = runner.spawn(unpacked(ReleaseLayout.NODE), data)
    assert wait_for_status(run.port, run.proc, path="/game/api/status")["users"] == 0


def test_listens_on_all_interfaces(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.NODE))
    local = f"00000000:{run.port:04X}"  # 0.0.0.0:<port> in /proc/net/tcp
    listening = [
        ln.split()[1]
        for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if ln.split()[3] == "0A" and ln.split()[1].endswith(f":{run.port:04X}")
    ]
    assert listening == [local]


# The page's own script, run by node (which has a browser-like WebSocket behind a flag) with a
# minimal document/location: it must reach "connected", then show the close code.
PAGE_HARNESS = r"""
const el = { textContent: 'websocket: connecting' };  // as in the page's HTML
globalThis.document = { body: { dataset: { ws: 'connecting' } }, getElementById: (id) => (id === 'ws' ? el : null) };
globalThis.location = new URL(process.env.PAGE_URL);
globalThis.window = globalThis;
const report = () => console.log(JSON.stringify({ state: document.body.dataset.ws, text: el.textContent }));
new Function(process.env.PAGE_SCRIPT)();
let last = 'connecting';
const started = Date.now();
const timer = setInterval(() => {
  const now = document.body.dataset.ws;
  if (now !== last) { last = now; report(); }
  if (now === 'closed' || now === 'error' || Date.now() - started > 10000) { clearInterval(timer); }
}, 5);
"""


def test_page_script_connects_its_websocket(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.LINUX, True))
    page = run.request("/-/")[2].decode()
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    env = {**os.environ, "PAGE_URL": f"http://127.0.0.1:{run.port}/-/", "PAGE_SCRIPT": script}
    harness = subprocess.Popen(
        [NODE, "--no-warnings", "--experimental-websocket", "-e", PAGE_HARNESS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        states = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = harness.stdout.readline()
            assert line, f"harness ended early: {states}"
            states.append(json.loads(line))
            if states[-1]["state"] == "connected":
                break
        assert states[-1] == {"state": "connected", "text": "websocket: connected"}, states
        assert run.status()["users"] == 1
        run.proc.send_signal(signal.SIGTERM)
        assert json.loads(harness.stdout.readline()) == {
            "state": "closed",
            "text": "websocket: closed (code 1001)",
        }
        assert harness.wait(5) == 0
    finally:
        if harness.poll() is None:
            harness.kill()
        harness.wait(5)
        harness.stdout.close()
    assert run.wait_exit(2) == 0


# ------------------------------------------------------------------------------------------------
# Websocket protocol details


def test_websocket_payload_lengths_fragments_ping_and_close(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.NODE))
    with ws_connect(run.ws_url(), max_size=4 * 1024 * 1024) as ws:
        for n in (0, 1, 125, 126, 127, 65535, 65536, 300_000, 2_000_000):
            text = "é" * (n // 2) + "a" * (n % 2)
            ws.send(text)
            assert ws.recv(timeout=10) == text, n
            blob = os.urandom(n)
            ws.send(blob)
            assert ws.recv(timeout=10) == blob, n
        ws.send(["frag", "mented ", "message"])  # one message in three frames
        assert ws.recv(timeout=5) == "fragmented message"
        ws.send([b"\x01", b"\x02\x03"])
        assert ws.recv(timeout=5) == b"\x01\x02\x03"
        pong = ws.ping(b"are you there")
        assert pong.wait(5)
        ws.close(1000, "done")
        assert ws.close_code == 1000
    wait_until(lambda: run.status()["users"] == 0)
    assert "closed with code 1000" in run.log()


def test_websocket_raw_handshake_and_frames(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.LINUX, True))
    f = RawWs.frame

    # Handshake plus the first frames in the same packet; length encodings 7, 16 and 64 bits.
    big = os.urandom(70_000)
    ws = RawWs(run.port, extra=f(0x1, b"early") + f(0x2, b"m" * 200) + f(0x2, big))
    assert ws.status_line == "HTTP/1.1 101 Switching Protocols"
    assert ws.headers["upgrade"].lower() == "websocket"
    assert ws.headers["sec-websocket-accept"] == ws.expected_accept
    assert ws.recv_frame() == (True, 0x1, b"early")
    assert ws.recv_frame() == (True, 0x2, b"m" * 200)
    assert ws.recv_frame() == (True, 0x2, big)
    # A ping in the middle of a fragmented message is answered; the message is reassembled.
    ws.send(f(0x1, b"ab", fin=False) + f(0x9, b"p") + f(0x0, b"cd", fin=False) + f(0x0, b"e"))
    assert ws.recv_frame() == (True, 0xA, b"p")
    assert ws.recv_frame() == (True, 0x1, b"abcde")
    ws.send(f(0x8, struct.pack("!H", 1000) + b"bye"))
    assert ws.recv_frame() == (True, 0x8, struct.pack("!H", 1000))
    assert ws.at_eof()
    ws.close()

    bad = [
        (f(0x1, b"unmasked", mask=False), 1002),
        (f(0x1, b"rsv", rsv=0x40), 1002),
        (f(0x1, b"\xff\xfe"), 1007),  # not UTF-8
        (f(0x0, b"orphan continuation"), 1002),
        (f(0x1, b"a", fin=False) + f(0x1, b"b"), 1002),  # new message inside a fragmented one
        (f(0x9, b"x" * 126), 1002),  # control frame too long
        (f(0x3, b"reserved opcode"), 1002),
        (f(0x8, b"\x03"), 1002),  # close frame with one byte
        (struct.pack("!BBQ", 0x82, 0xFF, 1 << 40) + b"mask", 1009),  # announced 1 TiB
    ]
    for data, code in bad:
        ws = RawWs(run.port)
        ws.send(data)
        assert ws.recv_close_code() == code, data[:20]
        ws.close()

    wait_until(lambda: run.status()["users"] == 0)


def test_websocket_handshake_refusals(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.NODE))

    def raw(request: str) -> bytes:
        with socket.create_connection(("127.0.0.1", run.port), timeout=5) as s:
            s.sendall(request.encode())
            out = b""
            while chunk := s.recv(4096):
                out += chunk
            return out

    key = base64.b64encode(os.urandom(16)).decode()
    up = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nHost: x\r\n"
    assert raw(f"GET /socket.io/ HTTP/1.1\r\n{up}Sec-WebSocket-Key: {key}\r\n\r\n").startswith(
        b"HTTP/1.1 404"
    )
    assert raw(f"GET /-/socket.io/ HTTP/1.1\r\n{up}\r\n").startswith(b"HTTP/1.1 400")
    assert raw(
        f"GET /-/socket.io/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {key}\r\nHost: x\r\n\r\n"
    ).startswith(b"HTTP/1.1 426")
    assert run.status()["users"] == 0
    assert run.proc.poll() is None


# ------------------------------------------------------------------------------------------------
# Test hooks and start-up behaviour


def test_sigterm_with_open_websocket_and_hanging_request(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.LINUX))
    hung: list[object] = []

    def hang() -> None:
        try:
            hung.append(run.request("/-/__hang", timeout=10))
        except Exception as e:  # noqa: BLE001 - the server drops it on shutdown
            hung.append(e)

    with ws_connect(run.ws_url()) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        t = threading.Thread(target=hang, daemon=True)
        t.start()
        wait_until(lambda: "/-/__hang open, never answered" in run.log())
        assert t.is_alive(), "__hang answered"

        run.proc.send_signal(signal.SIGTERM)
        assert run.wait_exit(2) == 0  # the hanging request does not hold the shutdown up
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1001
    t.join(5)
    assert hung and isinstance(hung[0], Exception)


def test_hang_never_answers(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.NODE))
    with pytest.raises(TimeoutError):
        run.request("/-/__hang", timeout=0.5)
    assert run.status()["version"] == "13.345"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_alloc_really_uses_memory(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.NODE))
    before = rss_kb(run.proc.pid)
    out = run.get_json("/-/__alloc?mb=96")
    assert out["allocatedMb"] == 96 and out["retainedMb"] == 96
    after = rss_kb(run.proc.pid)
    assert after - before >= 90 * 1024
    assert run.get_json("/-/__alloc?mb=32")["retainedMb"] == 128
    assert rss_kb(run.proc.pid) - before >= 120 * 1024
    assert run.request("/-/__alloc?mb=-1")[0] == 400


def test_hold_memory_on_start(runner: Runner, unpacked) -> None:
    plain = runner.start(unpacked(ReleaseLayout.NODE))
    data = runner.data_dir()
    (data / "hold-memory-mb").write_text("96\n")
    run = runner.start(unpacked(ReleaseLayout.NODE), data)
    assert rss_kb(run.proc.pid) - rss_kb(plain.proc.pid) >= 90 * 1024
    assert "holding 96 MB" in run.log()
    assert run.get_json("/-/__alloc?mb=0")["retainedMb"] == 96

    (data / "hold-memory-mb").write_text("lots")
    run = runner.spawn(unpacked(ReleaseLayout.NODE), data)
    assert run.wait_exit(5) == 2
    assert "hold-memory-mb must hold a non-negative integer" in run.log()


def test_start_delay(runner: Runner, unpacked) -> None:
    run = runner.spawn(unpacked(ReleaseLayout.NODE), runner.data_dir(), env={"STANDIN_START_DELAY_MS": "700"})
    wait_for_status(run.port, run.proc)
    assert time.monotonic() - run.spawned_at >= 0.7
    # SIGTERM while still waiting to listen: exits 0 too.
    run = runner.spawn(unpacked(ReleaseLayout.NODE), runner.data_dir(), env={"STANDIN_START_DELAY_MS": "5000"})
    wait_until(lambda: "waiting 5000 ms" in run.log())
    run.proc.terminate()
    assert run.wait_exit(1.5) == 0


def test_probe_under_a_read_only_bind(runner: Runner, unpacked, tmp_path: Path) -> None:
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is needed for the read-only test (apt-get install bubblewrap)"
    data = runner.data_dir()
    shared = data / "Data" / "shared"
    shared.mkdir(parents=True)
    (shared / "map.webp").write_bytes(b"RIFF....WEBP")
    wrapper = [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(shared), str(shared), "--die-with-parent", "--"]
    run = runner.start(unpacked(ReleaseLayout.NODE), data, wrapper=wrapper)

    probe = run.get_json(
        "/-/__probe?write=Data/shared/new.txt&write=Data/shared&read=Data/shared/map.webp"
        f"&list=Data/shared&write=Data/own.txt&read={data}/missing&list=Data/absent"
        "&read=Data&env=HOME&env=NO_SUCH_VARIABLE_X"
    )
    assert probe["write"]["Data/shared/new.txt"]["code"] == "EROFS"
    assert probe["write"]["Data/shared"]["code"] == "EROFS"
    assert probe["read"]["Data/shared/map.webp"] == {
        "path": str(shared / "map.webp"),
        "ok": True,
        "code": None,
        "bytes": 12,
    }
    assert probe["list"]["Data/shared"]["entries"] == ["map.webp"]
    assert probe["write"]["Data/own.txt"]["ok"] is True
    assert (data / "Data" / "own.txt").exists()
    assert probe["read"][f"{data}/missing"]["code"] == "ENOENT"
    assert probe["list"]["Data/absent"]["code"] == "ENOENT"
    assert probe["read"]["Data"]["code"] == "EISDIR"
    assert probe["env"] == {"HOME": os.environ.get("HOME"), "NO_SUCH_VARIABLE_X": None}
    assert not (shared / "new.txt").exists()


def gone_or_zombie(pid: int) -> bool:
    """The process has exited (reaped, or not yet: a zombie). Read in one go: it may be reaped meanwhile."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_node_hook_runs_a_program_as_the_server_in_its_data_path(runner: Runner, unpacked) -> None:
    run = runner.start(unpacked(ReleaseLayout.NODE))
    program = (
        "const fs = require('fs');"
        "console.log(JSON.stringify({cwd: process.cwd(), uid: process.getuid(), ppid: process.ppid,"
        " node: process.execPath}));"
        "fs.writeFileSync('from-node.txt', 'written');"
        "console.error('to stderr'); process.exitCode = 7;"
    )
    done = run_node_in_instance(run.port, program)
    assert done["code"] == 7 and done["signal"] is None, done
    seen = json.loads(done["stdout"])
    assert seen == {"cwd": str(run.data_dir), "uid": os.getuid(), "ppid": run.proc.pid,
                    "node": os.path.realpath(NODE)}
    assert done["stderr"] == "to stderr\n"
    assert (run.data_dir / "from-node.txt").read_text() == "written"

    # A program past its time is killed; a background one answers its pid at once and lives on.
    slow = run_node_in_instance(run.port, "setInterval(() => {}, 1e9)", timeout=0.3)
    assert slow["code"] is None and slow["signal"] == "SIGKILL", slow
    pid = run_node_in_instance(run.port, "setInterval(() => {}, 1e9)", background=True)["pid"]
    assert isinstance(pid, int) and Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1] == b"-e"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone_or_zombie(pid))

    # The same answers as __shell; a body without a program is refused and the server lives on.
    assert run_in_instance(run.port, "echo hi")["stdout"] == "hi\n"
    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=5)
    conn.request("POST", "/-/__node", body=json.dumps({"script": "echo hi"}))
    refused = conn.getresponse()
    assert refused.status == 400 and json.loads(refused.read()) == {"error": "program must be a string"}
    conn.close()
    assert run.status()["version"] == "13.345"
