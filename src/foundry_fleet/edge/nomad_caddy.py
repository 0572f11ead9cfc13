"""Caddy as the Nomad service job `fvtt-caddy` ([edge] on_nomad = true): Nomad keeps it running, the
fleet still configures it through its admin API.

- start: register the job, unless Nomad already holds the same one (re-registering a changed job would
  replace its allocation, i.e. restart Caddy and drop every player), then wait, with blocking queries,
  until its allocation runs and the admin API answers;
- adopt: the same job is registered and has a live allocation (a previous daemon left it running);
- alive: from the same blocking query, so the edge's once-a-second look costs Nomad nothing;
- a Caddy that Nomad restarts comes back with `caddy run --resume`, i.e. the config the fleet last
  pushed, and the edge compares what it serves with what it pushed and pushes only if they differ;
- stop: the job is stopped, its allocation waited for, then purged: nothing is left.

The admin API is a unix socket under the fleet's run dir, so Caddy is pinned to the Nomad node on this
host (`home_node`), as are the edge ports players connect to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from foundry_fleet.domain.errors import ExternalFailure
from foundry_fleet.files.atomic import write_atomic
from foundry_fleet.runtime.nomad.api import NomadApi, NomadError, NomadRefused
from foundry_fleet.runtime.nomad.jobs import CADDY_JOB_ID, CADDY_TASK

log = logging.getLogger("foundry_fleet.edge")

TERMINAL = ("complete", "failed", "lost")
WATCH_RETRY = 2.0  # seconds before the allocation watch asks again after Nomad did not answer
READY_MARGIN = 30.0  # seconds, on top of Nomad's restart delay, for Caddy to answer after a start


class CaddyOnNomad:
    """The edge's CaddyHost when Nomad runs Caddy. `build_job(node_id)` is the one builder of the job
    (the same that `foundry-fleet nomad render` prints)."""

    def __init__(self, api: NomadApi, build_job: Callable[[str], dict[str, Any]], state_dir: Path,
                 admin_socket: Path, wait: float = 300.0, stop_timeout: float = 30.0,
                 hostname: str | None = None) -> None:
        self.api = api
        self.build_job = build_job
        self.state_dir = state_dir
        self.admin_socket = admin_socket
        self.wait = wait
        self.stop_timeout = stop_timeout
        self.hostname = hostname or socket.gethostname()
        self.registrations = 0  # jobs registered by this host (an unchanged job is not), for tests
        self._job: dict[str, Any] | None = None  # the job as built for this host's node
        self._node_name = ""
        self._allocs: list[dict[str, Any]] = []
        self._index = 0
        self._changed = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._watch_problem: str | None = None
        self._since_index = 0  # an allocation made before this index is not the one a start waits for
        self._pid: int | None = None

    # ------------------------------------------------------------------ paths (as the fleet's own Caddy)

    @property
    def config_path(self) -> Path:
        return self.state_dir / "caddy.json"

    @property
    def autosave_path(self) -> Path:
        # `caddy run --resume` reads this ($XDG_CONFIG_HOME/caddy/autosave.json, set by the job).
        return self.state_dir / "config" / "caddy" / "autosave.json"

    def local_ca_root(self) -> Path:
        return self.state_dir / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def write_config(self, config: dict[str, Any]) -> None:
        """Caddy saves what it loads itself (autosave); this copy lets the fleet run Caddy itself again
        ([edge] on_nomad = false) with the same config."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, json.dumps(config), 0o600)

    def _seed_autosave(self) -> None:
        """`caddy run --resume` without a saved config runs with none at all, not even the admin
        endpoint the edge asks whether it is up: give it the last config the fleet pushed (kept by the
        fleet's own Caddy too), or just its admin endpoint."""
        if self.autosave_path.exists():
            return
        try:
            config = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            config = {"admin": {"listen": f"unix/{self.admin_socket}"}}
        self.autosave_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.autosave_path, json.dumps(config), 0o600)

    async def forget_config(self) -> None:
        self.autosave_path.unlink(missing_ok=True)
        self.config_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        return self._pid

    def current_alloc(self) -> dict[str, Any] | None:
        """The allocation Nomad keeps Caddy in: desired to run, not finished, newest first."""
        live = [a for a in self._allocs if a.get("DesiredStatus") == "run" and a.get("ClientStatus") not in TERMINAL]
        return max(live, key=lambda a: int(a.get("CreateIndex") or 0), default=None)

    def describe(self) -> str:
        alloc = self.current_alloc()
        where = f", allocation {str(alloc['ID'])[:8]} on {self._node_name}" if alloc else ""
        pid = f", pid {self._pid}" if self._pid else ""
        return f"Caddy (Nomad job {CADDY_JOB_ID}{where}{pid})"

    def alive(self) -> bool:
        alloc = self.current_alloc()
        return alloc is not None and _task_state(alloc).get("State") == "running"

    # ------------------------------------------------------------------ lifecycle

    async def adopt(self) -> bool:
        job = await self._desired()
        registered = await self.api.job(CADDY_JOB_ID)
        if registered is None or registered.get("Stop") or not submitted_fields_match(job, registered):
            return False
        await self._ensure_watch()
        if self.current_alloc() is None:
            return False
        self._since_index = 0
        return True

    async def start(self) -> int | None:
        """Register the job if Nomad does not hold this very job yet; Caddy itself starts on the node."""
        job = await self._desired()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # certificates and the ACME account, as for the fleet's own Caddy
        self._seed_autosave()
        registered = await self.api.job(CADDY_JOB_ID)
        if registered is not None and not registered.get("Stop") and submitted_fields_match(job, registered):
            self._since_index = 0  # the running (or restarting) allocation is the one to wait for
        else:
            answer = await self.api.register_job(job)
            self.registrations += 1
            # Its allocation is made after the evaluation the registration created.
            self._since_index = int(answer.get("EvalCreateIndex") or answer.get("JobModifyIndex") or 0)
            log.info("edge: registered the Nomad job %s", CADDY_JOB_ID)
        await self._ensure_watch()
        return None

    async def wait_ready(self, ping: Callable[[], bool]) -> None:
        """Until the allocation runs Caddy and its admin API answers. Caddy dying meanwhile (Nomad
        restarting it) is a failure, with its own last words; so is not answering in time."""
        timeout = self._restart_delay() + READY_MARGIN
        deadline = time.monotonic() + timeout
        restarts: int | None = None
        while True:
            changed = self._changed
            alloc = self.current_alloc()
            if alloc is not None and int(alloc.get("CreateIndex") or 0) > self._since_index:
                state = _task_state(alloc)
                count = int(state.get("Restarts") or 0)
                if restarts is None:
                    restarts = count
                elif count > restarts:
                    raise ExternalFailure(f"Caddy exited during start-up: {await self._last_words(alloc)}",
                                          f"see `nomad alloc logs -stderr {alloc['ID']} {CADDY_TASK}`")
                if state.get("State") == "running" and await asyncio.to_thread(ping):
                    self._pid = _peer_pid(self.admin_socket)
                    return
            elif alloc is None and self._allocs and restarts is not None:
                raise ExternalFailure(f"Caddy's allocation ended during start-up: {self._alloc_story()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                problem = f" ({self._watch_problem})" if self._watch_problem else ""
                raise ExternalFailure(f"Caddy did not answer on {self.admin_socket} within {timeout:.0f}s of its "
                                      f"Nomad job{problem}: {self._alloc_story()}",
                                      f"see `nomad job status {CADDY_JOB_ID}`")
            if alloc is not None and _task_state(alloc).get("State") == "running":
                await asyncio.sleep(min(0.05, remaining))  # running: the admin socket comes up in moments
            else:
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    pass

    async def stop(self) -> None:
        """Stop the job, wait for its allocation to finish (the edge ports are free then), purge it."""
        await self.api.deregister_job(CADDY_JOB_ID, purge=False)  # a job already gone is no error
        await self._ensure_watch()
        deadline = time.monotonic() + self.stop_timeout
        while any(a.get("ClientStatus") not in TERMINAL for a in self._allocs) and time.monotonic() < deadline:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        left = [a for a in self._allocs if a.get("ClientStatus") not in TERMINAL]
        await self._stop_watch()
        await self.api.deregister_job(CADDY_JOB_ID, purge=True)
        self._allocs, self._pid = [], None
        if left:
            raise ExternalFailure(f"Caddy's allocation {str(left[0]['ID'])[:8]} still runs {self.stop_timeout:.0f}s "
                                  f"after its job was stopped", f"see `nomad alloc status {left[0]['ID']}`")
        log.info("edge: stopped and purged the Nomad job %s", CADDY_JOB_ID)

    async def detach(self) -> None:
        await self._stop_watch()
        await self.api.aclose()

    # ------------------------------------------------------------------ the job and its node

    async def _desired(self) -> dict[str, Any]:
        if self._job is None:
            nodes = (await self.api.nodes()).value
            node = home_node(nodes, self.hostname, _addresses_of(self.hostname))
            if node is None:
                seen = ", ".join(f"{n.get('Name')} ({n.get('Address')})" for n in nodes) or "none"
                raise ExternalFailure(
                    f"no Nomad node runs on this host ({self.hostname}); nodes: {seen}",
                    "Caddy on Nomad is configured through a unix socket under the fleet's run dir, so it "
                    "runs on the Nomad client of the fleet's own host: start one here, or set [edge] on_nomad = false")
            self._node_name = str(node.get("Name") or node.get("ID"))
            self._job = self.build_job(str(node["ID"]))
        return self._job

    def _restart_delay(self) -> float:
        groups = (self._job or {}).get("TaskGroups") or [{}]
        delay = (groups[0].get("RestartPolicy") or {}).get("Delay") or 0
        return int(delay) / 1e9

    # ------------------------------------------------------------------ watching (blocking queries)

    async def _ensure_watch(self) -> None:
        """Make sure the allocation watch runs, and that it has answered at least once."""
        if self._watcher is None or self._watcher.done():
            try:
                first = await self.api.job_allocations(CADDY_JOB_ID)
            except NomadRefused as e:
                if e.status != 404:
                    raise
                self._seen([], self._index)  # no such job (any more): nothing of it runs
            else:
                self._seen(first.value, first.index)
            self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            try:
                answer = await self.api.job_allocations(CADDY_JOB_ID, index=self._index, wait=self.wait)
            except NomadRefused as e:
                if e.status != 404:
                    raise
                # The job is gone (purged behind the fleet's back): nothing runs; the edge starts it again.
                self._watch_problem = f"the Nomad job {CADDY_JOB_ID} is gone"
                self._seen([], self._index)
                await asyncio.sleep(WATCH_RETRY)
                continue
            except NomadError as e:
                # Nomad away: keep what was last seen (Caddy does not depend on Nomad to serve).
                self._watch_problem = e.message
                await asyncio.sleep(WATCH_RETRY)
                continue
            except Exception:  # noqa: BLE001 - the watch must outlive any one bad answer
                log.exception("edge: watching the Nomad job %s failed; asking again", CADDY_JOB_ID)
                await asyncio.sleep(WATCH_RETRY)
                continue
            self._watch_problem = None
            if answer.index < self._index:
                self._index = 0  # Nomad's index went back (a new cluster): start over, as its client does
            self._seen(answer.value, answer.index)

    def _seen(self, allocs: list[dict[str, Any]], index: int) -> None:
        self._allocs = [a for a in allocs if a.get("JobID") == CADDY_JOB_ID]
        self._index = max(index, 1)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _stop_watch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    # ------------------------------------------------------------------ telling why

    def _alloc_story(self) -> str:
        alloc = self.current_alloc() or max(self._allocs, key=lambda a: int(a.get("CreateIndex") or 0), default=None)
        if alloc is None:
            return "no allocation yet (is a node with raw_exec enabled eligible?)"
        events = _task_state(alloc).get("Events") or []
        last = "; ".join(str(e.get("DisplayMessage") or e.get("Type")) for e in events[-3:])
        return f"allocation {str(alloc['ID'])[:8]} {alloc.get('ClientStatus')}" + (f": {last}" if last else "")

    async def _last_words(self, alloc: Mapping[str, Any]) -> str:
        try:
            text = await self.api.task_log(str(alloc["ID"]), CADDY_TASK, "stderr", 2048)
        except NomadError:
            return self._alloc_story()
        lines = [line for line in text.splitlines() if line.strip()][-3:]
        return " | ".join(lines) or self._alloc_story()


def _task_state(alloc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (alloc.get("TaskStates") or {}).get(CADDY_TASK) or {}


def submitted_fields_match(submitted: Any, registered: Any) -> bool:
    """Whether Nomad's copy of a job still says everything the fleet would submit. Nomad fills in its
    defaults (and the fleet's job leaves many out), so the registered job is compared on the fields the
    fleet sends; an unchanged job is then not registered again, which keeps its Caddy running."""
    if isinstance(submitted, dict):
        return isinstance(registered, dict) and all(
            submitted_fields_match(v, registered.get(k)) for k, v in submitted.items())
    if isinstance(submitted, list):
        return (isinstance(registered, list) and len(submitted) == len(registered)
                and all(submitted_fields_match(s, r) for s, r in zip(submitted, registered, strict=True)))
    return submitted == registered


def home_node(nodes: Iterable[Mapping[str, Any]], hostname: str, addresses: set[str]) -> Mapping[str, Any] | None:
    """The Nomad node on this host: named after it (Nomad's default node name is the hostname), else the
    ready node whose address is one of this host's."""
    ready = [n for n in nodes if n.get("Status") == "ready"]
    short = hostname.split(".")[0]
    for node in ready:
        if str(node.get("Name") or "") in (hostname, short):
            return node
    for node in ready:
        if str(node.get("Address") or "") in addresses:
            return node
    return None


def _addresses_of(hostname: str) -> set[str]:
    """This host's addresses: loopback and what its name resolves to (127.0.0.1, not the whole 127/8,
    which tests use for other, simulated nodes)."""
    found = {"127.0.0.1", "::1"}
    try:
        found |= {str(info[4][0]) for info in socket.getaddrinfo(hostname, None)}
    except OSError:
        pass
    return found


def _peer_pid(path: Path) -> int | None:
    """The pid of the process listening on a unix socket (its credentials come with every connection)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(os.fspath(path))
            pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))
            return pid or None
    except OSError:
        return None
