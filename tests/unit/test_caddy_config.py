"""The Caddy config as data: what each tenant host gets, and what nobody gets."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from foundry_fleet.edge.caddy_config import IDENTITY_HEADERS, EdgeSettings, TenantSite, build_caddy_config
from tests.support.caddy_routes import route_for

SETTINGS = EdgeSettings(http_port=8080, https_port=8443, tls="internal", fleet_host="fleet.localhost",
                        web_dial="127.0.0.1:8099", admin_listen="unix//run/admin.sock")


def is_not_found(handle: list[dict]) -> bool:
    """The fleet's own 404 page, as the edge serves it."""
    (page,) = handle
    return (page["handler"], page["status_code"]) == ("static_response", 404) and "Nothing here" in page["body"]


def test_a_running_tenant_is_proxied_with_websockets_kept_across_reloads() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost", "games.example.org"), "127.0.0.1:30001", "running")])
    assert route_for(config, "games.example.org", "/")["handle"] == [
        {"handler": "static_response", "status_code": 302, "headers": {"Location": ["/-/"]}}]
    body, proxy = route_for(config, "games.example.org", "/-/socket.io/")["handle"]
    assert body == {"handler": "request_body", "max_size": 300_000_000}
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:30001"}]
    assert proxy["stream_close_delay"] == 8 * 3600 * 10**9
    policy = config["apps"]["tls"]["automation"]["policies"][0]
    assert policy["subjects"] == ["alice.localhost", "fleet.localhost", "games.example.org"]
    assert policy["issuers"] == [{"module": "internal"}]
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    redirect = config["apps"]["http"]["servers"]["redirect"]
    assert redirect["listen"] == [":8080"]
    assert redirect["routes"][0]["handle"][0]["headers"]["Location"] == ["https://{http.request.host}:8443{http.request.uri}"]


def test_a_stopped_tenant_gets_a_page_not_a_proxy() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("bob", ("bob.localhost",), "127.0.0.1:30002", "failed")])
    (page,) = route_for(config, "bob.localhost", "/-/game")["handle"]
    assert page["status_code"] == 503 and page["headers"]["Retry-After"] == ["300"]
    assert "could not start; your host has been told" in page["body"] and "30002" not in json.dumps(config)


def test_a_running_tenant_is_dialed_where_its_runtime_said() -> None:
    """The edge dials the address the runtime gave (a container's or another node's), not a local port."""
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost",), "10.88.0.7:30000", "running")])
    _body, proxy = route_for(config, "alice.localhost", "/-/game")["handle"]
    assert proxy["upstreams"] == [{"dial": "10.88.0.7:30000"}]


def test_a_running_tenant_without_an_address_gets_a_page() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("carol", ("carol.localhost",), None, "running")])
    (page,) = route_for(config, "carol.localhost", "/-/game")["handle"]
    assert page["status_code"] == 503 and "This table is not open yet" in page["body"]


def test_backups_strip_identity_then_ask_the_auth_service() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost",), "127.0.0.1:30001", "running")])
    strip, auth, rest = route_for(config, "alice.localhost", "/backups/2026/x.tar.zst")["handle"]
    assert strip == {"handler": "headers", "request": {"delete": list(IDENTITY_HEADERS)}}
    assert auth["rewrite"] == {"method": "GET", "uri": "/auth/backups"}
    # The auth service tells tenants apart by the host the request came for.
    assert auth["headers"]["request"]["set"]["X-Forwarded-Host"] == ["{http.request.host}"]
    assert auth["upstreams"] == [{"dial": "127.0.0.1:8099"}]
    assert rest == {"handler": "static_response", "status_code": 404}


def test_sign_in_on_tenant_hosts_reaches_the_web_app_with_the_real_host() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost", "games.example.org"), "127.0.0.1:30001", "running")])
    for host in ("alice.localhost", "games.example.org"):
        for path in ("/auth/ticket", "/auth/logout"):
            strip, proxy = route_for(config, host, path)["handle"]
            assert strip == {"handler": "headers", "request": {"delete": list(IDENTITY_HEADERS)}}
            assert proxy["upstreams"] == [{"dial": "127.0.0.1:8099"}]
            # Set, never passed on: a client's own X-Forwarded-Host cannot pick the host a ticket is checked against.
            assert proxy["headers"]["request"]["set"]["X-Forwarded-Host"] == ["{http.request.host}"]
        # The rest of the web app is not a tenant's to call: the forward_auth check, the fleet's own pages.
        for path in ("/auth/backups", "/auth/login", "/auth/callback", "/auth/other", "/health", "/metrics"):
            assert is_not_found(route_for(config, host, path)["handle"])


