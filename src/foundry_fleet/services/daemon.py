"""`foundry-fleet up`: the daemon that supervises instances and serves the control API."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

import uvicorn

from foundry_fleet.api.app import DaemonInfo, create_app
from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.events import Outcome
from foundry_fleet.runtime.base import Capability
from foundry_fleet.runtime.local import LocalRuntime
from foundry_fleet.services.daemon_lock import DaemonLock
from foundry_fleet.services.supervisor import Supervisor
from foundry_fleet.services.wiring import open_fleet

log = logging.getLogger("foundry_fleet.daemon")

RECONCILE_EVERY = 30.0


def bind_control_socket(path: Path) -> socket.socket:
    """A unix socket only its owner can use: the control API has no other authentication."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if path.exists() or path.is_symlink():
        path.unlink()  # left by a daemon that died; the lock proves no live one uses it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    path.chmod(0o600)
    sock.listen(64)
    return sock


def report_capabilities(caps: list[Capability]) -> None:
    """Say once, at start-up, what this host gives the fleet and what it does not."""
    for cap in caps:
        if cap.available:
            log.info("available: %s (%s)", cap.name, cap.detail)
        else:
            log.warning("NOT available: %s: %s", cap.name, cap.detail)


async def serve(config: FleetConfig, leave_running: bool = False) -> None:
    lock = DaemonLock(config.paths.daemon_lock)
    lock.acquire()
    try:
        await _serve_locked(config, leave_running)
    finally:
        lock.release()


async def _serve_locked(config: FleetConfig, leave_running: bool) -> None:
    fleet = open_fleet(config, actor="daemon")
    fleet.storage.ensure_layout()
    # Per fleet, so two fleets on one host never share cgroups or a firewall chain.
    fleet_id = hashlib.sha256(str(config.root).encode()).hexdigest()[:8]
    runtime = LocalRuntime(cgroup_parent=f"foundry-fleet-{fleet_id}", firewall_chain=f"FOUNDRY-FLEET-{fleet_id}")
    lo, hi = config.instances.port_range
    # The firewall line reports what was actually set up for this fleet's port range.
    caps = [c for c in runtime.fingerprint() if c.name != "firewall"] + [runtime.protect_ports(lo, hi)]
    report_capabilities(caps)

    supervisor = Supervisor(fleet, runtime)
    info = DaemonInfo(pid=os.getpid(), started_at=time.time(), root=str(config.root), capabilities=caps)
    app = create_app(fleet, supervisor, info)
    sock = bind_control_socket(config.paths.socket)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    await supervisor.start()
    fleet.record_event("daemon.start", str(config.root), Outcome.OK, f"pid {os.getpid()}")
    log.info("fleet daemon running for %s (control socket %s)", config.root, config.paths.socket)
    api = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not stopping.is_set() and not api.done():
            try:
                await asyncio.wait_for(stopping.wait(), RECONCILE_EVERY)
            except TimeoutError:
                await supervisor.reconcile()
    finally:
        log.info("shutting down (%s instances)", "leaving running" if leave_running else "stopping")
        server.should_exit = True
        await supervisor.shutdown(stop_instances=not leave_running)
        if not leave_running:
            runtime.unprotect_ports()  # nothing listens in the range any more
        await api
        sock.close()
        config.paths.socket.unlink(missing_ok=True)
        fleet.record_event("daemon.stop", str(config.root), Outcome.OK, "instances left running" if leave_running else "")
