"""Release downloads that outlive the request that asked for them.

Adding a release from a link downloads a few hundred MB and unpacks it: minutes on a slow line, longer
than any page should wait. A job runs `ReleaseRegistry.add` in a worker thread and keeps its progress,
so a page can poll it and a second viewer sees the same job. A link whose download is under way is not
fetched twice (a second start gets the running job back), and a finished job is forgotten after a
while: its outcome is in the event log and the release list.

Links are only ever kept redacted (no query string): foundryvtt.com's timed links carry a credential.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from foundry_fleet.domain.errors import Conflict, FleetError, InvalidInput, NotFound
from foundry_fleet.domain.urls import redact_url
from foundry_fleet.releases.fetch import check_download_url
from foundry_fleet.services.release_registry import ReleaseRegistry

log = logging.getLogger("foundry_fleet.release_jobs")

KEEP_FINISHED_S = 15 * 60.0
MAX_RUNNING = 3  # downloads at once: each holds a thread, a connection and a partial zip on disk


@dataclass(frozen=True)
class ReleaseJob:
    id: str
    source: str  # redacted: scheme, host and path
    actor: str
    started_at: float
    phase: str = "queued"  # queued, download, unpack, done, failed
    done_bytes: int = 0
    total_bytes: int | None = None  # None: not known (yet)
    error: str | None = None
    version: str | None = None  # once done
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")


class ReleaseJobs:
    def __init__(self, registry: ReleaseRegistry, clock: Callable[[], float] = time.time,
                 keep_finished: float = KEEP_FINISHED_S, max_running: int = MAX_RUNNING) -> None:
        self.registry = registry
        self.clock = clock
        self.keep_finished = keep_finished
        self.max_running = max_running
        self._lock = threading.Lock()
        self._jobs: dict[str, ReleaseJob] = {}

    def start(self, source: str, actor: str) -> str:
        """A job adding the release at the https:// link `source`; its id. Refuses at once a link the
        download would refuse (scheme, allowed hosts, private addresses), so the error is shown where it
        was typed; the running job's id when this link (its query string aside) is being fetched already."""
        source = source.strip()
        if not source.startswith("https://"):
            # Never a path: the daemon's own files are not a release source for a web form.
            raise InvalidInput(f"{redact_url(source) if '://' in source else 'that'} is not an https:// link",
                               "paste the https:// download link foundryvtt.com shows you")
        check_download_url(source, self.registry.cache.policy)
        shown = redact_url(source)
        with self._lock:
            self._forget_old()
            running = [j for j in self._jobs.values() if not j.finished]
            for job in running:
                if job.source == shown:
                    return job.id
            if len(running) >= self.max_running:
                raise Conflict(f"{len(running)} release downloads are under way already",
                               "wait for one of them to finish")
            job = ReleaseJob(secrets.token_hex(8), shown, actor, self.clock())
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job.id, source, actor), name=f"release-job-{job.id}",
                         daemon=True).start()
        return job.id

    def get(self, job_id: str) -> ReleaseJob:
        with self._lock:
            self._forget_old()
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound("this release download is not known (any more)",
                           "finished downloads are forgotten after a while: see the release list and the event log")
        return job

    def list(self) -> list[ReleaseJob]:
        """Every job still remembered, oldest first."""
        with self._lock:
            self._forget_old()
            return sorted(self._jobs.values(), key=lambda j: j.started_at)

    def _run(self, job_id: str, source: str, actor: str) -> None:
        def progress(phase: str, done: int, total: int | None) -> None:
            self._update(job_id, phase=phase, done_bytes=done, total_bytes=total)

        try:
            view = self.registry.acting_as(actor).add(source, progress)
        except FleetError as e:
            text = f"{e.message}. {e.hint[:1].upper()}{e.hint[1:]}." if e.hint else f"{e.message}."
            self._update(job_id, phase="failed", error=text.replace(source, redact_url(source)),
                         finished_at=self.clock())
        except Exception as e:  # noqa: BLE001 - a job ends with its error shown, never in a dead thread
            log.exception("adding the release at %s failed", redact_url(source))
            self._update(job_id, phase="failed", error=f"failed unexpectedly ({type(e).__name__}); see the daemon's log",
                         finished_at=self.clock())
        else:
            self._update(job_id, phase="done", version=view.version, finished_at=self.clock())

    def _update(self, job_id: str, **changes: object) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs[job_id] = replace(job, **changes)  # type: ignore[arg-type]

    def _forget_old(self) -> None:
        cutoff = self.clock() - self.keep_finished
        for job_id, job in list(self._jobs.items()):
            if job.finished_at is not None and job.finished_at < cutoff:
                del self._jobs[job_id]
