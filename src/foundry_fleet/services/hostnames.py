"""Hostnames: each served for one instance. Who claims a host, which hosts the edge serves for whom,
and the checks that keep a new claim from taking another instance's host."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from filelock import FileLock, Timeout
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import FleetConfig
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.hosts import HostConflict, InstanceHosts, assign_hosts, comparable_host, normalise_hostname
from foundry_fleet.domain.instance import DesiredState
from foundry_fleet.services.events import record
from foundry_fleet.services.instance_views import InstanceViews, instance_row
from foundry_fleet.services.views import InstanceView
from foundry_fleet.store.models import Instance

OWN_HOST = "the own host"
EXTRA_HOST = "an extra hostname"


@dataclass(frozen=True)
class HostClaim:
    instance: str  # the instance that asks for the host
    kind: str  # OWN_HOST or EXTRA_HOST


@dataclass(frozen=True)
class ServedHosts:
    """What the edge routes: the rows of the instances that exist, the hosts it serves for each (by
    name; maybe none), and the claims it does not serve."""
    rows: list[Instance]
    by_instance: dict[str, tuple[str, ...]]
    conflicts: list[HostConflict]

    def instance_for(self, host: str) -> str | None:
        return next((name for name, hosts in self.by_instance.items() if host in hosts), None)


class Hostnames:
    def __init__(self, config: FleetConfig, sessions: sessionmaker[Session], instances: InstanceViews,
                 actor: str = "cli") -> None:
        self.config = config
        self.sessions = sessions
        self.instances = instances
        self.actor = actor

    def acting_as(self, actor: str) -> Hostnames:
        """The same hostnames, recording changes under another actor (e.g. the CLI user behind an API call)."""
        return Hostnames(self.config, self.sessions, self.instances, actor)

    def fleet_host(self) -> str:
        return self.config.host_for(self.config.fleet.fleet_host)

    # claiming -------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Held while a host is checked and claimed, by every process (CLI or daemon): two requests
        for the same host cannot both find it free."""
        lock_dir = self.config.paths.run / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_dir / "hosts.lock"), timeout=60):
                yield
        except Timeout:
            raise Conflict("another change of hostnames has been under way for a minute", "try again") from None

    def clean_extra_hosts(self, name: str, hosts: list[str]) -> list[str]:
        """Extra hostnames in their one spelling, each a real hostname (never an IP address)."""
        own = self.config.host_for(name)
        clean: list[str] = []
        for h in hosts:
            host = normalise_hostname(h, "extra hostname", min_labels=2)
            if host == own:
                raise InvalidInput(f"{host} is already {name}'s own host", "list only the hostnames it has besides that")
            if host not in clean:
                clean.append(host)
        return clean

    def set_extra_hosts(self, name: str, hosts: list[str]) -> InstanceView:
        """Give the instance these extra hostnames (and only these), refused if one is taken."""
        clean = self.clean_extra_hosts(name, hosts)
        with self.lock(), self.sessions.begin() as s:
            row = instance_row(s, name)
            self.refuse_taken(s, name, clean)
            row.extra_hosts = clean
            record(s, self.actor, "instance.hosts", name, Outcome.OK, ", ".join(clean) or "none")
            return self.instances.view(row)

    def refuse_taken(self, s: Session, name: str, hosts: list[str], own: str | None = None) -> None:
        """Conflict if one of `hosts` (or `own`, the host a new instance's name gives it) is the fleet's
        or another instance's. Call with the lock held, in the session that writes the claim."""
        fleet_host = self.fleet_host()
        taken = self.claims(s, exclude=name)
        if own is not None:
            if own == fleet_host:
                raise Conflict(f"{name}'s host {own} is the fleet's own host", "choose another name")
            if own in taken:
                claim = taken[own]
                raise Conflict(
                    f"the name {name!r} would be served at {own}, which is already {claim.kind} of instance "
                    f"{claim.instance}",
                    f"choose another name, or first remove {own} from {claim.instance} "
                    f"(`foundry-fleet instance hosts {claim.instance} HOST...` with the hosts it keeps, or --clear)",
                )
        for host in hosts:
            if host == fleet_host:
                raise Conflict(f"host {host} is the fleet's own host", "choose another hostname")
            if host in taken:
                claim = taken[host]
                hint = ("each hostname can point at one instance only: choose another hostname"
                        if claim.kind == OWN_HOST else
                        f"each hostname can point at one instance only: remove it from {claim.instance} first "
                        f"(`foundry-fleet instance hosts {claim.instance} HOST...` with the hosts it keeps, or --clear)")
                raise Conflict(f"host {host} is already {claim.kind} of instance {claim.instance}", hint)

    def claims(self, s: Session, exclude: str | None = None) -> dict[str, HostClaim]:
        """Every host an instance asks for, as stored (served or not), with the first instance asking."""
        claims: dict[str, HostClaim] = {}
        query = select(Instance).where(Instance.name != exclude) if exclude else select(Instance)
        for row in s.scalars(query).all():
            claims.setdefault(comparable_host(self.config.host_for(row.name)), HostClaim(row.name, OWN_HOST))
            for extra in row.extra_hosts or []:
                claims.setdefault(comparable_host(str(extra)), HostClaim(row.name, EXTRA_HOST))
        return claims

    def holder(self, host: str) -> str | None:
        """Who claims `host` in the state database (an instance, or "the fleet"), served or not."""
        host = comparable_host(host)
        if host == self.fleet_host():
            return "the fleet"
        with self.sessions() as s:
            claim = self.claims(s).get(host)
        return claim.instance if claim else None

    # serving --------------------------------------------------------------------------------

    def served(self, s: Session) -> ServedHosts:
        """The one answer the edge, the backups app and the TLS permission all use, so a host never
        leads to one instance's server and another's backups."""
        rows = list(s.scalars(select(Instance).where(Instance.desired != DesiredState.DELETED.value)).all())
        wanted = [InstanceHosts(r.name, self.config.host_for(r.name), tuple(r.extra_hosts or []), (r.created_at, r.id))
                  for r in rows]
        by_instance, conflicts = assign_hosts(self.fleet_host(), wanted)
        return ServedHosts(rows, by_instance, conflicts)

    def known_hosts(self) -> set[str]:
        """Every hostname the fleet serves: its own host and all of its instances' hosts."""
        with self.sessions() as s:
            served = self.served(s)
        return {self.fleet_host(), *(h for hosts in served.by_instance.values() for h in hosts)}

    def instance_for_host(self, host: str) -> str | None:
        """The instance the edge serves at a hostname (its own or an extra one), or None."""
        with self.sessions() as s:
            return self.served(s).instance_for(comparable_host(host))

    def conflicts(self) -> list[HostConflict]:
        """Hosts instances ask for that the edge does not serve them (collisions from before they were
        refused, or an invalid hostname in an old database)."""
        with self.sessions() as s:
            return self.served(s).conflicts
