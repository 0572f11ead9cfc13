"""The fleet's figures for Prometheus, from stand-in readings (names, labels and values), and the one read of
the instances they start from."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from foundry_fleet.edge.driver import CertificateState
from foundry_fleet.services.certificates import CertificateWatch, CheckedHost
from foundry_fleet.services.metrics.backup_figures import BackupFigureReads
from foundry_fleet.services.metrics.fleet_collector import FleetCollector
from foundry_fleet.services.metrics.instance_figures import InstanceFigureReads, InstanceFigures
from foundry_fleet.services.metrics.registry import Metrics
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import Instance, Release, Tenant
from tests.support.harness import Clock

NOW = 1_800_000_000.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Point:
    memory_bytes: int | None
    memory_limit_bytes: int | None
    cpu_percent: float | None


class Samples:
    def __init__(self, points: dict[str, Point]) -> None:
        self.points = points

    def latest(self, name: str) -> Point | None:
        return self.points.get(name)


class Players:
    def __init__(self, users: dict[str, int]) -> None:
        self.connected = users

    def users(self, name: str) -> int | None:
        return self.connected.get(name)


@dataclass(frozen=True)
class Snap:
    name: str
    created_at: float


class SnapshotLists:
    def __init__(self, snaps: dict[str, list[Snap]]) -> None:
        self.snaps = snaps
        self.calls = 0

    def list(self, instance: str) -> list[Snap]:
        self.calls += 1
        return self.snaps.get(instance, [])


class Replication:
    def __init__(self, rows: list[dict[str, object]]) -> None:
        self.rows = rows

    def status(self, instances: list[str], now: float | None = None) -> list[dict[str, object]]:
        return [r for r in self.rows if r["instance"] in instances]


class Certificates:
    def __init__(self, checked: list[CheckedHost]) -> None:
        self.found = checked

    def checked(self) -> list[CheckedHost]:
        return self.found


FLEET = [
    InstanceFigures("alice", "running", restarts=2, suspended=False),
    InstanceFigures("bob", "stopped", restarts=0, suspended=True),
    InstanceFigures("carol", "sleeping", restarts=1, suspended=False),
]


def _collector(instances: list[InstanceFigures] = FLEET, **kw: object) -> FleetCollector:
    defaults: dict[str, object] = {
        "players": Players({"alice": 3}),
        "samples": Samples({
            "alice": Point(300 * MB, 512 * MB, 12.5),
            # What the samples still hold of bob's last run: not what a stopped instance uses.
            "bob": Point(200 * MB, 512 * MB, 1.0),
        }),
        "backups": BackupFigureReads(
            SnapshotLists({"alice": [Snap("a1", NOW - 7200), Snap("a2", NOW - 600)], "carol": [Snap("c1", NOW - 60)]}),
            Replication([
                {"instance": "alice", "destination": "offsite", "seconds_behind": 3600.0, "snapshots_behind": 1,
                 "last_error": ""},
                {"instance": "alice", "destination": "nas", "seconds_behind": 0.0, "snapshots_behind": 0,
                 "last_error": "connection refused"},
                {"instance": "carol", "destination": "offsite", "seconds_behind": None, "snapshots_behind": 0,
                 "last_error": ""},
            ])),
        "certificates": Certificates([
            CheckedHost("alice", CertificateState("alice.example.org", "valid", not_after="2027-01-25")),
            CheckedHost("alice", CertificateState("games.example.net", "invalid", detail="expired")),
        ]),
        "clock": lambda: NOW,
    }
    defaults.update(kw)
    return FleetCollector(lambda: list(instances), **defaults)  # type: ignore[arg-type]


def _samples(collector: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape as the text format carries it, parsed back: (name, labels) -> value."""
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _names(samples: dict, name: str) -> set[frozenset[tuple[str, str]]]:
    return {labels for n, labels in samples if n == name}


