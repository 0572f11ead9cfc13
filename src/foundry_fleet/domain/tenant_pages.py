"""The pages a player or tenant meets outside Foundry (an instance not running, waking, its backups), as
plain HTML strings: the edge writes them into Caddy's config, the web app sends them.

Each page carries its own `<style>`, and is sent with PAGE_CSP, which allows that style and nothing
else to load. Not a stylesheet at a fleet path: the edge's error page is shown precisely when the fleet's
web app does not answer, and a page about an instance that is down must not depend on another request
reaching anything. Inline styles cost a kilobyte per page; these pages are small and rare.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

from foundry_fleet.domain.errors import InvalidInput

DEFAULT_OPERATOR = "this fleet's host"
# No scripts, frames, fonts or images from anywhere: only the page's own style, and forms back to itself.
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
_EMAIL = re.compile(r"[^@\s<>\"']+@[^@\s<>\"']+\.[^@\s<>\"']+")
_URL = re.compile(r"https?://[^\s<>\"']+")

# The panel's palette (web/panel/static/panel.css) in light; slate and parchment, as Foundry's own
# screens are, in the dark.
STYLE = """
:root{--fg:#1b1f24;--muted:#59636e;--bg:#f4efe4;--card:#fffdf8;--line:#d6cbb3;--accent:#0b57d0;
--bad:#cf222e;--warn:#9a6700;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--fg:#ece4d2;--muted:#a9a08d;--bg:#1d2126;--card:#2a2f36;
--line:#454c55;--accent:#e0a84f;--bad:#ff7b72;--warn:#e3b341}}
*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;flex-direction:column;align-items:center;justify-content:center;
padding:24px 16px;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
main{width:100%;max-width:34em;background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:24px 28px;box-shadow:0 2px 12px rgb(0 0 0/.12)}
main.wide{max-width:60em}
h1{font-size:1.45em;line-height:1.25;margin:0 0 12px;font-family:Georgia,"Times New Roman",serif}
p{margin:0 0 12px;overflow-wrap:anywhere}
a{color:var(--accent)}
:focus-visible{outline:3px solid var(--accent);outline-offset:2px}
.button,button{display:inline-block;font:inherit;padding:8px 16px;border-radius:6px;border:1px solid var(--accent);
background:var(--accent);color:var(--card);text-decoration:none;cursor:pointer}
.mark{width:40px;height:4px;border-radius:2px;background:var(--accent);margin:0 0 16px}
.mark.bad{background:var(--bad)}.mark.warn{background:var(--warn)}
footer{margin-top:16px;font-size:.875em;color:var(--muted);text-align:center;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;margin:0 0 12px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid var(--line)}
th{font-size:.85em;color:var(--muted);font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
.nowrap{white-space:nowrap}
ul{padding-left:1.2em;overflow-wrap:anywhere}
form{margin:12px 0 0}
@media (max-width:480px){main{padding:18px 16px}.hide-narrow{display:none}}
""".replace("\n", "")


@dataclass(frozen=True)
class Operator:
    """Who hosts the fleet, as fleet.toml names them: shown on every page, always escaped (it is text
    from a file, and may hold anything)."""

    name: str = DEFAULT_OPERATOR
    contact: str = ""  # an e-mail address or an http(s) URL; empty: none


def escape(text: str, quote: bool = True) -> str:
    """HTML-escaped, braces too: the edge's pages go through Caddy, which expands `{file./path}` and
    other placeholders in a static body; as character references they are only text to the browser."""
    return html.escape(text, quote).replace("{", "&#123;").replace("}", "&#125;")


def validate_operator_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidInput("operator_name must be 1 to 100 characters on one line",
                           f'for example "{DEFAULT_OPERATOR}" or your name')
    return name


def validate_contact(contact: str) -> str:
    """An e-mail address or an http(s) URL, or empty: what the pages link to, so nothing else."""
    contact = contact.strip()
    if contact and (len(contact) > 200 or not (_EMAIL.fullmatch(contact) or _URL.fullmatch(contact))):
        raise InvalidInput(f"contact {contact[:60]!r} is neither an e-mail address nor an http(s) URL",
                           'for example "host@example.org" or "https://example.org/contact"')
    return contact


@dataclass(frozen=True)
class Link:
    href: str
    text: str


def contact_html(operator: Operator) -> str:
    """The contact as a link (mailto: for an address), or the operator's name alone."""
    name = escape(operator.name)
    contact = operator.contact.strip()
    if _EMAIL.fullmatch(contact):
        href = "mailto:" + contact
    elif _URL.fullmatch(contact):
        href = contact
    else:
        return name
    return f"{name}: <a href=\"{escape(href, quote=True)}\">{escape(contact)}</a>"


def page(title: str, headline: str, paragraphs: Sequence[str], operator: Operator, *,
         link: Link | None = None, refresh: str | None = None, tone: str = "", body_html: str = "",
         wide: bool = False) -> str:
    """A whole page. `paragraphs` are plain text (escaped here); `body_html` is markup the caller built
    and escaped itself (a table, a form); `refresh` is a meta refresh's content ("5" or "0; url=/x")."""
    head = f"<meta http-equiv=refresh content='{escape(refresh, quote=True)}'>" if refresh else ""
    text = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    if link is not None:
        text += f"<p><a class=\"button\" href=\"{escape(link.href, quote=True)}\">{escape(link.text)}</a></p>"
    mark = f"<div class=\"mark {tone}\"></div>" if tone != "none" else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"robots\" content=\"noindex\">{head}<title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><main{' class=wide' if wide else ''}>{mark}"
            f"<h1>{escape(headline)}</h1>{text}{body_html}</main>"
            f"<footer>Hosted by {contact_html(operator)}</footer></body></html>")


@dataclass(frozen=True)
class StatePage:
    """What a visitor of an instance that is not serving gets, decided without HTTP."""

    status: int
    headline: str
    text: str
    retry_after: int | None = None
    refresh: int | None = None  # seconds before the page reloads itself; None: it does not
    tone: str = ""


# A table that is closed, suspended or failed opens only when a person acts: clients that read
# Retry-After (crawlers, link previews) come back in minutes, not seconds.
CLOSED_RETRY = 300


def state_page(kind: str, operator: Operator) -> StatePage:
    """The page for one of: starting, stopped, suspended, failed, restoring, unreachable, or anything
    else an instance may be in while it does not serve. A suspension's reason is never shown: anyone who
    has the URL reads this page; only whom to ask."""
    contact = operator.contact.strip()
    ask = f"Contact your host: {contact}." if contact else "Contact your host."
    if kind == "starting":
        return StatePage(503, "Starting your table…", "The game is on its way up. This page reloads itself "
                         "and opens it as soon as it answers; that usually takes a few seconds.", 5, 5, "warn")
    if kind == "stopped":
        return StatePage(503, "This table is closed right now", "Its game master has stopped it. "
                         "Come back when your game master says the table is open.", CLOSED_RETRY)
    if kind == "suspended":
        return StatePage(503, "This table is not available", ask, CLOSED_RETRY, tone="bad")
    if kind == "failed":
        return StatePage(503, "This table could not start", "It could not start; your host has been told. "
                         "Try again later.", CLOSED_RETRY, tone="bad")
    if kind == "restoring":
        return StatePage(503, "This table is being restored", "Its data is being restored from a backup. "
                         "This page reloads itself; the table opens again once that is done.", 30, 30, "warn")
    if kind == "unreachable":
        return StatePage(503, "This table cannot be reached", "The server did not answer just now. "
                         "This page tries again in a little while.", 10, 10, "warn")
    return StatePage(503, "This table is not open yet", "It is being set up or is on its way down. "
                     "This page reloads itself.", 10, 10, "warn")


def state_html(kind: str, operator: Operator) -> str:
    sp = state_page(kind, operator)
    return page(sp.headline, sp.headline, [sp.text], operator,
                refresh=str(sp.refresh) if sp.refresh is not None else None, tone=sp.tone)


def panel_unreachable_html(operator: Operator) -> str:
    """What the fleet host gets when the fleet's web app behind it does not answer. That host is the
    panel and its API, not a game: whoever reads this is a tenant or the operator, not a player at a
    table."""
    headline = "The fleet's panel cannot be reached"
    return page(headline, headline, ["The panel did not answer just now; the fleet may be restarting. "
                                     "This page tries again in a little while."], operator, refresh="10", tone="warn")


def not_found_html(operator: Operator, home: Link | None = None) -> str:
    return page("Not found", "Nothing here", ["There is no page at this address."], operator, link=home)
