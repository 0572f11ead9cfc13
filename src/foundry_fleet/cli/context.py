"""What every command needs: where the fleet is, and a way to reach it.

Commands that operate on an instance talk to the daemon and nothing else; they import no service, no
database and no driver, so they start at once. Commands that work on the host itself (releases,
invites, storage, the event log) open the service layer in this process, imported only when used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, Union

from foundry_fleet.config_file import control_socket, find_config

if TYPE_CHECKING:
    from foundry_fleet.api.client import ControlClient
    from foundry_fleet.cli.local_reads import LocalReads
    from foundry_fleet.config import FleetConfig
    from foundry_fleet.wiring.services import FleetServices

    Reads = Union[ControlClient, LocalReads]

T = TypeVar("T")


@dataclass
class CliContext:
    config_path: str | None = None
    # Whether the last `read` was answered by the daemon (False: the state database it left), so a table
    # can say which figures only the daemon knows.
    read_from_daemon: bool = True
    _config: FleetConfig | None = field(default=None, repr=False)
    _services: FleetServices | None = field(default=None, repr=False)

    @property
    def config(self) -> FleetConfig:
        """The whole configuration, validated."""
        if self._config is None:
            from foundry_fleet.config import load_config

            self._config = load_config(find_config(self.config_path))
        return self._config

    def config_file(self) -> Path:
        return find_config(self.config_path)

    def services(self) -> FleetServices:
        """The service layer in this process, for work on the host that needs no daemon."""
        if self._services is None:
            from foundry_fleet.wiring.services import open_services

            self._services = open_services(self.config, actor=self.actor())
        return self._services

    def actor(self) -> str:
        """Who the events this command causes are from."""
        return f"cli:{_user()}"

    def socket_path(self) -> Path:
        return self._config.paths.socket if self._config is not None else control_socket(self.config_file())

    def require_daemon(self) -> ControlClient:
        """A client for the daemon. Its first call raises DaemonNotRunning (the one message every such
        command gives) when the daemon does not answer."""
        from foundry_fleet.api.client import ControlClient

        return ControlClient(self.socket_path(), actor=self.actor())

    def daemon(self) -> ControlClient | None:
        """A client for the running daemon, or None when it is not running."""
        client = self.require_daemon()
        if client.reachable():
            return client
        client.close()
        return None

    def read(self, question: Callable[[Reads], T]) -> T:
        """Ask a read (status, instances, snapshots, the edge's config) of the daemon, or while it is not
        running of the state database it left: the same service calls and answers, the last recorded
        states. One question, either source; reads change nothing."""
        from foundry_fleet.domain.errors import DaemonNotRunning

        client = self.require_daemon()
        try:
            answer = question(client)
            self.read_from_daemon = True
            return answer
        except DaemonNotRunning:
            pass
        finally:
            client.close()
        from foundry_fleet.cli.local_reads import LocalReads

        self.read_from_daemon = False
        return question(LocalReads(self.services()))


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry is fine for an actor name
        return "unknown"


