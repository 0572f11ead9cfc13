"""Caddy's JSON configuration, built as data from the fleet's desired state (pure: no I/O).

Per tenant host (`<name>.<domain>` and any extra hosts; a host the tenant map holds):
  /          -> 302 to /-/
  /-/*       -> the instance (websockets pass; `stream_close_delay` keeps open sockets across
                config reloads, so changing one tenant never disconnects another's players), with
                the fleet's own cookies taken out of what it is sent and of what it may set;
                a page saying why (domain/tenant_pages.py: stopped, suspended, failed, being restored),
                with 503 and Retry-After, while the instance is not running; while it is to run and does
                not (asleep, on its way up, failed), the fleet's wake handler instead
  /backups/* -> forward_auth to the fleet's auth endpoint; client-sent identity headers are
                stripped first, so only the auth service's answer can set them
  /auth/ticket, /auth/logout, /wake/wait
             -> the fleet's web endpoints, told the tenant host (X-Forwarded-Host): where a
                signed-in browser gets, and gives up, that host's own session cookie, and where the
                wake handler's page waits for the instance to serve
What differs between tenants is data, not routes: one `map` handler turns the request's host into what
its `/-/` does (its instance's address to proxy to, wake, or which page), and each of those is written
once. Caddy provisions every handler again on each load, so a route of its own per tenant made each push
cost about 0.12 ms per tenant (bench/edge_push.py); a mapping costs a small fraction of that.
The fleet host serves the fleet's web endpoints (health, Discord sign-in, the panel; never the control API, the
forward_auth check, nor the TLS permission check, which Caddy asks directly with a secret path).
Plain HTTP to a host of the fleet's (its own `<label>.<domain>` and the extra hosts it serves) redirects
to HTTPS on the configured port; any other host gets a 404, never a redirect to where its Host header points. A host the fleet does not serve gets no
certificate and no route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundry_fleet.domain.hosts import is_internal_name
from foundry_fleet.domain.tenant_pages import (
    PAGE_CSP,
    Link,
    Operator,
    not_found_html,
    panel_unreachable_html,
    state_html,
    state_page,
)
from foundry_fleet.domain.web_paths import METRICS_PATH, PANEL_PATHS, WAKE_VISIT_PATH, WAKE_WAIT_PATH

# Headers only the fleet's auth service may set on a request that reaches a tenant's backups.
IDENTITY_HEADERS = ("X-Fleet-User", "X-Fleet-Instance", "X-Fleet-Role")
# The web endpoints each kind of host publishes (the rest of the web app is for Caddy alone).
TENANT_WEB_PATHS = ("/auth/ticket", "/auth/logout", WAKE_WAIT_PATH)
WAKE_MAX_BODY = 64 * 1024  # a visit to a sleeping instance carries no upload worth taking
# Never the TLS permission check: Caddy asks it directly, and nobody else may learn the tenant hosts.
FLEET_WEB_PATHS = ("/health", "/auth/login", "/auth/callback", *PANEL_PATHS, METRICS_PATH)
# /metrics asks for its own token: the fleet's address is what scrapers outside the host know.
# The panel's pages, styles and scripts go compressed (the overview of hundreds of instances is mostly
# repeated markup); its event streams and everything else as they are.
COMPRESSED_TYPES = ["text/html*", "text/css*", "text/javascript*", "application/javascript*"]
NS = 1_000_000_000  # Caddy durations are integer nanoseconds
# What the tenant map sets for a request's host: its instance's address ("host:port") when it is proxied
# to, else "wake" or the label of the page it shows; "" for a host that is no tenant's.
TENANT = "{fleet.tenant}"
_WAKE = "wake"
# Every cookie the fleet sets on a tenant host starts with this (the backups session, sign-in state):
# the tenant's server never sees them, and a Set-Cookie of its for them is emptied (its scripts share
# the host's origin, so a browser would still let them overwrite one: the session is HttpOnly).
FLEET_COOKIE_PREFIX = "__Host-fleet_"
# One pass removes each of the fleet's pairs from a Cookie header, wherever it sits (RE2 syntax); a
# second tidies the separator left at the front when the first pair was one of them.
_FLEET_COOKIE_PAIR = rf"(?i)(?:^|;)\s*{FLEET_COOKIE_PREFIX}[^;]*"
_LEADING_SEPARATOR = r"^[;\s]+"


@dataclass(frozen=True)
class TenantSite:
    name: str
    hosts: tuple[str, ...]
    address: str | None  # "host:port" where the instance is reached, as its runtime said; None: nowhere
    state: str  # the instance's state: only "running" (with an address) is proxied
    # Not proxied, it goes to the fleet's wake handler rather than the static page (see
    # domain/instance.goes_to_wake_handler).
    wakes: bool = False
    # Only whether, never why: the reason is the admin's and the tenant's, and this config is served to anyone.
    suspended: bool = False
    restoring: bool = False  # a restore holds it (it is stopped meanwhile, and starts again after)


@dataclass(frozen=True)
class EdgeSettings:
    http_port: int
    https_port: int
    tls: str  # internal | acme | on-demand
    fleet_host: str
    web_dial: str  # host:port of the fleet's own web endpoints
    admin_listen: str  # e.g. unix//path/to/admin.sock
    acme_email: str = ""
    acme_staging: bool = False
    stream_close_delay_s: float = 8 * 3600
    max_body_bytes: int = 300 * 1000 * 1000
    retry_after_s: int = 10
    # Where an allowed /backups/ request goes (host:port); None until the fleet serves backups.
    backups_dial: str | None = None
    # The 0600 file holding the secret path of the TLS permission check (read by Caddy when it asks).
    tls_secret_file: str = ""
    operator: Operator = Operator()  # who hosts the fleet, on the pages the edge serves itself
    # The fleet's domain: its own hosts are `<label>.<domain>`, which the HTTP redirect matches as one
    # wildcard rather than a list of every host. "" lists every host.
    domain: str = ""


LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def page_kind(site: TenantSite) -> str:
    """Which page a site that is not proxied gets (domain/tenant_pages.state_page)."""
    if site.restoring:
        return "restoring"
    if site.suspended:
        return "suspended"
    return {"starting": "starting", "stopped": "stopped", "failed": "failed"}.get(site.state, site.state)


def _page_response(status: int, body: str, retry_after: int | None = None) -> dict[str, Any]:
    headers = {"Content-Type": ["text/html; charset=utf-8"], "Cache-Control": ["no-store"],
               "Content-Security-Policy": [PAGE_CSP], "X-Content-Type-Options": ["nosniff"]}
    if retry_after is not None:
        headers["Retry-After"] = [str(retry_after)]
    return {"handler": "static_response", "status_code": status, "headers": headers, "body": body}


def _state_page(kind: str, settings: EdgeSettings) -> dict[str, Any]:
    shown = state_page(kind, settings.operator)
    return _page_response(shown.status, state_html(kind, settings.operator), shown.retry_after)


def _not_found(settings: EdgeSettings, home: Link | None = None) -> dict[str, Any]:
    return _page_response(404, not_found_html(settings.operator, home))


def _proxy(dial: str, settings: EdgeSettings) -> list[dict[str, Any]]:
    return [
        {"handler": "request_body", "max_size": settings.max_body_bytes},
        {
            "handler": "reverse_proxy",
            "upstreams": [{"dial": dial}],
            "stream_close_delay": int(settings.stream_close_delay_s * NS),
            "headers": _without_fleet_cookies(),
        },
    ]


def _without_fleet_cookies() -> dict[str, Any]:
    """A tenant's server is hostile: it never gets a signed-in admin's session for its host, nor sets one.

    An emptied Set-Cookie header is ignored by browsers; an emptied Cookie header carries nothing."""
    return {
        "request": {"replace": {"Cookie": [
            {"search_regexp": _FLEET_COOKIE_PAIR, "replace": ""},
            {"search_regexp": _LEADING_SEPARATOR, "replace": ""},
        ]}},
        "response": {"replace": {"Set-Cookie": [
            {"search_regexp": rf"(?i)^\s*{FLEET_COOKIE_PREFIX}.*$", "replace": ""},
        ]}},
    }


def _forward_auth(settings: EdgeSettings, uri: str) -> dict[str, Any]:
    """Ask the auth service; a 2xx answer lets the request on, with the identity it returned."""
    copy_identity: list[dict[str, Any]] = []
    for header in IDENTITY_HEADERS:
        value = f"{{http.reverse_proxy.header.{header}}}"
        copy_identity.append({
            "handle": [{"handler": "headers", "request": {"set": {header: [value]}}}],
            "match": [{"not": [{"vars": {value: [""]}}]}],
        })
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": settings.web_dial}],
        "rewrite": {"method": "GET", "uri": uri},
        "headers": {"request": {"set": {
            "X-Forwarded-Method": ["{http.request.method}"],
            "X-Forwarded-Uri": ["{http.request.uri}"],
            "X-Forwarded-Host": ["{http.request.host}"],
        }}},
        "handle_response": [{"match": {"status_code": [2]}, "routes": copy_identity}],
    }


def _to_web(settings: EdgeSettings) -> dict[str, Any]:
    """The fleet's web endpoints, told which host the browser asked for (never what the client says)."""
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": settings.web_dial}],
        "headers": {"request": {"set": {"X-Forwarded-Host": ["{http.request.host}"]}}},
    }


