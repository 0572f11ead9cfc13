"""Uploading through the fleet's SFTP endpoint vs `cp` on the same disk (issue 16: >= 50 % of cp).

A 200 MB incompressible file goes into an instance's Data/ with OpenSSH's `sftp` client (through the
daemon's asyncssh server, chown included) and with `cp` into a folder beside it; both timings end with
os.sync(), so each counts the bytes reaching the disk, not only the page cache. Median of 3 rounds.
Each upload also reports the CPU seconds it cost the daemon and the client (sftp and its ssh): on a host
with few cores the two ends share them, and which one runs out first is what bounds the upload.

    .venv/bin/python bench/sftp_upload.py [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe  # noqa: E402

PORT_LOW = 28000  # below the ephemeral ports, apart from the other benches' blocks
SFTP_PORT = PORT_LOW + 103  # right above bench_fleet's edge ports


def timed(run: Callable[[], object]) -> float:
    os.sync()
    start = time.perf_counter()
    run()
    os.sync()
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User and system time of one process so far (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    overrides = {'enabled = false\nlisten = "0.0.0.0:2222"': f'enabled = true\nlisten = "127.0.0.1:{SFTP_PORT}"'}
    with bench_fleet("ff-bench-sftp-", PORT_LOW, overrides=overrides) as fleet:
        fleet.cli("instance", "create", "bench", "--release", "13.345", "--no-start")
        shown = fleet.cli("instance", "show", "bench", "--json").json()
        data = Path(shown["data_dir"]) / "Data"
        work = fleet.root.parent / "client"
        work.mkdir()
        key = work / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        fleet.cli("instance", "sftp-key", "add", "bench", f"{key}.pub")
        source = work / "upload.bin"
        with source.open("wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1024 * 1024))
        beside = work / "cp-target"
        beside.mkdir()
        (work / "batch").write_text("put upload.bin\n")
        sftp = ["sftp", "-b", "batch", "-P", str(SFTP_PORT), "-F", "/dev/null", "-i", str(key),
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "bench@127.0.0.1"]
        daemon = fleet.daemons[-1].pid
        cp_times, sftp_times, daemon_cpu, client_cpu = [], [], [], []
        for _ in range(args.rounds):
            (beside / "upload.bin").unlink(missing_ok=True)
            cp_times.append(timed(lambda: subprocess.run(["cp", str(source), str(beside / "upload.bin")],
                                                         check=True)))
            (data / "upload.bin").unlink(missing_ok=True)
            daemon_before, client_before = cpu_seconds(daemon), children_cpu_seconds()
            sftp_times.append(timed(lambda: subprocess.run(sftp, cwd=work, check=True, capture_output=True)))
            daemon_cpu.append(cpu_seconds(daemon) - daemon_before)
            client_cpu.append(children_cpu_seconds() - client_before)
            assert (data / "upload.bin").stat().st_size == args.mb * 1024 * 1024
        cp_s, sftp_s = statistics.median(cp_times), statistics.median(sftp_times)
        result = {"machine": describe(), "mb": args.mb, "rounds": args.rounds,
                  "cp_mb_s": round(args.mb / cp_s, 1), "sftp_mb_s": round(args.mb / sftp_s, 1),
                  "sftp_percent_of_cp": round(100 * cp_s / sftp_s, 1),
                  "cp_s": [round(t, 3) for t in cp_times], "sftp_s": [round(t, 3) for t in sftp_times],
                  "sftp_daemon_cpu_s": [round(t, 2) for t in daemon_cpu],
                  "sftp_client_cpu_s": [round(t, 2) for t in client_cpu],
                  "load_average": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(result, indent=2))
        print(f"cp {result['cp_mb_s']} MB/s, sftp {result['sftp_mb_s']} MB/s: "
              f"{result['sftp_percent_of_cp']} % of cp (target >= 50 %)")


if __name__ == "__main__":
    main()
