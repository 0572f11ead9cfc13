"""Build a Fleet from its configuration: the one place that picks drivers."""

from __future__ import annotations

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Unsupported
from foundry_fleet.edge.caddy_config import EdgeSettings
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits
from foundry_fleet.services.fleet import Fleet
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
    )


def make_storage(config: FleetConfig) -> Storage:
    if config.storage.driver == "directory":
        return DirectoryStorage(config.root)
    raise Unsupported(
        f"storage driver {config.storage.driver!r} is not available in this version of foundry-fleet",
        'set [storage] driver = "directory" in fleet.toml',
    )


def make_release_cache(config: FleetConfig) -> ReleaseCache:
    return ReleaseCache(
        config.paths.releases,
        DownloadPolicy.from_config(config.releases),
        UnpackLimits.from_config(config.releases),
    )


def open_fleet(config: FleetConfig, actor: str = "cli") -> Fleet:
    sessions = open_database(config.paths.database)
    return Fleet(config, sessions, make_storage(config), make_release_cache(config), actor=actor)
