"""The pages players and tenants meet outside Foundry: one look, each state's words, status and
Retry-After, on the edge and in the web app; whatever fleet.toml says is shown as text, never markup."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from foundry_fleet.config import FleetSection
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.tenant_pages import (
    PAGE_CSP,
    Link,
    Operator,
    contact_html,
    page,
    state_page,
    validate_contact,
)
from foundry_fleet.edge.caddy_config import EdgeSettings, TenantSite, build_caddy_config
from foundry_fleet.web.auth import page as auth_page
from foundry_fleet.web.backups import create_backups_app
from tests.support.caddy_routes import route_for

OPERATOR = Operator("Ada's <b>Tables</b> & co", "ada@example.org")
SETTINGS = EdgeSettings(http_port=8080, https_port=8443, tls="internal", fleet_host="fleet.localhost",
                        web_dial="127.0.0.1:8099", admin_listen="unix//run/admin.sock", operator=OPERATOR)
REFRESH = re.compile(r"<meta http-equiv=refresh content='([^']*)'>")


def foundry_route(config: dict, host: str) -> dict:
    """The page a tenant host's `/-/` shows."""
    (handler,) = route_for(config, host, "/-/")["handle"]
    return handler


# --- the page builder -------------------------------------------------------------------------------


def test_a_page_is_whole_styled_for_light_and_dark_and_a_phone_and_runs_no_script() -> None:
    body = page("Backups", "Backups", ["one", "two"], OPERATOR, link=Link("/-/", "Go to the game"))
    assert body.startswith("<!doctype html>") and body.endswith("</html>")
    assert "<style>" in body and "prefers-color-scheme:dark" in body
    assert "width=device-width" in body and "<script" not in body
    assert "<p>one</p><p>two</p>" in body and "href=\"/-/\"" in body
    assert "style-src 'unsafe-inline'" in PAGE_CSP and "script-src" not in PAGE_CSP


@pytest.mark.parametrize("name, contact", [
    ("<script>alert(1)</script>", "x@example.org"),
    ("\"><img src=x onerror=alert(1)>", "https://example.org/?a=\"><script>alert(1)</script>"),
    ("Bob", "javascript:alert(1)"),
    # Caddy would read the file into the edge's page.
    ("{file./etc/passwd}", "https://example.org/{env.HOME}"),
])
def test_the_operator_is_text_wherever_it_is_shown(name: str, contact: str) -> None:
    body = page("t", "t", ["x"], Operator(name, contact))
    assert "<script" not in body and "<img" not in body and "href=\"javascript" not in body
    assert "{file." not in body and "{env." not in body
    assert html.escape(name).replace("{", "&#123;").replace("}", "&#125;") in body


def test_a_contact_becomes_a_link_only_when_it_is_an_address_or_a_web_page() -> None:
    assert contact_html(OPERATOR) == ("Ada&#x27;s &lt;b&gt;Tables&lt;/b&gt; &amp; co: "
                                      "<a href=\"mailto:ada@example.org\">ada@example.org</a>")
    assert "href=\"https://example.org/help\"" in contact_html(Operator("Ada", "https://example.org/help"))
    assert contact_html(Operator("Ada", "javascript:alert(1)")) == "Ada"
    assert contact_html(Operator("Ada", "")) == "Ada"


def test_fleet_toml_takes_an_address_or_a_url_and_nothing_else() -> None:
    assert validate_contact(" host@example.org ") == "host@example.org"
    assert validate_contact("https://example.org/contact") == "https://example.org/contact"
    assert validate_contact("") == ""
    for bad in ("javascript:alert(1)", "call me", "ftp://example.org", "a@b", "https://x.org/<script>"):
        with pytest.raises(InvalidInput):
            validate_contact(bad)
    section = FleetSection(root="/srv", operator_name="Ada", contact="ada@example.org")
    assert section.operator == Operator("Ada", "ada@example.org")
    assert FleetSection(root="/srv").operator == Operator()
    with pytest.raises(ValidationError, match="contact"):
        FleetSection(root="/srv", contact="not a contact")
    with pytest.raises(ValidationError, match="operator_name"):
        FleetSection(root="/srv", operator_name="two\nlines")


