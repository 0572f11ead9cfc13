"""The fleet's releases: registered from the release cache, listed with who uses them, removed when
no instance does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import NodeSection
from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.release import ReleaseInfo, node_range_for
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import ProgressCallback
from foundry_fleet.services.events import record
from foundry_fleet.services.node_binaries import resolve_node
from foundry_fleet.services.views import ReleaseView
from foundry_fleet.store.models import Instance, Release

if TYPE_CHECKING:  # the account pages need httpx; a node that only reads the cache never loads it
    from foundry_fleet.releases.account import AccountCredentials, FoundryAccount


class ReleaseRegistry:
    def __init__(self, node: NodeSection, sessions: sessionmaker[Session], cache: ReleaseCache,
                 actor: str = "cli") -> None:
        self.node = node
        self.sessions = sessions
        self.cache = cache
        self.actor = actor

    def acting_as(self, actor: str) -> ReleaseRegistry:
        """The same registry, recording its events as `actor`'s."""
        return ReleaseRegistry(self.node, self.sessions, self.cache, actor)

    def add(self, source: str, progress: ProgressCallback | None = None) -> ReleaseView:
        return self._register(self.cache.add(source, progress))

    def add_from_account(self, version: str, account_file: Path,
                         progress: ProgressCallback | None = None) -> ReleaseView:
        """Add `version` from the foundryvtt.com account in `account_file`; cached versions never log in."""
        accounts: list[FoundryAccount] = []

        def links() -> FoundryAccount:
            accounts.append(self._account(account_file))
            return accounts[-1]

        try:
            return self._register(self.cache.add_version(version, links, progress))
        finally:
            for account in accounts:
                account.close()

    def account_license_key(self, account_file: Path, index: int = 1) -> str:
        """The `index`-th (from 1) license key of the foundryvtt.com account in `account_file`."""
        with self._account(account_file) as account:
            keys = account.license_keys()
        if not keys:
            raise NotFound(f"the foundryvtt.com account in {account_file} has no license key",
                           "buy or redeem a license on foundryvtt.com, or give the key with --license")
        if not 1 <= index <= len(keys):
            raise InvalidInput(f"the account in {account_file} has {len(keys)} license key(s); "
                               f"there is no key number {index}", f"choose --license-index 1 to {len(keys)}")
        return keys[index - 1]

    def _account(self, account_file: Path) -> FoundryAccount:
        from foundry_fleet.releases.account import AccountCredentials

        return self.foundry_account(AccountCredentials.read(account_file))

    def foundry_account(self, credentials: AccountCredentials, max_total_wait: float | None = None) -> FoundryAccount:
        """A session with foundryvtt.com under the downloads' own rules (allow-list, transport); `max_total_wait`:
        how long a 429 may be waited out (None: the account's default; 0: not at all, someone is waiting)."""
        from foundry_fleet.releases.account import MAX_TOTAL_WAIT_SECONDS, FoundryAccount

        wait = MAX_TOTAL_WAIT_SECONDS if max_total_wait is None else max_total_wait
        return FoundryAccount(credentials, self.cache.policy, transport=self.cache.transport, max_total_wait=wait)

    def _register(self, info: ReleaseInfo) -> ReleaseView:
        try:
            # A release that no node binary here can run is refused now, not when a tenant starts it.
            resolve_node(self.node, info.generation)
        except FleetError as e:
            with self.sessions.begin() as s:
                record(s, self.actor, "release.add", info.version, Outcome.REFUSED, e.message)
            raise
        with self.sessions.begin() as s:
            row = s.get(Release, info.version)
            if row is None:
                s.add(_release_row(info))
                record(s, self.actor, "release.add", info.version, Outcome.OK, f"from {info.source}", sha256=info.sha256)
            elif row.sha256 != info.sha256:
                raise Conflict(
                    f"release {info.version} is already registered with another zip (sha256 {row.sha256[:12]}...)",
                    f"remove it first with `foundry-fleet release remove {info.version}`",
                )
        return self.get(info.version)

    def get(self, version: str) -> ReleaseView:
        with self.sessions() as s:
            row = s.get(Release, version)
            if row is None:
                raise NotFound(f"release {version} is not in this fleet",
                               "see `foundry-fleet release list`, or add it with `release add`")
            return _view(s, row)

    def list(self) -> list[ReleaseView]:
        with self.sessions() as s:
            rows = s.scalars(select(Release).order_by(Release.generation, Release.build)).all()
            return [_view(s, r) for r in rows]

    def remove(self, version: str) -> None:
        with self.sessions.begin() as s:
            row = s.get(Release, version)
            if row is None:
                raise NotFound(f"release {version} is not in this fleet", "see `foundry-fleet release list`")
            users = s.scalars(select(Instance.name).where(Instance.release_version == version)).all()
            if users:
                record(s, self.actor, "release.remove", version, Outcome.REFUSED, "in use")
                raise Conflict(
                    f"release {version} is in use by {', '.join(sorted(users))}",
                    "upgrade or delete those instances first",
                )
            s.delete(row)
            record(s, self.actor, "release.remove", version, Outcome.OK)
        self.cache.remove(version)


def _view(s: Session, row: Release) -> ReleaseView:
    users = s.scalars(select(Instance.name).where(Instance.release_version == row.version)).all()
    return ReleaseView(
        version=row.version, generation=row.generation, build=row.build, layout=row.layout,
        entry=row.entry, node=str(node_range_for(row.generation)), sha256=row.sha256,
        zip_bytes=row.zip_bytes, unpacked_bytes=row.unpacked_bytes, source=row.source,
        instances=sorted(users),
    )


def _release_row(info: ReleaseInfo) -> Release:
    return Release(
        version=info.version, generation=info.generation, build=info.build, layout=info.layout.value,
        entry=info.entry, sha256=info.sha256, zip_bytes=info.zip_bytes, unpacked_bytes=info.unpacked_bytes,
        path=info.path, source=info.source, added_at=time.time(),
    )
