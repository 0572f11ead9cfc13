"""GET /metrics over HTTP: the fleet's web app wants the token, the `[metrics] listen` door does not."""

from __future__ import annotations

import warnings

from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import StarletteDeprecationWarning

from foundry_fleet.services.metrics.fleet_collector import FleetCollector
from foundry_fleet.services.metrics.instance_figures import InstanceFigures
from foundry_fleet.services.metrics.registry import Metrics
from foundry_fleet.web.app import create_web_app
from foundry_fleet.web.metrics import create_metrics_app

with warnings.catch_warnings():
    # Starlette's TestClient now asks for another HTTP client than httpx, the one this project has.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

TOKEN = "a1" * 32


class Players:
    def users(self, name: str) -> int | None:
        return 2


def _metrics() -> Metrics:
    metrics = Metrics(TOKEN, "0.1.0", started_at=0.0)
    metrics.watch(FleetCollector(lambda: [InstanceFigures("alice", "running", 0, False)], Players()))
    return metrics


def _web() -> TestClient:
    return TestClient(create_web_app(set, metrics=_metrics()))


def _refused(r: object) -> None:
    assert r.status_code == 401  # type: ignore[attr-defined]
    assert r.headers["www-authenticate"].startswith("Bearer")  # type: ignore[attr-defined]
    assert TOKEN not in r.text and "foundry_fleet_" not in r.text  # type: ignore[attr-defined]


def test_without_the_token_a_scraper_gets_401() -> None:
    web = _web()
    _refused(web.get("/metrics"))
    for header in (f"Bearer {TOKEN[:-1]}x", f"Bearer {TOKEN}{TOKEN}", "Bearer", f"Basic {TOKEN}", TOKEN,
                   f"Bearer {TOKEN[:32]}"):
        _refused(web.get("/metrics", headers={"Authorization": header}))


def test_with_the_token_the_text_format() -> None:
    r = _web().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    running = [s for s in families["foundry_fleet_instance_state"].samples if s.value == 1]
    assert [(s.labels["instance"], s.labels["state"]) for s in running] == [("alice", "running")]
    assert families["foundry_fleet_instance_players"].samples[0].value == 2
    assert "process_resident_memory_bytes" in families
    # The scheme's name is case-insensitive (RFC 7235).
    assert _web().get("/metrics", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_the_listen_door_needs_no_token_and_has_nothing_else() -> None:
    door = TestClient(create_metrics_app(_metrics()))
    r = door.get("/metrics")
    assert r.status_code == 200
    assert "foundry_fleet_instance_state" in {f.name for f in text_string_to_metric_families(r.text)}
    for path in ("/health", "/auth/login", "/"):
        assert door.get(path).status_code == 404


def test_a_web_app_without_metrics_has_no_such_path() -> None:
    assert TestClient(create_web_app(set)).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
