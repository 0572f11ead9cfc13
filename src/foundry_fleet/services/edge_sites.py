"""What the edge routes: one site per instance that exists, with where to dial it and the state its
page shows while it is not running."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.domain.instance import goes_to_wake_handler
from foundry_fleet.edge.caddy_config import TenantSite
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.operation_lock import RESTORING
from foundry_fleet.store.models import Instance


def dial_address(row: Instance) -> str | None:
    """Where the edge reaches the instance ("host:port"), as the supervisor recorded the runtime's
    `address()` answer; None while no task runs. The edge proxies only to a running instance with an
    address, and shows the state page otherwise."""
    return row.address


class EdgeSites:
    def __init__(self, sessions: sessionmaker[Session], hostnames: Hostnames) -> None:
        self.sessions = sessions
        self.hostnames = hostnames
        # What each instance is busy with (Operations.busy), once the daemon has its operations.
        self.busy: Callable[[str], str | None] = lambda _name: None

    def __call__(self) -> list[TenantSite]:
        """Every instance that exists and has a host to be served at, for `Edge(desired_sites=...)`."""
        with self.sessions() as s:
            served = self.hostnames.served(s)
            return [TenantSite(name=r.name, hosts=served.by_instance[r.name], address=dial_address(r), state=r.state,
                               wakes=goes_to_wake_handler(r.state, r.desired, r.suspended_reason is not None),
                               suspended=r.suspended_reason is not None, restoring=self.busy(r.name) == RESTORING)
                    for r in served.rows if served.by_instance[r.name]]