# --- each state's page on the edge --------------------------------------------------------------------


@pytest.mark.parametrize("site, retry, refresh, words", [
    (TenantSite("a", ("a.localhost",), None, "starting"), "5", "5", "Starting your table"),
    (TenantSite("a", ("a.localhost",), None, "stopped"), "300", None, "This table is closed right now"),
    (TenantSite("a", ("a.localhost",), None, "stopped", suspended=True), "300", None, "This table is not available"),
    (TenantSite("a", ("a.localhost",), None, "failed"), "300", None, "could not start; your host has been told"),
    (TenantSite("a", ("a.localhost",), None, "stopped", restoring=True), "30", "30", "being restored"),
    # A restore begins while the instance still runs: its visitors get the page, not a server about to stop.
    (TenantSite("a", ("a.localhost",), "127.0.0.1:30001", "running", restoring=True), "30", "30", "being restored"),
    # A restore of an instance that was asleep: its visitors are told, not woken.
    (TenantSite("a", ("a.localhost",), None, "sleeping", wakes=True, restoring=True), "30", "30", "being restored"),
])
def test_each_state_has_its_page_status_and_retry_after(site: TenantSite, retry: str, refresh: str | None,
                                                       words: str) -> None:
    handler = foundry_route(build_caddy_config(SETTINGS, [site]), "a.localhost")
    assert handler["handler"] == "static_response" and handler["status_code"] == 503
    assert handler["headers"]["Retry-After"] == [retry]
    assert handler["headers"]["Content-Security-Policy"] == [PAGE_CSP]
    assert handler["headers"]["Cache-Control"] == ["no-store"]
    assert words in handler["body"]
    assert REFRESH.findall(handler["body"]) == ([refresh] if refresh else [])
    # The operator and the contact, escaped, on every page.
    assert "Ada&#x27;s &lt;b&gt;Tables&lt;/b&gt; &amp; co" in handler["body"]
    assert "mailto:ada@example.org" in handler["body"]


def test_a_suspended_table_names_whom_to_ask_and_not_why() -> None:
    shown = state_page("suspended", OPERATOR)
    assert shown.text == "Contact your host: ada@example.org."
    assert state_page("suspended", Operator()).text == "Contact your host."
    config = json.dumps(build_caddy_config(SETTINGS, [TenantSite("a", ("a.localhost",), None, "stopped",
                                                                 suspended=True)]))
    assert "suspend" not in config.lower()


def test_the_fleet_hosts_unknown_paths_and_the_edges_own_errors_are_designed_pages() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("a", ("a.localhost",), "127.0.0.1:1", "running")])
    edge = config["apps"]["http"]["servers"]["edge"]
    fleet = next(r for r in edge["routes"] if r.get("match", [{}])[0].get("host") == ["fleet.localhost"])
    not_found = fleet["handle"][0]["routes"][-1]["handle"][0]
    assert not_found["status_code"] == 404 and "Nothing here" in not_found["body"]
    assert "mailto:ada@example.org" in not_found["body"]
    tenant_error = _error_page(edge["errors"]["routes"], "a.localhost")
    assert tenant_error["status_code"] == 503 and tenant_error["headers"]["Retry-After"] == ["10"]
    assert "This table cannot be reached" in tenant_error["body"] and "<style>" in tenant_error["body"]


def test_the_edges_error_page_on_the_fleet_host_speaks_of_the_panel_not_of_a_table() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("a", ("a.localhost",), "127.0.0.1:1", "running")])
    error = _error_page(config["apps"]["http"]["servers"]["edge"]["errors"]["routes"], "fleet.localhost")
    assert error["status_code"] == 503 and error["headers"]["Retry-After"] == ["10"]
    assert error["headers"]["Content-Security-Policy"] == [PAGE_CSP]
    main = re.search(r"<main.*</main>", html.unescape(error["body"]), re.S)
    assert main is not None and "The fleet's panel cannot be reached" in main[0]
    assert "table" not in main[0].lower()  # the words, not the operator's name in the footer
    assert REFRESH.findall(error["body"]) == ["10"] and "mailto:ada@example.org" in error["body"]