def test_the_fleet_host_never_serves_the_control_api_and_unknown_hosts_are_cut_off() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost",), "127.0.0.1:30001", "running")])
    routes = config["apps"]["http"]["servers"]["edge"]["routes"]
    fleet = route_for(config, "fleet.localhost", "/v1/status")
    web, rest = fleet["handle"][0]["routes"]
    fleet_paths = web["match"][0]["path"]
    assert not any(p.startswith("/v1") or "openapi" in p for p in fleet_paths)
    # Discord sign-in starts and comes back here; the forward_auth check and tickets are not published here.
    assert {"/auth/login", "/auth/callback"} <= set(fleet_paths)
    assert "/metrics" in fleet_paths  # scrapers from elsewhere, with the metrics token
    assert not {"/auth/*", "/auth/backups", "/auth/ticket"} & set(fleet_paths)
    encode, proxy = web["handle"]
    # Pages compressed; event streams not (an encoder could hold back what must reach the browser now).
    assert encode["handler"] == "encode" and "text/event-stream" not in str(encode["match"])
    assert proxy["headers"]["request"]["set"]["X-Forwarded-Host"] == ["{http.request.host}"]
    assert is_not_found(rest["handle"])
    assert is_not_found(route_for(config, "alice.localhost", "/v1/status")["handle"])
    assert route_for(config, "mallory.localhost", "/") == routes[-1]
    assert routes[-1] == {"handle": [{"handler": "static_response", "abort": True}]}
    assert config["admin"] == {"listen": "unix//run/admin.sock"}


def test_tls_modes() -> None:
    from dataclasses import replace

    acme = build_caddy_config(replace(SETTINGS, tls="acme", acme_email="gm@example.org", acme_staging=True,
                                      fleet_host="fleet.example.org"), [])
    issuer = acme["apps"]["tls"]["automation"]["policies"][0]["issuers"][0]
    assert issuer["module"] == "acme" and issuer["email"] == "gm@example.org" and "staging" in issuer["ca"]
    od = build_caddy_config(replace(SETTINGS, tls="on-demand", tls_secret_file="/f/state/tls-permission.key"), [])
    automation = od["apps"]["tls"]["automation"]
    assert automation["policies"][0]["on_demand"] is True
    # Caddy reads the secret part of the path from the 0600 file each time it asks: no config holds it.
    assert automation["on_demand"]["permission"] == {
        "module": "http", "endpoint": "http://127.0.0.1:8099/tls/permission/{file./f/state/tls-permission.key}"}
    # And the fleet host does not publish it (nor the backups check, nor the wake handler's entry).
    published = route_for(od, "fleet.localhost", "/tls/permission/x")["handle"][0]["routes"][0]["match"][0]["path"]
    assert {"/health", "/auth/login", "/auth/callback", "/", "/instances/*", "/admin/*", "/login", "/metrics"} <= set(published)
    for hidden in ("/tls/permission/x", "/auth/backups", "/wake/visit", "/auth/ticket", "/backups/"):
        assert not any(hidden == p or (p.endswith("/*") and hidden.startswith(p[:-1])) for p in published), hidden


