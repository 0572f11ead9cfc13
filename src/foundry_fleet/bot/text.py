"""Text for Discord messages: short, with nothing secret in it, and no control characters.

Discord caps a message at 2000 characters. A URL's query string can be a credential (the timed
download links from foundryvtt.com are), so every URL a message shows loses it. Messages carry
tenants' text (their servers' log lines, state reasons), so control characters are shown escaped.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote, urlsplit

from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.idle import format_idle_after
from foundry_fleet.domain.text import escape_controls
from foundry_fleet.domain.units import human_bytes
from foundry_fleet.domain.urls import redact_url

MESSAGE_LIMIT = 2000
_URL = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)


def scrub(text: str) -> str:
    """`text` with every URL cut down to scheme, host, port and path (no user info, query or fragment),
    and every control character but newline and tab escaped (every message passes through here)."""

    def cut(match: re.Match[str]) -> str:
        url = match.group(0)
        tail = ""
        while url and url[-1] in ").,;:!":  # punctuation around a URL is not part of it
            tail = url[-1] + tail
            url = url[:-1]
        if "?" not in url and "#" not in url and "@" not in url:
            return url + tail
        return redact_url(url) + tail

    return escape_controls(_URL.sub(cut, text), multiline=True)


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """At most `limit` characters, saying so when something was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 2] + " …"


def clip_tail(lines: list[str], limit: int) -> str:
    """The last lines that fit in `limit` characters (for logs: the newest lines matter)."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(reversed(kept))


def code_block(text: str) -> str:
    return "```\n" + text.replace("```", "'''") + "\n```"


def error_text(error: FleetError) -> str:
    """What was wrong, and what to do next."""
    text = f"**{error.message}**"
    if error.hint:
        text += f"\n{error.hint}"
    return clip(scrub(text))


def instance_line(view: dict[str, object], now: float | None = None) -> str:
    """One instance on one line: name, state, release, where players connect."""
    return f"**{view['name']}**: {state_text(view, now)}, Foundry {view.get('release', '?')} <{public_url(view)}>"


def license_text(view: dict[str, object]) -> str:
    """Whether a Foundry license key is set (never the key), and who sets a missing one: only fleet admins
    do, so a tenant reading this knows whom to ask. "" when the fleet cannot tell (its data is elsewhere)."""
    if view.get("license") == "set":
        return "License key: set."
    if view.get("license") == "missing":
        return (f"License key: **missing**. Until one is set, Foundry shows its license page to every visitor "
                f"instead of the game; a fleet admin sets it (`foundry-fleet instance set {view['name']} "
                "--license-file FILE`).")
    return ""


def state_text(view: dict[str, object], now: float | None = None) -> str:
    """Its state for people: why it is suspended or failed; that a sleeping one wakes on a visit (it is
    neither stopped nor broken); when a running one will sleep."""
    state = str(view.get("state", "?"))
    if view.get("suspended"):
        return f"suspended ({view['suspended']})"
    if state == "failed" and view.get("state_reason"):
        return f"failed: {view['state_reason']}"
    if state == "sleeping":
        return "asleep (wakes when someone opens it)"
    if state == "running" and (when := sleep_text(view, now)):
        return f"running ({when})"
    return state


def sleep_text(view: dict[str, object], now: float | None = None) -> str:
    """When a running instance sleeps: "sleeps after 1h idle" while in use, "idle, sleeps <t:..:R>" once
    idle (Discord shows the time relative to the reader's clock: "in 12 minutes"); "" if it never sleeps."""
    after, since = view.get("sleeps_after"), view.get("idle_since")
    if not isinstance(after, int | float):
        return ""
    if not isinstance(since, int | float):
        return f"sleeps after {format_idle_after(after)} idle"
    at = since + after
    if at <= (time.time() if now is None else now):
        return "idle, about to sleep"
    return f"idle, sleeps <t:{int(at)}:R>"


def sleep_note(view: dict[str, object]) -> str:
    """For a new owner: that their instance sleeps when idle, and how it wakes ("" if it never sleeps)."""
    after = view.get("sleeps_after")
    if not isinstance(after, int | float):
        return ""
    return (f"After {format_idle_after(after)} without players it sleeps, freeing the host's memory; the next "
            "visit wakes it (players see a page while it starts).")


def moved_text(name: str, moved: dict[str, Any]) -> str:
    """What `/fleet move` did, as the control API answered it (services/operations.py `Moved`)."""
    node, outcome, view = moved["node"], moved["outcome"], moved["instance"]
    if outcome == "already there":
        return f"**{name}** is already on node `{node}`: nothing to move."
    if outcome == "pinned":
        return f"**{name}** is {view['state']}: it moves to node `{node}` at its next start."
    if outcome != "moved":
        return (f"**{name}** is not running on node `{node}`: {view['state']} ({scrub(str(view['state_reason']))}); "
                f"its data is on node `{moved['now_on'] or '-'}`.")
    text = f"Moved **{name}** from node `{moved['previous'] or '-'}` to node `{node}`"
    if moved.get("home") and moved.get("home") != moved.get("previous_home"):
        snapshots = moved.get("copied_snapshots") or []
        text += (f" (home `{moved['previous_home']}` -> `{moved['home']}`: {len(snapshots)} snapshots, "
                 f"{size(moved.get('copied_bytes') or 0)} sent")
        text += f", down {moved['downtime_seconds']:.1f} s)" if moved.get("downtime_seconds") is not None else ")"
    return text + ".\n" + instance_line(view)


def public_url(view: dict[str, object]) -> str:
    return scrub(str(view.get("url") or f"https://{view.get('host')}/"))


def backup_link(view: dict[str, object], snapshot: str) -> str:
    """Where the owner downloads a snapshot: https://<instance host>/backups/<snapshot>.zip."""
    parts = urlsplit(public_url(view))
    base = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"https://{view.get('host')}"
    return f"{base}/backups/{quote(snapshot)}.zip"


def size(n: object) -> str:
    return human_bytes(n if isinstance(n, int | float) else 0)
