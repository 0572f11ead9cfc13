"""Edge config push latency: how long Caddy takes to apply a changed configuration, by fleet size.

A real Caddy (the one foundry-fleet runs, started the way the fleet starts it) gets the fleet's own
config (build_caddy_config) for 10, 100, 500 and 1000 tenant hosts with internal TLS. After the first
load, and once every host has its certificate, each round pushes a changed config through the admin
API's POST /load (one tenant stopped or started again, as happens on `instance stop/start`) and
times the call, which returns once the new config is serving. Anchors in the same run: pushing the
identical config again (Caddy answers without reloading) and the 10-host push.
Target (issue: edge): <= 150 ms median at 500 hosts.

--breakdown also times, at the largest size up to 500, the same pushes of variants of the config
(built here by editing the fleet's config, not used by the fleet) to show where the time goes: the
per-tenant /backups forward_auth routes, one shared /backups route for all tenant hosts instead,
and no TLS automation at all.
Run: .venv/bin/python bench/edge_push.py [--rounds 20] [--sizes 10,100,500,1000] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.edge.admin import CaddyAdmin  # noqa: E402
from foundry_fleet.edge.caddy_config import EdgeSettings, TenantSite, build_caddy_config  # noqa: E402
from foundry_fleet.edge.process import ManagedCaddy, caddy_version, find_caddy  # noqa: E402
from tests.support.foundry_standin import free_port  # noqa: E402


def sites(n: int) -> list[TenantSite]:
    # Upstream ports need not listen: a push only changes routes, nothing dials them.
    return [TenantSite(name=f"t{i:04d}", hosts=(f"t{i:04d}.localhost",), address=f"127.0.0.1:{52000 + i}", state="running")
            for i in range(n)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for_certificates(caddy: ManagedCaddy, hosts: list[str], timeout: float = 120) -> float:
    """Seconds until every host has a certificate from the local CA on disk."""
    base = caddy.data_dir / "caddy" / "certificates" / "local"
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if all((base / h / f"{h}.crt").exists() for h in hosts):
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise SystemExit(f"certificates for {len(hosts)} hosts not issued within {timeout}s")


def timed_load(admin: CaddyAdmin, config: dict) -> float:
    t0 = time.perf_counter()
    admin.load(config)
    return time.perf_counter() - t0


def changed_states(base: list[TenantSite], r: int) -> list[TenantSite]:
    """Round r's sites: one tenant stopped (its route becomes the 503 page); the next round it runs again."""
    victim = (r // 2) % len(base)
    state = "stopped" if r % 2 == 0 else "running"
    return [replace(s, state=state) if i == victim else s for i, s in enumerate(base)]


def measure(admin: CaddyAdmin, caddy: ManagedCaddy, settings: EdgeSettings, n: int, rounds: int) -> dict:
    base = sites(n)
    t0 = time.perf_counter()
    config = build_caddy_config(settings, base)
    blob = json.dumps(config)
    build_s = time.perf_counter() - t0
    first_s = timed_load(admin, config)
    certs_s = wait_for_certificates(caddy, [h for s in base for h in s.hosts] + [settings.fleet_host])
    time.sleep(0.5)  # let the certificate work settle before timing
    changed, identical = [], []
    for r in range(rounds):
        config = build_caddy_config(settings, changed_states(base, r))
        changed.append(timed_load(admin, config))
        identical.append(timed_load(admin, config))  # the same config again: a no-op for Caddy
    return {
        "n": n, "bytes": len(blob), "build": build_s, "first": first_s, "certs": certs_s,
        "changed": changed, "identical": identical, "rss": rss_mb(caddy.pid or 0),
    }


# Variants for --breakdown ---------------------------------------------------------------------

def _subroutes(config: dict) -> list[list[dict]]:
    return [h["routes"] for r in config["apps"]["http"]["servers"]["edge"]["routes"]
            for h in r.get("handle", []) if h.get("handler") == "subroute"]


def _is_backups(route: dict) -> bool:
    return any("/backups" in m.get("path", []) for m in route.get("match", []))


def without_tenant_backups(settings: EdgeSettings, ss: list[TenantSite]) -> dict:
    config = build_caddy_config(settings, ss)
    for routes in _subroutes(config):
        routes[:] = [r for r in routes if not _is_backups(r)]
    return config


def shared_backups(settings: EdgeSettings, ss: list[TenantSite]) -> dict:
    """The same /backups check once, for every tenant host (the auth service told the host, not the name)."""
    config = without_tenant_backups(settings, ss)
    one_tenant = build_caddy_config(settings, [replace(ss[0], name="{http.request.host}")])
    backups = next(r for routes in _subroutes(one_tenant) for r in routes if _is_backups(r))
    route = {"match": [{"host": sorted(h for s in ss for h in s.hosts), "path": ["/backups", "/backups/*"]}],
             "handle": backups["handle"], "terminal": True}
    config["apps"]["http"]["servers"]["edge"]["routes"].insert(0, route)
    return config


def without_tls_automation(settings: EdgeSettings, ss: list[TenantSite]) -> dict:
    config = build_caddy_config(settings, ss)
    config["apps"]["http"]["servers"]["edge"]["automatic_https"] = {"disable": True}
    config["apps"]["tls"] = {}
    return config


def breakdown(admin: CaddyAdmin, settings: EdgeSettings, n: int, rounds: int) -> list[tuple[str, float]]:
    base = sites(n)
    variants = [
        ("the fleet's config", lambda ss: build_caddy_config(settings, ss)),
        ("without the per-tenant /backups forward_auth routes", lambda ss: without_tenant_backups(settings, ss)),
        ("one shared /backups forward_auth route for all hosts", lambda ss: shared_backups(settings, ss)),
        ("the fleet's config without TLS automation", lambda ss: without_tls_automation(settings, ss)),
    ]
    out = []
    for label, build in variants:
        admin.load(build(base))
        time.sleep(0.5)
        out.append((label, statistics.median(timed_load(admin, build(changed_states(base, r))) for r in range(rounds))))
    admin.load(build_caddy_config(settings, base))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sizes", default="10,100,500,1000")
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="ff-bench-edge-push-"))
    binary = find_caddy(None)
    version = ".".join(map(str, caddy_version(binary)))
    caddy = ManagedCaddy(binary, work / "edge", work / "caddy-admin.sock", work / "caddy.log")
    settings = EdgeSettings(
        http_port=free_port(), https_port=free_port(), tls="internal", fleet_host="fleet.localhost",
        web_dial=f"127.0.0.1:{free_port()}", admin_listen=f"unix/{caddy.admin_socket}",
    )
    admin = CaddyAdmin(caddy.admin_socket, timeout=120)
    results = []
    parts: list[tuple[str, float]] = []
    try:
        caddy.write_config(build_caddy_config(settings, []))
        caddy.start()
        caddy.wait_ready(admin.ping)
        for n in sizes:
            results.append(measure(admin, caddy, settings, n, args.rounds))
        if args.breakdown:
            parts_n = max([n for n in sizes if n <= 500] or sizes[:1])
            parts = breakdown(admin, settings, parts_n, args.rounds)
    finally:
        admin.close()
        caddy.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {describe()}")
    print(f"caddy {version} ({binary}), internal TLS, {args.rounds} changed pushes per size "
          f"(one tenant stopped/started), each followed by the identical config again")
    print(f"{'hosts':>6} {'config':>9} {'build':>8} {'first load':>10} {'all certs':>9} "
          f"{'push median':>11} {'p90':>8} {'identical':>9} {'ratio':>7} {'RSS':>7}")
    ms = 1000
    anchor10 = None
    for r in results:
        med = statistics.median(r["changed"])
        ident = statistics.median(r["identical"])
        if r["n"] == sizes[0]:
            anchor10 = med
        print(f"{r['n']:>6} {r['bytes'] / 1024:>6.0f} KiB {r['build'] * ms:>5.1f} ms {r['first'] * ms:>7.0f} ms "
              f"{r['certs']:>7.2f} s {med * ms:>8.1f} ms {percentile(r['changed'], 90) * ms:>5.1f} ms "
              f"{ident * ms:>6.1f} ms {med / ident:>6.1f}x {r['rss']:>4.0f} MB")
    at = {r["n"]: statistics.median(r["changed"]) for r in results}
    if anchor10:
        for n, med in at.items():
            if n != sizes[0]:
                print(f"push at {n} hosts / push at {sizes[0]} hosts: {med / anchor10:.2f}x")
    if 500 in at:
        verdict = "met" if at[500] <= 0.150 else "NOT met"
        print(f"target <= 150 ms at 500 hosts: {at[500] * ms:.1f} ms, {verdict}")
    if parts:
        print(f"breakdown at {parts_n} hosts (median of {args.rounds} changed pushes each):")
        for label, med in parts:
            print(f"  {label:<55} {med * ms:7.1f} ms  ({med / parts[0][1]:.2f}x)")


if __name__ == "__main__":
    main()