def test_names_only_a_local_ca_can_certify_get_their_certificates_from_it_in_every_mode() -> None:
    """As Caddy's automatic HTTPS did (the config turns it off): `*.localhost` never goes to an ACME CA."""
    from dataclasses import replace

    sites = [TenantSite("alice", ("alice.localhost", "games.example.org"), "127.0.0.1:30001", "running")]
    acme = build_caddy_config(replace(SETTINGS, tls="acme"), sites)["apps"]["tls"]
    issuer = {"module": "acme", "challenges": {"http": {"alternate_port": 8080}, "tls-alpn": {"alternate_port": 8443}}}
    assert acme["automation"]["policies"] == [
        {"subjects": ["games.example.org"], "issuers": [issuer]},
        {"subjects": ["alice.localhost", "fleet.localhost"], "issuers": [{"module": "internal"}]}]
    assert acme["certificates"] == {"automate": ["alice.localhost", "fleet.localhost", "games.example.org"]}
    od = build_caddy_config(replace(SETTINGS, tls="on-demand"), sites)["apps"]["tls"]
    assert od["automation"]["policies"] == [
        {"subjects": ["alice.localhost", "fleet.localhost"], "issuers": [{"module": "internal"}], "on_demand": True},
        {"issuers": [issuer], "on_demand": True}]
    assert "certificates" not in od  # nothing managed at a load: each host when first asked for
    server = build_caddy_config(SETTINGS, sites)["apps"]["http"]["servers"]["edge"]
    assert server["automatic_https"] == {"disable": True} and server["tls_connection_policies"] == [{}]


def test_the_http_redirect_names_the_fleets_own_hosts_by_one_wildcard_and_the_others_each() -> None:
    """`<label>.<domain>` as one `*.<domain>` (a name of a host matcher costs Caddy every load), extra hosts
    and deeper names by name; without a domain, every host by name."""
    from dataclasses import replace

    sites = [TenantSite(f"t{i}", (f"t{i}.localhost",), f"127.0.0.1:{30000 + i}", "running") for i in range(300)]
    sites.append(TenantSite("alice", ("alice.localhost", "games.example.org", "a.b.localhost"), "127.0.0.1:1", "running"))
    redirect = build_caddy_config(replace(SETTINGS, domain="localhost"), sites)["apps"]["http"]["servers"]["redirect"]
    assert redirect["routes"][0]["match"] == [{"host": ["*.localhost", "a.b.localhost", "games.example.org"]}]
    assert redirect["routes"][1] == {"handle": [{"handler": "static_response", "status_code": 404}]}
    every = build_caddy_config(SETTINGS, sites)["apps"]["http"]["servers"]["redirect"]["routes"][0]["match"][0]["host"]
    assert len(every) == 300 + 4 and "fleet.localhost" in every


names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True), unique=True, max_size=8)


@given(names, st.randoms())
def test_same_state_same_config_whatever_the_order(tenant_names: list[str], rnd) -> None:
    sites = [TenantSite(n, (f"{n}.localhost",), f"127.0.0.1:{30000 + i}", "running") for i, n in enumerate(tenant_names)]
    shuffled = list(sites)
    rnd.shuffle(shuffled)
    a = json.dumps(build_caddy_config(SETTINGS, sites), sort_keys=True)
    b = json.dumps(build_caddy_config(SETTINGS, shuffled), sort_keys=True)
    assert a == b
    for n in tenant_names:
        assert f'"{n}.localhost"' in a


# --- the wake handler: instances that are to run and do not serve ----------------------------------


def fleet_host_handler(config: dict, path: str) -> list:
    """What the fleet host's subroute does with `path` (its first route whose paths match)."""
    for route in route_for(config, "fleet.localhost", path)["handle"][0]["routes"]:
        paths = route.get("match", [{}])[0].get("path")
        if paths is None or any(p == path or (p.endswith("/*") and path.startswith(p[:-1])) for p in paths):
            return route["handle"]
    raise AssertionError(f"no fleet host route for {path}")


def test_a_sleeping_tenant_goes_to_the_wake_handler_told_the_host_and_the_path_asked_for() -> None:
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost", "games.example.org"), None,
                                                      "sleeping", wakes=True)])
    for host in ("alice.localhost", "games.example.org"):
        (subroute,) = route_for(config, host, "/-/game")["handle"]
        assert route_for(config, host, "/-") == route_for(config, host, "/-/game")
        assert subroute["handler"] == "subroute"
        upgrade, visit = subroute["routes"]
        # A websocket (any Upgrade) cannot wait for a page: told to come back, never proxied anywhere.
        assert upgrade == {
            "match": [{"header": {"Upgrade": ["*"]}}],
            "handle": [{"handler": "static_response", "status_code": 503,
                        "headers": {"Retry-After": ["10"], "Cache-Control": ["no-store"]}}],
            "terminal": True,
        }
        # Anything else: to the fleet's web app, as a GET of /wake/visit, with a small body limit.
        assert "match" not in visit
        body, proxy = visit["handle"]
        assert body == {"handler": "request_body", "max_size": 64 * 1024}
        assert proxy["handler"] == "reverse_proxy"
        assert proxy["upstreams"] == [{"dial": "127.0.0.1:8099"}]
        assert proxy["rewrite"] == {"method": "GET", "uri": "/wake/visit"}
        # Both set by Caddy from the request itself (never passed on from the client).
        assert proxy["headers"]["request"]["set"] == {
            "X-Forwarded-Host": ["{http.request.host}"], "X-Forwarded-Uri": ["{http.request.uri}"]}