def _error_page(routes: list[dict], host: str) -> dict:
    """The page Caddy's error routes give a request for `host` (the first route that matches it)."""
    for route in routes:
        hosts = [h for m in route.get("match", [{}]) for h in m.get("host", [host])]
        if host in hosts:
            (handler,) = route["handle"]
            return handler
    raise AssertionError(f"no error route for {host}")


# --- the backups pages in the web app -----------------------------------------------------------------


@dataclass
class Snap:
    name: str
    created_at: float = 1_700_000_000.0
    bytes_total: int = 123_456

    def to_dict(self) -> dict:
        return {"name": self.name}


class Listed:
    """Snapshot files as the listing reads them: names only, no disk."""

    def list(self, instance: str) -> list[Snap]:
        return [Snap("nightly-1"), Snap("<b>odd</b>")] if instance == "alice" else []


def test_the_backups_listing_wears_the_same_look_and_escapes_what_it_lists() -> None:
    app = create_backups_app(Listed(), {"alice.localhost": "alice", "bob.localhost": "bob"}.get,  # type: ignore[arg-type]
                             logout_token=lambda _session: "tok", operator=OPERATOR)
    client = TestClient(app, base_url="https://alice.localhost")
    r = client.get("/backups/", headers={"X-Fleet-User": "1"})
    assert r.status_code == 200 and r.headers["content-security-policy"] == PAGE_CSP
    assert "<style>" in r.text and "<h1>Backups</h1>" in r.text and "nightly-1" in r.text
    assert "&lt;b&gt;odd&lt;/b&gt;" in r.text and "<b>odd" not in r.text
    assert "name=token value='tok'" in r.text and "mailto:ada@example.org" in r.text
    empty = TestClient(app, base_url="https://bob.localhost").get("/backups/", headers={"X-Fleet-User": "1"})
    assert "No backups yet." in empty.text and "<table" not in empty.text


def test_a_sign_in_message_wears_the_same_look() -> None:
    r = auth_page(403, "Not yours", "This game's backups belong to <someone>.", "Signed in as 42.",
                  logout_token="tok", operator=OPERATOR)
    assert r.status_code == 403 and r.headers["content-security-policy"] == PAGE_CSP
    assert "<h1>Not yours</h1>" in r.body.decode() and "&lt;someone&gt;" in r.body.decode()
    assert r.headers["referrer-policy"] == "same-origin" and "Ada&#x27;s" in r.body.decode()


def test_tenants_showing_the_same_page_share_one_route() -> None:
    sites = [TenantSite(f"t{i}", (f"t{i}.localhost",), None, "stopped") for i in range(200)]
    sites.append(TenantSite("x", ("x.localhost",), None, "stopped", suspended=True))
    config = json.dumps(build_caddy_config(SETTINGS, sites))
    # stopped, suspended, the tenant hosts' 404, the fleet host's 404, the edge's error pages (the fleet
    # host's and the tenant hosts')
    assert config.count("prefers-color-scheme") == 6
    assert foundry_route(json.loads(config), "t7.localhost") == foundry_route(json.loads(config), "t150.localhost")
    assert "not available" in foundry_route(json.loads(config), "x.localhost")["body"]


def test_no_operator_text_reaches_caddy_as_a_placeholder() -> None:
    settings = EdgeSettings(http_port=8080, https_port=8443, tls="internal", fleet_host="fleet.localhost",
                            web_dial="127.0.0.1:8099", admin_listen="unix//run/admin.sock",
                            operator=Operator("{file./etc/shadow}", "https://example.org/{env.HOME}"))
    sites = [TenantSite("a", ("a.localhost",), None, "stopped", suspended=True)]
    config = json.dumps(build_caddy_config(settings, sites))
    assert "{file./etc/shadow}" not in config and "{env.HOME}" not in config
    assert "&#123;file./etc/shadow&#125;" in config
