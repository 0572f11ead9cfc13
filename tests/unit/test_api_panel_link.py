"""POST /v1/panel/login-link: a single-use sign-in link to the web panel, for fleet admins only."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import StarletteDeprecationWarning

from foundry_fleet.api.app import Reads, create_app
from foundry_fleet.api.endpoints import ACTOR_HEADER, PRINCIPAL_HEADER
from tests.support.panel_login import ADMIN, FLEET_HOST, OWNER, make_login, make_panel

with warnings.catch_warnings():
    # Starlette would rather drive its test client with httpx2; the fleet's httpx does the same job.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TENANT = OWNER


def control_api(panel_link: Any, admin_users: frozenset[str] = frozenset({ADMIN})) -> TestClient:
    """The control API with only what this endpoint and the access check use; the rest is never called."""
    from foundry_fleet.services.access import Access

    nothing: Any = None
    access = Access(nothing, admin_users)
    reads = Reads(nothing, nothing, nothing, nothing, access)
    return TestClient(create_app(reads, nothing, nothing, nothing, nothing, panel_link=panel_link),
                      base_url="http://fleet.invalid")


def test_the_fleets_own_user_and_admins_get_a_link_that_signs_in_once(tmp_path: Path) -> None:
    panel = make_panel(make_login(tmp_path, None))
    api = control_api(panel.make_link)
    r = api.post("/v1/panel/login-link", headers={ACTOR_HEADER: "cli:root"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["expires_in"] == 600 and set(answer) == {"url", "expires_in"}
    url = urlsplit(answer["url"])
    assert (url.scheme, url.netloc, url.path) == ("https", FLEET_HOST, "/login/link")
    cookie, _ = panel.redeem_link(parse_qs(url.query)["t"][0])
    user = panel.user(cookie)
    assert user is not None and user.admin
    assert ("panel.link", "cli:root") in [(e.action, e.actor) for e in panel.events.recent()]  # type: ignore[union-attr]
    for header in (ADMIN, f"{TENANT};admin"):  # by the config's admin_users, by the Discord role
        r = api.post("/v1/panel/login-link", headers={PRINCIPAL_HEADER: header})
        assert r.status_code == 200 and r.json()["url"].startswith(f"https://{FLEET_HOST}/login/link?t=")


def test_a_tenant_gets_no_link(tmp_path: Path) -> None:
    asked: list[str] = []

    def link(actor: str) -> str:
        asked.append(actor)
        return "https://fleet.example.test/login/link?t=x"

    api = control_api(link)
    r = api.post("/v1/panel/login-link", headers={PRINCIPAL_HEADER: TENANT})
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and asked == []
    assert api.post("/v1/panel/login-link", headers={PRINCIPAL_HEADER: ADMIN}).status_code == 200
    assert asked == [f"discord:{ADMIN}"]
    assert api.get("/v1/panel/login-link").status_code == 405


def test_without_the_panel_the_endpoint_says_so_and_is_in_the_schema() -> None:
    api = control_api(None)
    r = api.post("/v1/panel/login-link")
    assert r.status_code == 422 and "does not serve the web panel" in r.json()["message"]
    schema = api.get("/openapi.json").json()
    assert "post" in schema["paths"]["/v1/panel/login-link"]