def _wake(settings: EdgeSettings) -> list[dict[str, Any]]:
    """The wake handler, told the host and the path asked for. A websocket cannot wait for a page: 503
    until the instance is up (its page, loaded first, is what wakes it)."""
    to_web = _to_web(settings)
    to_web["rewrite"] = {"method": "GET", "uri": WAKE_VISIT_PATH}
    to_web["headers"]["request"]["set"]["X-Forwarded-Uri"] = ["{http.request.uri}"]
    return [{"handler": "subroute", "routes": [
        {"match": [{"header": {"Upgrade": ["*"]}}],
         "handle": [{"handler": "static_response", "status_code": 503,
                     "headers": {"Retry-After": [str(settings.retry_after_s)], "Cache-Control": ["no-store"]}}],
         "terminal": True},
        {"handle": [{"handler": "request_body", "max_size": WAKE_MAX_BODY}, to_web]},
    ]}]


def _proxied(site: TenantSite) -> bool:
    # A restore begins while the instance still runs, and stops it next: its visitors get the restore's
    # page from the start, not the edge's "cannot be reached" while it stops and starts again.
    return site.state == "running" and bool(site.address) and not site.restoring


def _wakes(site: TenantSite) -> bool:
    """A restore stops the instance for a while: its visitors are told so rather than woken."""
    return site.wakes and not site.restoring and not _proxied(site)


