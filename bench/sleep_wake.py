"""Sleeping instances: how long a visitor waits for one to wake, the memory sleep saves, what idle detection costs.

Targets (issue: idle instances sleep):
- wake: a browser's first visit to a sleeping instance reaches Foundry within the app's own start time
  plus <= 300 ms of fleet overhead, with 2 edge config loads per sleep/wake cycle. The anchor is the
  same unpacked release started directly with node and polled every 5 ms, in the same run.
- density: with 50 instances holding 150 MB each and 5 in use, sleeping uses >= 5x less memory than
  keeping all 50 running (the anchor: the same fleet with idle_after off).
- idle detection: < 1 % of a core in the daemon with 200 instances registered (all running, so every
  round looks at every one of them); the anchor is the same fleet with idle_after off.
Run: .venv/bin/python bench/sleep_wake.py [--wake] [--density] [--idle-cost] (none: all three)
     [--cycles 10] [--instances 50 --in-use 5 --hold-mb 150] [--registered 200 --seconds 60 --windows 2]
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from bench.create_to_healthy import bare_start  # noqa: E402
from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from foundry_fleet.edge.admin import CaddyAdmin  # noqa: E402
from foundry_fleet.services.idle_watch import IdleRecords  # noqa: E402
from tests.support.edge_client import local_ca, tls_context, wss  # noqa: E402
from tests.support.harness import FleetHarness  # noqa: E402

# Below the kernel's ephemeral ports (32768 up by default): with 200 instances health-checked, an outgoing
# connection's local port inside the instances' range made the odd instance fail to take its port.
PORT_LOW = {"wake": 27000, "density": 27200, "idle": 27400}  # apart from the other benches' blocks
TICK = os.sysconf("SC_CLK_TCK")
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
REFRESH = re.compile(r"<meta http-equiv=refresh content='0; url=([^']+)'>")
TARGET_OVERHEAD_MS = 300


# ------------------------------------------------------------------------------------------------
# Shared helpers


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def states(client: ControlClient) -> dict[str, str]:
    return {r["name"]: r["state"] for r in client.list_instances()}


def start_all(client: ControlClient, names: list[str], timeout: float) -> float:
    t0 = time.monotonic()
    for name in names:
        client.action(name, "start", wait=False)
    try:
        wait_for(lambda: all(s == "running" for s in states(client).values()), timeout, "every instance running", 1)
    except TimeoutError:
        rows = client.list_instances()
        print(f"states: {Counter(r['state'] for r in rows)}", file=sys.stderr)
        for r in rows:
            if r["state"] != "running":
                print(f"  {r['name']}: {r['state']}: {r.get('state_reason')}", file=sys.stderr)
        raise
    return time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def caddy_pid(fleet: FleetHarness) -> int:
    """The fleet's Caddy: the caddy process whose command line names the fleet's root."""
    root = str(fleet.root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and Path(argv[0]).name == "caddy" and any(root in a for a in argv):
            return int(entry.name)
    raise RuntimeError(f"no Caddy of the fleet at {root}")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------------------------------------
# a. Wake latency


def browser_wake(https_port: int, host: str, ca: Path) -> dict[str, float]:
    """A browser's first visit to a sleeping instance: the waiting page, its refresh to the held wait,
    the 303, Foundry's page. Returns wall-clock marks (time.time(), the clock the fleet's events use)."""
    marks = {"visit": time.time()}
    with httpx.Client(verify=tls_context(ca), timeout=60) as c:
        def get(path: str) -> httpx.Response:
            return c.get(f"https://127.0.0.1:{https_port}{path}", headers={"Host": host, **HTML},
                         extensions={"sni_hostname": host})

        page = get("/-/")
        marks["page"] = time.time()
        assert page.status_code == 503 and "Starting your table" in page.text, (page.status_code, page.text[:300])
        (wait_url,) = REFRESH.findall(page.text)
        landed = get(html.unescape(wait_url))
        marks["redirect"] = time.time()
        assert landed.status_code == 303, (landed.status_code, landed.text[:300])
        foundry = get(landed.headers["location"])
        marks["foundry"] = time.time()
        assert foundry.status_code == 200 and "Foundry Virtual Tabletop" in foundry.text, foundry.status_code
    return marks


def last_event_at(client: ControlClient, name: str, action: str, since: float) -> float:
    found = [e["at"] for e in client.events(target=name, limit=50) if e["action"] == action and e["at"] >= since]
    if not found:
        raise RuntimeError(f"no {action} event for {name} since the visit")
    return found[-1]


def asleep_and_routed(client: ControlClient, name: str) -> bool:
    return client.get_instance(name)["state"] == "sleeping" and client.status()["edge"]["in_sync"]


def wake_latency(cycles: int) -> None:
    load_before = load_average()
    # Quick sleep so the cycles follow each other: idle after 2 s, idle checks (and health checks) every 1 s.
    overrides = {'idle_after = "60min"': 'idle_after = "2s"', "health_interval = 15.0": "health_interval = 1.0"}
    name = "sleeper"
    with bench_fleet("ff-bench-wake-", PORT_LOW["wake"], overrides=overrides) as fleet:
        client = ControlClient(fleet.socket)
        https_port, ca = fleet.settings().edge.https_port, local_ca(fleet.root)
        host = fleet.settings().host_for(name)
        # The anchor runs the very same unpacked release, straight from the cache.
        entry = next((fleet.root / "releases").glob("versions/13.345/**/main.js"))
        client.create_instance(name=name, release="13.345", start=True)
        wakes, anchors, loads_cycle, loads_wake = [], [], [], []
        phases: dict[str, list[float]] = {k: [] for k in ("page", "wake", "spawn", "healthy", "redirect", "foundry")}
        wait_for(lambda: asleep_and_routed(client, name), 30, f"{name} asleep")
        loads_asleep = client.status()["edge"]["config_loads"]
        for _ in range(cycles):
            anchors.append(bare_start(entry, fleet.root, poll=0.005))  # the app's own start
            time.sleep(0.5)
            marks = browser_wake(https_port, host, ca)
            loads_woken = client.status()["edge"]["config_loads"]
            t0 = marks["visit"]
            wakes.append(marks["foundry"] - t0)
            for key in ("page", "redirect", "foundry"):
                phases[key].append(marks[key] - t0)
            for key, action in (("wake", "instance.wake"), ("spawn", "instance.spawn"), ("healthy", "instance.healthy")):
                phases[key].append(last_event_at(client, name, action, t0) - t0)
            wait_for(lambda: asleep_and_routed(client, name), 30, f"{name} asleep again")
            loads_now = client.status()["edge"]["config_loads"]
            loads_wake.append(loads_woken - loads_asleep)
            loads_cycle.append(loads_now - loads_asleep)
            loads_asleep = loads_now
        client.close()

    ms = 1000.0
    wake_median, anchor_median = statistics.median(wakes), statistics.median(anchors)
    overhead = wake_median - anchor_median
    print(f"machine: {describe()}; load average at the start {load_before}, at the end {load_average()}")
    print(f"cycles: {cycles}; HTTPS through Caddy with the fleet's local CA, a new connection per cycle, "
          "Accept: text/html; idle_after 2s, health/idle checks every 1 s")
    print(f"app start (node directly, 5 ms poll) : median {anchor_median * ms:6.1f} ms, p90 {percentile(anchors, 90) * ms:6.1f} ms")
    print(f"wake latency (visit -> Foundry page) : median {wake_median * ms:6.1f} ms, p90 {percentile(wakes, 90) * ms:6.1f} ms, "
          f"max {max(wakes) * ms:6.1f} ms")
    met = "met" if overhead * ms <= TARGET_OVERHEAD_MS else "NOT met"
    print(f"fleet overhead (wake - app start)    : {overhead * ms:6.1f} ms   (target <= {TARGET_OVERHEAD_MS} ms: {met})")
    print(f"ratio wake / app start               : {wake_median / anchor_median:.2f}x")
    print(f"edge config loads per sleep/wake cycle: {sorted(set(loads_cycle))} (per cycle: {loads_cycle}; "
          f"of which at the wake: {sorted(set(loads_wake))}); target 2")
    print("where the time goes (median ms after the visit's first request; wake/spawn/healthy from the fleet's events):")
    labels = {
        "wake": "instance.wake recorded (the start asked for)",
        "page": "waiting page received",
        "spawn": "instance.spawn recorded (sandbox made, process started)",
        "healthy": "instance.healthy recorded (status answered)",
        "redirect": "303 received (edge pushed, wait answered)",
        "foundry": "Foundry's page received",
    }
    previous = 0.0
    for key, label in labels.items():
        at = statistics.median(phases[key])
        print(f"  {label:58s}: {at * ms:7.1f}   (+{(at - previous) * ms:6.1f})")
        previous = at


# ------------------------------------------------------------------------------------------------
# b. Density


def host_used_mb() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def cgroup_memory_mb(parent: str) -> tuple[float, float]:
    """The fleet's cgroup parent: (usage, anonymous memory) in MB; cgroup v2 or v1's memory hierarchy."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        group, usage_file, anon_key = root / parent, "memory.current", "anon"
    else:
        group, usage_file, anon_key = root / "memory" / parent, "memory.usage_in_bytes", "total_rss"
    usage = int((group / usage_file).read_text())
    stat = dict(line.split() for line in (group / "memory.stat").read_text().splitlines())
    return usage / 2**20, int(stat[anon_key]) / 2**20


