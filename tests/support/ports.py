"""Ports for tests' servers: blocks for fleets (instances, Caddy, web), single ports for lone servers."""

from __future__ import annotations

import errno
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

# Each test that listens gets its own slice of 100 ports, so a leftover from one test never collides
# with another. The slices lie below the kernel's ephemeral range (where outgoing connections take their
# local ports), and each is checked to be free before use: another program on the machine may hold
# a port, and the edge's Caddy would then refuse to start.
_BLOCK = 100
_USED_OFFSETS = [*range(0, 50), 80, 81, 82]


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _block_is_free(low: int) -> bool:
    for offset in _USED_OFFSETS:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, low + offset))
                except OSError as e:
                    if e.errno == errno.EADDRINUSE:
                        return False
                    # A host without IPv6 cannot bind "::"; that says nothing about the port.
    return True


def _worker_share(starts: list[int]) -> list[int]:
    """This pytest-xdist worker's own blocks (every n-th, n the number of workers): a block that was free
    when one worker took it is never handed to another whose daemon has not bound its ports yet."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return starts
    return starts[int(worker[2:]) % count::count]


# The block single ports are being drawn from. It is held for as long as that takes (many tests), while
# the round of blocks can come past it again: a fleet given it would find its edge's port taken by a
# lone server (or the other way round), so the round skips it.
_singles_block: int | None = None


def _port_blocks() -> Iterator[int]:
    """Round and round this worker's share: a block comes again only after every other one has been
    given (by then the tests that had it are long over, and a block still in use is skipped)."""
    starts = _worker_share(list(range(10000, _ephemeral_start() - _BLOCK, _BLOCK)))
    first = random.randrange(len(starts))
    while True:
        given = 0
        for low in starts[first:] + starts[:first]:
            if low != _singles_block and _block_is_free(low):
                given += 1
                yield low
        if not given:
            raise RuntimeError("no free block of 100 ports left below the ephemeral range")


_PORT_BLOCKS = _port_blocks()


def port_block() -> int:
    """The lowest port of a free block of 100 that no other test of this worker has been given since its
    whole share last went round."""
    return next(_PORT_BLOCKS)


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Could a new server listen on host:port? (servers set SO_REUSEADDR, so TIME_WAIT does not count)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _single_ports() -> Iterator[int]:
    global _singles_block
    while True:
        low = port_block()
        _singles_block = low
        yield from (port for port in range(low, low + _BLOCK) if port_is_free(port))


_SINGLE_PORTS = _single_ports()


def single_port() -> int:
    """A free port for a lone server (a stand-in, a fake destination), not handed out again before its
    block comes round: from a block of this run's own, below the kernel's ephemeral range, so an outgoing
    connection can never be holding it by chance."""
    return next(_SINGLE_PORTS)


def host_address() -> str | None:
    """A non-loopback IPv4 address of this host (where an instance's outbound NAT can reach it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address