def test_each_instance_has_one_state_of_the_set_and_the_fleet_counts_them() -> None:
    got = _samples(_collector())
    states = ("creating", "starting", "running", "stopping", "stopped", "failed", "sleeping")
    for name, state in (("alice", "running"), ("bob", "stopped"), ("carol", "sleeping")):
        for s in states:
            assert _value(got, "foundry_fleet_instance_state", instance=name, state=s) == (1 if s == state else 0)
    assert {s: _value(got, "foundry_fleet_instances", state=s) for s in states} == {
        "creating": 0, "starting": 0, "running": 1, "stopping": 0, "stopped": 1, "failed": 0, "sleeping": 1}
    assert _value(got, "foundry_fleet_instance_suspended", instance="bob") == 1
    assert _value(got, "foundry_fleet_instance_suspended", instance="alice") == 0
    assert _value(got, "foundry_fleet_instance_restarts_total", instance="alice") == 2
    assert _value(got, "foundry_fleet_instance_restarts_total", instance="bob") == 0
    # Labels are the instance's name and its state, never its owner.
    assert all(set(dict(labels)) <= {"instance", "state", "destination", "host", "part"} for _n, labels in got)


def test_memory_and_cpu_only_of_running_instances_and_players_where_known() -> None:
    got = _samples(_collector())
    assert _value(got, "foundry_fleet_instance_memory_bytes", instance="alice") == 300 * MB
    assert _value(got, "foundry_fleet_instance_memory_limit_bytes", instance="alice") == 512 * MB
    assert _value(got, "foundry_fleet_instance_cpu_percent", instance="alice") == 12.5
    for name in ("foundry_fleet_instance_memory_bytes", "foundry_fleet_instance_cpu_percent",
                 "foundry_fleet_instance_memory_limit_bytes"):
        assert _names(got, name) == {frozenset({("instance", "alice")})}, name  # bob is stopped: no sample
    assert _value(got, "foundry_fleet_memory_bytes") == 300 * MB
    assert _names(got, "foundry_fleet_instance_players") == {frozenset({("instance", "alice")})}
    assert _value(got, "foundry_fleet_instance_players", instance="alice") == 3
    assert _value(got, "foundry_fleet_players") == 3


def test_without_samples_there_are_no_memory_or_cpu_figures() -> None:
    got = _samples(_collector(samples=None))
    assert not [n for n, _ in got if "memory" in n or "cpu" in n]
    assert _value(got, "foundry_fleet_instance_state", instance="alice", state="running") == 1


def test_snapshot_ages_and_replication_lag_per_destination() -> None:
    got = _samples(_collector())
    assert _value(got, "foundry_fleet_instance_last_snapshot_age_seconds", instance="alice") == 600
    assert _value(got, "foundry_fleet_instance_last_snapshot_age_seconds", instance="carol") == 60
    assert _value(got, "foundry_fleet_instance_last_snapshot_age_seconds", instance="bob") is None  # none taken
    assert _value(got, "foundry_fleet_instance_snapshots", instance="alice") == 2
    assert _value(got, "foundry_fleet_instance_snapshots", instance="bob") == 0
    assert _value(got, "foundry_fleet_replication_lag_seconds", instance="alice", destination="offsite") == 3600
    assert _value(got, "foundry_fleet_replication_lag_seconds", instance="alice", destination="nas") == 0
    assert _value(got, "foundry_fleet_replication_lag_seconds", instance="carol", destination="offsite") is None
    assert _value(got, "foundry_fleet_replication_snapshots_behind", instance="alice", destination="offsite") == 1
    assert _value(got, "foundry_fleet_replication_failing", instance="alice", destination="nas") == 1
    assert _value(got, "foundry_fleet_replication_failing", instance="alice", destination="offsite") == 0


def test_certificates_as_the_watch_last_found_them() -> None:
    got = _samples(_collector())
    # 2027-01-25 00:00 UTC is 1_800_835_200: 835_200 s after NOW.
    assert _value(got, "foundry_fleet_certificate_days_left", instance="alice", host="alice.example.org") == 9.666666666666666
    assert _value(got, "foundry_fleet_certificate_valid", instance="alice", host="alice.example.org") == 1
    assert _value(got, "foundry_fleet_certificate_valid", instance="alice", host="games.example.net") == 0
    assert _value(got, "foundry_fleet_certificate_days_left", instance="alice", host="games.example.net") is None


def test_a_part_that_cannot_be_read_is_left_out_and_said() -> None:
    class Broken:
        def status(self, instances: list[str], now: float | None = None) -> list[dict[str, object]]:
            raise OSError("zfs: no such pool")

    got = _samples(_collector(backups=BackupFigureReads(SnapshotLists({}), Broken())))
    assert _value(got, "foundry_fleet_metrics_read_ok", part="backups") == 0
    assert _value(got, "foundry_fleet_metrics_read_ok", part="instances") == 1
    assert not [n for n, _ in got if "snapshot" in n or "replication" in n]
    assert _value(got, "foundry_fleet_instance_state", instance="alice", state="running") == 1

    def no_database() -> list[InstanceFigures]:
        raise RuntimeError("database is locked")

    got = _samples(FleetCollector(no_database, Players({})))
    assert _value(got, "foundry_fleet_metrics_read_ok", part="instances") == 0
    assert not [n for n, _ in got if n.startswith("foundry_fleet_instance")]


