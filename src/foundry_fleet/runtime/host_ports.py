"""Whether a port on this host is free for a new instance, as both host-bound runtimes decide it."""

from __future__ import annotations

import socket


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
