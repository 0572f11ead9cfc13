"""Time to first byte through the edge (Caddy, HTTPS) vs straight to the instance's port.

A real fleet with one running stand-in instance (`alice`). The same request, GET /-/api/status,
four ways, interleaved round by round so drift hits all alike:
  direct, keep-alive       http://127.0.0.1:<instance port>, one pooled connection
  direct, new connection   a new TCP connection per request
  Caddy, keep-alive        https://127.0.0.1:<https port> with SNI and Host alice.localhost, one pooled connection
  Caddy, new connection    a new TCP connection and a full TLS handshake per request
TTFB = from sending (or, for new connections, from connecting) to the response headers being read, with
httpx (HTTP/1.1); building the client is not timed. The local CA verifies Caddy's certificate.
Run: .venv/bin/python bench/edge_ttfb.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from tests.support.edge_client import local_ca  # noqa: E402
from tests.support.foundry_standin import STATUS_PATH  # noqa: E402

PORT_LOW = 52200
HOST = "alice.localhost"


def ttfb(client: httpx.Client, url: str, **kwargs: object) -> float:
    t0 = time.perf_counter()
    with client.stream("GET", url, **kwargs) as r:  # returns once the status line and headers are in
        t = time.perf_counter() - t0
        r.read()
    assert r.status_code == 200, (url, r.status_code, r.text[:200])
    assert r.json()["active"] is not None
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    with bench_fleet("ff-bench-edge-ttfb-", PORT_LOW) as fleet:
        client = ControlClient(fleet.socket)
        alice = client.create_instance(name="alice", release="13.345", start=True)["instance"]
        client.close()
        assert alice["state"] == "running", alice
        https_port = fleet.settings().edge.https_port
        ctx = ssl.create_default_context(cafile=str(local_ca(fleet.root)))
        direct_url = f"http://127.0.0.1:{alice['port']}{STATUS_PATH}"
        edge_url = f"https://127.0.0.1:{https_port}{STATUS_PATH}"
        edge_kw: dict[str, object] = {"headers": {"Host": HOST}, "extensions": {"sni_hostname": HOST}}

        times: dict[str, list[float]] = {k: [] for k in ("direct-ka", "direct-new", "edge-ka", "edge-new")}
        with httpx.Client(timeout=10) as direct_ka, httpx.Client(verify=ctx, timeout=10) as edge_ka:
            for _ in range(20):  # warm up: connections, certificates in Caddy's cache, the instance's JIT
                ttfb(direct_ka, direct_url)
                ttfb(edge_ka, edge_url, **edge_kw)
            for _ in range(args.rounds):
                times["direct-ka"].append(ttfb(direct_ka, direct_url))
                times["edge-ka"].append(ttfb(edge_ka, edge_url, **edge_kw))
                with httpx.Client(timeout=10) as fresh:
                    times["direct-new"].append(ttfb(fresh, direct_url))
                with httpx.Client(verify=ctx, timeout=10) as fresh:
                    times["edge-new"].append(ttfb(fresh, edge_url, **edge_kw))

    ms = 1000
    med = {k: statistics.median(v) * ms for k, v in times.items()}
    p90 = {k: percentile(v, 90) * ms for k, v in times.items()}
    print(f"machine: {describe()}")
    print(f"GET {STATUS_PATH} to a stand-in instance, {args.rounds} rounds, httpx HTTP/1.1, TTFB median (p90)")
    print(f"{'':<16} {'direct (http)':>18} {'through Caddy (https)':>24} {'ratio':>7} {'added':>9}")
    for key, label in (("ka", "keep-alive"), ("new", "new connection")):
        d, e = med[f"direct-{key}"], med[f"edge-{key}"]
        print(f"{label:<16} {d:>7.2f} ms ({p90[f'direct-{key}']:5.2f}) {e:>13.2f} ms ({p90[f'edge-{key}']:5.2f}) "
              f"{e / d:>6.2f}x {e - d:>+6.2f} ms")


if __name__ == "__main__":
    main()
