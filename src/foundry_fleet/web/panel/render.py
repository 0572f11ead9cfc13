"""Rendering panel pages: the templates, and the headers every panel answer carries.

The Content-Security-Policy allows scripts and styles from the fleet host alone and nothing inline: a
tenant-controlled string that slipped past escaping still could not run. htmx is told not to evaluate
anything either (its `allowEval` off, in base.html), which the policy would refuse anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from foundry_fleet.domain.sparkline_path import sparkline_path
from foundry_fleet.domain.units import human_bytes, human_duration
from foundry_fleet.domain.web_paths import PANEL_STATIC

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Same-origin: the fleet's own forms carry their Origin/Referer for the CSRF check; other sites learn
    # nothing of panel URLs (instance names).
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every template is HTML
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the page's test, not silently empties it
    trim_blocks=True,
    lstrip_blocks=True,
)
templates = Jinja2Templates(env=_env)


def static_url(name: str) -> str:
    return f"{PANEL_STATIC}/{name}"


SPARK_BOX = (90, 20)


def spark(values: tuple[float | None, ...], label: str, slots: int | None = None) -> Markup:
    """An inline SVG sparkline (an image to a screen reader, named by `label`); nothing for no history.
    `slots`: how many samples the box spans (a young history stays at the right, in its place in time)."""
    d = sparkline_path(values, *SPARK_BOX, slots=slots)
    if not d:
        return Markup("")
    return Markup('<svg class="spark" viewBox="0 0 {} {}" role="img" aria-label="{}"><path d="{}"/></svg>'
                  ).format(*SPARK_BOX, label, d)


_env.globals["static"] = static_url
_env.filters["size"] = human_bytes
_env.filters["duration"] = human_duration
_env.filters["spark"] = spark


def render(request: Request, template: str, context: dict[str, Any], status: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    return templates.TemplateResponse(request, template, context, status_code=status,
                                      headers={**SECURITY_HEADERS, **(headers or {})})


def fragment(template: str, context: dict[str, Any]) -> str:
    """A piece of a page as text (an instance's row for a server-sent event)."""
    return _env.get_template(template).render(context)
