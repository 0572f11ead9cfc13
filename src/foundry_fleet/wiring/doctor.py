"""`foundry-fleet doctor`: each check of services/doctor given what it needs, from the fleet's configuration,
the drivers it picks (the same ones the daemon builds) and the status the daemon reports (or, while it is
not running, the state it left: then the runtime's probes run here, those that change nothing)."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from collections.abc import Callable, Iterable
from typing import Any

from foundry_fleet.config import MAIN_HOME, DestinationSection, FleetConfig
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.runtime.base import Capability
from foundry_fleet.services.doctor.backups import DestinationProbe, destination_checks
from foundry_fleet.services.doctor.clock import ClockReading, clock_check, read_clock
from foundry_fleet.services.doctor.dns import HostAddresses, Resolver, dns_checks, interface_addresses, system_resolver
from foundry_fleet.services.doctor.edge import edge_checks, scale_check
from foundry_fleet.services.doctor.ports import port_check
from foundry_fleet.services.doctor.report import Check, CheckGroup, DoctorReport, run_groups
from foundry_fleet.services.doctor.space import disk_checks, no_zfs, zfs_check
from foundry_fleet.services.doctor.tools import (
    cgroups_check, firewall_check, image_checks, node_checks, not_for_runtime, podman_check, sandbox_check,
)
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.storage.base import Storage
from foundry_fleet.wiring.drivers import make_destination, make_home_storage, managed_caddy
from foundry_fleet.wiring.runtimes import make_runtime
from foundry_fleet.wiring.services import FleetServices

PODMAN_LINES = ("podman", "oci runtime", "rootful", "cgroup limits", "init")


def doctor_report(config: FleetConfig, services: FleetServices, status: dict[str, Any],
                  public_addresses: Iterable[str] = (), resolve: Resolver | None = None,
                  clock: Callable[[], ClockReading] | None = None) -> DoctorReport:
    """Every check, in a fixed order. `status`: `foundry-fleet status` as the daemon answers it, or as read
    from the state it left; `public_addresses`: this host's, when a NAT in front of it has them."""
    daemon = status.get("daemon") or {}
    running = bool(daemon.get("running"))
    runtime_block = status.get("runtime") or {}
    health = {line["name"]: Capability(line["name"], line["available"], line["detail"])
              for line in runtime_block.get("health") or []} if running else {}
    fleet = config.fleet
    groups: list[CheckGroup] = [
        ("dns", lambda: dns_checks(fleet.domain, fleet.fleet_host, resolve or system_resolver(),
                                   HostAddresses.of(interface_addresses(), public_addresses),
                                   edge_elsewhere=config.edge.on_nomad)),
        ("ports", lambda: _port_checks(config)),
        ("edge", lambda: edge_checks(status if running else None, config.edge.tls, config.host_for(fleet.fleet_host),
                                     config.paths.logs / "caddy.log")),
        ("certificates at scale", lambda: [scale_check(config.edge.tls, _host_count(status))]),
        ("zfs pool", lambda: _zfs_checks(config)),
        ("runtime tools", lambda: _tool_checks(config, services, health, runtime_block.get("images"))),
        ("clock", lambda: [clock_check((clock or read_clock)())]),
        ("backup destinations", lambda: destination_checks(_destination_probes(config, services.storage))),
        ("disk space", lambda: disk_checks([("the fleet root", config.root),
                                            ("the release cache", config.paths.releases)])),
    ]
    return DoctorReport(run_groups(groups), daemon={"running": running, "pid": daemon.get("pid")})


def _host_count(status: dict[str, Any]) -> int:
    """Every host the edge serves: each instance's, whatever its state, and the fleet's own."""
    return 1 + len({h for i in status.get("instances") or [] for h in i.get("hosts") or []})


def _port_checks(config: FleetConfig) -> list[Check]:
    caddy = managed_caddy(config)
    pid = caddy.pid if caddy.adopt() else None  # the pid file the daemon keeps, checked to be that Caddy
    edge = config.edge
    return [port_check("http", "http_port", edge.http_port, pid, edge.on_nomad),
            port_check("https", "https_port", edge.https_port, pid, edge.on_nomad)]