def memory_sample(parent: str, baseline: float, samples: int = 5) -> tuple[float, float, float]:
    """Median of a few looks a second apart: (host used above the baseline, cgroup usage, cgroup anon)."""
    host, usage, anon = [], [], []
    for _ in range(samples):
        host.append(host_used_mb() - baseline)
        u, a = cgroup_memory_mb(parent)
        usage.append(u)
        anon.append(a)
        time.sleep(1)
    return statistics.median(host), statistics.median(usage), statistics.median(anon)


def density(instances: int, in_use: int, hold_mb: int) -> None:
    load_before = load_average()
    overrides = {'idle_after = "60min"': 'idle_after = "off"', "health_interval = 15.0": "health_interval = 2.0"}
    names = [f"d{i}" for i in range(instances)]
    used = names[:in_use]
    with bench_fleet("ff-bench-density-", PORT_LOW["density"], overrides=overrides) as fleet, ExitStack() as sockets:
        client = ControlClient(fleet.socket)
        https_port, ca = fleet.settings().edge.https_port, local_ca(fleet.root)
        host_for = fleet.settings().host_for
        parent = fleet.cgroup_parent
        time.sleep(3)
        baseline = host_used_mb()  # the daemon and Caddy up, no instance
        for name in names:
            client.create_instance(name=name, release="13.345", start=False)
            (fleet.root / "instances" / name / "data" / "hold-memory-mb").write_text(f"{hold_mb}\n")
        took = start_all(client, names, 600)
        ws = [sockets.enter_context(wss(https_port, host_for(n), "/-/socket.io/?EIO=4&transport=websocket", ca))
              for n in used]
        for w in ws:
            w.send("in use")
            assert w.recv(timeout=10) == "in use"
        time.sleep(5)
        awake = memory_sample(parent, baseline)
        awake_states = states(client)

        # The same fleet, the same instances and players: now each sleeps after 3 s idle.
        for name in names:
            client.set_idle_after(name, "3s")
        t0 = time.monotonic()
        wait_for(lambda: sum(s == "sleeping" for s in states(client).values()) == instances - in_use, 180,
                 "the instances nobody uses asleep", 1)
        fell_asleep = time.monotonic() - t0
        time.sleep(5)
        asleep = memory_sample(parent, baseline)
        asleep_states = states(client)
        for w in ws:  # the players are still there
            w.send("still here")
            assert w.recv(timeout=10) == "still here"
        client.close()

    assert all(s == "running" for s in awake_states.values()), awake_states
    assert all(asleep_states[n] == "running" for n in used), asleep_states
    assert sum(s == "sleeping" for s in asleep_states.values()) == instances - in_use, asleep_states
    print(f"machine: {describe()}; load average at the start {load_before}, at the end {load_average()}")
    print(f"{instances} instances, each holding {hold_mb} MB (hold-memory-mb), {in_use} in use (a wss connection "
          f"through the edge each); all started in {took:.0f} s; the {instances - in_use} others asleep "
          f"{fell_asleep:.0f} s after idle_after 3s was set; host baseline (daemon and Caddy up) {baseline:.0f} MB")
    print(f"{'':38s} {'host used - baseline':>21s} {'fleet cgroup usage':>19s} {'fleet cgroup anon':>18s}")
    print(f"{'no sleep: all ' + str(instances) + ' running (anchor)':38s} {awake[0]:18.0f} MB {awake[1]:16.0f} MB "
          f"{awake[2]:15.0f} MB")
    print(f"{'sleep: ' + str(in_use) + ' running, ' + str(instances - in_use) + ' asleep':38s} {asleep[0]:18.0f} MB "
          f"{asleep[1]:16.0f} MB {asleep[2]:15.0f} MB")
    ratios = [a / s for a, s in zip(awake, asleep, strict=True)]
    met = "met" if min(ratios) >= 5 else "NOT met"
    print(f"{'ratio no sleep / sleep':38s} {ratios[0]:20.1f}x {ratios[1]:18.1f}x {ratios[2]:17.1f}x"
          f"   (target >= 5x: {met})")


