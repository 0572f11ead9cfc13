"""The daemon's /health latency while an instance floods its output: the log writer vs the old way.

Issue 8, attack 6: a tenant wrote 3 GiB to stdout in 4 s; the daemon copied the log on its event loop
(every 30 s) and its /health took 15 s to answer. Target: /health within 100 ms during a flood.

Each run is a real fleet with one instance; `yes ... | head -c <flood>` is written onto the server's own
stdout (its fd 1 reopened through /proc, with O_APPEND, as root: before the log writer, fd 1 was the
root-owned log file, which the tenant's own shell could not reopen, only node itself write to), and the
fleet's web endpoint (`GET /health` on web_port) is polled for the whole window, each poll on a new
connection as a monitor's probe would. (tests/e2e/test_log_flood.py runs the flood from inside the instance.) The anchor ("old way") is the same fleet and
flood run by the source as it was before the log writer (taken from git: the parent of the commit that
added runtime/log_writer.py), whose server wrote straight into foundry.log and whose daemon rotated it by
copying, on its event loop, every 30 s. The window is longer than 30 s so one such rotation falls in it.

Each run first polls as long without a flood: on a shared machine that is the noise the flood is
compared with.

Run: .venv/bin/python bench/log_flood.py [--flood-gib 3 --seconds 45] [--skip-old]
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe, percentile  # noqa: E402

WRITER = "runtime/log_writer.py"


def old_source(work: Path) -> Path:
    """src/ as it was before the log writer, unpacked under `work`."""
    added = subprocess.run(["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--",
                            f"src/foundry_fleet/{WRITER}"], capture_output=True, text=True, check=True)
    first = added.stdout.split()[-1]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", f"{first}^", "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
    return work / "src"


@contextmanager
def source(src: Path):
    """Every fleet process started meanwhile (CLI, daemon) imports foundry_fleet from `src`."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def dir_bytes(directory: Path) -> int:
    total = 0
    for entry in directory.iterdir() if directory.exists() else ():
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            pass
    return total


def writer_usage(log: Path) -> tuple[float, float] | None:
    """RSS (MiB) and CPU seconds of the log writer for `log`, if there is one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str(log).encode() not in (entry / "cmdline").read_bytes():
                continue
            rss = next(int(line.split()[1]) for line in (entry / "status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, StopIteration):
            continue
        return rss / 1024, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def health(port: int) -> float:
    """Seconds for one GET /health on a new connection."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", "/health")
        answer = conn.getresponse()
        answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"/health answered {answer.status}")
    return time.perf_counter() - t0


def run(label: str, port_low: int, flood_bytes: int, seconds: float, quiet_seconds: float) -> dict[str, object]:
    with bench_fleet(f"ff-bench-flood-{label}-", port_low) as fleet:
        inst = fleet.cli("instance", "create", "flood", "--release", "13.345", "--json").json()["instance"]
        web_port = fleet.settings().edge.web_port
        logs = fleet.root / "logs" / "instances" / "flood"
        log = logs / "foundry.log"
        time.sleep(1)
        quiet: list[float] = []
        deadline = time.monotonic() + quiet_seconds
        while time.monotonic() < deadline:
            quiet.append(health(web_port))
            time.sleep(0.02)
        flooder = subprocess.Popen(
            ["/bin/sh", "-c", f"yes 'flood flood flood flood flood flood flood' | head -c {flood_bytes} "
                              f">> /proc/{inst['pid']}/fd/1"],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        latencies: list[float] = []
        peak = 0
        writer = None
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                peak = max(peak, dir_bytes(logs))
                latencies.append(health(web_port))
                writer = writer_usage(log) or writer
                time.sleep(0.02)
            peak = max(peak, dir_bytes(logs))
            status = http.client.HTTPConnection("127.0.0.1", inst["port"], timeout=60)
            status.request("GET", "/-/api/status")
            serving = status.getresponse().status
        finally:
            os.killpg(flooder.pid, signal.SIGKILL)
            flooder.wait()
    return {"latencies": latencies, "quiet": quiet, "peak": peak, "writer": writer, "serving": serving}


def figures(seconds: list[float]) -> str:
    lat = [x * 1000 for x in seconds]
    return (f"/health p50 {percentile(lat, 50):8.2f} ms  p99 {percentile(lat, 99):8.2f} ms  "
            f"max {max(lat):9.2f} ms  ({len(lat)} polls)")


def show(label: str, result: dict[str, object]) -> None:
    print(f"{label:<28}: {figures(result['quiet'])}  (before the flood)")  # type: ignore[arg-type]
    print(f"{'':<28}  {figures(result['latencies'])}  (flood); log dir peak "  # type: ignore[arg-type]
          f"{result['peak'] / 2**20:.1f} MiB; instance status {result['serving']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flood-gib", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--quiet-seconds", type=float, default=None,
                    help="polls before the flood, the machine's own noise (default: as long as the flood)")
    ap.add_argument("--skip-old", action="store_true", help="measure the log writer only")
    args = ap.parse_args()
    flood = int(args.flood_gib * 2**30)
    quiet = args.seconds if args.quiet_seconds is None else args.quiet_seconds

    with source(ROOT / "src"):
        new = run("new", 54000, flood, args.seconds, quiet)
    old = None
    if not args.skip_old:
        with tempfile.TemporaryDirectory(prefix="ff-bench-old-src-") as work, source(old_source(Path(work))):
            old = run("old", 54200, flood, args.seconds, quiet)

    print(f"machine: {describe()}")
    print(f"flood: {args.flood_gib:g} GiB of 44-byte lines onto the server's stdout; /health polled every 20 ms "
          f"for {args.seconds:g} s, a new connection each; default [logs] (10 MiB, keep 5)")
    show("log writer", new)
    if new["writer"]:
        rss, cpu = new["writer"]  # type: ignore[misc]
        print(f"{'':<28}  log writer process: RSS {rss:.1f} MiB, CPU {cpu:.2f} s over the window")
    if old is not None:
        show("old way (copy on the loop)", old)
        n, o = new["latencies"], old["latencies"]
        print(f"ratio old / new: p50 {percentile(o, 50) / percentile(n, 50):.1f}x, "  # type: ignore[arg-type]
              f"p99 {percentile(o, 99) / percentile(n, 99):.1f}x, max {max(o) / max(n):.1f}x")  # type: ignore[arg-type]
    print("target: /health within 100 ms during a flood (max above)")


if __name__ == "__main__":
    main()
