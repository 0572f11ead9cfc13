"""Uploading through the fleet's SFTP endpoint vs `cp` on the same disk (issue 16: >= 50 % of cp).

A 200 MB incompressible file goes into an instance's Data/ with OpenSSH's `sftp` client (through the
daemon's asyncssh server, chown included) and with `cp` into a folder beside it; both timings end with
os.sync(), so each counts the bytes reaching the disk, not only the page cache. Median of 3 rounds.

    .venv/bin/python bench/sftp_upload.py [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
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
        cp_times, sftp_times = [], []
        for _ in range(args.rounds):
            (beside / "upload.bin").unlink(missing_ok=True)
            cp_times.append(timed(lambda: subprocess.run(["cp", str(source), str(beside / "upload.bin")],
                                                         check=True)))
            (data / "upload.bin").unlink(missing_ok=True)
            sftp_times.append(timed(lambda: subprocess.run(sftp, cwd=work, check=True, capture_output=True)))
            assert (data / "upload.bin").stat().st_size == args.mb * 1024 * 1024
        cp_s, sftp_s = statistics.median(cp_times), statistics.median(sftp_times)
        result = {"machine": describe(), "mb": args.mb, "rounds": args.rounds,
                  "cp_mb_s": round(args.mb / cp_s, 1), "sftp_mb_s": round(args.mb / sftp_s, 1),
                  "sftp_percent_of_cp": round(100 * cp_s / sftp_s, 1),
                  "cp_s": [round(t, 2) for t in cp_times], "sftp_s": [round(t, 2) for t in sftp_times]}
        print(json.dumps(result, indent=2))
        print(f"cp {result['cp_mb_s']} MB/s, sftp {result['sftp_mb_s']} MB/s: "
              f"{result['sftp_percent_of_cp']} % of cp (target >= 50 %)")


if __name__ == "__main__":
    main()
