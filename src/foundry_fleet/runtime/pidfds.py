"""Signalling processes and waiting for them to exit, without polling: pidfds on the event loop."""

from __future__ import annotations

import asyncio
import os

from foundry_fleet.runtime import procfs


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pidfd_of(pid: int, start: int | None) -> int | None:
    """A pidfd for the process, or None when it is gone (or the pid now belongs to another one)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Checked after opening: the pidfd now pins this exact process.
    if not procfs.is_alive(pid, start):
        os.close(fd)
        return None
    return fd


async def wait_readable(fds: list[int], timeout: float | None) -> set[int]:
    """Wait until any of `fds` is readable (pidfds: the process exited); empty on timeout."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    ready: set[int] = set()

    def mark(fd: int) -> None:
        ready.add(fd)
        if not done.done():
            done.set_result(None)

    for fd in fds:
        loop.add_reader(fd, mark, fd)
    try:
        if timeout is None:
            await done
        elif timeout > 0:
            await asyncio.wait_for(asyncio.shield(done), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        for fd in fds:
            loop.remove_reader(fd)
    return ready
