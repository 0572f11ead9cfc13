"""Build a Fleet from its configuration: the one place that picks drivers."""

from __future__ import annotations

from foundry_fleet.config import FleetConfig
from foundry_fleet.config import DestinationSection
from foundry_fleet.domain.backup_plan import TimeFormat
from foundry_fleet.edge.caddy_config import EdgeSettings
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits
from foundry_fleet.services import tls_permission
from foundry_fleet.services.fleet import Fleet
from foundry_fleet.services.backups import Backups
from foundry_fleet.services.disk_limits import limit_bytes
from foundry_fleet.services.replication import Destination, Replication
from foundry_fleet.storage.base import Storage
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.store.database import open_database


def edge_settings(config: FleetConfig) -> EdgeSettings:
    e = config.edge
    return EdgeSettings(
        http_port=e.http_port,
        https_port=e.https_port,
        tls=e.tls,
        fleet_host=config.host_for(config.fleet.fleet_host),
        web_dial=f"127.0.0.1:{e.web_port}",
        admin_listen=f"unix/{config.paths.run / 'caddy-admin.sock'}",
        acme_email=e.acme_email,
        acme_staging=e.acme_staging,
        stream_close_delay_s=e.stream_close_delay_hours * 3600,
        backups_dial=f"unix/{config.paths.run / 'backups.sock'}",
        tls_secret_file=str(tls_permission.secret_path(config)),
    )


def make_storage(config: FleetConfig) -> Storage:
    if config.storage.driver == "zfs":
        from foundry_fleet.storage.zfs import ZfsStorage

        assert config.storage.zfs_base is not None  # the config refuses zfs without a base
        return ZfsStorage(config.root, config.storage.zfs_base, quota_bytes=limit_bytes(config))
    return DirectoryStorage(config.root)


def make_destinations(config: FleetConfig, storage: Storage) -> list[tuple[DestinationSection, Destination]]:
    """The backup destinations of fleet.toml, each with the driver that fits the fleet's storage."""
    out: list[tuple[DestinationSection, Destination]] = []
    for section in config.backups.destinations:
        dest: Destination
        if isinstance(storage, DirectoryStorage):
            from foundry_fleet.storage.restic_destination import ResticDestination

            snapshots = storage.snapshots
            dest = ResticDestination(
                section.target, section.password_file, snapshots.path,
                lambda instance, name, snapshots=snapshots: next(
                    (s.created_at for s in snapshots.list(instance) if s.name == name), 0.0),
            )
        else:
            from foundry_fleet.storage.zfs_destination import ZfsDestination

            dest = ZfsDestination(section.target, storage.layout.data, ssh=section.ssh_command)  # type: ignore[attr-defined]
        out.append((section, dest))
    return out


def make_release_cache(config: FleetConfig) -> ReleaseCache:
    return ReleaseCache(
        config.paths.releases,
        DownloadPolicy.from_config(config.releases),
        UnpackLimits.from_config(config.releases),
    )


def open_fleet(config: FleetConfig, actor: str = "cli") -> Fleet:
    sessions = open_database(config.paths.database)
    return Fleet(config, sessions, make_storage(config), make_release_cache(config), actor=actor)


def make_backups(fleet: Fleet) -> Backups:
    """The backup service with the fleet's destinations (replication runs in the daemon's rounds)."""
    destinations = make_destinations(fleet.config, fleet.storage)
    replication = None
    if destinations:
        replication = Replication(fleet, fleet.storage.snapshots, destinations,
                                  TimeFormat(fleet.config.backups.tsformat))
    return Backups(fleet, replication)