def _page_labels(sites: list[TenantSite]) -> dict[str, str]:
    """The pages shown now, each under a label of no meaning ("page-0"...): the config says which page a
    host gets, never why (a suspension is the admin's and the tenant's business)."""
    kinds = sorted({page_kind(s) for s in sites if not _proxied(s) and not _wakes(s)})
    return {kind: f"page-{n}" for n, kind in enumerate(kinds)}


def _tenant_map(sites: list[TenantSite], labels: dict[str, str]) -> dict[str, Any]:
    """Each tenant host to what its `/-/` does: the address of its instance when it is proxied to, else
    "wake" or the label of its page. This is the only part of the config that grows with the fleet, so
    it is as small as it can be: one output a host (Caddy decodes each mapping on every load)."""
    def what(site: TenantSite) -> str:
        if _proxied(site):
            assert site.address is not None
            return site.address
        return _WAKE if _wakes(site) else labels[page_kind(site)]

    mappings = [{"input": host, "outputs": [what(site)]} for site in sites for host in site.hosts]
    mappings.sort(key=lambda m: m["input"])
    return {"handler": "map", "source": "{http.request.host}", "destinations": [TENANT],
            "mappings": mappings, "defaults": [""]}


def _game_routes(settings: EdgeSettings, labels: dict[str, str]) -> list[dict[str, Any]]:
    """`/-/` of every tenant host, as the map says; each way is written once. A page's route is there
    only while some tenant shows it (a page names no host, and its style is its bulk). What is neither
    "wake" nor a page's label is an address (they all have a port), proxied to."""
    def when(value: str) -> list[dict[str, Any]]:
        return [{"vars": {TENANT: [value]}}]

    return [
        {"match": when(_WAKE), "handle": _wake(settings), "terminal": True},
        *({"match": when(label), "handle": [_state_page(kind, settings)], "terminal": True}
          for kind, label in labels.items()),
        {"handle": _proxy(TENANT, settings)},
    ]


