"""A real headless Chromium driven over the DevTools protocol: navigate, click, read the page and its
cookies, as a person's browser would (Chromium applies its own cookie, SameSite and Origin rules)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.harness import wait_until

# What Chromium is called where: Debian's package, Ubuntu's and Fedora's, Google's builds, others.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
                  "chromium-freeworld")


def find_chromium() -> str | None:
    """The browser the tests drive: $CHROMIUM if set, else the first of CHROMIUM_NAMES on PATH. No
    WebDriver is needed: the tests speak the DevTools protocol to the browser itself."""
    import shutil

    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


class Chromium(contextlib.AbstractContextManager["Chromium"]):
    """`with Chromium(binary, scratch dir, HOME whose NSS database trusts the fleet's CA) as browser:`"""

    def __init__(self, chromium: str, base: Path, home: Path) -> None:
        profile = base / "cdp-profile"
        profile.mkdir()
        self.stack = contextlib.ExitStack()
        # Chromium puts its singleton socket in a folder of its own under TMPDIR, and a killed Chromium
        # leaves it there: a short folder of ours (a unix socket's path may not pass 107 bytes), removed
        # once Chromium is gone.
        scratch = tempfile.mkdtemp(prefix="ff-cdp-")
        self.stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
               "TMPDIR": scratch}
        try:
            self.process = subprocess.Popen(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.stack.callback(self._stop)
            self.ws = self._attach(profile / "DevToolsActivePort")
        except BaseException:
            self.stack.close()
            raise
        self.ids = itertools.count(1)

    def _attach(self, active: Path) -> ClientConnection:
        wait_until(lambda: active.exists() and active.read_text().count("\n") >= 1, 30, "Chromium's DevTools port")
        port = int(active.read_text().split()[0])
        pages = wait_until(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                                    if t["type"] == "page"], 10, "a page in Chromium")
        return self.stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10))

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.ws.recv(timeout=30))
            if answer.get("id") == msg_id:  # anything else is an event nobody asked for
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def settled(self, prefix: str, timeout: float = 20) -> str:
        """Wait until the page at a URL starting with `prefix` has loaded; its text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.evaluate("[location.href, document.readyState, document.body ? document.body.innerText : '']")
            if state and state[0].startswith(prefix) and state[1] == "complete":
                return state[2]
            time.sleep(0.1)
        raise AssertionError(f"no page at {prefix} within {timeout}s (at {state})")

    def open(self, url: str, lands_on: str | None = None) -> str:
        self.send("Page.navigate", url=url)
        return self.settled(lands_on or url)

    def cookies(self, url: str) -> dict[str, str]:
        return {c["name"]: c["value"] for c in self.send("Network.getCookies", urls=[url])["cookies"]}

    def _stop(self) -> None:
        self.process.kill()
        self.process.wait()

    def __exit__(self, *exc: object) -> None:
        self.stack.close()
