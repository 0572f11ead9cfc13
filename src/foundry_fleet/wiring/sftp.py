"""The daemon's SFTP endpoint, built from [sftp] and the fleet's services."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

from foundry_fleet.domain.errors import Conflict, NotFound
from foundry_fleet.domain.instance_layout import DATA
from foundry_fleet.services.disk_limits import DiskLimits
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.sftp_keys import SftpKeys
from foundry_fleet.sftp.server import Account, Limits, SftpEndpoint, load_or_create_host_key, start_sftp
from foundry_fleet.wiring.services import FleetServices

log = logging.getLogger("foundry_fleet.daemon")


class FleetAccounts:
    """Each instance is an account: its Data/ folder, its user, its keys and its disk limit."""

    def __init__(self, instances: InstanceViews, keys: SftpKeys, disk_limits: DiskLimits) -> None:
        self.instances = instances
        self.keys = keys
        self.disk_limits = disk_limits

    def account(self, name: str) -> Account | None:
        try:
            view = self.instances.get(name)
        except NotFound:
            return None
        return Account(name, Path(view.data_dir) / DATA, view.uid, view.uid)

    def authorized_keys(self, name: str) -> list[str]:
        return self.keys.authorized(name)

    def over_limit(self, name: str) -> bool:
        # ZFS refuses the write itself at the quota; on directories the fleet's own walk decides.
        if self.disk_limits.limit is None or self.disk_limits.storage.enforces_limits:
            return False
        return self.disk_limits.use_of(name).over


def host_key_path(services: FleetServices) -> Path:
    return services.config.paths.database.parent / "sftp_host_key"


async def start_fleet_sftp(services: FleetServices) -> SftpEndpoint | None:
    """The endpoint when [sftp] enables it, else None."""
    section = services.config.sftp
    if not section.enabled:
        return None
    host, port = section.listen_address
    accounts = FleetAccounts(services.instances, SftpKeys(services.sessions, "sftp"), services.disk_limits)
    try:
        endpoint = await start_sftp(host, port, load_or_create_host_key(host_key_path(services)), accounts,
                                    Limits(max_sessions=section.max_sessions))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise Conflict(f"port {port} (sftp) is in use", "set [sftp] listen in fleet.toml") from None
        raise
    log.info("SFTP for tenants on %s:%d", host, endpoint.port)
    return endpoint
