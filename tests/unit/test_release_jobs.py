"""Release downloads in the background (services/release_jobs.py): progress as the registry reports it,
one download of a link at a time, refusals at once, errors without the link's secret, and finished jobs
forgotten after a while.

A real fleet's registry and release cache; the network is an httpx transport standing in for
foundryvtt.com, whose body waits half way until the test lets it go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict, InvalidInput, NotFound
from foundry_fleet.domain.release import ReleaseLayout
from foundry_fleet.releases.cache import ReleaseCache
from foundry_fleet.releases.policy import MIB, DownloadPolicy
from foundry_fleet.services.init import init_fleet
from foundry_fleet.services.release_jobs import ReleaseJob, ReleaseJobs
from foundry_fleet.services.release_registry import ReleaseRegistry
from foundry_fleet.wiring.services import FleetServices, open_services
from tests.support.foundry_standin import build_release_zip

HOST = "downloads.example.test"
SECRET = "verify=s3cr3t-timed-token"


class Downloads:
    """foundryvtt.com as an httpx transport: each path's zip, sent in two halves; the second half waits
    for `go_on` (set at once unless a test holds it)."""

    def __init__(self) -> None:
        self.zips: dict[str, bytes] = {}
        self.go_on = threading.Event()
        self.go_on.set()
        self.asked: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path)
        body = self.zips.get(request.url.path)
        if body is None:
            return httpx.Response(404, text="not found")
        half = len(body) // 2

        def halves() -> Iterator[bytes]:
            yield body[:half]
            assert self.go_on.wait(30)
            yield body[half:]

        return httpx.Response(200, headers={"Content-Length": str(len(body))}, content=halves())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetServices:
    return open_services(load_config(init_fleet(tmp_path_factory.mktemp("jobs") / "fleet")), actor="test")


@pytest.fixture
def downloads(fleet: FleetServices, tmp_path: Path) -> Iterator[Downloads]:
    standin = Downloads()
    for build in (350, 351):
        # Large enough that the first half fills the download's read buffer: its progress shows.
        standin.zips[f"/releases/13.{build}.zip"] = build_release_zip(
            tmp_path, ReleaseLayout.NODE, 13, build, filler_files=1, filler_bytes=256 * 1024).read_bytes()
    yield standin
    standin.go_on.set()  # no download is left waiting after a failed test


def registry_on(fleet: FleetServices, downloads: Downloads) -> ReleaseRegistry:
    cache = ReleaseCache.from_config(fleet.config, transport=httpx.MockTransport(downloads.handle))
    # Private addresses allowed: the stand-in's host resolves nowhere, and is never connected to.
    cache.policy = DownloadPolicy(allowed_hosts=(HOST,), allow_private_addresses=True, max_download_bytes=10 * MIB)
    return ReleaseRegistry(fleet.config.node, fleet.sessions, cache, "daemon")


def wait_for(jobs: ReleaseJobs, job_id: str, done: Callable[[ReleaseJob], bool], timeout: float = 30) -> ReleaseJob:
    deadline = time.monotonic() + timeout
    while not done(job := jobs.get(job_id)):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def link(build: int) -> str:
    return f"https://{HOST}/releases/13.{build}.zip?{SECRET}"


def test_a_job_reports_its_download_and_ends_with_the_release_added_as_its_actor(
        fleet: FleetServices, downloads: Downloads) -> None:
    jobs = ReleaseJobs(registry_on(fleet, downloads))
    downloads.go_on.clear()
    job_id = jobs.start(link(350), "discord:200000000000000009")
    size = len(downloads.zips["/releases/13.350.zip"])
    half_way = wait_for(jobs, job_id, lambda j: j.phase == "download" and j.done_bytes > 0)
    assert 0 < half_way.done_bytes <= size // 2 and half_way.total_bytes == size
    assert half_way.source == f"https://{HOST}/releases/13.350.zip" and not half_way.finished
    assert [j.id for j in jobs.list()] == [job_id]

    assert jobs.start(link(350).replace("s3cr3t", "another"), "discord:2") == job_id  # fetched once
    downloads.go_on.set()
    done = wait_for(jobs, job_id, lambda j: j.finished)
    assert (done.phase, done.version, done.error) == ("done", "13.350", None)
    assert downloads.asked == ["/releases/13.350.zip"]
    event = fleet.events.search(target="13.350", action_prefix="release.add")[0]
    assert (event.outcome, event.actor) == ("ok", "discord:200000000000000009") and "s3cr3t" not in event.message
    assert fleet.releases.get("13.350").source == f"https://{HOST}/releases/13.350.zip"


def test_a_link_the_policy_refuses_is_refused_before_any_job(fleet: FleetServices, downloads: Downloads) -> None:
    jobs = ReleaseJobs(registry_on(fleet, downloads))
    for source, why in [("/srv/fleet/some.zip", "not an https:// link"),
                        (f"http://{HOST}/r.zip?{SECRET}", "not an https:// link"),
                        (f"https://elsewhere.example/r.zip?{SECRET}", "not an allowed download host")]:
        with pytest.raises(InvalidInput) as refused:
            jobs.start(source, "discord:2")
        assert why in refused.value.message and "s3cr3t" not in refused.value.message
    assert jobs.list() == [] and downloads.asked == []


def test_a_failed_download_says_why_without_the_secret(fleet: FleetServices, downloads: Downloads) -> None:
    jobs = ReleaseJobs(registry_on(fleet, downloads))
    job_id = jobs.start(f"https://{HOST}/releases/missing.zip?{SECRET}", "discord:2")
    failed = wait_for(jobs, job_id, lambda j: j.finished)
    assert failed.phase == "failed" and failed.error and "404" in failed.error
    assert "s3cr3t" not in failed.error and failed.version is None


def test_downloads_at_once_are_capped(fleet: FleetServices, downloads: Downloads) -> None:
    jobs = ReleaseJobs(registry_on(fleet, downloads), max_running=1)
    downloads.go_on.clear()
    first = jobs.start(link(351), "discord:2")
    with pytest.raises(Conflict, match="under way already"):
        jobs.start(f"https://{HOST}/releases/other.zip", "discord:2")
    downloads.go_on.set()
    assert wait_for(jobs, first, lambda j: j.finished).phase == "done"


def test_a_finished_job_is_forgotten_after_a_while(fleet: FleetServices, downloads: Downloads) -> None:
    now = [1000.0]
    jobs = ReleaseJobs(registry_on(fleet, downloads), clock=lambda: now[0], keep_finished=60)
    job_id = jobs.start(f"https://{HOST}/releases/gone.zip", "discord:2")
    wait_for(jobs, job_id, lambda j: j.finished)
    now[0] += 59
    assert jobs.get(job_id).phase == "failed"
    now[0] += 2
    with pytest.raises(NotFound):
        jobs.get(job_id)
    assert jobs.list() == []
