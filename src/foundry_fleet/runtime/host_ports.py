"""Ports on this host: whether one is free for a new instance, as both host-bound runtimes decide it, and
who listens on one (for `doctor`: the edge's ports are free, or the fleet's own Caddy holds them)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def host_port_is_free(port: int, listen_host: str = "127.0.0.1") -> bool:
    """Nothing on this host listens on `port`, on `listen_host` (where the instance would be published)
    or any address (an instance given it would fail to start). SO_REUSEADDR as servers set it: a port in
    TIME_WAIT is free."""
    for host in (listen_host, "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


@dataclass(frozen=True)
class Listener:
    """A TCP socket listening on this host (in this process's network namespace)."""

    address: str  # the local address it listens on ("0.0.0.0", "::", "127.0.0.1", ...)
    port: int
    uid: int  # the socket's owner
    pids: tuple[int, ...]  # the processes holding it that this user may look into; () when none

    def holders(self, proc: Path = PROC) -> list[str]:
        """Each process holding it, as "name (pid N)"."""
        return [f"{process_name(pid, proc)} (pid {pid})" for pid in self.pids]


def listeners(port: int, proc: Path = PROC) -> list[Listener]:
    """Who listens on TCP `port`, on any address, IPv4 and IPv6: from /proc/net/tcp{,6}, each socket's
    holders found by its inode among the processes' open files. Holders this user may not look into
    (another user's, when not root) are missing from `pids`."""
    sockets: dict[int, tuple[str, int]] = {}  # inode -> (address, uid)
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 on this host
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            address, _, hex_port = fields[1].partition(":")
            if len(address) != width or int(hex_port, 16) != port:
                continue
            sockets[int(fields[9])] = (_address(address), int(fields[7]))
    holders = _holders(set(sockets), proc)
    return [Listener(address, port, uid, tuple(sorted(holders.get(inode, ()))))
            for inode, (address, uid) in sorted(sockets.items(), key=lambda item: item[1])]


def bind_error(port: int) -> int | None:
    """The errno a server of this user would meet listening on `port` on every address (EACCES for a
    port below net.ipv4.ip_unprivileged_port_start without root, EADDRINUSE when taken); None: it may."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as e:
            return e.errno
    return None


def process_name(pid: int, proc: Path = PROC) -> str:
    """A process's command name (its comm), or "?" when it is gone."""
    try:
        return (proc / str(pid) / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


def _address(hex_address: str) -> str:
    """/proc/net/tcp writes an address as 32-bit words in the host's byte order, each as hex."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] if sys.byteorder == "little" else raw[i:i + 4] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _holders(inodes: set[int], proc: Path) -> dict[int, set[int]]:
    """inode -> the pids with that socket among their open files."""
    found: dict[int, set[int]] = {}
    if not inodes:
        return found
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(entry / "fd")
        except OSError:  # gone, or another user's
            continue
        with fds:
            for fd in fds:
                try:
                    inode = wanted.get(os.readlink(fd.path))
                except OSError:
                    continue
                if inode is not None:
                    found.setdefault(inode, set()).add(int(entry.name))
    return found
