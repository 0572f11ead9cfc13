"""The reads the control API answers, answered from the state database while the daemon is not
running: the same service calls and the same JSON, so a read says the same thing either way (the
states are the last ones recorded). Nothing here changes the fleet."""

from __future__ import annotations

from typing import Any

from foundry_fleet.domain.instance import DAEMON_FIGURES
from foundry_fleet.wiring.services import FleetServices, make_backups

# The same keys as the daemon's answer, for programs reading --json; only the daemon knows their values.
UNKNOWN_FIGURES = dict.fromkeys(DAEMON_FIGURES)


class LocalReads:
    def __init__(self, services: FleetServices) -> None:
        self.services = services

    def status(self) -> dict[str, Any]:
        from foundry_fleet.services.edge_status import edge_report

        return {
            "daemon": {"running": False, "root": str(self.services.config.root)},
            "capabilities": [],
            "runtime": self.runtime(),
            "instances": self.list_instances(),
            "edge": edge_report(self.services.hostnames, None),
        }

    def runtime(self) -> dict[str, Any]:
        """The configured driver and what it offers; its health on this host is the daemon's to find."""
        from foundry_fleet.domain.errors import FleetError
        from foundry_fleet.services.runtime_report import RuntimeReport
        from foundry_fleet.wiring.runtimes import make_runtime

        config = self.services.config
        try:
            offers = make_runtime(config).capabilities
        except FleetError:
            offers = None
        block = RuntimeReport(config.runtime.driver, offers, health=None).to_dict()
        block["images"] = None
        block["nodes"], block["nodes_problem"] = None, None  # the daemon asks the runtime
        if config.runtime.driver == "podman":
            import asyncio

            from foundry_fleet.wiring.podman_images import release_image_states

            states = asyncio.run(release_image_states(config, self.services.releases.list()))
            block["images"] = [s.to_dict() for s in states]
        return block

    def list_instances(self) -> list[dict[str, Any]]:
        return [{**i.to_dict(), **UNKNOWN_FIGURES} for i in self.services.instances.list()]

    def get_instance(self, name: str) -> dict[str, Any]:
        return {**self.services.instances.get(name).to_dict(), **UNKNOWN_FIGURES}

    def list_snapshots(self, name: str) -> list[dict[str, Any]]:
        return [s.to_dict() for s in make_backups(self.services).list(name)]

    def backup_status(self, name: str | None) -> dict[str, Any]:
        return make_backups(self.services).status(name)

    def edge_config(self) -> dict[str, Any]:
        from foundry_fleet.wiring.drivers import edge_config

        return edge_config(self.services.config, self.services.sites())
