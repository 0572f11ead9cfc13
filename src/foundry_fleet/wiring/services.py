"""Builds the services from the configuration and the drivers it picks."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.backup_plan import TimeFormat
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.services.access import Access
from foundry_fleet.services.backup_records import BackupRecords
from foundry_fleet.services.changes import Changes
from foundry_fleet.services.desired_state import DesiredStates
from foundry_fleet.services.disk_limits import DiskLimits, limit_bytes
from foundry_fleet.services.edge_sites import EdgeSites
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import Hostnames
from foundry_fleet.services.instance_homes import InstanceHomes
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.moves import Moves
from foundry_fleet.services.provisioning import Provisioning
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.storage.base import Storage
from foundry_fleet.store.database import open_database
from foundry_fleet.wiring.drivers import make_destinations, make_release_cache, make_storage
from foundry_fleet.wiring.runtimes import make_runtime

# What only the daemon, the bot or the web sign-in build (operations, backups and replication, status
# updates, invites, the wizard, the sign-in with its HTTP client) is imported where it is built: a
# command that opens the services in its own process (`release add`, `events`) loads none of it.
if TYPE_CHECKING:
    import httpx
    from sqlalchemy.orm import Session, sessionmaker

    from foundry_fleet.bot.client import BotServices
    from foundry_fleet.releases.cache import ReleaseCache
    from foundry_fleet.runtime.base import Runtime
    from foundry_fleet.services.backups import Backups
    from foundry_fleet.services.invites import Invites
    from foundry_fleet.services.operations import Lifecycle
    from foundry_fleet.services.status_updates import Notifier, StatusUpdates
    from foundry_fleet.services.views import CreatedInstance
    from foundry_fleet.services.panel_sessions import PanelSessions
    from foundry_fleet.services.web_login import WebLogin
    from foundry_fleet.services.wizard import SetupWizard


@dataclass(frozen=True)
class FleetServices:
    """One fleet's drivers and small services, built once by `open_services`. The wiring and the
    adapters take from it what each service needs; no service takes the whole of it."""

    config: FleetConfig
    actor: str  # who the events recorded by default are from (the daemon, the bot, a CLI user)
    sessions: sessionmaker[Session]
    storage: Storage
    release_cache: ReleaseCache
    changes: Changes  # told of every change to instances; the daemon subscribes the edge
    instances: InstanceViews
    events: EventLog
    releases: ReleaseRegistry
    hostnames: Hostnames
    sites: EdgeSites
    backup_records: BackupRecords
    disk_limits: DiskLimits
    provisioning: Provisioning
    desired: DesiredStates
    homes: InstanceHomes  # which home holds each instance's data
    moves: Moves | None  # moving data between homes; None: the fleet has no [[nomad.homes]]

    def lifecycle(self) -> Lifecycle:
        """What the operations service builds on."""
        from foundry_fleet.services.operations import Lifecycle

        return Lifecycle(self.provisioning, self.desired, self.instances, self.hostnames, self.releases,
                         self.events, self.changes)

    def repair_interrupted(self) -> list[str]:
        """For the supervisor's start: finish the creations and deletions a crash interrupted."""
        repaired = self.provisioning.repair_interrupted()
        return [*repaired.deleted, *repaired.rolled_back]


def open_services(config: FleetConfig, actor: str = "cli", runtime: Runtime | None = None) -> FleetServices:
    """The fleet's services; `runtime` (the daemon's) decides which ports new instances may have, else
    one is built from [runtime] when a port is first asked about."""
    sessions = open_database(config.paths.database)

    @functools.cache
    def ports_runtime() -> Runtime:
        return runtime or make_runtime(config)

    def port_is_free(port: int) -> bool:
        return ports_runtime().port_is_free(port)

    homes = InstanceHomes(sessions)
    storage = make_storage(config, homes.home_of)
    cache = make_release_cache(config)
    changes = Changes()
    instances = InstanceViews(config, sessions, storage)
    hostnames = Hostnames(config, sessions, instances, actor)
    return FleetServices(
        config=config, actor=actor, sessions=sessions, storage=storage, release_cache=cache, changes=changes,
        instances=instances,
        events=EventLog(sessions, actor),
        releases=ReleaseRegistry(config.node, sessions, cache, actor),
        hostnames=hostnames,
        sites=EdgeSites(sessions, hostnames),
        backup_records=BackupRecords(sessions, config.backups.plan, actor),
        disk_limits=DiskLimits(storage, limit_bytes(config)),
        provisioning=Provisioning(config, sessions, storage, instances, hostnames, changes, port_is_free),
        desired=DesiredStates(config.node, sessions, storage, instances, changes),
        homes=homes,
        moves=Moves(config, sessions, storage) if config.nomad.homes else None,
    )


