"""The one node of a single-host runtime, as `status` shows it: this machine and its free memory."""

from __future__ import annotations

import socket
from pathlib import Path

from foundry_fleet.runtime.base import NodeInfo


def available_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable (what new processes can have without swapping), in MiB; None when unreadable."""
    try:
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "MemAvailable":
                return int(rest.split()[0]) // 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def this_host_node(instances: int, address: str = "127.0.0.1") -> NodeInfo:
    return NodeInfo(name=socket.gethostname(), address=address, healthy=True, status="ready",
                    instances=instances, free_memory_mb=available_memory_mb())
