"""Stand-in Foundry Virtual Tabletop releases for the test suite.

`build_release_zip` writes a real release zip in any of the three layouts Foundry ships
(see `ReleaseLayout`), holding a small Node.js server (`server.cjs` in this folder, built-ins only)
that behaves like Foundry where the fleet cares:

- `node <entry> --port=N --dataPath=DIR [--noupdate --noupnp --noipdiscovery --headless ...]`;
  no data path: exit 2. `<dataPath>/Config/options.json` is read for `routePrefix` and `port`
  (the command line wins). `<dataPath>/Logs` is created. Listens on 0.0.0.0.
- `GET /<prefix>/api/status` -> `{"active", "version", "world", "system", "users", "uptime"}`;
  `users` is the number of open websockets. Anything outside the prefix -> 404.
- `GET /<prefix>/` -> an HTML page whose script opens a websocket to `/<prefix>/socket.io/`, sends
  "hello" and on the echo sets `document.body.dataset.ws = "connected"` and the text of `#ws` to
  "websocket: connected" ("closed (code N)" when it closes later).
- Websocket (RFC 6455) at `/<prefix>/socket.io/`: echoes text and binary messages (fragmented
  ones are reassembled), answers pings, does the close handshake.
- Test hooks under the prefix: `__crash?code=N` (answers, then exits N, default 1),
  `__probe?read=P&write=P&list=D&env=NAME` (each repeatable; relative paths are resolved against the
  data path; results keyed by the given text, each `{"path", "ok", "code", ...}` where `code` is the
  errno name such as EROFS/EACCES/ENOENT; plus uid, gid, pid, ppid, cwd, argv, dataPath, rss,
  envKeys, env), `__headers?set-cookie=C` (the request's headers as received: `headers`, `rawHeaders`;
  each `set-cookie` given is answered as a Set-Cookie header),
  `__alloc?mb=N` (allocates, touches and keeps N MB), `__hang` (never answers).
  A write probe of a directory creates and removes a scratch file in it; of anything else, writes
  that file. `POST __shell` with JSON `{"script", "timeoutMs", "background"}` runs `/bin/sh -c script`
  inside the instance as the server's user (`run_in_instance`): what a hostile tenant's code can do.
  `POST __node` with JSON `{"program", "timeoutMs", "background"}` runs `<the server's node> -e
  program` the same way (`run_node_in_instance`), for sandboxes with node and nothing else (a
  container image holds no /bin/sh). Both answer `{"code", "signal", "stdout", "stderr"}` (each
  stream cut to 1 MiB; the child is SIGKILLed after `timeoutMs`), or `{"pid"}` at once when
  `background` (a detached child whose output is discarded); cwd is the data path.
- `<dataPath>/crash-on-start` present: prints a line and exits 3 at once. The same file next to the
  entry (a release built with `crash_on_start`): prints a few lines and exits 3, at every start.
  `<dataPath>/hold-memory-mb` holding an integer N: allocates, touches and keeps N MB before it
  listens, and prints a line saying so (anything but a non-negative integer there: exit 2).
  `STANDIN_START_DELAY_MS=N` in the environment, or `<dataPath>/start-delay-ms` holding N (for an
  instance, whose sandbox passes no environment through): waits N ms before listening.
- One stdout line on start (`... listening on port N (prefix /-/) ...`) and one per request.
  SIGTERM/SIGINT: logs "shutting down", closes websockets with 1001, exits 0 within a second.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from foundry_fleet.domain.release import ReleaseLayout
from tests.support.ports import single_port

__all__ = [
    "NODE",
    "ROUTE_PREFIX",
    "SOCKET_PATH",
    "STATUS_PATH",
    "build_release_zip",
    "entry_in_zip",
    "free_port",
    "run_in_instance",
    "run_node_in_instance",
    "spawn_standin",
    "standin_source_dir",
    "wait_for_status",
    "wrap_folder",
    "write_options",
    "zip_name",
]

NODE = "/usr/bin/node"
ROUTE_PREFIX = "-"
STATUS_PATH = "/-/api/status"
SOCKET_PATH = "/-/socket.io/"

_ZIP_TIME = (2024, 1, 1, 0, 0, 0)  # fixed, so the same arguments give the same zip bytes
_CHUNK = 1 << 20


def standin_source_dir() -> Path:
    """The folder holding the stand-in's JavaScript sources (server.cjs, main.js, main.mjs)."""
    return Path(__file__).resolve().parent


