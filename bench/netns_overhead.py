"""What a network namespace per instance costs: create -> healthy, and requests through the edge.

Two real fleets side by side in the same run, identical but for one thing: in fleet `netns` each
instance has its own network namespace and is reached through its slirp4netns forwarder; in fleet
`host` slirp4netns is shadowed on the daemon's PATH by a stub that fails, so the runtime reports the
network capability as unavailable and instances listen on the host network, as before. Each fleet's
`status` is checked to say so.

Measured, interleaved round by round so drift hits both alike:
  create -> healthy   `instance create --start` through the control API, until it answers healthy and
                      the edge serves its host (as bench/create_to_healthy.py); split by the events at
                      the runtime's return (instance.spawn: sandbox and forwarder up) and the first
                      good health check (instance.healthy)
  edge, keep-alive    GET /-/api/status through Caddy (https, SNI), one pooled client connection;
                      Caddy keeps its upstream connection alive, so this is the per-request cost
  direct, keep-alive  the same to 127.0.0.1:<port> (the forwarder alone, without Caddy)
  direct, new conn.   a new TCP connection per request (the forwarder's accept and connect inside)
Targets (issue 8): <= +20 ms create -> healthy, <= +0.5 ms per keep-alive request through the edge.
Run: .venv/bin/python bench/netns_overhead.py [--creates 10] [--rounds 500]
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.edge_ttfb import ttfb  # noqa: E402
from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from tests.support.edge_client import local_ca  # noqa: E402
from tests.support.foundry_standin import STATUS_PATH  # noqa: E402

# Below the ephemeral range (32768+ here), where outgoing connections could hold an instance port.
PORT_LOW = {"netns": 26000, "host": 26200}


@contextmanager
def without_slirp4netns():
    """PATH for a daemon that finds a slirp4netns that cannot run (as on a host without it)."""
    stub_dir = Path(tempfile.mkdtemp(prefix="ff-bench-no-slirp-"))
    stub = stub_dir / "slirp4netns"
    stub.write_text("#!/bin/sh\necho 'slirp4netns: stubbed out by bench/netns_overhead.py' >&2\nexit 1\n")
    stub.chmod(0o755)
    saved = os.environ["PATH"]
    os.environ["PATH"] = f"{stub_dir}:{saved}"
    try:
        yield
    finally:
        os.environ["PATH"] = saved
        stub.unlink()
        stub_dir.rmdir()


def network_capability(client: ControlClient) -> bool:
    caps = {c["name"]: c for c in client.status()["capabilities"]}
    return bool(caps["network"]["available"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=500)
    args = ap.parse_args()
    arms = ("netns", "host")
    with ExitStack() as stack:
        fleets = {"netns": stack.enter_context(bench_fleet("ff-bench-netns-", PORT_LOW["netns"]))}
        with without_slirp4netns():
            fleets["host"] = stack.enter_context(bench_fleet("ff-bench-hostnet-", PORT_LOW["host"]))
        clients = {arm: ControlClient(fleets[arm].socket) for arm in arms}
        for client in clients.values():
            stack.callback(client.close)
        assert network_capability(clients["netns"]) and not network_capability(clients["host"])

        creates: dict[str, list[float]] = {arm: [] for arm in arms}
        phases: dict[str, list[tuple[float, float]]] = {arm: [] for arm in arms}
        ports: dict[str, int] = {}
        for i in range(args.creates):
            for arm in arms if i % 2 == 0 else reversed(arms):
                began, t0 = time.time(), time.perf_counter()
                made = clients[arm].create_instance(name=f"bench{i}", release="13.345", start=True)
                creates[arm].append(time.perf_counter() - t0)
                assert made["instance"]["state"] == "running", made
                ports[arm] = made["instance"]["port"]
                at = {e["action"]: e["at"] for e in clients[arm].events(f"bench{i}", 20)}
                phases[arm].append((at["instance.spawn"] - began, at["instance.healthy"] - at["instance.spawn"]))

        times: dict[str, list[float]] = {f"{arm}-{kind}": [] for arm in arms for kind in ("edge", "direct", "new")}
        host = f"bench{args.creates - 1}.localhost"
        edge_kw: dict[str, object] = {"headers": {"Host": host}, "extensions": {"sni_hostname": host}}
        edge_clients, direct_clients, urls = {}, {}, {}
        for arm in arms:
            ctx = ssl.create_default_context(cafile=str(local_ca(fleets[arm].root)))
            edge_clients[arm] = stack.enter_context(httpx.Client(verify=ctx, timeout=10))
            direct_clients[arm] = stack.enter_context(httpx.Client(timeout=10))
            urls[arm] = (f"https://127.0.0.1:{fleets[arm].settings().edge.https_port}{STATUS_PATH}",
                         f"http://127.0.0.1:{ports[arm]}{STATUS_PATH}")
        for _ in range(30):  # warm up: connections, Caddy's certificate cache, the stand-in's JIT
            for arm in arms:
                ttfb(edge_clients[arm], urls[arm][0], **edge_kw)
                ttfb(direct_clients[arm], urls[arm][1])
        for i in range(args.rounds):
            for arm in arms if i % 2 == 0 else reversed(arms):
                edge_url, direct_url = urls[arm]
                times[f"{arm}-edge"].append(ttfb(edge_clients[arm], edge_url, **edge_kw))
                times[f"{arm}-direct"].append(ttfb(direct_clients[arm], direct_url))
                with httpx.Client(timeout=10) as fresh:
                    times[f"{arm}-new"].append(ttfb(fresh, direct_url))

    ms = 1000
    print(f"machine: {describe()}")
    print(f"{args.creates} creates per fleet, {args.rounds} request rounds; median (p90)")
    print(f"{'':<28} {'host network':>18} {'own namespace':>18} {'added':>10} {'ratio':>7} {'target':>10}")
    rows = [("create -> healthy", creates["host"], creates["netns"], "+20 ms"),
            ("  of which create -> spawned", [p[0] for p in phases["host"]], [p[0] for p in phases["netns"]], ""),
            ("  of which spawned -> healthy", [p[1] for p in phases["host"]], [p[1] for p in phases["netns"]], "")]
    labels = {"edge": "edge, keep-alive", "direct": "direct, keep-alive", "new": "direct, new connection"}
    for kind, label in labels.items():
        rows.append((label, times[f"host-{kind}"], times[f"netns-{kind}"], "+0.5 ms" if kind == "edge" else ""))
    for label, before, after, target in rows:
        b, a = statistics.median(before) * ms, statistics.median(after) * ms
        print(f"{label:<28} {b:>8.2f} ms ({percentile(before, 90) * ms:6.2f}) {a:>8.2f} ms "
              f"({percentile(after, 90) * ms:6.2f}) {a - b:>+7.2f} ms {a / b:>6.2f}x {target:>10}")

if __name__ == "__main__":
    main()