def _tenant_hosts_route(settings: EdgeSettings, labels: dict[str, str]) -> dict[str, Any]:
    """Everything a tenant host serves: `/` redirects, `/backups/` behind the auth service, the sign-in and
    wake paths, `/-/` as the map says, and a 404 for the rest.

    A tenant host is one the map holds: no list of the hosts besides it (Caddy checks each name of a host
    matcher again on every load). The map compares the host as sent, where a host matcher ignores letter
    case: a tenant host in capitals (which no browser sends) is hung up on, as a host the fleet does not
    serve. The routes are written once for all tenant hosts; the auth service and the wake handler tell
    tenants apart by the X-Forwarded-Host they are sent.
    """
    strip_identity = {"handler": "headers", "request": {"delete": list(IDENTITY_HEADERS)}}
    if settings.backups_dial:
        backups: dict[str, Any] = {"handler": "reverse_proxy", "upstreams": [{"dial": settings.backups_dial}]}
    else:
        backups = {"handler": "static_response", "status_code": 404}  # nothing served behind the check yet
    routes = [
        {"match": [{"path": ["/"]}],
         "handle": [{"handler": "static_response", "status_code": 302, "headers": {"Location": ["/-/"]}}],
         "terminal": True},
        {"match": [{"path": ["/backups", "/backups/*"]}],
         "handle": [strip_identity, _forward_auth(settings, "/auth/backups"), backups],
         "terminal": True},
        {"match": [{"path": list(TENANT_WEB_PATHS)}],
         "handle": [strip_identity, _to_web(settings)],
         "terminal": True},
        {"match": [{"path": ["/-", "/-/*"]}],
         "handle": [{"handler": "subroute", "routes": _game_routes(settings, labels)}],
         "terminal": True},
        {"handle": [_not_found(settings, Link("/-/", "Go to the game"))]},
    ]
    return {"match": [{"not": [{"vars": {TENANT: [""]}}]}], "handle": [{"handler": "subroute", "routes": routes}],
            "terminal": True}


def tls_permission_endpoint(settings: EdgeSettings) -> str:
    """Caddy reads the secret from its file each time it asks (`{file.PATH}`), so no config holds it."""
    return f"http://{settings.web_dial}/tls/permission/{{file.{settings.tls_secret_file}}}"


def _tls(settings: EdgeSettings, hosts: list[str]) -> dict[str, Any]:
    """Which names get certificates, from whom, and when.

    Names only a local CA can certify (`*.localhost` and the like) get theirs from Caddy's local CA in
    every mode, as Caddy's automatic HTTPS did. Internal and acme name every host, managed at each load;
    on-demand names none (the permission endpoint vouches for a host at its first handshake), so a load
    costs nothing per tenant: the mode for a large fleet (bench/edge_push.py).
    """
    internal: list[dict[str, Any]] = [{"module": "internal"}]
    if settings.tls == "internal":
        public_issuers = internal
    else:
        # The challenges come in on the fleet's own ports (forwarded from 80 and 443 when they are others),
        # as Caddy's automatic HTTPS told the issuer when it was on.
        acme: dict[str, Any] = {"module": "acme", "challenges": {
            "http": {"alternate_port": settings.http_port}, "tls-alpn": {"alternate_port": settings.https_port}}}
        if settings.acme_email:
            acme["email"] = settings.acme_email
        if settings.acme_staging:
            acme["ca"] = LETS_ENCRYPT_STAGING
        public_issuers = [acme]
    local = [h for h in hosts if is_internal_name(h)]
    public = [h for h in hosts if not is_internal_name(h)]
    if settings.tls == "on-demand":
        # Certificates only for hosts the fleet's permission endpoint vouches for, when first asked.
        policies = [{"subjects": local, "issuers": internal, "on_demand": True}] if local else []
        policies.append({"issuers": public_issuers, "on_demand": True})
        return {
            "automation": {
                "policies": policies,
                "on_demand": {"permission": {"module": "http", "endpoint": tls_permission_endpoint(settings)}},
            }
        }
    if settings.tls == "internal":
        policies = [{"subjects": hosts, "issuers": internal}]
    else:
        policies = [{"subjects": public, "issuers": public_issuers}] if public else []
        if local:
            policies.append({"subjects": local, "issuers": internal})
    # Named here, not found by Caddy's automatic HTTPS in the routes' host matchers (it is off, see
    # build_caddy_config): the same names, without a pass over every route at each load.
    return {"automation": {"policies": policies}, "certificates": {"automate": hosts}}


