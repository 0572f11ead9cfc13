"""Run every benchmark in turn and print its figures (record them in bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "install_cost.py", "create_to_healthy.py", "daemon_idle.py",
    "edge_push.py", "edge_websockets.py", "edge_ttfb.py",
    "thinning.py", "snapshot_cost.py", "zfs_snapshot_many.py", "replication_bytes.py",
    "invite_to_healthy.py", "bot_interactions.py",
    "netns_overhead.py", "log_flood.py", "snapshot_safe_walk.py", "cli_latency.py",
    "standin_shutdown.py", "restic_offline.py", "runtime_local_timings.py", "podman_runtime.py",
    "nomad_runtime.py", "home_move.py", "unit_exposure.py", "sleep_wake.py",
    "sftp_upload.py", "sftp_transport_floor.py",
]

for script in SCRIPTS:
    print(f"\n== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