def zip_name(layout: ReleaseLayout, generation: int = 13, build: int = 345, wrap: bool = False) -> str:
    suffix = "-wrapped" if wrap else ""
    return f"FoundryVTT-{ReleaseLayout(layout).value}-{generation}.{build}{suffix}.zip"


def wrap_folder(generation: int = 13, build: int = 345) -> str:
    """The single top folder of a wrapped zip."""
    return f"FoundryVTT-{generation}.{build}"


def entry_in_zip(
    layout: ReleaseLayout, generation: int = 13, build: int = 345, wrap: bool = False
) -> str:
    """Path of the Node entry point inside the zip (what `ReleaseLayout.entry` names, maybe wrapped)."""
    entry = ReleaseLayout(layout).entry
    return f"{wrap_folder(generation, build)}/{entry}" if wrap else entry


def _package_json(generation: int, build: int, main: str) -> bytes:
    doc = {
        "name": "foundryvtt",
        "version": f"{generation}.{build}",
        "description": "Foundry Virtual Tabletop (stand-in)",
        "main": main,
        "private": True,
        "release": {
            "generation": generation,
            "maxGeneration": generation,
            "build": build,
            "channel": "stable",
            "suffix": "",
            "time": 1704067200000 + build * 1000,
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _electron_files() -> list[tuple[str, bytes, int]]:
    """A few files that make the tree look like Foundry's Electron (Linux) build."""
    launcher = (
        b"#!/bin/sh\n"
        b"# Stand-in for the Electron binary of Foundry's Linux build.\n"
        b'echo "stand-in Electron binary: start resources/app/main.mjs with node instead" >&2\n'
        b"exit 1\n"
    )
    rng = random.Random(0xE1EC)
    return [
        ("foundryvtt", launcher, 0o755),
        ("libffmpeg.so", b"\x7fELF stand-in\n" + rng.randbytes(2048), 0o755),
        ("libvk_swiftshader.so", b"\x7fELF stand-in\n" + rng.randbytes(2048), 0o755),
        ("resources.pak", b"stand-in pak\n" + rng.randbytes(4096), 0o644),
        ("chrome_100_percent.pak", b"stand-in pak\n" + rng.randbytes(1024), 0o644),
        ("version", b"28.0.0", 0o644),
    ]


def _file_info(name: str, mode: int, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = compress
    info.create_system = 3  # Unix, so the mode bits below mean something
    info.external_attr = (0o100000 | mode) << 16
    return info


def _dir_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name.rstrip("/") + "/", date_time=_ZIP_TIME)
    info.create_system = 3
    info.external_attr = ((0o040000 | 0o755) << 16) | 0x10
    return info


def build_release_zip(
    dest_dir: Path,
    layout: ReleaseLayout,
    generation: int = 13,
    build: int = 345,
    wrap: bool = False,
    filler_files: int = 0,
    filler_bytes: int = 0,
    crash_on_start: bool = False,
) -> Path:
    """Write a stand-in Foundry release zip into `dest_dir` and return its path.

    The name is `FoundryVTT-<layout>-<gen>.<build>.zip` (`-wrapped` before `.zip` when `wrap`).
    NODE: `main.js`, `server.cjs`, `package.json` at the root. LINUX: an Electron-like tree with
    `resources/app/main.mjs`. LEGACY_NODE: `resources/app/main.js`. `wrap` puts everything under
    `FoundryVTT-<gen>.<build>/`. `filler_files` files of `filler_bytes` pseudo-random
    (incompressible, but reproducible) bytes each go under `public/filler/` next to the entry.
    `crash_on_start` puts a `crash-on-start` file next to the entry: a release whose every start crashes.
    The same arguments always produce the same bytes.
    """
    layout = ReleaseLayout(layout)
    if filler_files < 0 or filler_bytes < 0:
        raise ValueError("filler_files and filler_bytes must be >= 0")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)

    src = standin_source_dir()
    entry = layout.entry
    app_dir = entry.rpartition("/")[0]
    entry_name = entry.rpartition("/")[2]
    loader = "main.mjs" if entry_name.endswith(".mjs") else "main.js"

    files: list[tuple[str, bytes, int]] = []
    if layout is ReleaseLayout.LINUX:
        files.extend(_electron_files())
    app = f"{app_dir}/" if app_dir else ""
    files.append((f"{app}{entry_name}", (src / loader).read_bytes(), 0o644))
    files.append((f"{app}server.cjs", (src / "server.cjs").read_bytes(), 0o644))
    files.append((f"{app}package.json", _package_json(generation, build, entry_name), 0o644))
    if crash_on_start:
        files.append((f"{app}crash-on-start", b"", 0o644))
    filler_dir = f"{app}public/filler"

    top = f"{wrap_folder(generation, build)}/" if wrap else ""
    names = [n for n, _, _ in files]
    if filler_files:
        names.append(f"{filler_dir}/x")
    dirs = sorted({"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)})
    if wrap:
        dirs = [""] + dirs

    path = dest_dir / zip_name(layout, generation, build, wrap)
    tmp = dest_dir / f".{path.name}.{os.getpid()}.tmp"
    big = filler_files * filler_bytes > (1 << 31)
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for d in dirs:
                zf.writestr(_dir_info(f"{top}{d}"), b"")
            for name, data, mode in files:
                zf.writestr(_file_info(f"{top}{name}", mode, zipfile.ZIP_DEFLATED), data)
            for i in range(filler_files):
                rng = random.Random(f"{layout.value}/{generation}.{build}/{i}")
                info = _file_info(f"{top}{filler_dir}/filler-{i:04d}.bin", 0o644, zipfile.ZIP_STORED)
                with zf.open(info, "w", force_zip64=big) as out:
                    left = filler_bytes
                    while left > 0:
                        n = min(left, _CHUNK)
                        out.write(rng.randbytes(n))
                        left -= n
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------------
# Helpers to run an unpacked stand-in


def free_port() -> int:
    """A TCP port free a moment ago (on all interfaces, where the stand-in listens), from this run's
    own non-ephemeral blocks like every other test server's (tests/support/ports.py)."""
    return single_port()


def write_options(data_dir: Path, route_prefix: str | None = ROUTE_PREFIX, **extra: object) -> Path:
    """Write `<data_dir>/Config/options.json` the way the fleet does (routePrefix "-" by default)."""
    config = Path(data_dir) / "Config"
    config.mkdir(parents=True, exist_ok=True)
    doc: dict[str, object] = {"upnp": False, **extra}
    if route_prefix is not None:
        doc["routePrefix"] = route_prefix
    path = config / "options.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def spawn_standin(
    entry: Path,
    port: int | None,
    data_path: Path | None,
    *,
    stdout_path: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start `node <entry> --port=N --dataPath=DIR`; stdout and stderr go to `stdout_path`.

    The caller owns the process and must kill it (the tests do so in fixture teardown).
    `wrapper` is put in front of the command (e.g. a bwrap invocation).
    """
    cmd = [*wrapper, NODE, str(entry)]
    if port is not None:
        cmd.append(f"--port={port}")
    if data_path is not None:
        cmd.append(f"--dataPath={data_path}")
    cmd.extend(extra_args)
    full_env = dict(os.environ)
    full_env.pop("STANDIN_START_DELAY_MS", None)
    if env:
        full_env.update(env)
    with open(stdout_path, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(Path(entry).parent),
        )


def wait_for_status(
    port: int,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 10.0,
    path: str = STATUS_PATH,
    poll: float = 0.01,
) -> dict[str, object]:
    """Poll `http://127.0.0.1:<port><path>` every `poll` seconds until it answers 200; return the JSON.

    Raises RuntimeError if `proc` exits first, TimeoutError after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}{path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"stand-in exited with code {proc.returncode} before answering {url}")
        try:
            with opener.open(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(poll)


def run_in_instance(port: int, script: str, *, timeout: float = 30.0, background: bool = False,
                    prefix: str = ROUTE_PREFIX) -> dict[str, object]:
    """Run `script` with /bin/sh inside the stand-in listening on `port`, as its tenant would.

    Returns `{"code", "signal", "stdout", "stderr"}`, or `{"pid"}` at once when `background`.
    """
    return _run_hook(port, "__shell", {"script": script}, timeout, background, prefix)


def run_node_in_instance(port: int, program: str, timeout: float = 30.0, background: bool = False,
                         *, prefix: str = ROUTE_PREFIX) -> dict[str, object]:
    """Run the JavaScript `program` in a child of the stand-in's own node (`node -e program`) inside
    the instance listening on `port`, as its tenant's code would: same uid, same sandbox.

    Returns `{"code", "signal", "stdout", "stderr"}`, or `{"pid"}` at once when `background`.
    """
    return _run_hook(port, "__node", {"program": program}, timeout, background, prefix)


def _run_hook(port: int, hook: str, job: dict[str, object], timeout: float, background: bool,
              prefix: str) -> dict[str, object]:
    body = json.dumps({**job, "timeoutMs": int(timeout * 1000), "background": background}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/{prefix}/{hook}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout + 5) as resp:
        return json.loads(resp.read())
