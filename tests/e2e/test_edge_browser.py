"""A real browser through the edge: headless Chromium opens an instance's page over HTTPS via Caddy,
trusting the fleet's local CA the way a player's machine would (the CA's root in an NSS database),
and the page's websocket to the instance connects through the same proxy.

Needs Chromium under any of its names (`chromium`, `chromium-browser`, `google-chrome`, ...) and
certutil (Debian: `chromium`, `libnss3-tools`; `make test` installs them when run as root).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support.cdp_browser import CHROMIUM_NAMES, find_chromium
from tests.support.edge_client import local_ca
from tests.support.harness import FleetHarness, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = find_chromium()
CERTUTIL = shutil.which("certutil")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CERTUTIL is None,
    reason=f"needs Chromium (one of {', '.join(CHROMIUM_NAMES)} on PATH, or $CHROMIUM) and certutil: "
           "apt-get install chromium libnss3-tools (`make test` does this as root)",
)

WINDOW = (800, 600)


def browser_home(base: Path, ca_root: Path | None) -> Path:
    """A fresh HOME whose NSS database (~/.pki/nssdb, where Chromium on Linux looks) trusts `ca_root`
    for TLS servers; with None the database is empty, like a machine that never met the fleet."""
    home = base / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, timeout=30)
    if ca_root is not None:
        subprocess.run([CERTUTIL, "-A", "-d", f"sql:{nssdb}", "-n", "foundry-fleet local CA", "-t", "C,,",
                        "-i", str(ca_root)], check=True, timeout=30)
        listed = subprocess.run([CERTUTIL, "-L", "-d", f"sql:{nssdb}"], capture_output=True, text=True,
                                check=True, timeout=30).stdout
        assert "foundry-fleet local CA" in listed, listed
    return home


def chromium(base: Path, home: Path, url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    """One headless run with a fresh profile; no certificate errors are ignored."""
    profile = base / f"profile-{len(list(base.glob('profile-*')))}"
    profile.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8",
    }
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
         "--virtual-time-budget=5000", *mode, url],
        capture_output=True, text=True, timeout=90, env=env, stdin=subprocess.DEVNULL,
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@needs_browser
def test_chromium_trusting_the_local_ca_loads_the_page_and_its_websocket_connects(
    fleet: FleetHarness, release_zips: dict[str, Path], tmp_path: Path,
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    inst = fleet.cli("instance", "create", "alice", "--release", "13.345", "--json").json()["instance"]
    assert inst["state"] == "running", inst
    port = fleet.settings().edge.https_port
    url = f"https://alice.localhost:{port}/-/"
    assert inst["url"] == url
    ca_root = local_ca(fleet.root)
    assert ca_root.is_file(), "Caddy's local CA has no root certificate"

    base = tmp_path / "browser"
    base.mkdir()
    home = browser_home(base, ca_root)

    # The page, as the browser has it after its script ran: the websocket went through Caddy (wss on
    # the edge's port; the instance itself speaks plain HTTP on a port the browser never sees).
    # --dump-dom fires when the virtual time budget runs out, and virtual time does not wait for a
    # websocket handshake: a dump can catch the page a moment early, so a few loads are allowed.
    for _attempt in range(5):
        dumped = chromium(base, home, url, "--dump-dom")
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        dom = dumped.stdout
        if 'data-ws="connecting"' not in dom:
            break
    assert "Foundry Virtual Tabletop (stand-in)" in dom, dom[:2000]
    assert 'data-ws="connected"' in dom, dom[:2000]
    assert "websocket: connected" in dom, dom[:2000]

    # The socket really reached the instance through the proxy: the stand-in logs each request.
    log = fleet.root / "logs" / "instances" / "alice" / "foundry.log"
    wait_until(lambda: "GET /-/socket.io/ 101 websocket" in log.read_text(errors="replace"), 10,
               "the websocket upgrade in the instance's log")

    # A screenshot of the same page.
    shot = tmp_path / "alice.png"
    taken = chromium(base, home, url, f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert len(data) > 1000, len(data)
    assert png_size(data) == WINDOW

    # Control: a browser that does not trust the fleet's CA gets no page at all, so the trust above
    # is what made the difference (no certificate error was ignored).
    stranger_base = tmp_path / "stranger"
    stranger_base.mkdir()
    refused = chromium(stranger_base, browser_home(stranger_base, None), url, "--dump-dom")
    assert "websocket: connected" not in refused.stdout
    assert 'data-ws="connected"' not in refused.stdout
