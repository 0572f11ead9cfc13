"""Do players stay connected while the edge reloads? Websockets through Caddy across 100 config reloads.

A real fleet (daemon, Caddy, stand-in instances `alice` and `bob`). 20 wss connections go to alice
through Caddy (TLS with the fleet's local CA, SNI alice.localhost); then 100 real reloads, each a
different config (bob's extra hostnames alternate between one new name and none); then every socket
must still echo a fresh message. Three runs, fresh sockets each:

  1. the fleet as shipped: the 100 changes go through the control API (PUT /v1/instances/bob/hosts,
     which answers once Caddy serves the change);
  2. the same 100 configs pushed straight to Caddy's admin API (POST /load), built by the fleet's own
     config builder with the fleet's settings (stream_close_delay 8 h);
  3. anchor: as 2, with every `stream_close_delay` removed from the config (expected: closed, 1001).

Each run checks Caddy's log for one "load complete" per reload. Target (issue: edge): 100 % open.
Run: .venv/bin/python bench/edge_websockets.py [--sockets 20] [--reloads 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.sync.client import ClientConnection  # noqa: E402

from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from foundry_fleet.edge.admin import CaddyAdmin  # noqa: E402
from foundry_fleet.edge.caddy_config import TenantSite, build_caddy_config  # noqa: E402
from foundry_fleet.wiring.drivers import edge_settings  # noqa: E402
from tests.support.edge_client import local_ca, wss  # noqa: E402
from tests.support.harness import FleetHarness  # noqa: E402

PORT_LOW = 52000  # above the blocks the test suite draws from (31000-50999) and bench_fleet's 41000s


def bob_hosts(i: int) -> list[str]:
    """Round i's extra hostnames for bob: every round differs from the one before."""
    return [f"extra{i}.localhost"] if i % 2 == 0 else []


def strip_close_delay(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_close_delay(v) for k, v in node.items() if k != "stream_close_delay"}
    if isinstance(node, list):
        return [strip_close_delay(v) for v in node]
    return node


def open_sockets(fleet: FleetHarness, n: int, stack: ExitStack) -> list[ClientConnection]:
    port = fleet.settings().edge.https_port
    ca = local_ca(fleet.root)
    sockets = []
    for k in range(n):
        ws = stack.enter_context(wss(port, "alice.localhost", "/-/socket.io/", ca))
        ws.send(f"open-{k}")
        assert ws.recv(timeout=5) == f"open-{k}"
        sockets.append(ws)
    return sockets


def check_sockets(sockets: list[ClientConnection]) -> tuple[int, Counter[str]]:
    """How many still echo a fresh message; the close codes of the others."""
    alive, codes = 0, Counter[str]()
    for k, ws in enumerate(sockets):
        msg = f"after-{k}-{time.monotonic_ns()}"
        try:
            ws.send(msg)
            if ws.recv(timeout=5) == msg:
                alive += 1
                continue
            codes["wrong echo"] += 1
        except ConnectionClosed as e:
            codes[str(e.rcvd.code if e.rcvd else "no close frame")] += 1
        except TimeoutError:
            codes["no answer in 5 s"] += 1
    return alive, codes


def loads_logged(fleet: FleetHarness) -> int:
    log = fleet.root / "logs" / "caddy.log"
    return log.read_text(errors="replace").count('"msg":"load complete"') if log.exists() else 0


def users(fleet: FleetHarness, port: int) -> int:
    return fleet.get(port, "/-/api/status").json()["users"]


def run(fleet: FleetHarness, label: str, n_sockets: int, reloads: int, reload: Callable[[int], None],
        alice_port: int) -> dict[str, Any]:
    with ExitStack() as stack:
        sockets = open_sockets(fleet, n_sockets, stack)
        users_before = users(fleet, alice_port)
        loads_before = loads_logged(fleet)
        times = []
        for i in range(reloads):
            t0 = time.perf_counter()
            reload(i)
            times.append(time.perf_counter() - t0)
        loads = loads_logged(fleet) - loads_before
        users_after = users(fleet, alice_port)
        alive, codes = check_sockets(sockets)
    return {"label": label, "sockets": n_sockets, "alive": alive, "codes": codes, "loads": loads,
            "reload_ms": statistics.median(times) * 1000, "users_before": users_before, "users_after": users_after}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, default=20)
    ap.add_argument("--reloads", type=int, default=100)
    args = ap.parse_args()
    results = []
    with bench_fleet("ff-bench-edge-ws-", PORT_LOW) as fleet:
        client = ControlClient(fleet.socket)
        alice = client.create_instance(name="alice", release="13.345", start=True)["instance"]
        bob = client.create_instance(name="bob", release="13.345", start=True)["instance"]
        assert alice["state"] == bob["state"] == "running", (alice, bob)
        config = fleet.settings()
        settings = edge_settings(config)
        admin = CaddyAdmin(config.paths.run / "caddy-admin.sock")

        def sites(i: int) -> list[TenantSite]:
            return [TenantSite("alice", (alice["host"],), f"127.0.0.1:{alice['port']}", "running"),
                    TenantSite("bob", (bob["host"], *bob_hosts(i)), f"127.0.0.1:{bob['port']}", "running")]

        def through_api(i: int) -> None:
            client.set_hosts("bob", bob_hosts(i))

        def direct(i: int) -> None:
            admin.load(build_caddy_config(settings, sites(i)))

        no_delay = replace(settings, stream_close_delay_s=0)

        def direct_without_delay(i: int) -> None:
            admin.load(strip_close_delay(build_caddy_config(no_delay, sites(i))))

        # Start each run from the config the fleet itself serves, with the same bob as round 0 - 1.
        client.set_hosts("bob", bob_hosts(1))
        assert 'stream_close_delay' in str(client.edge_config())
        results.append(run(fleet, "fleet, changes through the control API", args.sockets, args.reloads,
                           through_api, alice["port"]))
        results.append(run(fleet, "direct /load pushes, stream_close_delay 8 h", args.sockets, args.reloads,
                           direct, alice["port"]))
        # The anchor's sockets must be served by a config without the delay from the start.
        admin.load(strip_close_delay(build_caddy_config(no_delay, sites(1))))
        assert "stream_close_delay" not in str(admin.config())
        results.append(run(fleet, "anchor: direct pushes, stream_close_delay removed", args.sockets,
                           args.reloads, direct_without_delay, alice["port"]))
        admin.close()
        client.close()

    print(f"machine: {describe()}")
    print(f"{args.sockets} wss sockets to alice through Caddy, then {args.reloads} config reloads "
          f"(bob's extra hostnames alternate), then every socket must echo")
    for r in results:
        pct = 100 * r["alive"] / r["sockets"]
        closed = ", ".join(f"{n} x {code}" for code, n in sorted(r["codes"].items())) or "none"
        print(f"{r['label']:<52} open and echoing {r['alive']:>3}/{r['sockets']} ({pct:5.1f} %), "
              f"closed: {closed}; reloads logged by Caddy {r['loads']}, median {r['reload_ms']:.1f} ms each; "
              f"instance users before/after {r['users_before']}/{r['users_after']}")
    verdict = "met" if results[0]["alive"] == results[0]["sockets"] else "NOT met"
    print(f"target 100 % open after {args.reloads} reloads (the fleet as shipped): {verdict}")


if __name__ == "__main__":
    main()