# ------------------------------------------------------------------------------------------------
# c. Idle detection cost


def round_fixed_part(fleet: FleetHarness, caddy: int, calls: int = 200) -> tuple[float, float, float]:
    """What every idle round does whatever idle_after says (services/idle_watch.py): read the running
    instances, ask Caddy for its upstreams. Timed here with the daemon's own code, `calls` times:
    (CPU ms per round in this process, in Caddy, wall ms per round)."""
    engine = create_engine(f"sqlite:///{fleet.root / 'state' / 'fleet.sqlite'}")
    records = IdleRecords(sessionmaker(engine))
    admin = CaddyAdmin(fleet.root / "run" / "caddy-admin.sock")
    try:
        records.running()
        admin.upstreams()
        c0, k0, t0 = time.process_time(), cpu_seconds(caddy), time.perf_counter()
        for _ in range(calls):
            rows = records.running()
            upstreams = admin.upstreams()
        c1, k1, t1 = time.process_time(), cpu_seconds(caddy), time.perf_counter()
    finally:
        admin.close()
        engine.dispose()
    assert rows and upstreams
    return 1000 * (c1 - c0) / calls, 1000 * (k1 - k0) / calls, 1000 * (t1 - t0) / calls


def judged_idle(fleet: FleetHarness) -> int:
    """How many instances idle detection has marked idle (their `idle_since` set): all of them while it
    is on (no one uses them), none while it is off."""
    db = sqlite3.connect(f"file:{fleet.root / 'state' / 'fleet.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM instances WHERE idle_since IS NOT NULL").fetchone()[0]
    finally:
        db.close()


