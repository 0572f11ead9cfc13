"""Thinning decision over 100,000 snapshot names (znapzend's rule), and the naive way beside it.

Target (issue: ZFS and backups): <= 1 s for 100,000 names. The naive way parses each name with
datetime.strptime; the fleet compiles the time format into one regular expression once.
Run: .venv/bin/python bench/thinning.py [--names 100000]
"""

from __future__ import annotations

import argparse
import calendar
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.domain.backup_plan import TimeFormat, parse_plan, thin  # noqa: E402


class StrptimeFormat(TimeFormat):
    """The naive parser: the standard library's strptime for every name."""

    def parse(self, name: str) -> float | None:
        try:
            return float(calendar.timegm(datetime.strptime(name, self.fmt.rstrip("Z") + "Z").timetuple()))
        except ValueError:
            return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    plan = parse_plan("7d=>15min,30d=>1h,90d=>1d,1y=>1w,10y=>1m")
    fmt, naive_fmt = TimeFormat(), StrptimeFormat()
    now = 1_795_000_000.0
    # One snapshot every 5 minutes going back far enough for 100,000 names (about a year), plus a few manual ones.
    names = [fmt.name(now - i * 300) for i in range(args.names - 10)] + [f"manual-{i}" for i in range(10)]
    fast, naive = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        result = thin(names, now, plan, fmt)
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        check = thin(names, now, plan, naive_fmt)
        naive.append(time.perf_counter() - t0)
        assert check.keep == result.keep and check.destroy == result.destroy
    f, n = statistics.median(fast), statistics.median(naive)
    print(f"machine: {describe()}")
    print(f"plan {plan}; {len(names)} names ({len(result.keep)} kept, {len(result.destroy)} to destroy); "
          f"median of {args.rounds}")
    print(f"fleet (compiled format) : {f * 1000:8.1f} ms   (target <= 1000 ms)")
    print(f"naive (strptime)        : {n * 1000:8.1f} ms")
    print(f"ratio                   : {n / f:8.1f}x faster")


if __name__ == "__main__":
    main()
