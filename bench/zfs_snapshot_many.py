"""ZFS snapshots of a whole fleet: `ZfsSnapshots.take_many` for every instance, against one command each.

When the targets are every instance, `take_many` runs one `zfs snapshot -r <base>/instances@name`
(atomic across the fleet), then reads each instance's snapshot back. The naive way, timed in the same
run on the same datasets, is one `zfs snapshot <base>/instances/<id>/data@name` per instance. For
reference, `take_many` on all but one instance (the path that runs one `zfs snapshot -r` per instance) is
timed too.

Target (issue: ZFS and backups): a snapshot of 100 instances in <= 2 s on zfs-fuse.
Run: .venv/bin/python bench/zfs_snapshot_many.py [--instances 100 --rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from foundry_fleet.storage.trees import remove_tree  # noqa: E402
from foundry_fleet.storage.zfs import ZfsStorage  # noqa: E402
from foundry_fleet.storage.zfs_cmd import ZfsRunner  # noqa: E402
from tests.support.zfs import make_file_pool, why_zfs_cannot_run  # noqa: E402

TARGET_SECONDS = 2.0


class TimedRunner(ZfsRunner):
    """A ZfsRunner that adds up the wall time of each zfs verb (snapshot, get, list, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.spent: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def run(self, argv: Sequence[str]) -> str:
        t0 = time.perf_counter()
        try:
            return super().run(argv)
        finally:
            verb = str(argv[1]) if len(argv) > 1 else str(argv[0])
            self.spent[verb] = self.spent.get(verb, 0.0) + time.perf_counter() - t0
            self.calls[verb] = self.calls.get(verb, 0) + 1

    def reset(self) -> None:
        self.spent.clear()
        self.calls.clear()


def fill(data: Path, files: int, file_kb: int) -> None:
    d = data / "Data" / "worlds" / "w"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (d / f"chunk{i}.db").write_bytes(os.urandom(file_kb * 1024))


def snapshot_count(base: str) -> int:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", base],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=4, help="files per instance")
    ap.add_argument("--file-kb", type=int, default=64)
    args = ap.parse_args()
    reason = why_zfs_cannot_run()
    if reason is not None:
        sys.exit(f"no ZFS here: {reason}")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="ff-bench-zsnap-"))
    pool = None
    try:
        pool = make_file_pool(work, size="1G")
        base = f"{pool.name}/fleet"
        runner = TimedRunner()
        storage = ZfsStorage(work / "fleet", base, runner=runner)
        t0 = time.perf_counter()
        storage.ensure_layout()
        names = [f"i{n:03d}" for n in range(args.instances)]
        targets = []
        for name in names:
            paths = storage.create_instance(name)
            fill(paths.data, args.files, args.file_kb)
            targets.append((name, paths.data))
        t_layout = time.perf_counter() - t0
        subprocess.run(["sync"], check=True)

        fleet_times: list[float] = []
        naive_times: list[float] = []
        subset_times: list[float] = []
        breakdown: list[tuple[dict[str, float], dict[str, int]]] = []
        for r in range(args.rounds):
            runner.reset()
            t0 = time.perf_counter()
            infos = storage.snapshots.take_many(targets, f"fleet-{r}")
            fleet_times.append(time.perf_counter() - t0)
            breakdown.append((dict(runner.spent), dict(runner.calls)))
            assert len(infos) == len(names) and all(i.name == f"fleet-{r}" for i in infos)
            t0 = time.perf_counter()
            for name in names:
                subprocess.run(["zfs", "snapshot", f"{storage.layout.data(name)}@naive-{r}"],
                               check=True, capture_output=True, stdin=subprocess.DEVNULL)
            naive_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            storage.snapshots.take_many(targets[1:], f"subset-{r}")
            subset_times.append(time.perf_counter() - t0)
        for name in names[:3] + names[-3:]:
            got = sorted(storage.snapshots.names(name))
            want = sorted(f"{kind}-{r}" for r in range(args.rounds) for kind in ("fleet", "naive", "subset")
                          if kind != "subset" or name != names[0])
            assert got == want, (name, got)
        total_snaps = snapshot_count(base)

        med_f, med_n = statistics.median(fleet_times), statistics.median(naive_times)
        med_s = statistics.median(subset_times)
        mid = sorted(range(args.rounds), key=lambda i: fleet_times[i])[args.rounds // 2]
        spent, calls = breakdown[mid]
        print(f"machine: {describe()}; load average (1 min) {load_before:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after")
        print(f"pool: {pool.name} on a sparse file (zfs-fuse), {args.instances} instances, "
              f"each {args.files} files x {args.file_kb} KiB; layout made in {t_layout:.1f} s")
        print(f"rounds: {args.rounds} (a new snapshot name each round); snapshots afterwards: {total_snaps}")
        print(f"fleet take_many (one `snapshot -r` of all): median {med_f * 1000:7.0f} ms  "
              f"min {min(fleet_times) * 1000:7.0f} ms  max {max(fleet_times) * 1000:7.0f} ms")
        print("  median round's zfs commands: " + ", ".join(
            f"{verb} x{calls[verb]} {spent[verb] * 1000:.0f} ms" for verb in sorted(spent, key=lambda v: -spent[v])))
        print(f"naive, {args.instances} x `zfs snapshot <data>@x`: median {med_n * 1000:7.0f} ms  "
              f"min {min(naive_times) * 1000:7.0f} ms  max {max(naive_times) * 1000:7.0f} ms  "
              f"({med_n / args.instances * 1000:.1f} ms per command)")
        print(f"take_many for {args.instances - 1} of them (one `snapshot -r` per instance): "
              f"median {med_s * 1000:7.0f} ms  min {min(subset_times) * 1000:7.0f} ms")
        print(f"ratio naive / fleet (medians): {med_n / med_f:.1f}x; "
              f"naive / the fleet's one snapshot command alone: {med_n / spent['snapshot']:.1f}x")
        verdict = "PASS" if med_f <= TARGET_SECONDS else "FAIL"
        print(f"target <= {TARGET_SECONDS:.0f} s for {args.instances} instances: {verdict} "
              f"(median {med_f:.2f} s)")
    finally:
        if pool is not None:
            pool.destroy()
        remove_tree(work)


if __name__ == "__main__":
    main()
