"""`foundry-fleet panel login` through a real daemon: the link it prints is made with the fleet's own key
and database (it signs an admin in to the panel once), and only admins may ask the control API for one."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from foundry_fleet.api.endpoints import PRINCIPAL_HEADER
from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Forbidden
from foundry_fleet.wiring.services import make_panel_sessions, open_services
from tests.support.harness import FleetHarness

pytestmark = pytest.mark.e2e
TENANT, ADMIN = "111111111111111111", "444444444444444444"


def as_user(fleet: FleetHarness, user: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(fleet.root / "run" / "control.sock")),
                        base_url="http://fleet.invalid", headers={PRINCIPAL_HEADER: user}, timeout=60)


def test_panel_login_prints_a_link_that_works_once(fleet: FleetHarness) -> None:
    fleet.edit_config("admin_users = []", f'admin_users = ["{ADMIN}"]')
    fleet.up()
    out = fleet.cli("panel", "login").out
    url = out.splitlines()[0]
    port = fleet.settings().edge.https_port
    assert url.startswith(f"https://fleet.localhost:{port}/login/link?t=") and "works once, within 10 minutes" in out

    panel = make_panel_sessions(open_services(load_config(fleet.config)))
    cookie, _ = panel.redeem_link(parse_qs(urlsplit(url).query)["t"][0])
    user = panel.user(cookie)
    assert user is not None and user.admin and user.principal.actor == "panel:admin-link"
    with pytest.raises(Forbidden, match="already used"):
        panel.redeem_link(parse_qs(urlsplit(url).query)["t"][0])
    events = fleet.cli("events", "--json").json()
    assert any(e["action"] == "panel.link" and e["actor"].startswith("cli:") for e in events)

    with as_user(fleet, TENANT) as tenant:
        r = tenant.post("/v1/panel/login-link")
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    with as_user(fleet, ADMIN) as admin:
        r = admin.post("/v1/panel/login-link")
        assert r.status_code == 200 and r.json()["expires_in"] == 600
