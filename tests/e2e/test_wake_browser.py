"""A sleeping instance woken by a real browser with JavaScript off: headless Chromium opens the instance's
address through the edge, is shown the waiting page, follows its meta refresh to the held wait, and
lands in Foundry at the address it asked for, as a player's browser would.

Needs Chromium and certutil, as tests/e2e/test_edge_browser.py does.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from foundry_fleet.api.client import ControlClient
from tests.e2e.test_edge_browser import CHROMIUM, WINDOW, browser_home, needs_browser, png_size
from tests.support.cdp_browser import Chromium
from tests.support.edge_client import local_ca
from tests.support.fleets import make_fleet
from tests.support.harness import wait_until

pytestmark = pytest.mark.e2e

STANDIN_TITLE = "Foundry Virtual Tabletop (stand-in)"


class RecordingChromium(Chromium):
    """Chromium that keeps the DevTools events it is sent (Chromium drops none: they come in order),
    so a test can follow a navigation step by step and pause requests."""

    def __init__(self, chromium: str, base: Path, home: Path) -> None:
        super().__init__(chromium, base, home)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def next_event(self, method: str, timeout: float) -> dict[str, Any]:
        """The first event `method` not taken yet (waiting for it up to `timeout` seconds); its params."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method:
                    del self.events[i]
                    return event["params"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {method} within {timeout}s")
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                continue

    def documents(self) -> list[tuple[str, int]]:
        """The top-level documents the browser was answered, in order: (URL, status), redirects included."""
        seen = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Network.requestWillBeSent" and params.get("type") == "Document" \
                    and "redirectResponse" in params:
                seen.append((params["redirectResponse"]["url"], params["redirectResponse"]["status"]))
            elif event["method"] == "Network.responseReceived" and params.get("type") == "Document":
                seen.append((params["response"]["url"], params["response"]["status"]))
        return seen


@needs_browser
def test_a_browser_without_javascript_wakes_a_sleeping_instance_and_lands_in_foundry(
        tmp_path: Path, release_zips: dict[str, Path]) -> None:
    h = make_fleet(tmp_path, **{'idle_after = "60min"': 'idle_after = "2s"'})
    try:
        h.cli("release", "add", str(release_zips["node"]))
        h.up()
        client = ControlClient(h.socket)
        client.create_instance(name="alice", release="13.345")
        h.wait_state("alice", "sleeping", 15)
        wait_until(lambda: client.status()["edge"]["in_sync"], 10, "the edge to route alice to the wake handler")
        port = h.settings().edge.https_port
        url = f"https://alice.localhost:{port}/-/"
        wait_url = f"https://alice.localhost:{port}/wake/wait?to=/-/"
        spawned = sum(e["action"] == "instance.spawn" for e in client.events(target="alice", limit=500))

        base = tmp_path / "browser"
        base.mkdir()
        assert CHROMIUM is not None
        with RecordingChromium(CHROMIUM, base, browser_home(base, local_ca(h.root))) as browser:
            browser.send("Emulation.setScriptExecutionDisabled", value=True)  # the pages must do without
            browser.send("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                         deviceScaleFactor=1, mobile=False)
            browser.send("Network.enable")
            # The wait is held by the fleet until Foundry answers; pausing it in the browser keeps the
            # waiting page on screen long enough to look at it, however fast the instance starts.
            browser.send("Fetch.enable", patterns=[{"urlPattern": "*/wake/wait*", "requestStage": "Request"}])
            browser.send("Page.navigate", url=url)

            # The meta refresh (no script ran) asks for the wait, for the address asked for.
            paused = browser.next_event("Fetch.requestPaused", timeout=30)
            assert paused["request"]["url"] == wait_url and paused["request"]["method"] == "GET"
            assert paused["resourceType"] == "Document"
            # Meanwhile the browser shows the waiting page at the address asked for. (While a navigation
            # is under way Chromium answers nothing about the page itself, only what the browser holds:
            # its history entry, and what is on screen.)
            history = browser.send("Page.getNavigationHistory")
            shown = history["entries"][history["currentIndex"]]
            assert (shown["url"], shown["title"]) == (url, "Starting your table…"), history
            waiting = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
            (tmp_path / "waiting-page.png").write_bytes(waiting)
            assert png_size(waiting) == WINDOW and len(waiting) > 1000

            browser.send("Fetch.continueRequest", requestId=paused["requestId"])
            text = browser.settled(url, timeout=60)
            # Foundry, at the address the browser asked for; its script did not run (JavaScript is off,
            # so its websocket never opened), which is all the wake needed: the page itself.
            assert browser.evaluate("[location.href, document.title]") == [url, STANDIN_TITLE]
            assert STANDIN_TITLE in text and "websocket: connecting" in text
            landed = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
            (tmp_path / "landed.png").write_bytes(landed)
            assert landed != waiting
            # The refresh took the waiting page's place in the history: Back does not lead to it again.
            history = browser.send("Page.getNavigationHistory")
            assert [e["url"] for e in history["entries"]] == ["about:blank", url], history
            # Every document the browser got on the way: the waiting page, the wait's redirect, Foundry.
            assert browser.documents() == [(url, 503), (wait_url, 303), (url, 200)]

        # The browser's visit woke it. (Once, unless it fell asleep again while the test held the wait
        # paused: then the wait woke it again; either way nothing but visits started it.)
        events = client.events(target="alice", limit=500)
        wakes = [(e["actor"], e["outcome"]) for e in events if e["action"] == "instance.wake"]
        assert wakes and set(wakes) == {("visitor", "ok")}, wakes
        assert sum(e["action"] == "instance.spawn" for e in events) == spawned + len(wakes)
    finally:
        h.tear_down()