def test_the_wake_route_never_dials_the_instance_whatever_address_is_left() -> None:
    """On its way up or down an instance may still have an address recorded: the wake handler's route
    goes to the fleet's web app alone (only a running instance with an address is proxied to)."""
    for state in ("starting", "stopping", "stopped", "failed", "sleeping"):
        config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost",), "10.88.0.7:30123", state,
                                                          wakes=True)])
        (subroute,) = route_for(config, "alice.localhost", "/-/")["handle"]
        dials = [u["dial"] for r in subroute["routes"] for h in r["handle"] for u in h.get("upstreams", [])]
        assert dials == ["127.0.0.1:8099"], state
        assert "30123" not in json.dumps(config), state
    # Running with an address: Foundry itself, not the handler, even if it was one a moment ago.
    config = build_caddy_config(SETTINGS, [TenantSite("alice", ("alice.localhost",), "10.88.0.7:30123", "running",
                                                      wakes=True)])
    _body, proxy = route_for(config, "alice.localhost", "/-/")["handle"]
    assert proxy["upstreams"] == [{"dial": "10.88.0.7:30123"}]


def test_a_tenant_that_does_not_wake_keeps_the_static_page() -> None:
    """Stopped or suspended (goes_to_wake_handler said no): the edge's own page, the web app never asked."""
    config = build_caddy_config(SETTINGS, [TenantSite("bob", ("bob.localhost",), None, "stopped", wakes=False),
                                           TenantSite("carol", ("carol.localhost",), None, "sleeping", wakes=True)])
    (page,) = route_for(config, "bob.localhost", "/-/game")["handle"]
    assert page["handler"] == "static_response" and page["status_code"] == 503
    assert page["headers"]["Retry-After"] == ["300"] and "This table is closed right now" in page["body"]
    bob = json.dumps(route_for(config, "bob.localhost", "/-/game"))
    assert "/wake/visit" not in bob and "8099" not in bob
    # Each tenant's route is its own: carol's handler does not spill over to bob.
    assert route_for(config, "carol.localhost", "/-/")["handle"][0]["handler"] == "subroute"


def test_the_wait_is_published_on_every_tenant_host_and_the_visit_on_none() -> None:
    config = build_caddy_config(SETTINGS, [
        TenantSite("alice", ("alice.localhost", "games.example.org"), None, "sleeping", wakes=True),
        TenantSite("bob", ("bob.localhost",), "127.0.0.1:30002", "running"),  # awake hosts have it too
    ])
    for host in ("alice.localhost", "games.example.org", "bob.localhost"):
        strip, proxy = route_for(config, host, "/wake/wait")["handle"]
        assert strip == {"handler": "headers", "request": {"delete": list(IDENTITY_HEADERS)}}
        assert proxy["upstreams"] == [{"dial": "127.0.0.1:8099"}]
        assert proxy["headers"]["request"]["set"]["X-Forwarded-Host"] == ["{http.request.host}"]
        assert "rewrite" not in proxy  # the page's own path and query (?to=) pass as they are
        # /wake/visit only through the rewrite of a sleeping tenant's route, never asked for directly.
        assert is_not_found(route_for(config, host, "/wake/visit")["handle"])
    # The fleet host has no tenant to wait for: neither is published there.
    for path in ("/wake/wait", "/wake/visit"):
        assert is_not_found(fleet_host_handler(config, path))
    assert fleet_host_handler(config, "/health")[-1]["upstreams"] == [{"dial": "127.0.0.1:8099"}]
