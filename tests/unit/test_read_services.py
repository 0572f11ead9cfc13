"""The small reading services on a real state database: hostnames and their claims, what the edge
routes (and where it dials), instance views, backup records and the event log. Rows are written as
the lifecycle code writes them; no process, no Caddy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import FleetConfig, load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.backup_records import BackupRecords
from foundry_fleet.services.edge_sites import EdgeSites
from foundry_fleet.services.events import EventLog
from foundry_fleet.services.hostnames import EXTRA_HOST, OWN_HOST, HostClaim, Hostnames
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.instance_views import InstanceViews
from foundry_fleet.services.operation_lock import RESTORING
from foundry_fleet.storage.directory import DirectoryStorage
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import Instance, Release
from foundry_fleet.wiring.drivers import edge_config


@pytest.fixture
def config(tmp_path: Path) -> FleetConfig:
    return load_config(init_fleet(tmp_path / "fleet"))


@pytest.fixture
def sessions(config: FleetConfig) -> sessionmaker[Session]:
    sessions = open_database(config.paths.database)
    with sessions.begin() as s:
        s.add(Release(version="13.345", generation=13, build=345, layout="node", entry="main.js", sha256="0" * 64,
                      zip_bytes=1, unpacked_bytes=1, path="/nowhere", source="test"))
    return sessions


def add_instance(sessions: sessionmaker[Session], name: str, port: int, state: str = "stopped",
                 extra: list[str] | None = None, desired: str = "stopped", created_at: float = 1.0,
                 address: str | None = None) -> None:
    with sessions.begin() as s:
        s.add(Instance(name=name, release_version="13.345", port=port, desired=desired, state=state,
                       extra_hosts=extra or [], crash_times=[], restarts=0, created_at=created_at, address=address))


def hostnames(config: FleetConfig, sessions: sessionmaker[Session]) -> Hostnames:
    return Hostnames(config, sessions, InstanceViews(config, sessions, DirectoryStorage(config.root)), actor="test")


def test_the_edge_dials_a_running_instance_and_shows_a_page_for_a_stopped_one(
    config: FleetConfig, sessions: sessionmaker[Session]
) -> None:
    # Where the supervisor recorded that the runtime reaches alice: not necessarily her port on loopback.
    add_instance(sessions, "alice", 30001, state="running", desired="running", extra=["games.example.org"],
                 address="10.1.2.3:40001")
    add_instance(sessions, "bob", 30002, state="stopped", created_at=2.0)
    add_instance(sessions, "gone", 30003, state="stopped", desired="deleted", created_at=3.0)
    sites = {s.name: s for s in EdgeSites(sessions, hostnames(config, sessions))()}
    assert set(sites) == {"alice", "bob"}  # an instance being deleted is not routed
    assert sites["alice"].hosts == ("alice.localhost", "games.example.org")
    assert (sites["alice"].address, sites["alice"].state) == ("10.1.2.3:40001", "running")
    assert (sites["bob"].address, sites["bob"].state) == (None, "stopped")


def test_a_host_is_claimed_once_and_the_older_instance_keeps_a_shared_one(
    config: FleetConfig, sessions: sessionmaker[Session]
) -> None:
    add_instance(sessions, "alice", 30001, extra=["shared.example.org"])
    # Stored before claims were checked: bob asks for the same extra host.
    add_instance(sessions, "bob", 30002, extra=["Shared.Example.org."], created_at=2.0)
    h = hostnames(config, sessions)
    with sessions() as s:
        claims = h.claims(s)
    assert claims["alice.localhost"] == HostClaim("alice", OWN_HOST)
    assert claims["shared.example.org"] == HostClaim("alice", EXTRA_HOST)
    assert h.instance_for_host("SHARED.example.org") == "alice"
    assert h.holder("fleet.localhost") == "the fleet" and h.holder("nobody.localhost") is None
    assert [(c.host, c.instance, c.holder) for c in h.conflicts()] == [("shared.example.org", "bob", "alice")]
    assert h.known_hosts() == {"fleet.localhost", "alice.localhost", "shared.example.org", "bob.localhost"}


def test_setting_extra_hosts_refuses_taken_ones_and_changes_nothing(
    config: FleetConfig, sessions: sessionmaker[Session]
) -> None:
    add_instance(sessions, "alice", 30001, extra=["games.example.org"])
    add_instance(sessions, "bob", 30002, created_at=2.0)
    h = hostnames(config, sessions)
    with pytest.raises(Conflict, match="already an extra hostname of instance alice"):
        h.set_extra_hosts("bob", ["bob.example.net", "Games.Example.org"])
    with pytest.raises(Conflict, match="already the own host of instance alice"):
        h.set_extra_hosts("bob", ["alice.localhost"])
    with pytest.raises(Conflict, match="fleet's own host"):
        h.set_extra_hosts("bob", ["fleet.localhost"])
    with pytest.raises(InvalidInput):
        h.set_extra_hosts("bob", ["127.0.0.1"])
    assert InstanceViews(config, sessions, DirectoryStorage(config.root)).get("bob").hosts == ["bob.localhost"]
    view = h.set_extra_hosts("bob", ["Bob.Example.NET", "bob.example.net"])
    assert view.hosts == ["bob.localhost", "bob.example.net"]
    assert EventLog(sessions).recent("bob")[-1].message == "bob.example.net"


def test_instance_views_and_backup_records(config: FleetConfig, sessions: sessionmaker[Session]) -> None:
    add_instance(sessions, "alice", 30001)
    views = InstanceViews(config, sessions, DirectoryStorage(config.root))
    assert [v.name for v in views.list()] == ["alice"]
    assert views.get("alice").url == "https://alice.localhost:8443/-/" and views.get("alice").pid is None
    with pytest.raises(NotFound, match="no instance named 'bob'"):
        views.get("bob")
    records = BackupRecords(sessions, "1d=>1h", actor="test")
    facts = records.facts("alice")
    assert (facts.own_plan, facts.has_process, facts.uid) == (None, False, None)
    records.set_plan("alice", "7d=>1d")
    assert records.facts("alice").own_plan == "7d=>1d"
    assert [(i.name, i.own_plan) for i in records.scheduled()] == [("alice", "7d=>1d")]


def test_the_event_log_reads_from_where_it_left_off(sessions: sessionmaker[Session]) -> None:
    log = EventLog(sessions, actor="test")
    start = log.last_id()
    log.record("instance.start", "alice", Outcome.OK)
    log.acting_as("someone").record("instance.stop", "alice", Outcome.OK, "asked")
    new = log.since(start)
    assert [(e.action, e.outcome) for e in new] == [("instance.start", "ok"), ("instance.stop", "ok")]
    assert log.since(new[-1].id) == []
    assert [e.actor for e in log.recent("alice")] == ["test", "someone"]


def test_the_edge_learns_that_an_instance_is_suspended_or_being_restored_but_never_why(
    config: FleetConfig, sessions: sessionmaker[Session]
) -> None:
    add_instance(sessions, "bob", 30002, state="stopped")
    add_instance(sessions, "carol", 30003, state="sleeping", desired="running", created_at=2.0)
    with sessions.begin() as s:
        s.query(Instance).filter_by(name="bob").one().suspended_reason = "unpaid since March <script>"
    edge_sites = EdgeSites(sessions, hostnames(config, sessions))
    edge_sites.busy = {"carol": RESTORING}.get
    sites = {s.name: s for s in edge_sites()}
    assert (sites["bob"].suspended, sites["bob"].restoring) == (True, False)
    assert (sites["carol"].suspended, sites["carol"].restoring) == (False, True)
    shown = json.dumps(edge_config(config, list(sites.values())))
    assert "unpaid" not in shown and "March" not in shown
    assert "This table is not available" in shown and "This table is being restored" in shown