def _zfs_checks(config: FleetConfig) -> list[Check]:
    if config.storage.driver != "zfs":
        return [no_zfs(config.storage.driver)]
    checks = []
    for home in config.home_names:
        try:
            space: dict[str, Any] | FleetError = make_home_storage(config, home).pool_space()  # type: ignore[attr-defined]
        except FleetError as e:
            space = e
        checks.append(zfs_check(None if home == MAIN_HOME else home, space))
    return checks


def _tool_checks(config: FleetConfig, services: FleetServices, health: dict[str, Capability],
                 images: list[dict[str, Any]] | None) -> list[Check]:
    """`health`: the running daemon's health lines of its runtime (empty: probe here)."""
    driver = config.runtime.driver
    if driver == "nomad":
        return not_for_runtime(driver, "instances run on the Nomad cluster's nodes; `foundry-fleet status` shows "
                                       "how each is doing")
    if driver not in ("local", "podman"):
        return not_for_runtime(driver, "nothing of this host is used to run instances")
    runtime: Any = make_runtime(config)
    if driver == "podman":
        lines = [health[name] for name in PODMAN_LINES if name in health] or _podman_lines(runtime)
        network = health.get("network isolation") or _iptables()
        return [podman_check(lines), firewall_check(network), *image_checks(images)]
    cgroups = [line for name, line in health.items() if name.startswith("cgroup-")] or probe_cgroups(runtime.cgroups)
    generations = [release.generation for release in services.releases.list()]
    return [sandbox_check(health.get("sandbox") or runtime.sandbox_capability()),
            cgroups_check(cgroups),
            firewall_check(health.get("firewall") or runtime.firewall.usable()),
            *node_checks(generations, lambda generation: resolve_node(config.node, generation))]


def probe_cgroups(cgroups: Any) -> list[Capability]:
    """The runtime's own probe of its controllers, which makes the fleet's parent groups as the daemon
    would; the ones it made for the probe are removed again (empty, they hold nothing)."""
    parents = {cgroups.parent_dir(c) for c in ("memory", "cpu", "pids")}
    made = [p for p in parents if not p.exists()]
    try:
        return cgroups.capabilities()
    finally:
        for parent in made:
            try:
                os.rmdir(parent)
            except OSError:
                pass


def _podman_lines(runtime: Any) -> list[Capability]:
    """Podman's health as the runtime tells it without starting anything. The fleet's own API service
    starts with the daemon: before that, what can be told is that podman is here and runs."""
    lines: list[Capability] = asyncio.run(runtime.fingerprint())
    if lines and lines[0].name == "podman" and not lines[0].available and runtime.service.own:
        try:
            binary = runtime.service.podman_binary()
            done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
        except FleetError as e:
            return [Capability("podman", False, e.message)]
        except (OSError, subprocess.TimeoutExpired) as e:
            return [Capability("podman", False, f"podman --version failed: {e}")]
        if done.returncode != 0:
            return [Capability("podman", False, f"`{binary} --version` failed: {done.stderr.strip()[:200]}")]
        return [Capability("podman", True, f"{done.stdout.strip()} at {binary} (the daemon starts the fleet's API "
                                           "service)")]
    return lines


def _iptables() -> Capability:
    """Whether iptables can be changed here (the podman runtime's network rules need it), as the local
    runtime's firewall asks it: `iptables -S INPUT` as root, changing nothing."""
    from foundry_fleet.runtime.firewall import PortFirewall

    found = PortFirewall().usable()
    if not found.available:
        return found
    return Capability(found.name, True, "iptables answers (the daemon loads the fleet's network rules when it starts)")


def _destination_probes(config: FleetConfig, storage: Storage) -> list[DestinationProbe]:
    probes = []
    for section in config.backups.destinations:
        try:
            dest: Any = make_destination(config, storage, section)
        except FleetError as e:
            probes.append(DestinationProbe(section.name, e, ""))
            continue
        probes.append(DestinationProbe(section.name, dest, _how_to_try(config, section, dest)))
    return probes


def _how_to_try(config: FleetConfig, section: DestinationSection, dest: Any) -> str:
    if config.storage.driver == "directory":
        return f"RESTIC_PASSWORD_FILE={shlex.quote(str(section.password_file))} restic -r " \
               f"{shlex.quote(section.target)} cat config"
    return shlex.join(dest.zfs.argv("zpool", "list", dest.pool))
