"""The web panel in a real browser (headless Chromium over its DevTools protocol) through the edge, with
the page's own scripts (htmx, its event-stream extension, panel.js) running under the strict policy:

- a tenant signs in through the strict Discord stand-in and sees only their own instance;
- a stop made elsewhere shows up on the open overview without a reload, and a start pressed on the
  instance page too, whose log follows the server's new lines;
- the tenant downloads a backup from the link the panel gives;
- a forged POST for another tenant's instance, and a cross-site form, do nothing;
- an admin signs in with the one-time link and creates an invite.

Screenshots of the main pages are kept in build/test-artefacts/panel/ (desktop and phone width).
"""

from __future__ import annotations

import base64
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_edge_browser import CHROMIUM, browser_home, needs_browser, png_size
from tests.e2e.test_panel import ALICE, BOB, FLEET, local_ca, panel_fleet  # noqa: F401 - the fixture
from tests.support.cdp_browser import Chromium
from tests.support.harness import FleetHarness, wait_until

pytestmark = pytest.mark.e2e

ARTEFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artefacts" / "panel"
DESKTOP = (1280, 800)
PHONE = (390, 844)


class PanelChromium(Chromium):
    def until(self, expression: str, timeout: float, what: str) -> Any:
        return wait_until(lambda: self.evaluate(expression), timeout, what)

    def screenshot(self, name: str, size: tuple[int, int] = DESKTOP) -> bytes:
        self.send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                  mobile=size == PHONE)
        time.sleep(0.2)  # a layout pass at the new width
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        assert png_size(data) == size and len(data) > 2000
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        (ARTEFACTS / f"{name}.png").write_bytes(data)
        if size != DESKTOP:
            self.send("Emulation.setDeviceMetricsOverride", width=DESKTOP[0], height=DESKTOP[1],
                      deviceScaleFactor=1, mobile=False)
        return data

    def at(self, url: str, timeout: float) -> str:
        """Wait until the browser shows exactly `url`, loaded; its text."""
        try:
            self.until(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout, url)
        except AssertionError:
            raise AssertionError(f"not at {url}: at {self.evaluate('[location.href, document.body.innerText]')}") from None
        return self.evaluate("document.body.innerText")

    def click(self, selector: str) -> None:
        assert self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                             f" if (!e) return false; e.click(); return true; }})()"), selector

    def text_of(self, selector: str) -> str:
        return self.evaluate(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")


def discord_login(browser: PanelChromium, fleet_port: int, standin_base: str, user: str) -> None:
    """The browser is signed in to (stand-in) Discord as `user`."""
    browser.send("Network.enable")
    browser.send("Network.setCookie", name="discord_user", value=user, url=standin_base + "/")


@needs_browser
def test_a_tenant_and_an_admin_use_the_panel_in_a_browser(panel_fleet, tmp_path: Path) -> None:  # noqa: F811
    fleet, fake = panel_fleet
    port = fleet.settings().edge.https_port
    origin = f"https://{FLEET}:{port}"
    fleet.wait_state("alice", "running", 60)
    base = tmp_path / "browser"
    base.mkdir()
    assert CHROMIUM is not None
    with PanelChromium(CHROMIUM, base, browser_home(base, local_ca(fleet))) as browser:
        browser.send("Emulation.setDeviceMetricsOverride", width=DESKTOP[0], height=DESKTOP[1],
                     deviceScaleFactor=1, mobile=False)
        discord_login(browser, port, fake.base, ALICE)
        # Not signed in: the panel sends the browser to its sign-in page.
        text = browser.open(origin + "/", lands_on=origin + "/login")
        assert "Sign in with Discord" in text
        browser.screenshot("sign-in")
        browser.click("a[href^='/login/discord']")
        text = browser.at(origin + "/", timeout=30)
        # Only her own instance.
        rows = browser.evaluate("[...document.querySelectorAll('table.instances tbody tr')].map(r => r.id)")
        assert rows == ["row-alice"], rows
        assert "bob" not in text
        # The page's scripts run (htmx came from the fleet host; the policy let it), and it listens.
        assert browser.until("typeof htmx === 'object' && !!document.querySelector('[sse-connect]')", 10, "htmx")
        browser.screenshot("overview-tenant")
        browser.screenshot("overview-tenant-phone", PHONE)

        # A stop made elsewhere (the CLI) shows on the open page, which is not reloaded.
        browser.evaluate("window.notReloaded = true")
        fleet.cli("instance", "stop", "alice")
        browser.until("document.querySelector('#row-alice .state').innerText === 'stopped'", 30,
                      "alice's row to say stopped")
        assert browser.evaluate("window.notReloaded === true")

        # Her instance's page: start it there, watch it come up and its log follow the new lines.
        browser.click("#row-alice a[href='/instances/alice']")
        browser.at(origin + "/instances/alice", timeout=20)
        browser.until("!!document.querySelector('#log') && typeof htmx === 'object'", 10, "the instance page")
        lines_before = browser.evaluate("document.querySelector('#log').innerText.split('\\n').length")
        browser.evaluate("window.notReloaded = true")
        browser.click("form[action='/instances/alice/start'] button")
        browser.until("document.querySelector('#status .state') && "
                      "document.querySelector('#status .state').innerText === 'running'", 60,
                      "alice's status to say running")
        browser.until(f"document.querySelector('#log').innerText.split('\\n').length > {lines_before}", 30,
                      "new lines in the log")
        # Following: the newest line is in view.
        assert browser.evaluate("(() => { const l = document.querySelector('#log');"
                                " return l.scrollHeight - l.scrollTop - l.clientHeight < 4; })()")
        browser.screenshot("instance-tenant")
        browser.screenshot("instance-tenant-phone", PHONE)

        # Download her newest backup from the link the panel shows (the tenant host signs her in too).
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        browser.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
        href = browser.evaluate("document.querySelector('a[href$=\".zip\"]').href")
        assert href.startswith(f"https://alice.localhost:{port}/backups/"), href
        browser.send("Page.navigate", url=href)
        zips = wait_until(lambda: [p for p in downloads.glob("*.zip")], 60, "the backup's download")
        with zipfile.ZipFile(zips[0]) as z:
            assert z.testzip() is None and z.namelist()

        # A forged POST for bob's instance, with her own valid token: bob's does not exist for her.
        browser.open(origin + "/instances/alice")
        status = browser.send("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression=(
            "(async () => { const t = document.querySelector('input[name=csrf]').value;"
            " const r = await fetch('/instances/bob/start', {method: 'POST', body: new URLSearchParams({csrf: t})});"
            " return r.status; })()"))["result"]["value"]
        assert status == 404
        # A form on another site, posted with her browser: nothing happens.
        attacker = ("data:text/html,<form method=post action='" + origin + "/instances/alice/stop'>"
                    "<input name=csrf value=x></form><script>document.forms[0].submit()</script>")
        browser.send("Page.navigate", url=attacker)
        time.sleep(2)
        assert fleet.cli("instance", "show", "alice", "--json").json()["desired"] == "running"
        assert fleet.cli("instance", "show", "bob", "--json").json()["desired"] == "stopped"

    # An admin, in another browser, with the one-time link.
    admin_base = tmp_path / "admin"
    admin_base.mkdir()
    with PanelChromium(CHROMIUM, admin_base, browser_home(admin_base, local_ca(fleet))) as admin:
        admin.send("Emulation.setDeviceMetricsOverride", width=DESKTOP[0], height=DESKTOP[1],
                   deviceScaleFactor=1, mobile=False)
        link = fleet.cli("panel", "login").out.splitlines()[0]
        admin.open(link)
        admin.click("form[action='/login/link'] button")
        admin.at(origin + "/", timeout=20)
        rows = admin.evaluate("[...document.querySelectorAll('table.instances tbody tr')].map(r => r.id)")
        assert rows == ["row-alice", "row-bob"], rows
        admin.screenshot("overview-admin")
        check_admin_pages(admin, fleet, origin)


def check_admin_pages(admin: PanelChromium, fleet: FleetHarness, origin: str) -> None:
    """Each admin page renders; an invite made on its page is in the fleet's invites."""
    for path, name in (("/admin/releases", "releases"), ("/admin/events", "events"), ("/admin/health", "health"),
                       ("/admin/nodes", "nodes")):
        admin.open(origin + path)
        admin.screenshot(f"admin-{name}")
    admin.open(origin + "/admin/invites")
    admin.evaluate(f"document.querySelector('input[name=discord_user]').value = '{BOB[:-1]}7'")
    admin.click("form[action='/admin/invites'] button[type=submit]")
    admin.settled(origin + "/admin/invites", timeout=20)
    admin.screenshot("admin-invites")
    invites = fleet.cli("invite", "list", "--json").json()
    assert any(i["discord_user_id"] == BOB[:-1] + "7" and i["status"] == "pending" for i in invites), invites