def snapshot_count(client: ControlClient) -> int:
    return sum(i["snapshots"] for i in client.backup_status(None)["instances"])


def idle_cost(registered: int, seconds: float, windows: int) -> None:
    load_before = load_average()
    # The fleet says off; each instance's own setting switches idle detection on (2h: nothing falls
    # asleep during the run, yet every round judges every instance) and off, on the same daemon.
    overrides = {'idle_after = "60min"': 'idle_after = "off"'}
    names = [f"r{i}" for i in range(registered)]
    with bench_fleet("ff-bench-idlecost-", PORT_LOW["idle"], instance_ports=registered + 50,
                     overrides=overrides) as fleet:
        client = ControlClient(fleet.socket)
        interval = fleet.settings().supervisor.health_interval
        daemon = fleet.daemons[-1].pid
        caddy = caddy_pid(fleet)
        for name in names:
            client.create_instance(name=name, release="13.345", start=False)
        took = start_all(client, names, 900)
        # Past the first backup round, which snapshots every new instance once: steady state.
        wait_for(lambda: all(i["snapshots"] for i in client.backup_status(None)["instances"]), 300,
                 "the first snapshot of every instance", 5)
        time.sleep(5)
        snapshots = snapshot_count(client)
        results: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
        judged: dict[str, list[int]] = {"on": [], "off": []}
        for w in range(windows):
            order = (("on", "2h"), ("off", "off"))
            for mode, setting in order if w % 2 == 0 else order[::-1]:  # on off off on ...: a drift evens out
                for name in names:
                    client.set_idle_after(name, setting)
                time.sleep(interval + 2)  # a round under the new setting before the window
                d0, k0, t0 = cpu_seconds(daemon), cpu_seconds(caddy), time.monotonic()
                time.sleep(seconds)
                d1, k1, t1 = cpu_seconds(daemon), cpu_seconds(caddy), time.monotonic()
                results[mode].append((100 * (d1 - d0) / (t1 - t0), 100 * (k1 - k0) / (t1 - t0)))
                judged[mode].append(judged_idle(fleet))
        still_running = sum(s == "running" for s in states(client).values())
        snapshots_after = snapshot_count(client)
        fixed = round_fixed_part(fleet, caddy)
        client.close()

    assert still_running == registered, f"only {still_running} of {registered} running at the end"
    print(f"machine: {describe()}; load average at the start {load_before}, at the end {load_average()}")
    print(f"{registered} instances registered and running (started in {took:.0f} s); health checks and idle "
          f"rounds every {interval:g} s (the default); CPU of the daemon's process (utime+stime) and of Caddy's, "
          f"{windows} windows of {seconds:g} s per setting, in the order on off off on ...")
    print(f"instances judged idle at the end of each window: on {judged['on']}, off {judged['off']}")
    if snapshots_after != snapshots:
        print(f"note: a backup slot began during the windows ({snapshots} -> {snapshots_after} snapshots)")
    for mode, label in (("off", "idle_after off on every instance (anchor)"), ("on", "idle_after 2h on every instance")):
        per = ", ".join(f"{d:.2f} %" for d, _ in results[mode])
        caddy_per = ", ".join(f"{k:.2f} %" for _, k in results[mode])
        print(f"{label:44s}: daemon {statistics.mean(d for d, _ in results[mode]):5.2f} % ({per}); "
              f"Caddy {statistics.mean(k for _, k in results[mode]):5.2f} % ({caddy_per})")
    on = statistics.mean(d for d, _ in results["on"])
    off = statistics.mean(d for d, _ in results["off"])
    met = "met" if on - off < 1 else "NOT met"
    print(f"idle detection on - off (daemon)            : {on - off:+5.2f} % of a core   (target < 1 %: {met}); "
          f"ratio on / off {on / off:.2f}x")
    per_round = fixed[0] + fixed[1]
    print(f"a round's fixed part (done on and off alike: read the running instances, Caddy's upstreams), timed with "
          f"the daemon's code: {fixed[0]:.2f} ms CPU here + {fixed[1]:.2f} ms in Caddy, {fixed[2]:.2f} ms wall, "
          f"per round: {100 * per_round / 1000 / interval:.3f} % of a core at one round per {interval:g} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wake", action="store_true", help="wake latency only (with the others given: those)")
    ap.add_argument("--density", action="store_true", help="memory with and without sleep")
    ap.add_argument("--idle-cost", action="store_true", help="the daemon's CPU with idle detection on and off")
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--instances", type=int, default=50)
    ap.add_argument("--in-use", type=int, default=5)
    ap.add_argument("--hold-mb", type=int, default=150)
    ap.add_argument("--registered", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--windows", type=int, default=2)
    args = ap.parse_args()
    every = not (args.wake or args.density or args.idle_cost)
    if every or args.wake:
        print("-- wake latency", flush=True)
        wake_latency(args.cycles)
    if every or args.density:
        print("-- density", flush=True)
        density(args.instances, args.in_use, args.hold_mb)
    if every or args.idle_cost:
        print("-- idle detection cost", flush=True)
        idle_cost(args.registered, args.seconds, args.windows)


if __name__ == "__main__":
    main()
