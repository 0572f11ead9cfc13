"""What every command needs: the configuration, and a way to reach the fleet (daemon or in-process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foundry_fleet.api.client import ControlClient
from foundry_fleet.config import FleetConfig, find_config, load_config
from foundry_fleet.domain.errors import DaemonNotRunning
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.wiring.services import open_fleet


@dataclass
class CliContext:
    config_path: str | None = None
    _config: FleetConfig | None = field(default=None, repr=False)
    _fleet: Fleet | None = field(default=None, repr=False)

    @property
    def config(self) -> FleetConfig:
        if self._config is None:
            self._config = load_config(find_config(self.config_path))
        return self._config

    def config_file(self) -> Path:
        return find_config(self.config_path)

    def fleet(self) -> Fleet:
        """The service layer in this process (for work that does not need the daemon)."""
        if self._fleet is None:
            self._fleet = open_fleet(self.config, actor=f"cli:{_user()}")
        return self._fleet

    def daemon(self) -> ControlClient | None:
        """A client for the running daemon, or None when it is not running."""
        client = ControlClient(self.config.paths.socket, actor=f"cli:{_user()}")
        if client.reachable():
            return client
        client.close()
        return None

    def require_daemon(self) -> ControlClient:
        client = self.daemon()
        if client is None:
            raise DaemonNotRunning(
                f"the fleet daemon is not running for {self.config.root}",
                "start it with `foundry-fleet up` (or `make run`), then try again",
            )
        return client

    def socket_path(self) -> Path:
        return self.config.paths.socket


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry is fine for an actor name
        return "unknown"