def test_one_snapshot_listing_serves_the_scrapes_of_a_backup_round() -> None:
    clock = Clock(0.0)
    snaps = SnapshotLists({"alice": [Snap("a1", NOW - 60)]})
    reads = BackupFigureReads(snaps, None, keep_for=30.0, clock=clock)
    assert reads.read(["alice"]).newest_at == {"alice": NOW - 60}
    clock.now = 29.0
    reads.read(["alice"])
    assert snaps.calls == 1
    reads.read(["alice", "bob"])  # a new instance: read again at once
    assert snaps.calls == 3
    clock.now = 60.0
    reads.read(["alice", "bob"])
    assert snaps.calls == 5


def test_the_registry_has_the_daemon_and_asks_for_the_token() -> None:
    clock = Clock(NOW)
    metrics = Metrics("s3cret" * 11, "1.2.3", started_at=NOW - 90, clock=clock)
    families = {f.name: f for f in text_string_to_metric_families(metrics.scrape().decode())}
    assert families["foundry_fleet_daemon_uptime_seconds"].samples[0].value == 90
    (build,) = families["foundry_fleet_build_info"].samples
    assert build.name == "foundry_fleet_build_info" and build.labels["version"] == "1.2.3" and build.value == 1
    # The daemon's own process, from prometheus_client's process collector.
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= set(families)
    assert "foundry_fleet_instance_state" not in families  # not until the fleet is watched
    metrics.watch(_collector())
    assert "foundry_fleet_instance_state" in {f.name for f in text_string_to_metric_families(metrics.scrape().decode())}
    assert metrics.admits("s3cret" * 11)
    assert not metrics.admits("s3cret" * 10) and not metrics.admits("") and not metrics.admits("s3cret" * 11 + "x")
    assert metrics.content_type.startswith("text/plain; version=")


def test_the_certificate_watch_keeps_what_it_found_for_each_host() -> None:
    from foundry_fleet.edge.caddy_config import TenantSite

    class Events:
        def record(self, *args: object, **kwargs: object) -> None:
            pass

    sites = [TenantSite("alice", ("alice.localhost", "games.example.org"), "127.0.0.1:30001", "running"),
             TenantSite("bob", ("bob.localhost",), None, "stopped")]
    asked: list[str] = []

    def certificate(host: str) -> CertificateState:
        asked.append(host)
        return CertificateState(host, "valid", not_after="2027-01-25")

    watch = CertificateWatch(lambda: sites, Events(), certificate, "acme", clock=lambda: NOW)  # type: ignore[arg-type]
    assert watch.checked() == []  # nothing until the first round
    watch.check_once()
    assert [(c.instance, c.certificate.host) for c in watch.checked()] == [
        ("alice", "alice.localhost"), ("alice", "games.example.org")]
    watch.checked()
    assert len(asked) == 2  # reading what it found asks the edge nothing


def test_the_instances_are_read_in_one_statement(tmp_path: Path) -> None:
    sessions = open_database(tmp_path / "fleet.sqlite")
    with sessions.begin() as s:
        s.add(Release(version="13.345", generation=13, build=345, layout="node", entry="main.js", sha256="0" * 64,
                      zip_bytes=1, unpacked_bytes=1, path="/r", source="test"))
        owner = Tenant(discord_id="123456789012345678")
        s.add(owner)
        for i, (name, state) in enumerate((("alice", "running"), ("bob", "stopped"), ("carol", "failed"))):
            s.add(Instance(name=name, release_version="13.345", port=30000 + i, state=state, owner=owner,
                           restarts=i, suspended_reason="unpaid" if name == "bob" else None, created_at=time.time()))
    statements: list[str] = []
    event.listen(sessions.kw["bind"], "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert InstanceFigureReads(sessions).all() == [
        InstanceFigures("alice", "running", 0, False), InstanceFigures("bob", "stopped", 1, True),
        InstanceFigures("carol", "failed", 2, False)]
    assert len(statements) == 1, statements
