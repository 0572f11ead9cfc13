"""The web panel's overview with 200 instances: server time to first byte and page weight.

Targets (the web panel's issue): TTFB <= 100 ms and page weight <= 150 KB.

The fleet's real parts, in this process: a fleet root with 200 instances made by the provisioning service
(owned by 10 tenants), all shown as running with an hour of memory and CPU samples each (120 rounds of
the real ResourceSamples, fed figures that wander as a server's do: the heaviest page, a sparkline pair
in every row), players, a last backup; the web app the daemon serves (panel included), under uvicorn on
loopback; and Caddy (the one foundry-fleet brings) in front with the edge's own compression rule.

Measured, interleaved round by round:
  panel, direct       GET / signed in as an admin (all 200 rows), straight to uvicorn, keep-alive
  panel, via Caddy    the same through Caddy, as a browser asks (Accept-Encoding: gzip, deflate, br, zstd)
  API, direct         the anchor: GET /v1/instances of the control API (the JSON `instance list` reads)
TTFB = from sending the request to the response headers being read (the page is rendered before its
first byte goes out). Page weight = the bytes on the wire through Caddy: the overview's HTML, and on a
first visit its stylesheet and three scripts too (cached for an hour after).
Also, in process: building the 200 cards the panel's way (one read of the instances) against the naive
way (each instance, then its snapshots, one by one), as a ratio.
Run: .venv/bin/python bench/panel_overview.py [--instances 200 --rounds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from sqlalchemy import update  # noqa: E402

from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.api.app import Reads, create_app  # noqa: E402
from foundry_fleet.config import load_config  # noqa: E402
from foundry_fleet.domain.release import ReleaseLayout  # noqa: E402
from foundry_fleet.edge.caddy_config import COMPRESSED_TYPES  # noqa: E402
from foundry_fleet.edge.process import find_caddy  # noqa: E402
from foundry_fleet.runtime.base import TaskStats  # noqa: E402
from foundry_fleet.services.access import Access  # noqa: E402
from foundry_fleet.services.bulletin import Bulletin  # noqa: E402
from foundry_fleet.services.daemon_info import DaemonInfo  # noqa: E402
from foundry_fleet.services.init import init_fleet  # noqa: E402
from foundry_fleet.services.panel_cards import CardSources, PanelCards  # noqa: E402
from foundry_fleet.services.panel_sessions import PANEL_COOKIE  # noqa: E402
from foundry_fleet.services.resource_samples import ResourceSamples  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from foundry_fleet.store.models import Instance  # noqa: E402
from foundry_fleet.web.app import create_web_app  # noqa: E402
from foundry_fleet.web.panel.services import Panel, PanelServices  # noqa: E402
from foundry_fleet.wiring.services import make_backups, make_panel_sessions, open_services  # noqa: E402
from tests.support.foundry_standin import build_release_zip  # noqa: E402

TENANTS = [f"4000000000000000{i:02d}" for i in range(10)]
BROWSER_ENCODINGS = "gzip, deflate, br, zstd"  # what Chromium sends
ASSETS = ["panel.css", "panel.js", "vendor/htmx-2.0.11.min.js", "vendor/htmx-ext-sse-2.2.4.min.js"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_fleet(work: Path, count: int):
    config_path = init_fleet(work / "fleet")
    config = load_config(config_path)
    services = open_services(config, actor="bench")
    services.releases.add(str(build_release_zip(work, ReleaseLayout.NODE, 13, 345)))
    t0 = time.perf_counter()
    names = [f"table{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        services.provisioning.create("bench", name, "13.345", owner=TENANTS[i % len(TENANTS)], start=False)
    made = time.perf_counter() - t0
    now = time.time()
    with services.sessions.begin() as s:  # shown as running for an hour: every cell of every row filled
        s.execute(update(Instance).values(state="running", desired="running", state_reason="healthy",
                                          task={"driver": "local", "name": "x", "started_at": now - 3600, "state": {}}))
    return config, services, names, made


async def an_hour_of_samples(names: list[str], interval: float) -> ResourceSamples:
    """The real sampler, run 121 rounds on a clock that moves `interval` seconds a round."""
    clock = [time.time() - 3600]
    totals = {n: 0.0 for n in names}
    rng = random.Random(7)

    async def stats(name: str) -> TaskStats:
        totals[name] += interval * rng.uniform(0.0, 0.3)
        return TaskStats(memory_bytes=int(rng.uniform(150, 400) * 2**20), cpu_seconds=totals[name],
                         memory_limit_bytes=2048 * 2**20)

    samples = ResourceSamples(lambda: names, stats, sample_interval=interval, history_minutes=60,
                              clock=lambda: clock[0], monotonic=lambda: clock[0])
    for _ in range(121):
        await samples.sample_once()
        clock[0] += interval
    return samples


def serve(app, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server


def start_caddy(work: Path, listen: int, upstream: int) -> subprocess.Popen:
    """Caddy with the edge's rule for the fleet host: compressed pages, everything else as it is."""
    config = {"admin": {"disabled": True}, "apps": {"http": {"servers": {"bench": {
        "listen": [f"127.0.0.1:{listen}"],
        "routes": [{"handle": [
            {"handler": "encode", "encodings": {"zstd": {}, "gzip": {}}, "prefer": ["zstd", "gzip"],
             "match": {"headers": {"Content-Type": COMPRESSED_TYPES}}},
            {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{upstream}"}]}]}],
        "automatic_https": {"disable": True}}}}}}
    path = work / "caddy.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([find_caddy(None), "run", "--config", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("caddy did not start") from None
            time.sleep(0.05)


def timed_get(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, bytes, httpx.Response]:
    """(TTFB, the body as it came over the wire, response)."""
    t0 = time.perf_counter()
    with client.stream("GET", url, headers=headers) as r:
        ttfb = time.perf_counter() - t0
        body = b"".join(r.iter_raw())
    return ttfb, body, r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="panel-bench-"))
    caddy = None
    try:
        config, services, names, made = make_fleet(work, args.instances)
        samples = asyncio.run(an_hour_of_samples(names, config.panel.sample_interval))
        backups = make_backups(services)
        now = time.time()
        newest = {n: now - random.Random(n).uniform(60, 7200) for n in names}
        access = Access(services.instances, frozenset(config.discord.admin_users))
        cards = PanelCards(access, CardSources(players=lambda n: hash(n) % 5, resources=samples,
                                               newest_snapshots=lambda: newest,
                                               certificate_problems=lambda: {}, history_slots=samples.keep))
        sessions = make_panel_sessions(services)
        panel = Panel(sessions, PanelServices(access=access, cards=cards, operations=None,  # type: ignore[arg-type]
                                              backups=backups, releases=services.releases, logs=None,  # type: ignore[arg-type]
                                              bulletin=Bulletin(), port_suffix=""))
        web = create_web_app(services.hostnames.known_hosts, panel=panel)
        reads = Reads(services.instances, services.hostnames, services.events, services.releases, access)
        api = create_app(reads, None, None, backups,  # type: ignore[arg-type]  # only reads are asked
                         DaemonInfo(pid=0, started_at=now, root=str(config.root), capabilities=[]))
        web_port, api_port, caddy_port = free_port(), free_port(), free_port()
        serve(web, web_port)
        serve(api, api_port)
        caddy = start_caddy(work, caddy_port, web_port)
        link = sessions.make_link("bench")
        cookie, _ = sessions.redeem_link(parse_qs(urlsplit(link).query)["t"][0])
        signed_in = {"Cookie": f"{PANEL_COOKIE}={cookie}", "X-Forwarded-Host": config.host_for(config.fleet.fleet_host)}

        direct_url, caddy_url = f"http://127.0.0.1:{web_port}/", f"http://127.0.0.1:{caddy_port}/"
        results: dict[str, list[float]] = {"panel, direct": [], "panel, via Caddy": [], "API, direct": []}
        wire: dict[str, int] = {}
        with httpx.Client(timeout=30) as direct, httpx.Client(timeout=30) as edge, httpx.Client(timeout=30) as anchor:
            for _ in range(3):  # warm: templates compiled, connections open
                timed_get(direct, direct_url, signed_in)
                timed_get(edge, caddy_url, {**signed_in, "Accept-Encoding": BROWSER_ENCODINGS})
                timed_get(anchor, f"http://127.0.0.1:{api_port}/v1/instances", {})
            for _ in range(args.rounds):
                t, body, r = timed_get(direct, direct_url, {**signed_in, "Accept-Encoding": "identity"})
                assert r.status_code == 200 and body.count(b'<tr id="row-') == args.instances, r.status_code
                results["panel, direct"].append(t)
                wire["html, uncompressed"] = len(body)
                t, body, r = timed_get(edge, caddy_url, {**signed_in, "Accept-Encoding": BROWSER_ENCODINGS})
                assert r.status_code == 200 and r.headers.get("content-encoding") in ("zstd", "gzip")
                results["panel, via Caddy"].append(t)
                wire[f"html, {r.headers['content-encoding']}"] = len(body)
                t, _, r = timed_get(anchor, f"http://127.0.0.1:{api_port}/v1/instances", {})
                assert r.status_code == 200
                results["API, direct"].append(t)
            for asset in ASSETS:
                _, body, r = timed_get(edge, f"{caddy_url}panel/static/{asset}", {"Accept-Encoding": BROWSER_ENCODINGS})
                assert r.status_code == 200
                wire[asset] = len(body)

        principal = access.principal(TENANTS[0], has_admin_role=True)
        build_times, naive_times = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            cards.cards(principal)
            build_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for name in names:  # what a page that asks each instance and its snapshots in turn would do
                access.instance(principal, name)
                backups.list(name)
            naive_times.append(time.perf_counter() - t0)

        print(describe())
        print(f"{args.instances} instances made in {made:.1f} s; each row with an hour of samples "
              f"({samples.keep} points); {args.rounds} rounds")
        for what, values in results.items():
            ms = [v * 1000 for v in values]
            print(f"  TTFB {what:18s} median {statistics.median(ms):6.1f} ms   p95 {percentile(ms, 95):6.1f} ms")
        panel_ms = statistics.median(results["panel, direct"]) * 1000
        api_ms = statistics.median(results["API, direct"]) * 1000
        print(f"  panel / API (JSON of the same instances): {panel_ms / api_ms:.2f}x")
        html = next(v for k, v in wire.items() if k.startswith("html, ") and "uncompressed" not in k)
        first = html + sum(wire[a] for a in ASSETS)
        for k, v in wire.items():
            print(f"  wire {k:36s} {v / 1024:7.1f} KB")
        print(f"  page weight: {html / 1024:.1f} KB (repeat visit, assets cached), {first / 1024:.1f} KB first visit; "
              f"uncompressed HTML {wire['html, uncompressed'] / 1024:.1f} KB ({wire['html, uncompressed'] / html:.1f}x)")
        b, n = statistics.median(build_times) * 1000, statistics.median(naive_times) * 1000
        print(f"  cards for {args.instances}: {b:.1f} ms one read vs {n:.1f} ms one by one ({n / b:.1f}x)")
    finally:
        if caddy is not None:
            caddy.kill()
            caddy.wait()
        remove_tree(work)


if __name__ == "__main__":
    main()