def make_backups(services: FleetServices) -> Backups:
    """The backup service with the fleet's destinations (replication runs in the daemon's rounds)."""
    from foundry_fleet.services.backups import Backups
    from foundry_fleet.services.replication import Replication

    config, storage = services.config, services.storage
    destinations = make_destinations(config, storage)
    replication = None
    if destinations:
        replication = Replication(services.sessions, services.events, storage.snapshots, destinations,
                                  TimeFormat(config.backups.tsformat))
    desired, actor = services.desired, services.actor

    def keep_stopped(name: str, why: str) -> None:
        desired.set(actor, name, DesiredState.STOPPED, why)

    return Backups(services.instances, services.backup_records, services.events, storage, services.disk_limits,
                   keep_stopped, config.backups.tsformat, replication)


def make_status_updates(services: FleetServices, notifier: Notifier, **options: Any) -> StatusUpdates:
    """Status updates from the fleet's events and disk use; `options` tune StatusUpdates (clock, limits)."""
    from foundry_fleet.services.status_updates import StatusUpdates

    return StatusUpdates(services.events, services.instances, services.disk_limits, services.sessions, notifier,
                         **options)


def make_invites(services: FleetServices, clock: Callable[[], float] = time.time) -> Invites:
    from foundry_fleet.services.invites import Invites

    return Invites(services.sessions, services.events, clock)


def make_wizard(services: FleetServices, invites: Invites | None = None,
                create: Callable[..., CreatedInstance] | None = None) -> SetupWizard:
    """The Discord setup wizard; `create` defaults to provisioning's own (the daemon's also wakes its supervisor)."""
    from foundry_fleet.services.wizard import SetupWizard

    return SetupWizard(services.config, services.sessions, services.events, services.releases, services.hostnames,
                       invites or make_invites(services),
                       create or functools.partial(services.provisioning.create, services.actor))


def make_bot_services(services: FleetServices, access: Access | None = None) -> BotServices:
    """What the Discord bot's commands and wizard use; `access`: the daemon's one (a new one if None)."""
    from foundry_fleet.bot.client import BotServices
    from foundry_fleet.services.account_keys import AccountKeys
    from foundry_fleet.services.invites import Invites
    from foundry_fleet.services.sftp_keys import SftpKeys

    sessions, events = services.sessions, services.events
    return BotServices(
        access=access or make_access(services),
        invites=make_invites(services),
        invites_for=lambda actor: Invites(sessions, events.acting_as(actor)),
        wizard_for=lambda invites, create: make_wizard(services, invites, create),
        account_keys_for=lambda wizard: AccountKeys(wizard, events, services.releases),
        sftp_keys=SftpKeys(sessions, "discord"),
    )


def make_web_login(services: FleetServices, transport: httpx.BaseTransport | None = None) -> WebLogin:
    """The sign-in service of a fleet: its [discord] settings, database, key file and hosts."""
    from foundry_fleet.services.web_login import WebLogin, key_path

    config = services.config
    instances = services.instances

    def owner_of(instance: str) -> str | None:
        try:
            return instances.get(instance).owner
        except FleetError:
            return None  # deleted since its host was looked up

    return WebLogin(config.discord, services.sessions, key_path(config), config.host_for(config.fleet.fleet_host),
                    config.edge.https_port, services.hostnames.instance_for_host, owner_of, transport=transport)


def make_panel_sessions(services: FleetServices, login: WebLogin | None = None,
                        access: Access | None = None) -> PanelSessions:
    """Sign-in to the web panel: on `login`'s Discord settings, key and database, and `access` deciding
    who is an admin (new ones if None)."""
    from foundry_fleet.services.panel_sessions import PanelSessions

    return PanelSessions(login or make_web_login(services), access or make_access(services), services.events)


def make_access(services: FleetServices) -> Access:
    """Who may do what, with the config's [discord] admin_users. The daemon makes one and hands it to every
    door (control API, panel, bot), so a reload of the admins reaches them all at once."""
    return Access(services.instances, frozenset(services.config.discord.admin_users))
