"""Which runtime driver runs the instances: `[runtime] driver` in fleet.toml.

Adding a driver is one file in runtime/ and one line in RUNTIMES. Builders import their driver
when called, so reading the configuration never loads one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from foundry_fleet.domain.errors import InvalidInput

if TYPE_CHECKING:
    from foundry_fleet.config import FleetConfig
    from foundry_fleet.runtime.base import Runtime
    from foundry_fleet.runtime.nomad.jobs import JobSettings


def fleet_id(config: FleetConfig) -> str:
    """Per fleet, so two fleets on one host never share cgroups or a firewall chain."""
    return hashlib.sha256(str(config.root).encode()).hexdigest()[:8]


def cgroup_parent(config: FleetConfig) -> str:
    """The fleet's own cgroup, holding its tasks' groups and its helpers' (log writers, forwarders, Caddy)."""
    return f"foundry-fleet-{fleet_id(config)}"


def _local(config: FleetConfig) -> Runtime:
    from foundry_fleet.runtime.local import LocalRuntime
    from foundry_fleet.services.node_binaries import resolve_node

    tag = fleet_id(config)
    return LocalRuntime(
        cgroup_parent=cgroup_parent(config),
        firewall_chain=f"FOUNDRY-FLEET-{tag}",
        run_dir=config.paths.run / "net",
        node=lambda generation: resolve_node(config.node, generation),
        port_range=config.instances.port_range,
        log_dir_of=config.paths.instance_logs,
    )


def _podman(config: FleetConfig) -> Runtime:
    from foundry_fleet.runtime.podman.driver import PodmanRuntime
    from foundry_fleet.runtime.podman.fleet_network import FleetNetwork
    from foundry_fleet.runtime.podman.service import PodmanService
    from foundry_fleet.wiring.podman_images import make_node_images, podman_run_dir

    tag = fleet_id(config)
    return PodmanRuntime(
        fleet_id=tag,
        service=PodmanService(podman_run_dir(config), config.podman.socket),
        images=lambda api: make_node_images(config, api.http),  # the same images `runtime image` makes
        log_dir_of=config.paths.instance_logs,
        network=FleetNetwork(tag),
    )


def nomad_job_settings(config: FleetConfig) -> JobSettings:
    """How the fleet's Nomad jobs are built, as `nomad render` builds them; the provision job reads the
    fleet.toml that `init` writes in the fleet root (as the nodes see that root)."""
    from foundry_fleet.config_file import CONFIG_NAME
    from foundry_fleet.wiring.nomad_jobs import job_settings

    return job_settings(config, config.root / CONFIG_NAME)


def _nomad(config: FleetConfig) -> Runtime:
    from foundry_fleet.runtime.nomad.api import NomadSettings
    from foundry_fleet.runtime.nomad.driver import NomadRuntime
    from foundry_fleet.services.node_binaries import resolve_node
    from foundry_fleet.wiring.nomad_jobs import node_homes, node_path

    section = config.nomad

    async def image_for(generation: int) -> str:
        from foundry_fleet.wiring.podman_images import node_images

        async with node_images(config) as images:  # the same images `runtime image` makes
            return await images.ensure(generation)

    return NomadRuntime(
        NomadSettings.from_config(section),
        nomad_job_settings(config),
        image_for=image_for,
        node_binary=lambda generation: resolve_node(config.node, generation),
        log_dir_of=config.paths.instance_logs,
        node_path=lambda path: node_path(config, path),
        node_homes=node_homes(config),
        wait=section.wait,
        address_timeout=config.supervisor.start_timeout,
    )


def _fake(config: FleetConfig) -> Runtime:
    from foundry_fleet.runtime.fake import FakeRuntime

    return FakeRuntime(log_dir_of=config.paths.instance_logs)


RUNTIMES: dict[str, Callable[[FleetConfig], Runtime]] = {
    "local": _local,
    "podman": _podman,
    "fake": _fake,
    "nomad": _nomad,
}


def make_runtime(config: FleetConfig) -> Runtime:
    build = RUNTIMES.get(config.runtime.driver)
    if build is None:  # the configuration refuses it already; a hand-built one may not
        raise InvalidInput(f"unknown runtime driver {config.runtime.driver!r}",
                           f"set [runtime] driver to one of: {', '.join(sorted(RUNTIMES))}")
    return build(config)
