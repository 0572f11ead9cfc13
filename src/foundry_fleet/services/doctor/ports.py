"""The edge's ports (80/443, or [edge] http_port/https_port): free for the fleet's Caddy, or held by it.

Who holds a port is read from /proc (runtime/host_ports.py); the fleet's Caddy is known by the pid file
its daemon keeps (the same one the next daemon adopts it by), so a Caddy left running between two
daemons counts as the fleet's too.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from foundry_fleet.runtime.host_ports import Listener, bind_error, listeners, process_name
from foundry_fleet.services.doctor.report import Check, failed, passed, warned


def port_check(label: str, key: str, port: int, caddy_pid: int | None, edge_on_nomad: bool = False,
               listening: Callable[[int], list[Listener]] = listeners,
               bind: Callable[[int], int | None] = bind_error, name_of: Callable[[int], str] = process_name) -> Check:
    """`label`: "http" or "https"; `key`: its key in [edge]; `caddy_pid`: the fleet's Caddy, when it runs.
    With the edge on Nomad its pid is not known here: a process named caddy counts as the fleet's."""
    name = f"port {port} ({label})"
    elsewhere = f"or give the fleet another port: [edge] {key} in fleet.toml"
    found = listening(port)
    if not found:
        problem = bind(port)
        if problem is None:
            return passed(name, "free: the fleet's Caddy can listen there")
        if problem == errno.EACCES:
            return failed(name, f"free, but this user (uid {os.geteuid()}) may not listen on a port this low",
                          f"run the fleet as root (as its systemd unit does), or `sysctl -w "
                          f"net.ipv4.ip_unprivileged_port_start={port}`")
        return failed(name, f"cannot be listened on: {os.strerror(problem)}",
                      f"find what holds it (`ss -ltnp 'sport = :{port}'`, as root) and stop it, {elsewhere}")

    def ours(pid: int) -> bool:
        return pid == caddy_pid or (edge_on_nomad and name_of(pid) == "caddy")

    pids = sorted({pid for listener in found for pid in listener.pids})
    others = [pid for pid in pids if not ours(pid)]
    unseen = [listener for listener in found if not listener.pids]
    holders = ", ".join(f"{name_of(pid)} (pid {pid})" for pid in others)
    if others:
        command = name_of(others[0])
        return failed(name, f"held by {holders}: the fleet's Caddy cannot listen there",
                      f"stop it (e.g. `systemctl disable --now {command}`), {elsewhere}")
    if not unseen:
        how = "the Nomad job of the fleet's edge" if caddy_pid is None else "the fleet's Caddy"
        return passed(name, f"held by {how} (pid {', '.join(map(str, pids))})")
    owners = ", ".join(sorted({str(listener.uid) for listener in unseen}))
    if caddy_pid is not None or pids:
        return warned(name, f"held by a process this user cannot look into (socket of uid {owners}); the fleet's "
                            "Caddy runs and may be it", "run `foundry-fleet doctor` as root to tell")
    return failed(name, f"held by a process this user cannot look into (socket of uid {owners})",
                  f"find it as root (`ss -ltnp 'sport = :{port}'`) and stop it, {elsewhere}")


def port_in_use(label: str, key: str, port: int, caddy_pid: int | None = None,
                listening: Callable[[int], list[Listener]] = listeners,
                name_of: Callable[[int], str] = process_name) -> str | None:
    """For `up`, before it sets anything up: one line saying who holds `port` and how to give the fleet
    another, or None when nothing but the fleet's own Caddy (`caddy_pid`) listens there. Said before
    Caddy starts, so the user reads this instead of Caddy's log of its failed listen."""
    found = listening(port)
    pids = sorted({pid for listener in found for pid in listener.pids if pid != caddy_pid})
    unseen = sorted({listener.uid for listener in found if not listener.pids})
    if not pids and not unseen:
        return None
    holders = ", ".join([f"{name_of(pid)} (pid {pid})" for pid in pids]
                        + [f"a process of uid {uid} (run as root to see which)" for uid in unseen])
    option = "--" + key.replace("_", "-")
    return f"port {port} ({label}) is in use by {holders}: set [edge] {key} in fleet.toml, or init {option}"
