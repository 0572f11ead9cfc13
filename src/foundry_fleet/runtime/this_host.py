"""The one node of a single-host runtime (local, podman, fake): this machine, as `status` shows it and
as the cluster verbs (`data_node`, `watch_address`) answer for it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from foundry_fleet.runtime.base import Address, NodeInfo


def this_host_name() -> str:
    """Where every instance's data is on a single-host runtime."""
    return socket.gethostname()


async def never_moves(current: Address) -> Address:
    """`watch_address` of a task on this host: it never answers anywhere else, so this waits for ever
    (the supervisor cancels it with the task)."""
    await asyncio.Event().wait()
    return current


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
    return NodeInfo(name=this_host_name(), address=address, healthy=True, status="ready",
                    instances=instances, free_memory_mb=available_memory_mb())
