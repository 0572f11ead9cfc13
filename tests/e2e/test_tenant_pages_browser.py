"""What a player's browser shows for an instance that does not serve, through a real fleet and its edge:
headless Chromium opens a stopped, a suspended, a failed and a sleeping instance, and an unknown path of
the fleet host, checks each page's status and words, and keeps screenshots of each at desktop and phone
width, light and dark, in build/test-artefacts/tenant-pages/ (a person looks at those; the test cannot).

Needs Chromium and certutil, as tests/e2e/test_edge_browser.py does.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from foundry_fleet.api.client import ControlClient
from tests.e2e.test_edge_browser import CHROMIUM, browser_home, needs_browser, png_size
from tests.e2e.test_wake_browser import RecordingChromium
from tests.support.cdp_browser import Chromium
from tests.support.edge_client import local_ca
from tests.support.fleets import make_fleet
from tests.support.harness import wait_until

pytestmark = pytest.mark.e2e

ARTEFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artefacts" / "tenant-pages"
DESKTOP = (1280, 800)
PHONE = (390, 844)
CONTACT = "ada@example.org"
REASON = "unpaid since March"


def shoot(browser: Chromium, name: str) -> None:
    """The page on screen, at both widths, in light and dark."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shots = {}
    for scheme in ("light", "dark"):
        browser.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": scheme}])
        for size, suffix in ((DESKTOP, ""), (PHONE, "-phone")):
            browser.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                         mobile=size == PHONE)
            data = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
            assert png_size(data) == size and len(data) > 2000
            file = f"{name}{suffix}{'-dark' if scheme == 'dark' else ''}.png"
            (ARTEFACTS / file).write_bytes(data)
            shots[file] = data
    # Dark is not light: the colour scheme reached the page's style.
    assert shots[f"{name}.png"] != shots[f"{name}-dark.png"]
    browser.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])
    browser.send("Emulation.setDeviceMetricsOverride", width=DESKTOP[0], height=DESKTOP[1], deviceScaleFactor=1,
                 mobile=False)


def visit(browser: RecordingChromium, url: str, status: int, *words: str) -> str:
    browser.events.clear()
    browser.send("Page.navigate", url=url)
    text = browser.settled(url, timeout=30)
    assert browser.documents() == [(url, status)], browser.documents()
    for w in words:
        assert w in text, (w, text)
    return text


@needs_browser
def test_each_state_of_an_instance_has_its_page_in_a_browser(tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path, **{'idle_after = "60min"': 'idle_after = "2s"',
                                '# operator_name = "this fleet\'s host"': 'operator_name = "Ada\'s Tables"',
                                '# contact = "host@example.org"': f'contact = "{CONTACT}"'})
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        client = ControlClient(h.socket)
        for name in ("closed", "held", "broken", "sleepy"):
            client.create_instance(name=name, release="13.345")
        client.action("closed", "stop")
        client.suspend("held", REASON)
        h.wait_state("broken", "running", 30)
        (h.root / "instances" / "broken" / "data" / "crash-on-start").write_text("")
        client.action("broken", "restart", wait=False)
        h.wait_state("broken", "failed", 30)
        h.wait_state("sleepy", "sleeping", 30)
        wait_until(lambda: client.status()["edge"]["in_sync"], 10, "the edge to serve every state")
        port = h.settings().edge.https_port

        base = tmp_path / "browser"
        base.mkdir()
        assert CHROMIUM is not None
        with RecordingChromium(CHROMIUM, base, browser_home(base, local_ca(h.root))) as browser:
            browser.send("Emulation.setScriptExecutionDisabled", value=True)  # the pages do without
            browser.send("Network.enable")

            text = visit(browser, f"https://closed.localhost:{port}/-/", 503, "This table is closed right now",
                         "Ada's Tables", CONTACT)
            shoot(browser, "stopped")

            text = visit(browser, f"https://held.localhost:{port}/-/", 503, "This table is not available",
                         f"Contact your host: {CONTACT}.")
            assert "unpaid" not in text and "suspend" not in text.lower()
            shoot(browser, "suspended")

            text = visit(browser, f"https://broken.localhost:{port}/-/", 503, "This table could not start",
                         "your host has been told")
            assert str(h.root) not in text
            shoot(browser, "failed")

            visit(browser, f"https://fleet.localhost:{port}/no/such/page", 404, "Nothing here", CONTACT)
            shoot(browser, "not-found")

            visit(browser, f"https://closed.localhost:{port}/auth/logout", 200, "Sign out of this game's backups?")
            shoot(browser, "backups-sign-out")

            # Asleep: the visit wakes it, and the waiting page stays on screen while its wait is held;
            # the wait is then called off (a browser answers nothing about a page while it navigates),
            # so the page can be looked at in every size and scheme.
            url = f"https://sleepy.localhost:{port}/-/"
            browser.events.clear()
            browser.send("Fetch.enable", patterns=[{"urlPattern": "*/wake/wait*", "requestStage": "Request"}])
            browser.send("Page.navigate", url=url)
            paused = browser.next_event("Fetch.requestPaused", timeout=30)
            assert browser.documents()[0] == (url, 503)
            browser.send("Fetch.failRequest", requestId=paused["requestId"], errorReason="Aborted")
            browser.send("Fetch.disable")
            assert browser.settled(url).startswith("Starting your table…")
            shoot(browser, "starting")
            # And the page, left alone, takes the player into the game.
            browser.send("Page.navigate", url=url)
            assert "Foundry Virtual Tabletop (stand-in)" in browser.settled(url, timeout=60)
    finally:
        h.tear_down()
