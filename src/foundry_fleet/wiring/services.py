"""Builds the services from the configuration and the drivers it picks."""

from __future__ import annotations

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.backup_plan import TimeFormat
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.services.replication import Replication
from foundry_fleet.store.database import open_database
from foundry_fleet.wiring.drivers import make_destinations, make_release_cache, make_storage


def open_fleet(config: FleetConfig, actor: str = "cli") -> Fleet:
    sessions = open_database(config.paths.database)
    return Fleet(config, sessions, make_storage(config), make_release_cache(config), actor=actor)


def make_backups(fleet: Fleet) -> Backups:
    """The backup service with the fleet's destinations (replication runs in the daemon's rounds)."""
    destinations = make_destinations(fleet.config, fleet.storage)
    replication = None
    if destinations:
        replication = Replication(fleet.sessions, fleet.event_log, fleet.storage.snapshots, destinations,
                                  TimeFormat(fleet.config.backups.tsformat))

    def keep_stopped(name: str, why: str) -> None:
        fleet.set_desired(name, DesiredState.STOPPED, why)

    return Backups(fleet.instances, fleet.backup_records, fleet.event_log, fleet.storage, fleet.disk_limits,
                   keep_stopped, fleet.config.backups.tsformat, replication)
