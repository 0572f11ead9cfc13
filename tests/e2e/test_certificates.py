"""Certificate problems become events (and so status updates), checked against the real edge."""

from __future__ import annotations

import calendar
import dataclasses
import time
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.edge.driver import CertificateState
from foundry_fleet.services.certificates import CertificateWatch, certificate_problem
from foundry_fleet.services.edge_status import edge_problem_reporter
from foundry_fleet.wiring.drivers import make_edge
from foundry_fleet.wiring.services import open_services
from tests.support.harness import FleetHarness

pytestmark = pytest.mark.e2e


def test_a_missing_or_expiring_certificate_is_an_event_once_and_so_is_its_recovery(
    fleet: FleetHarness, release_zips: dict[str, Path]
) -> None:
    fleet.cli("release", "add", str(release_zips["node"]))
    fleet.up()
    fleet.cli("instance", "create", "alice", "--release", "13.345")
    config = load_config(fleet.config)
    service = open_services(config, actor="test")
    edge = make_edge(config, service.sites, on_problem=edge_problem_reporter(service.events))
    real = edge.certificate("alice.localhost")
    assert real.state == "valid" and real.not_after, real  # what Caddy really serves, checked like a browser

    broken = {"on": False}

    def certificate(host: str) -> CertificateState:
        state = edge.certificate(host)
        return dataclasses.replace(state, state="none") if broken["on"] else state

    watch = CertificateWatch(service.sites, service.events, certificate, config.edge.tls)
    assert watch.check_once() == {}
    broken["on"] = True
    assert watch.check_once() == {"alice.localhost": "alice.localhost: none"}
    watch.check_once()  # still broken: no second event
    broken["on"] = False
    assert watch.check_once() == {}
    events = [(e["outcome"], e["message"]) for e in fleet.cli("events", "--instance", "alice", "--json").json()
              if e["action"] == "edge.certificate"]
    assert events == [("failed", "alice.localhost: none"), ("ok", "alice.localhost: valid again")]

    expires = calendar.timegm(time.strptime(real.not_after, "%Y-%m-%d"))
    assert certificate_problem(real, expires - 8 * 86400) is None
    assert "has not been renewed" in (certificate_problem(real, expires - 6 * 86400) or "")
    assert certificate_problem(real, expires - 6 * 86400, expiry_warning=0) is None  # the local CA's: 12 h
