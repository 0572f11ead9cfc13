"""The one place that picks drivers: storage, edge, release cache, backup destinations and notifier,
each chosen from fleet.toml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundry_fleet.config import MAIN_HOME, DestinationSection, FleetConfig
from foundry_fleet.domain.errors import NotFound
from foundry_fleet.edge.caddy_config import EdgeSettings, TenantSite, build_caddy_config
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import DownloadPolicy, UnpackLimits
from foundry_fleet.services import tls_permission
from foundry_fleet.services.disk_limits import limit_bytes
from foundry_fleet.storage.base import Storage
from foundry_fleet.storage.directory import DirectoryStorage

# Replication and status updates bring SQLAlchemy, the edge an HTTP client: a node's `nomad provision`
# needs only make_storage, so each is imported where it is made.
if TYPE_CHECKING:
    from foundry_fleet.edge.driver import Edge
    from foundry_fleet.edge.host import CaddyHost
    from foundry_fleet.edge.process import ManagedCaddy
    from foundry_fleet.services.replication import Destination
    from foundry_fleet.services.status_updates import Notifier


def edge_settings(config: FleetConfig) -> EdgeSettings:
    e = config.edge
    return EdgeSettings(
        http_port=e.http_port,
        https_port=e.https_port,
        tls=e.tls,
        fleet_host=config.host_for(config.fleet.fleet_host),
        domain=config.fleet.domain,
        web_dial=f"127.0.0.1:{e.web_port}",
        admin_listen=f"unix/{config.paths.run / 'caddy-admin.sock'}",
        acme_email=e.acme_email,
        acme_staging=e.acme_staging,
        stream_close_delay_s=e.stream_close_delay_hours * 3600,
        backups_dial=f"unix/{config.paths.run / 'backups.sock'}",
        tls_secret_file=str(tls_permission.secret_path(config)),
        operator=config.fleet.operator,
    )


def edge_config(config: FleetConfig, sites: list[TenantSite]) -> dict[str, Any]:
    """The Caddy configuration the edge would load for these sites (what `edge show` prints)."""
    return build_caddy_config(edge_settings(config), sites)


def make_storage(config: FleetConfig, home_of: Callable[[str], str] | None = None) -> Storage:
    """The fleet's storage: with `[[nomad.homes]]`, every home's, each call about an instance routed to the
    home `home_of(instance)` names (services/instance_homes.py); without, the fleet root's alone, as
    always. `home_of` is required when there are homes."""
    if not config.nomad.homes:
        return make_home_storage(config, MAIN_HOME)
    if home_of is None:
        raise ValueError("a fleet with [[nomad.homes]] needs home_of to route each instance to its home")
    from foundry_fleet.storage.homes import HomedStorage

    return HomedStorage({name: make_home_storage(config, name) for name in config.home_names}, home_of)


def make_home_storage(config: FleetConfig, home: str, on_node: bool = False) -> Storage:
    """One home's storage on its own: the fleet root's for "fleet", else a `[[nomad.homes]]`'s root (as the
    fleet's host reaches it; `on_node`: as its nodes see it, for a node's provisioning). A ZFS home with
    `ssh` is driven over ssh from the fleet's host, but not `on_node`: that runs on the home's own host,
    where its pool is local."""
    if home == MAIN_HOME:
        return _storage_at(config, config.root, config.storage.zfs_base)
    section = config.home(home)
    if section is None:
        raise NotFound(f"no home named {home!r} in fleet.toml", "the homes are: " + ", ".join(config.home_names))
    remote = None
    if section.ssh is not None and not on_node:
        from foundry_fleet.storage.zfs_cmd import ssh_prefix

        remote = ssh_prefix(section.ssh_command, section.ssh)
    return _storage_at(config, section.nodes_root if on_node else section.root, section.zfs_base, remote,
                       f"home {home}")


def _storage_at(config: FleetConfig, root: Path, zfs_base: str | None, remote: list[str] | None = None,
                whose: str = "the fleet's storage") -> Storage:
    if config.storage.driver == "zfs":
        from foundry_fleet.storage.zfs import ZfsStorage
        from foundry_fleet.storage.zfs_cmd import ZfsRunner

        assert zfs_base is not None  # the config refuses zfs without a base, for the fleet and every home
        runner = ZfsRunner(remote=remote or [], whose=whose)
        return ZfsStorage(root, zfs_base, runner=runner, quota_bytes=limit_bytes(config))
    assert remote is None  # the config refuses ssh for directory homes (their files are reached at root)
    return DirectoryStorage(root)


def describe_storage(storage: Storage) -> str:
    """One line for the start-up report: which storage driver, and how it is doing (each home's)."""
    homes = getattr(storage, "home_names", None)
    if homes is not None:
        return "; ".join(f"home {name}: {_describe_home(storage.home(name), name == MAIN_HOME)}"  # type: ignore[attr-defined]
                         for name in homes)
    return _describe_one(storage)


def _describe_home(storage: Storage, main: bool) -> str:
    """A home on another host that does not answer is reported as such (its node is down), not fatal."""
    from foundry_fleet.storage.zfs_cmd import ZfsHostUnreachable

    try:
        return _describe_one(storage)
    except ZfsHostUnreachable as e:
        if main:
            raise
        return f"not answering ({e.message})"


def _describe_one(storage: Storage) -> str:
    if not isinstance(storage, DirectoryStorage):
        from foundry_fleet.storage.zfs import ZfsStorage

        if isinstance(storage, ZfsStorage):
            pool = storage.pool_status()
            return f"ZFS datasets under {storage.base} (pool {pool['name']} {pool['health']}, {pool['free']} free)"
    return f"directories under {storage.shared_dir().parent}"


def make_destinations(config: FleetConfig, storage: Storage) -> list[tuple[DestinationSection, Destination]]:
    """The backup destinations of fleet.toml, each with the driver that fits the fleet's storage; each
    instance's snapshots are sent from the home holding it."""
    return [(section, make_destination(config, storage, section)) for section in config.backups.destinations]


def make_destination(config: FleetConfig, storage: Storage, section: DestinationSection) -> Destination:
    """One backup destination's driver: a restic repository for directory storage, a ZFS dataset for ZFS."""
    if config.storage.driver == "directory":
        from foundry_fleet.storage.restic_destination import ResticDestination

        snapshots = storage.snapshots  # with homes, it finds each instance's snapshots in its home
        return ResticDestination(
            section.target, section.password_file, snapshots.path,
            lambda instance, name, snapshots=snapshots: next(
                (s.created_at for s in snapshots.list(instance) if s.name == name), 0.0),
        )
    from foundry_fleet.storage.zfs_destination import ZfsDestination

    return ZfsDestination(section.target, _source_dataset(storage), ssh=section.ssh_command,
                          source_runner=_source_runner(storage))


def _source_dataset(storage: Storage) -> Callable[[str], str]:
    """instance -> the ZFS dataset its snapshots are of, in the home holding it now."""
    from foundry_fleet.storage.homes import holding

    return lambda instance: holding(storage, instance).layout.data(instance)  # type: ignore[attr-defined]


def _source_runner(storage: Storage) -> Callable[[str], Any]:
    """instance -> the ZfsRunner of the home holding it now (its pool may be on another host, over ssh)."""
    from foundry_fleet.storage.homes import holding

    return lambda instance: holding(storage, instance).zfs  # type: ignore[attr-defined]


def make_release_cache(config: FleetConfig) -> ReleaseCache:
    return ReleaseCache(
        config.paths.releases,
        DownloadPolicy.from_config(config.releases),
        UnpackLimits.from_config(config.releases),
    )


def make_edge(config: FleetConfig, sites: Callable[[], list[TenantSite]], on_problem: Callable[[str | None], None]) -> Edge:
    """Caddy, configured by the fleet; run by the fleet itself, or by Nomad with [edge] on_nomad. `sites`
    is asked for what to route on every update."""
    from foundry_fleet.edge.admin import CaddyAdmin
    from foundry_fleet.edge.driver import Edge
    from foundry_fleet.edge.process import caddy_version, find_caddy

    paths = config.paths
    admin_socket = paths.run / "caddy-admin.sock"
    binary = find_caddy(config.edge.caddy_binary)
    caddy_version(binary)
    if config.edge.on_nomad:
        return Edge(edge_settings(config), _caddy_on_nomad(config, admin_socket), CaddyAdmin(admin_socket), sites,
                    on_problem=on_problem)
    caddy = managed_caddy(config, binary)
    return Edge(edge_settings(config), caddy, CaddyAdmin(caddy.admin_socket), sites, on_problem=on_problem)


def managed_caddy(config: FleetConfig, binary: str = "caddy") -> ManagedCaddy:
    """The fleet's own Caddy process: its state, pid file and log under the fleet root (`binary` matters
    only to start it)."""
    from foundry_fleet.edge.process import ManagedCaddy
    from foundry_fleet.runtime.cgroups import EdgeCgroup
    from foundry_fleet.wiring.runtimes import cgroup_parent

    paths = config.paths
    return ManagedCaddy(binary, paths.root / "edge", paths.run / "caddy-admin.sock", paths.logs / "caddy.log",
                        group=EdgeCgroup(cgroup_parent(config)))


def _caddy_on_nomad(config: FleetConfig, admin_socket: Path) -> CaddyHost:
    """The Nomad job `fvtt-caddy`, built by the same code `foundry-fleet nomad render` prints it with."""
    from foundry_fleet.edge.nomad_caddy import CaddyOnNomad
    from foundry_fleet.runtime.nomad.api import NomadApi, NomadSettings
    from foundry_fleet.wiring.nomad_jobs import caddy_arguments, caddy_job_for

    state_dir = caddy_arguments(config)["data_dir"]
    return CaddyOnNomad(NomadApi(NomadSettings.from_config(config.nomad)),
                        lambda node_id: caddy_job_for(config, node_id), state_dir, admin_socket,
                        wait=config.nomad.wait, stop_timeout=config.instances.stop_timeout + 20)


def make_notifier(config: FleetConfig) -> Notifier:
    """Where status updates go until the Discord bot is connected (it then takes over)."""
    from foundry_fleet.services.status_updates import LogNotifier

    del config  # one choice today; a webhook or mail notifier would be picked here from fleet.toml
    return LogNotifier()