def _redirected_hosts(settings: EdgeSettings, hosts: list[str]) -> list[str]:
    """The hosts the plain-HTTP server sends on to HTTPS: `*.<domain>` for the fleet's own
    (`<label>.<domain>`), and every other host by name. A host matcher's names are each checked again at
    every load (about 2 µs a name), and a wildcard is one name however many tenants there are; an unknown
    `<label>.<domain>` sent on finds no certificate and no route there."""
    if not settings.domain:
        return hosts
    suffix = "." + settings.domain
    own = {h for h in hosts if h.endswith(suffix) and "." not in h[: -len(suffix)]}
    return sorted({*(h for h in hosts if h not in own), *(["*" + suffix] if own else [])})


def build_caddy_config(settings: EdgeSettings, sites: list[TenantSite]) -> dict[str, Any]:
    """The whole configuration; the same input always gives the same output (so reloads can be skipped)."""
    # A site without hosts has nothing to route (and no host of it may reach a matcher or the map).
    sites = sorted((s for s in sites if s.hosts), key=lambda s: s.name)
    tenant_hosts = sorted(h for s in sites for h in s.hosts)
    routes = []
    if tenant_hosts:
        # The map first, for every request (it only sets placeholders, read where a route asks), and at the
        # top of the config: Caddy decodes a handler's JSON once more at each level it is nested in, and
        # the map is most of the config's bytes.
        labels = _page_labels(sites)
        routes += [{"handle": [_tenant_map(sites, labels)]}, _tenant_hosts_route(settings, labels)]
    routes.append({
        "match": [{"host": [settings.fleet_host]}],
        "handle": [{"handler": "subroute", "routes": [
            {"match": [{"path": list(FLEET_WEB_PATHS)}], "handle": [
                {"handler": "encode", "encodings": {"zstd": {}, "gzip": {}}, "prefer": ["zstd", "gzip"],
                 "match": {"headers": {"Content-Type": COMPRESSED_TYPES}}},
                _to_web(settings)]},
            {"handle": [_not_found(settings, Link("/", "Go to the start page"))]},
        ]}],
        "terminal": True,
    })
    # A name we do not serve (reachable only over a connection made for another name): hang up.
    routes.append({"handle": [{"handler": "static_response", "abort": True}]})
    https_port = settings.https_port
    port_suffix = "" if https_port == 443 else f":{https_port}"
    all_hosts = sorted({*tenant_hosts, settings.fleet_host})
    servers = {
        "edge": {
            "listen": [f":{https_port}"],
            "routes": routes,
            # Caddy's automatic HTTPS is off: at each load it went over every host of every matcher to
            # decide which names to manage and how, about 0.13 ms a tenant (bench/edge_push.py), where the
            # fleet knows the names (the TLS app's `automate`, or none with on-demand). What it did besides
            # is here: TLS on this listener for every name, and the redirect server below (which keeps a
            # non-standard port, where Caddy's dropped it). ACME's HTTP challenge is answered by every
            # server before its routes, and the TLS-ALPN one by the connection policy, with or without it.
            "automatic_https": {"disable": True},
            "tls_connection_policies": [{}],
            # What did not answer: on the fleet host the panel, on any other host an instance.
            "errors": {"routes": [
                {"match": [{"host": [settings.fleet_host]}],
                 "handle": [_page_response(503, panel_unreachable_html(settings.operator), settings.retry_after_s)],
                 "terminal": True},
                {"handle": [
                    _page_response(503, state_html("unreachable", settings.operator), settings.retry_after_s)]}]},
        },
        "redirect": {
            "listen": [f":{settings.http_port}"],
            "routes": [
                # The Host header is the client's to choose: only hosts of the fleet's are sent on.
                {"match": [{"host": _redirected_hosts(settings, all_hosts)}],
                 "handle": [{
                     "handler": "static_response",
                     "status_code": 308,
                     "headers": {"Location": [f"https://{{http.request.host}}{port_suffix}{{http.request.uri}}"]},
                 }],
                 "terminal": True},
                {"handle": [{"handler": "static_response", "status_code": 404}]},
            ],
            "automatic_https": {"disable": True},
        },
    }
    return {
        "admin": {"listen": settings.admin_listen},
        "apps": {
            "http": {"http_port": settings.http_port, "https_port": https_port, "servers": servers},
            "tls": _tls(settings, all_hosts),
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }
