"""Edge config push latency at fleet scale: the tenant map (the fleet's config) vs a route per tenant.

A real Caddy (the one foundry-fleet runs, started the way the fleet starts it) gets the fleet's own
config (build_caddy_config) for 500, 1,000, 5,000 and 10,000 tenants, and, in the same run, the shape the
fleet used before: every running tenant's `/-/` as a route of its own with its own `reverse_proxy`
(built here from the fleet's config by replacing the tenant map's proxy with those routes; the fleet
no longer builds it). After the first load, each round pushes a changed config through the admin API's
POST /load (one tenant stopped or started again, as on `instance stop/start`, sleep or wake) and times
the call, which returns once the new config is serving.

TLS as the fleet configures it for a large fleet, on-demand (a certificate when a name is first asked
for, if the fleet's permission endpoint vouches for it): no name is in the automation policy, so a load
manages none. `--tls internal` and `--tls acme` put every name in the policy, as those modes do: internal
issues every certificate from the local CA on the first load (waited for before timing); acme is
pointed at an address that refuses connections (no ACME server here), so what is timed is what Caddy
does on a load with that many managed names, not issuance. On-demand is served here by the internal
issuer (the fleet's on-demand uses ACME), which does not change a load.

After the pushes at each size: Caddy's RSS, and the time to first byte of GET /-/ through the edge
(HTTPS, keep-alive, SNI and Host of the first and of the last tenant) to a small upstream that every
tenant dials, median of --ttfb requests.

Run: .venv/bin/python bench/edge_push.py [--rounds 8] [--sizes 500,1000,5000,10000] [--tls on-demand]
"""

from __future__ import annotations

import argparse
import copy
import http.server
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.edge.admin import CaddyAdmin  # noqa: E402
from foundry_fleet.edge.caddy_config import TENANT, EdgeSettings, TenantSite, build_caddy_config  # noqa: E402
from foundry_fleet.edge.process import ManagedCaddy, caddy_version, find_caddy  # noqa: E402
from tests.support.foundry_standin import free_port  # noqa: E402

REFUSING_ACME = "https://127.0.0.1:9/directory"  # the discard port: nothing listens


def sites(n: int, upstream: str) -> list[TenantSite]:
    # Names a public CA would certify (the issuer is swapped below): `*.localhost` would get a policy of its own.
    return [TenantSite(name=f"t{i:05d}", hosts=(f"t{i:05d}.fleet.example",), address=upstream, state="running")
            for i in range(n)]


def changed_states(base: list[TenantSite], r: int) -> list[TenantSite]:
    """Round r's sites: one tenant stopped (its host goes to the page); the next round it runs again."""
    victim = (r // 2) % len(base)
    state = "stopped" if r % 2 == 0 else "running"
    return [replace(s, state=state) if i == victim else s for i, s in enumerate(base)]


# The two shapes ---------------------------------------------------------------------------------

def per_tenant_routes(config: dict[str, Any]) -> dict[str, Any]:
    """The shape before the map, for `/-/`: each running tenant's a route of its own at the top, matching its
    host, with its own reverse_proxy (the handlers the map's proxy route has, its dial written in). The
    rest stays as the fleet builds it now (the old shape also listed every host in each shared route, so
    this anchor costs Caddy less than the old shape did)."""
    config = copy.deepcopy(config)
    routes = config["apps"]["http"]["servers"]["edge"]["routes"]
    (tenant_map,) = routes[0]["handle"]
    tenant_routes = routes[1]["handle"][0]["routes"]
    game = next(r for r in tenant_routes if r.get("match", [{}])[0].get("path") == ["/-", "/-/*"])
    proxy_route = game["handle"][0]["routes"][-1]
    assert "match" not in proxy_route and proxy_route["handle"][-1]["handler"] == "reverse_proxy"
    own_routes = []
    for mapping in tenant_map["mappings"]:
        (value,) = mapping["outputs"]
        if ":" not in value:  # wake, or a page's label
            continue
        handlers = copy.deepcopy(proxy_route["handle"])
        handlers[-1]["upstreams"] = [{"dial": value}]
        own_routes.append({"match": [{"host": [mapping["input"]], "path": ["/-", "/-/*"]}], "handle": handlers,
                           "terminal": True})
    tenant_map["mappings"] = [m for m in tenant_map["mappings"] if ":" not in m["outputs"][0]]
    routes[1:1] = own_routes
    assert TENANT not in json.dumps(own_routes)
    return config


SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "route per tenant (before)": per_tenant_routes,
    "tenant map (the fleet's)": lambda config: config,
}


def with_tls(config: dict[str, Any], tls: str) -> dict[str, Any]:
    """The fleet's TLS with the issuer swapped for one that works (or fails fast) here."""
    (policy,) = config["apps"]["tls"]["automation"]["policies"]  # every name here is a public one
    if tls == "on-demand":
        policy["issuers"] = [{"module": "internal"}]  # nothing is issued on a load either way
    elif tls == "acme":
        policy["issuers"] = [{"module": "acme", "ca": REFUSING_ACME}]
    return config


# Measuring --------------------------------------------------------------------------------------

class Answer(http.server.BaseHTTPRequestHandler):
    """The upstream every tenant dials, and the TLS permission endpoint: 200 to anything."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else a small answer in two writes waits for a delayed ACK (40 ms)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def answering() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    server.handle_error = lambda *_: None  # Caddy hanging up an idle connection is no news
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed_load(admin: CaddyAdmin, config: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    admin.load(config)
    return time.perf_counter() - t0


def wait_for_certificates(caddy: ManagedCaddy, hosts: list[str], timeout: float) -> float:
    base = caddy.data_dir / "caddy" / "certificates" / "local"
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if all((base / h / f"{h}.crt").exists() for h in hosts):
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise SystemExit(f"certificates for {len(hosts)} hosts not issued within {timeout} s")


def ttfb(client: httpx.Client, port: int, host: str, requests: int) -> float:
    url = f"https://127.0.0.1:{port}/-/"
    kw: dict[str, Any] = {"headers": {"Host": host}, "extensions": {"sni_hostname": host}}
    times = []
    for i in range(requests + 5):  # the first few: a certificate issued or loaded, the connection made
        t0 = time.perf_counter()
        with client.stream("GET", url, **kw) as r:
            t = time.perf_counter() - t0
            r.read()
        assert r.status_code == 200 and r.text == "ok", (host, r.status_code, r.text[:200])
        if i >= 5:
            times.append(t)
    return statistics.median(times)


def measure(admin: CaddyAdmin, caddy: ManagedCaddy, settings: EdgeSettings, shape: Callable, tls: str,
            n: int, upstream: str, rounds: int, requests: int) -> dict[str, Any]:
    base = sites(n, upstream)

    def build(ss: list[TenantSite]) -> dict[str, Any]:
        return with_tls(shape(build_caddy_config(settings, ss)), tls)

    t0 = time.perf_counter()
    build(base)
    build_s = time.perf_counter() - t0
    first_s = timed_load(admin, build(base))
    certs_s = None
    if tls == "internal":
        certs_s = wait_for_certificates(caddy, [h for s in base for h in s.hosts], timeout=max(120.0, n / 50))
    time.sleep(1.0)  # let the certificate work of the load settle before timing
    changed = [timed_load(admin, build(changed_states(base, r))) for r in range(rounds)]
    admin.load(build(base))
    ttfb_first = ttfb_last = None
    if tls != "acme":  # no ACME server here, so no certificate to connect with
        with httpx.Client(verify=False, timeout=30) as client:  # noqa: S501 (timing only; the bench's own CA)
            first_host, last_host = base[0].hosts[0], base[-1].hosts[0]
            ttfb_first = ttfb(client, settings.https_port, first_host, requests)
            ttfb_last = ttfb(client, settings.https_port, last_host, requests)
    return {"n": n, "build": build_s, "first": first_s, "certs": certs_s, "changed": changed,
            "rss": rss_mb(caddy.pid or 0), "ttfb_first": ttfb_first, "ttfb_last": ttfb_last}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


@contextmanager
def fresh_caddy(work: Path, settings: EdgeSettings) -> Iterator[tuple[CaddyAdmin, ManagedCaddy]]:
    """A Caddy of its own for each shape and size, so RSS and certificate caches start alike."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    caddy = ManagedCaddy(find_caddy(None), work / "edge", work / "caddy-admin.sock", work / "caddy.log")
    settings = replace(settings, admin_listen=f"unix/{caddy.admin_socket}")
    admin = CaddyAdmin(caddy.admin_socket, timeout=600)
    try:
        caddy.write_config(build_caddy_config(settings, []))
        caddy.start()
        caddy.wait_ready(admin.ping)
        yield admin, caddy
    finally:
        admin.close()
        caddy.stop()


def main() -> None:
    # A TERM (a timeout, a kill) ends the run through its finally blocks: Caddy stopped, the folder removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--sizes", default="500,1000,5000,10000")
    ap.add_argument("--tls", choices=("on-demand", "internal", "acme"), default="on-demand")
    ap.add_argument("--ttfb", type=int, default=50, help="requests per host for the time to first byte")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="ff-bench-edge-push-"))
    binary = find_caddy(None)
    version = ".".join(map(str, caddy_version(binary)))
    secret = work / "tls-secret"
    secret.write_text("bench")
    secret.chmod(0o600)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in SHAPES}
    try:
        with answering() as port:
            upstream = f"127.0.0.1:{port}"
            settings = EdgeSettings(
                http_port=free_port(), https_port=free_port(), tls=args.tls, fleet_host="fleet.fleet.example", domain="fleet.example",
                web_dial=upstream, admin_listen="", tls_secret_file=str(secret),
            )
            for n in sizes:
                for label, shape in SHAPES.items():
                    with fresh_caddy(work / "caddy", settings) as (admin, caddy):
                        settings_here = replace(settings, admin_listen=f"unix/{caddy.admin_socket}")
                        results[label].append(measure(admin, caddy, settings_here, shape, args.tls, n, upstream,
                                                      args.rounds, args.ttfb))
                        print(f"  done: {n} tenants, {label}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ms = 1000
    print(f"machine: {describe()}")
    print(f"caddy {version} ({binary}), TLS {args.tls}, {args.rounds} changed pushes per size and shape "
          f"(one tenant stopped/started), a fresh Caddy for each; TTFB: GET /-/ over HTTPS keep-alive, "
          f"median of {args.ttfb}")
    print(f"{'tenants':>7}  {'shape':<26} {'build':>8} {'first load':>10} {'push median':>11} {'p90':>8} "
          f"{'RSS':>7} {'TTFB first':>10} {'TTFB last':>9}" + ("  all certs" if args.tls == "internal" else ""))
    before, now = (results[label] for label in SHAPES)
    for old, new in zip(before, now, strict=True):
        for label, r in zip(SHAPES, (old, new), strict=True):
            print(f"{r['n']:>7}  {label:<26} {r['build'] * ms:>5.0f} ms {r['first'] * ms:>7.0f} ms "
                  f"{statistics.median(r['changed']) * ms:>8.1f} ms {percentile(r['changed'], 90) * ms:>5.1f} ms "
                  f"{r['rss']:>4.0f} MB {_ms(r['ttfb_first']):>10} {_ms(r['ttfb_last']):>9}"
                  + (f"  {r['certs']:.1f} s" if r["certs"] is not None else ""))
        ratio = statistics.median(old["changed"]) / statistics.median(new["changed"])
        print(f"{'':>7}  push: route per tenant / tenant map = {ratio:.1f}x")
    at = {r["n"]: statistics.median(r["changed"]) for r in now}
    if 5000 in at and args.tls == "on-demand":
        verdict = "met" if at[5000] <= 0.050 else "NOT met"
        print(f"target <= 50 ms at 5,000 tenants with on-demand TLS: {at[5000] * ms:.1f} ms, {verdict}")


if __name__ == "__main__":
    main()
