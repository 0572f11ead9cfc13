"""How long `foundry-fleet` takes to answer, against a running daemon, beside Python's own floor.

Each command is a fresh process, as a person runs it: `--help`, `status` and `instance list` (both
ask the daemon), next to `python -c pass` and `python -c "import httpx"` (the client's one
dependency) measured in the same run. Target (issue 9): `status` and `instance list` <= 0.2 s median.

The code measured is whichever `foundry_fleet` PYTHONPATH names, so the same script measures another
checkout: PYTHONPATH=/work/main/src .venv/bin/python bench/cli_latency.py
Run: .venv/bin/python bench/cli_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe, percentile  # noqa: E402
from tests.support.harness import BIN  # noqa: E402

PORT_LOW = 52600  # above the blocks the test suite draws from, apart from other benches


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, env=env, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    # Bytecode cached as an installed package has it (pip compiles at install), kept out of the source
    # tree: without it every run would compile the fleet's own modules again.
    pycache = tempfile.mkdtemp(prefix="ff-bench-cli-pycache-")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPYCACHEPREFIX": pycache}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with bench_fleet("ff-bench-cli-", PORT_LOW) as fleet:
        fleet.cli("instance", "create", "alice", "--release", "13.345", "--no-start")
        cli = [str(BIN), "--config", str(fleet.config)]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import httpx"': [sys.executable, "-c", "import httpx"],
            "foundry-fleet --help": [*cli, "--help"],
            "foundry-fleet status": [*cli, "status"],
            "foundry-fleet instance list": [*cli, "instance", "list"],
        }
        for argv in commands.values():
            timed(argv, env)  # warm the page cache and the bytecode
        times: dict[str, list[float]] = {label: [] for label in commands}
        for _ in range(args.runs):  # interleaved, so a busy moment weighs on every command alike
            for label, argv in commands.items():
                times[label].append(timed(argv, env))
    shutil.rmtree(pycache, ignore_errors=True)
    print(f"machine: {describe()}")
    print(f"code: {os.environ.get('PYTHONPATH') or 'installed package'}; {args.runs} runs each, daemon running")
    print(f"{'command':<30} {'median':>9} {'p90':>9}")
    for label, values in times.items():
        print(f"{label:<30} {statistics.median(values) * 1000:7.0f} ms {percentile(values, 90) * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
