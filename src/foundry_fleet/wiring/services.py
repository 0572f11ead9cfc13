"""Builds the services from the configuration and the drivers it picks."""

from __future__ import annotations

import functools

import time
from collections.abc import Callable
from typing import Any

import httpx

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.backup_plan import TimeFormat
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.services.provisioning import Provisioning
from foundry_fleet.services.invites import Invites
from foundry_fleet.services.replication import Replication
from foundry_fleet.services.status_updates import Notifier, StatusUpdates
from foundry_fleet.services.views import CreatedInstance
from foundry_fleet.services.web_login import WebLogin, key_path
from foundry_fleet.services.wizard import SetupWizard
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


def make_status_updates(fleet: Fleet, notifier: Notifier, **options: Any) -> StatusUpdates:
    """Status updates from the fleet's events and disk use; `options` tune StatusUpdates (clock, limits)."""
    return StatusUpdates(fleet.event_log, fleet.instances, fleet.disk_limits, fleet.sessions, notifier, **options)


def make_invites(fleet: Fleet, clock: Callable[[], float] = time.time) -> Invites:
    return Invites(fleet.sessions, fleet.event_log, clock)


def make_wizard(fleet: Fleet, invites: Invites | None = None,
                create: Callable[..., CreatedInstance] | None = None) -> SetupWizard:
    """The Discord setup wizard; `create` defaults to the fleet's own (the daemon's also wakes its supervisor)."""
    return SetupWizard(fleet.config, fleet.sessions, fleet.event_log, fleet.registry, fleet.hostnames,
                       invites or make_invites(fleet),
                       create or functools.partial(Provisioning(fleet).create, fleet.actor))


def make_web_login(fleet: Fleet, transport: httpx.BaseTransport | None = None) -> WebLogin:
    """The sign-in service of a fleet: its [discord] settings, database, key file and hosts."""
    config = fleet.config
    instances = fleet.instances

    def owner_of(instance: str) -> str | None:
        try:
            return instances.get(instance).owner
        except FleetError:
            return None  # deleted since its host was looked up

    return WebLogin(config.discord, fleet.sessions, key_path(config), config.host_for(config.fleet.fleet_host),
                    config.edge.https_port, fleet.hostnames.instance_for_host, owner_of, transport=transport)
