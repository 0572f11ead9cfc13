"""The nomad runtime: each instance is a Nomad service job (`fvtt-<name>`) pinned to the node that
holds its data, laid out there first by a dispatch of the `fvtt-provision` job.

Nomad runs and restarts the tasks; the fleet stays the control plane. It learns what Nomad did from
a view fed by blocking queries (view.py): an allocation that fails after Nomad's own restarts is the
task's exit (`gave_up`: Nomad applied the crash policy already), a lost allocation that Nomad
replaces is not an exit but a move, told by `watch_address` when the new registration appears.

A handle's state: {"job_id", "alloc_id", "node_id", "job_modify_index"}; the job is the task, the
allocation only where it runs now (Nomad may replace it).
"""

from __future__ import annotations

import asyncio
import logging
import signal as signals
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from foundry_fleet.domain.errors import ExternalFailure, FleetError, InvalidInput, NotFound
from foundry_fleet.runtime.base import (
    Address, Capabilities, Capability, NodeInfo, RuntimeUnavailable, TaskEvent, TaskExit, TaskHandle, TaskSpec,
    TaskStats, TaskStatus,
)
from foundry_fleet.runtime.nomad import node_storage, placement
from foundry_fleet.runtime.nomad.api import NomadApi, NomadRefused, NomadSettings, NomadUnreachable
from foundry_fleet.runtime.nomad.jobs import (
    DEFAULT_MEMORY_MB, META_FLEET, META_INSTANCE, PROVISION_JOB_ID, PROVISION_TASK, TASK, JobSettings,
    host_volume_name, instance_job, instance_job_id, provision_job, shared_volume_name,
)
from foundry_fleet.runtime.nomad.provision_payload import ProvisionPayload
from foundry_fleet.runtime.nomad.usage import usage_of
from foundry_fleet.runtime.nomad.view import TERMINAL_CLIENT_STATUSES, NomadView

log = logging.getLogger("foundry_fleet.nomad")

DRIVER = "nomad"
STDERR_TAIL = 4096  # bytes of a failed task's stderr shown in its error
LOG_TAIL = 64 * 1024  # bytes of each stream read for a log's last lines
LOG_STREAMS = ("stdout", "stderr")
LOG_SLACK = 64 * 1024  # a followed stream opens this much before its tail: what was written meanwhile


class NomadRuntime:
    name = DRIVER
    capabilities = Capabilities(isolation="nomad task driver", limits=True, needs_image=False, multi_node=True)

    def __init__(
        self,
        settings: NomadSettings,
        jobs: JobSettings,
        *,
        image_for: Callable[[int], Awaitable[str]] | None = None,
        node_binary: Callable[[int], str] | None = None,
        log_dir_of: Callable[[str], Path] | None = None,
        node_path: Callable[[Path], Path] = lambda path: path,
        node_homes: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        wait: float = 300.0,
        place_timeout: float = 60.0,
        provision_timeout: float = 600.0,
        address_timeout: float = 120.0,
        view_backoff: float = 0.5,
    ) -> None:
        """`image_for(generation)`: the podman task driver's image ref; `node_binary(generation)`: the
        exec task driver's node path on the nodes; `node_path(path)`: a path under the fleet root or a
        home's root as that home's nodes see it (its node_root), for the host volumes' paths;
        `node_homes`: node name -> the home it keeps data in (nodes in none: the fleet's own home)."""
        self.settings = settings
        self.jobs = jobs
        self.image_for = image_for
        self.node_binary = node_binary
        self.log_dir_of = log_dir_of
        self.node_path = node_path
        self.node_homes = dict(node_homes or {})
        self.transport = transport
        self.wait = wait
        self.place_timeout = place_timeout
        self.provision_timeout = provision_timeout
        self.address_timeout = address_timeout
        self.view_backoff = view_backoff
        self.capabilities = Capabilities(
            isolation="container" if jobs.task_driver == "podman" else "chroot (nomad exec)",
            limits=True, needs_image=jobs.task_driver == "podman", multi_node=True)
        self._api: NomadApi | None = None
        self._view: NomadView | None = None
        self._provision_registered = False
        self._job_memory: dict[str, int] = {}  # MemoryMB of the jobs this fleet registered, for free memory
        self._events: list[TaskEvent] = []

    # plumbing ------------------------------------------------------------------------------

    @property
    def api(self) -> NomadApi:
        if self._api is None:
            self._api = NomadApi(self.settings, transport=self.transport)
        return self._api

    @property
    def view(self) -> NomadView:
        """Started on first use: every verb may be the first after a restart of the control plane."""
        if self._view is None:
            self._view = NomadView(self.api, wait=self.wait, backoff=self.view_backoff)
        if not self._view.running:
            self._view.start()
        return self._view

    async def _loaded(self, *kinds: str) -> NomadView:
        """The view, once it has heard from Nomad; a clear error when Nomad does not answer it (the
        view keeps asking: a later call finds it loaded)."""
        view = self.view
        deadline = time.monotonic() + self.settings.timeout * (self.settings.retries + 1)
        while True:
            try:
                await view.loaded(*kinds, timeout=0.25)
                return view
            except TimeoutError:
                pass
            # Never loaded, and the client gave up its retries already: say so now, not after a wait.
            if view.problem is not None or time.monotonic() > deadline:
                raise RuntimeUnavailable(f"{view.problem or f'Nomad at {self.settings.address} did not answer'}",
                                      f"is Nomad running and reachable at {self.settings.address}? The fleet "
                                      "keeps the desired state and applies it once Nomad answers")

    # lifecycle -----------------------------------------------------------------------------

    async def open(self) -> list[Capability]:
        self.view  # noqa: B018 - starts watching; it keeps retrying while Nomad is away
        lines = await self.fingerprint()
        try:
            await self._ensure_provision_job()
        except FleetError as e:
            lines.append(Capability("nomad-provision", False, f"could not register {PROVISION_JOB_ID}: {e.message}"))
        else:
            lines.append(Capability("nomad-provision", True, f"{PROVISION_JOB_ID} registered (parameterized sysbatch)"))
        return lines

    async def close(self, instances_left_running: bool) -> None:
        """Stop watching; Nomad keeps running what it runs (stopped instances were stopped already)."""
        if self._view is not None:
            await self._view.stop()
            self._view = None
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    async def fingerprint(self) -> list[Capability]:
        try:
            leader = await self.api.leader()
            stubs = (await self.api.nodes()).value
        except FleetError as e:
            return [Capability("nomad", False, e.message)]
        ready = [n for n in stubs if placement.node_healthy(n)]
        driver = self.jobs.task_driver
        with_driver = [n for n in ready if ((n.get("Drivers") or {}).get(driver) or {}).get("Healthy", True)]
        names = ", ".join(sorted(str(n.get("Name")) for n in ready)) or "none"
        return [
            Capability("nomad", True, f"{self.settings.address}, leader {leader or 'unknown'}"),
            Capability("nomad-nodes", bool(ready), f"{len(ready)} of {len(stubs)} nodes ready and eligible: {names}"),
            Capability("nomad-task-driver", bool(with_driver),
                       f"task driver {driver}: healthy on {len(with_driver)} of {len(ready)} ready nodes"),
        ]

    async def _ensure_provision_job(self) -> None:
        if not self._provision_registered:
            await self.api.register_job(provision_job(self.jobs))
            self._provision_registered = True

    # starting ------------------------------------------------------------------------------

    async def start_task(self, spec: TaskSpec) -> TaskHandle:
        try:
            return await self._start(spec)
        except NomadUnreachable as e:  # Nomad away: the supervisor tries again later
            raise RuntimeUnavailable(e.message, e.hint) from None

    async def _start(self, spec: TaskSpec) -> TaskHandle:
        job_id = instance_job_id(spec.name)
        view = await self._loaded()
        await self._ensure_provision_job()
        memory = spec.limits.memory_mb if spec.limits.memory_mb is not None else DEFAULT_MEMORY_MB
        volumes = await self._volumes()
        node, elsewhere = await self._node_for(spec, volumes)  # first: nothing is touched when it cannot start now
        if await self.api.job(job_id) is not None:
            # Nothing of this instance runs as far as the fleet knows: a job left from an interrupted
            # start or stop is a stray, and two of them must never run.
            await self._purge_and_wait(job_id)
            self._events.append(TaskEvent(spec.name, "strays", f"purged the Nomad job {job_id} left from before"))
        node_id, node_name = str(node["ID"]), str(node.get("Name") or node["ID"])
        await self._prepare_node(spec, node_id, node_name, volumes)
        if elsewhere:  # a move (or one interrupted): its volumes are on the new node now, not on the old
            await self._release_volumes(spec.name, job_id, elsewhere, f"moved to node {node_name}")
        image = await self.image_for(spec.release.generation) if self.jobs.task_driver == "podman" and \
            self.image_for is not None else None
        binary = self.node_binary(spec.release.generation) if self.jobs.task_driver == "exec" and \
            self.node_binary is not None else None
        job = instance_job(spec, self.jobs, node_id=node_id, image=image, node_binary=binary)
        answer = await self.api.register_job(job)
        self._job_memory[job_id] = memory
        alloc = await self._placed(job_id, answer, view)
        state = {"job_id": job_id, "alloc_id": alloc["ID"], "node_id": str(alloc.get("NodeID") or node_id),
                 "job_modify_index": int(answer.get("JobModifyIndex") or 0)}
        return TaskHandle(driver=DRIVER, name=spec.name, started_at=time.time(), state=state)

    async def _node_for(self, spec: TaskSpec, all_volumes: list[Mapping[str, Any]],
                        ) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
        """Where to start it, and the registrations of its data and install volumes on other nodes,
        which a start there leaves behind (a move).

        It runs only on a node of the home holding its data (spec.storage): registrations on nodes of
        another home are a home it left (a move that sent its data), never a place to run. Within its
        home, its data is on the node holding its volumes, whatever node was asked for at create; a
        node asked for since (`instance move`: spec.node) that holds no volume of it yet is a move,
        made by this start (registered there, deregistered on the old node): a start interrupted
        half-way leaves them on both, and the next start finishes. While that node is away, it starts
        where its data is: the move waits for a later start rather than leave it running nowhere."""
        stubs = (await self.api.nodes()).value
        homes = {str(n.get("ID")): self._home_of(n) for n in stubs}
        names = (host_volume_name(spec.name, "data"), host_volume_name(spec.name, "install"))
        volumes = [v for v in all_volumes if v.get("Name") in names]
        # A node Nomad no longer lists counts as in its home: _holding then says that node is gone.
        held = list(dict.fromkeys(str(v.get("NodeID")) for v in volumes if v.get("Name") == names[0]
                                  and self._in_home(homes.get(str(v.get("NodeID"))), spec)))
        asked = next((n for n in stubs if spec.node is not None and spec.node in (n.get("Name"), n.get("ID"))), None)
        wanted = spec.node
        if asked is not None and not self._in_home(self._home_of(asked), spec):
            # Its record names a node of another home than its data's (the homes were configured anew
            # since): it runs in the home holding its data, where the runtime chooses.
            self._events.append(TaskEvent(spec.name, "move", f"not started on node {asked.get('Name')}, which "
                                          f"keeps data in home {self._home_of(asked)}: the data of {spec.name} "
                                          f"is in home {spec.storage}"))
            asked = wanted = None
        if held:
            if asked is not None and (placement.node_healthy(asked) or str(asked["ID"]) in held):
                node = asked
            else:
                node = self._holding(spec.name, held[-1], stubs)
                if wanted is not None:
                    why = "which Nomad does not know" if asked is None else \
                        f"which is {placement.node_condition(asked)}"
                    self._events.append(TaskEvent(spec.name, "move", f"not moved to node {wanted}, {why}: "
                                                  f"started on node {node.get('Name')}, where its data is"))
            if not placement.node_healthy(node):
                raise RuntimeUnavailable(
                    f"node {node.get('Name')}, which holds the data of {spec.name}, is "
                    f"{node.get('Status')}{'' if node.get('Status') != 'ready' else ' but not eligible'}",
                    "it starts there again once the node is back")
            return node, [v for v in volumes if v.get("NodeID") != node["ID"]]
        if asked is not None and not placement.node_healthy(asked):
            # Checked at create (or by the move that sent its data there); away for now: it starts
            # there once the node is back, never on a node of another home.
            raise RuntimeUnavailable(f"node {spec.node}, which {spec.name} was placed on at create, is "
                                     f"{placement.node_condition(asked)}", "it starts there once the node is back")
        candidates = [n for n in stubs if self._in_home(self._home_of(n), spec)]
        if stubs and not candidates:
            known = ", ".join(sorted(f"{n.get('Name')} in {self._home_of(n)}" for n in stubs))
            raise RuntimeUnavailable(f"no Nomad node keeps data in home {spec.storage}, which holds the data of "
                                     f"{spec.name} (the nodes: {known})",
                                     "list a Nomad node in that home's nodes ([[nomad.homes]] in fleet.toml)")
        node = placement.choose_node(candidates, self.view.allocs.values(), self._job_memory, wanted=wanted)
        # Registrations left on nodes of a home it left: released once it starts in its new one.
        return node, [v for v in volumes if v.get("NodeID") != node["ID"]]

    def _home_of(self, node: Mapping[str, Any]) -> str:
        return node_storage.storage_of(str(node.get("Name")), self.node_homes)

    @staticmethod
    def _in_home(home: str | None, spec: TaskSpec) -> bool:
        """A node of that home may run it (a node not known: yes, so the error names what is missing)."""
        return spec.storage is None or home is None or home == spec.storage

    @staticmethod
    def _holding(name: str, node_id: str, stubs: list[dict[str, Any]]) -> Mapping[str, Any]:
        for node in stubs:
            if node.get("ID") == node_id:
                return node
        raise ExternalFailure(f"the data of {name} is on Nomad node {node_id}, which Nomad no longer knows",
                              "bring that node back, or delete its host volumes to start afresh elsewhere")

    async def _release_volumes(self, name: str, job_id: str, volumes: list[Mapping[str, Any]], why: str) -> None:
        """Deregister the instance's volumes on the nodes it left (once no allocation of its job uses
        them: Nomad refuses to delete a volume in use), each a no-op once done."""
        await self._until_terminal(await self._loaded(), job_id, self.jobs.stop_timeout)
        nodes = {str(n.get("ID")): str(n.get("Name") or n.get("ID")) for n in (await self.api.nodes()).value}
        left: dict[str, list[str]] = {}
        for volume in volumes:
            try:
                await self.api.delete_host_volume(str(volume["ID"]))
            except NomadRefused as e:
                if e.status != 404:
                    raise  # else deregistered already, by the start this one finishes
            node = str(volume.get("NodeID") or "")
            left.setdefault(nodes.get(node, node), []).append(str(volume.get("Name")))
        for node, released in sorted(left.items()):
            self._events.append(TaskEvent(name, "moved", f"{why}: deregistered the Nomad host volumes "
                                                          f"{', '.join(sorted(released))} on node {node}"))

    async def data_node(self, name: str) -> str | None:
        """The node its data volume is registered on (the newest registration, should a move have been
        interrupted with it on two)."""
        data = host_volume_name(name, "data")
        volumes = [v for v in await self._volumes() if v.get("Name") == data]
        if not volumes:
            return None
        node_id = str(volumes[-1].get("NodeID"))
        stub = await self.api.node(node_id)
        return str((stub or {}).get("Name") or node_id)

    async def _volumes(self) -> list[Mapping[str, Any]]:
        """The host volumes of the fleet's namespace on every node, oldest registration first."""
        return sorted((v for v in await self.api.host_volumes() if self._ours(v)),
                      key=lambda v: int(v.get("CreateIndex") or 0))

    def _ours(self, volume: Mapping[str, Any]) -> bool:
        return volume.get("Namespace", self.settings.namespace) == self.settings.namespace

    async def _prepare_node(self, spec: TaskSpec, node_id: str, node_name: str,
                            volumes: list[Mapping[str, Any]]) -> None:
        """Lay the instance out on the node when its volumes are missing or hold another release, then
        register them (and the fleet's shared volume, once per node). `volumes`: as _volumes() listed them
        at the start (nothing of the instance registers any in between)."""
        by_name = {v.get("Name"): v for v in volumes if v.get("NodeID") == node_id}
        data_name, install_name = host_volume_name(spec.name, "data"), host_volume_name(spec.name, "install")
        # Both are registered together after each provisioning, so the install's release (the list's stubs
        # carry no Parameters: one read) says whether the node holds this release; the data's is the same.
        install = await self._host_volume(by_name[install_name]) if install_name in by_name else None
        current = data_name in by_name and install is not None and \
            (install.get("Parameters") or {}).get("release") == spec.release.version
        if not current:
            await self._provision(spec, node_id, node_name)
            await self._register_volume(data_name, node_id, spec.data_dir, by_name.get(data_name),
                                        {"release": spec.release.version}, "single-node-writer")
            await self._register_volume(install_name, node_id, spec.install_dir, by_name.get(install_name),
                                        {"release": spec.release.version}, "single-node-reader-only")
        shared = shared_volume_name(self.jobs.fleet_id)
        if spec.shared_dir is not None and shared not in by_name:
            await self._register_volume(shared, node_id, spec.shared_dir, None, {}, "single-node-reader-only")

    async def _host_volume(self, stub: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """A volume with its Parameters (the list's stubs carry none, as in Nomad)."""
        return stub if "Parameters" in stub else await self.api.host_volume(str(stub["ID"]))

    async def _register_volume(self, name: str, node_id: str, path: Path, existing: Mapping[str, Any] | None,
                               parameters: dict[str, str], access: str) -> None:
        volume: dict[str, Any] = {
            "Name": name, "Namespace": self.settings.namespace, "NodeID": node_id,
            "HostPath": str(self.node_path(path)),
            "Parameters": parameters,
            "RequestedCapabilities": [{"AttachmentMode": "file-system", "AccessMode": access}],
        }
        if existing is not None and existing.get("ID"):
            volume["ID"] = existing["ID"]  # an update of the volume, not a second one of that name
        await self.api.register_host_volume(volume)

    async def _provision(self, spec: TaskSpec, node_id: str, node_name: str) -> None:
        # What the node-side command reads (no secrets; checked and sized as Nomad would take it).
        if spec.uid is None:
            raise InvalidInput(f"{spec.name} has no uid of its own, which the node needs to lay it out and run it",
                               "run the fleet as root: it then gives each instance a uid of [instances] uid_range")
        payload = ProvisionPayload(instance=spec.name, release=spec.release.version, node=node_id, uid=spec.uid,
                                   port=spec.port or None, home=spec.storage or node_storage.MAIN_HOME)
        answer = await self.api.dispatch(PROVISION_JOB_ID, payload.meta(), payload.to_bytes())
        child = str(answer["DispatchedJobID"])
        alloc = await self._finished_on(child, node_id, self.provision_timeout)
        if alloc.get("ClientStatus") != "complete":
            stderr = await self._stderr(alloc["ID"], PROVISION_TASK)
            raise ExternalFailure(f"provisioning {spec.name} on node {node_name} failed: {stderr or _events(alloc)}",
                                  f"see `nomad alloc logs -stderr {alloc['ID']} {PROVISION_TASK}`; "
                                  "the next start dispatches it again")
        self._events.append(TaskEvent(spec.name, "provisioned",
                                      f"laid out release {spec.release.version} on node {node_name}"))

    async def _finished_on(self, job_id: str, node_id: str, timeout: float) -> dict[str, Any]:
        """The job's allocation on `node_id` once it is complete or failed (blocking queries)."""
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExternalFailure(f"Nomad's {job_id} did not finish on node {node_id} within {timeout:g}s",
                                      "see `nomad job status` for what holds it")
            answer = await self.api.job_allocations(job_id, index, wait=min(left, self.wait))
            index = answer.index
            for alloc in answer.value:
                if alloc.get("NodeID") == node_id and alloc.get("ClientStatus") in TERMINAL_CLIENT_STATUSES:
                    return alloc

    async def _stderr(self, alloc_id: str, task: str) -> str:
        try:
            text = await self.api.task_log(alloc_id, task, "stderr", STDERR_TAIL)
        except FleetError as e:
            return f"(its stderr could not be read: {e.message})"
        return " | ".join(line for line in text.strip().splitlines()[-5:] if line.strip())

    async def _placed(self, job_id: str, answer: Mapping[str, Any], view: NomadView) -> dict[str, Any]:
        """The allocation Nomad placed for the job just registered; its evaluation's reason if none."""
        since = int(answer.get("EvalCreateIndex") or answer.get("JobModifyIndex") or 0)
        eval_id = str(answer.get("EvalID") or "")

        def placed() -> dict[str, Any] | None:
            for alloc in reversed(view.job_allocs(job_id)):
                if int(alloc.get("CreateIndex") or 0) >= since and placement.alloc_active(alloc):
                    return alloc
            return None

        deadline = time.monotonic() + self.place_timeout
        while True:
            try:
                return await view.until(placed, timeout=0.5)
            except TimeoutError:
                pass
            # Nothing placed yet: the evaluation says whether Nomad tried and could not.
            evaluation = await self.api.evaluation(eval_id) if eval_id else None
            reason = _placement_failure(evaluation)
            if reason is not None or time.monotonic() > deadline:
                await self.api.deregister_job(job_id, purge=True)  # no blocked evaluation places it later
                why = reason or f"nothing placed within {self.place_timeout:g}s"
                raise ExternalFailure(f"Nomad could not place {job_id}: {why}",
                                      "see `foundry-fleet status` for the nodes and their free memory")

    # watching ------------------------------------------------------------------------------

    async def wait_task(self, handle: TaskHandle) -> TaskExit:
        view = self.view
        await view.loaded()  # however long Nomad is away: the view keeps asking
        return await view.until(lambda: _exit_of(view.job_allocs(_job(handle)), _job(handle)))

    async def watch_address(self, handle: TaskHandle, current: Address) -> Address:
        view = self.view
        await view.loaded()

        def moved() -> Address | None:
            found = self._address_now(view, _job(handle))
            return found if found is not None and found != current else None

        return await view.until(moved)

    async def address(self, handle: TaskHandle) -> Address:
        view = await self._loaded()
        try:
            return await view.until(lambda: self._address_now(view, _job(handle)), timeout=self.address_timeout)
        except TimeoutError:
            raise ExternalFailure(f"Nomad registered no service for {_job(handle)} within {self.address_timeout:g}s",
                                  f"see `nomad job status {_job(handle)}` (its task may not have started)") from None

    @staticmethod
    def _address_now(view: NomadView, job_id: str) -> Address | None:
        registrations = view.job_services(job_id)
        if not registrations:
            return None
        live = {a["ID"] for a in view.job_allocs(job_id) if placement.alloc_active(a)}
        chosen = [r for r in registrations if r.get("AllocID") in live] or registrations
        last = chosen[-1]
        if not last.get("Address") or not isinstance(last.get("Port"), int):
            return None
        return Address(str(last["Address"]), int(last["Port"]))

    # stopping ------------------------------------------------------------------------------

    async def stop_task(self, handle: TaskHandle, timeout: float, signal: int = signals.SIGTERM) -> None:
        """Nomad stops the task (its kill signal, then SIGKILL after the job's KillTimeout)."""
        job_id = _job(handle)
        view = await self._loaded()
        await self.api.deregister_job(job_id, purge=False)
        await self._until_terminal(view, job_id, timeout)

    async def destroy_task(self, handle: TaskHandle) -> None:
        await self.api.deregister_job(_job(handle), purge=True)

    async def _purge_and_wait(self, job_id: str) -> None:
        view = await self._loaded()
        await self.api.deregister_job(job_id, purge=True)
        await self._until_terminal(view, job_id, self.jobs.stop_timeout)

    async def _until_terminal(self, view: NomadView, job_id: str, timeout: float) -> None:
        def stopped() -> bool | None:
            return all(a.get("ClientStatus") in TERMINAL_CLIENT_STATUSES for a in view.job_allocs(job_id)) or None

        try:
            await view.until(stopped, timeout=timeout + 15.0)  # Nomad's own kill timeout, and its report
        except TimeoutError:
            log.warning("Nomad did not report %s stopped within %.0fs", job_id, timeout + 15.0)

    # reading -------------------------------------------------------------------------------

    async def inspect_task(self, handle: TaskHandle) -> TaskStatus:
        view = self.view
        if not view.is_loaded():
            return TaskStatus(running=False)  # unknown while Nomad is away: not known to run
        allocs = view.job_allocs(_job(handle))
        return TaskStatus(running=bool(allocs) and allocs[-1].get("ClientStatus") == "running", pid=None)

    async def recover_task(self, handle: TaskHandle) -> TaskHandle | None:
        if handle.driver != DRIVER:
            return None
        job_id = _job(handle)
        view = await self._loaded()
        job = await self.api.job(job_id)
        if job is None:
            return None
        active = [a for a in view.job_allocs(job_id) if placement.alloc_active(a)]
        lost = [a for a in view.job_allocs(job_id) if a.get("ClientStatus") == "lost"]
        if job.get("Stop") or (not active and not lost):
            await self.api.deregister_job(job_id, purge=True)  # nothing of it runs: nothing left of it either
            return None
        current = (active or lost)[-1]
        tasks = [t for g in job.get("TaskGroups") or [] for t in g.get("Tasks") or []]
        self._job_memory[job_id] = sum(int((t.get("Resources") or {}).get("MemoryMB") or 0) for t in tasks)
        state = {**handle.state, "job_id": job_id, "alloc_id": current["ID"],
                 "node_id": str(current.get("NodeID") or ""), "job_modify_index": int(job.get("JobModifyIndex") or 0)}
        return TaskHandle(driver=DRIVER, name=handle.name, started_at=handle.started_at, state=state)

    async def task_stats(self, handle: TaskHandle) -> TaskStats | None:
        """What Nomad's client measured of the allocation running the task now (it may have replaced the
        one the handle names); see usage.py for why CPU comes as Nomad's percent."""
        view = self.view
        if not view.is_loaded():
            return None  # unknown while Nomad is away, as for inspect_task
        allocs = view.job_allocs(_job(handle))
        if not allocs or allocs[-1].get("ClientStatus") != "running":
            return None
        return usage_of(await self.api.allocation_stats(allocs[-1]["ID"]), allocs[-1])

    def port_is_free(self, port: int) -> bool:
        return True  # Nomad chooses each task's port on its node (a dynamic port)

    async def logs(self, task: TaskHandle | str, lines: int = 100, follow: bool = False) -> AsyncIterator[str]:
        """The last `lines` lines of the task's stdout then stderr, as Nomad keeps them, of its newest
        allocation (by name: the last one, while Nomad still has it). With `follow`, then each line
        either stream gets, one log as the fleet shows it, until the allocation is over; a replacement
        Nomad placed for it (a lost node's) is followed on from its start."""
        name = task if isinstance(task, str) else task.name
        job_id = instance_job_id(name)
        allocs = await self._allocations_of(job_id)
        if not allocs:
            raise NotFound(f"Nomad keeps no log of {name}: it has no allocation of {job_id} (any more)",
                           "Nomad forgets a stopped job's allocations, and their logs, when it collects "
                           "garbage; the next start of the instance begins a new log")
        alloc = allocs[-1]
        text = ""
        tails: dict[str, bytes | None] = {}
        for stream in LOG_STREAMS:
            try:
                tail = await self.api.task_log(alloc["ID"], TASK, stream, LOG_TAIL)
            except FleetError as e:
                tail, tails[stream] = f"({stream} could not be read: {e.message})\n", None
            else:
                tails[stream] = tail.encode()
            text += tail
        for line in text.splitlines()[-lines:] if lines > 0 else []:
            yield line
        while follow:
            async for line in self._follow(str(alloc["ID"]), tails):
                yield line
            # The allocation is over: Nomad may have placed another for the task meanwhile.
            since = int(alloc.get("CreateIndex") or 0)
            newer = [a for a in await self._allocations_of(job_id) if int(a.get("CreateIndex") or 0) > since]
            if not newer:
                return
            alloc, tails = newer[0], {}  # a new allocation's log: all of it is new

    async def _allocations_of(self, job_id: str) -> list[dict[str, Any]]:
        """The job's allocations, oldest first: from the view while it runs (the daemon), else asked
        once (a command reading a log starts no watch)."""
        if self._view is not None and self._view.is_loaded():
            return self._view.job_allocs(job_id)
        stubs = (await self.api.allocations()).value
        return sorted((a for a in stubs if a.get("JobID") == job_id), key=lambda a: int(a.get("CreateIndex") or 0))

    async def _follow(self, alloc_id: str, tails: Mapping[str, bytes | None]) -> AsyncIterator[str]:
        """The allocation's stdout and stderr, line by line as either stream gets them, until both end.

        A stream whose tail was shown (`tails`) is opened a little before that tail, and what it
        sends up to the tail's end is dropped: a line written between reading the tail and opening
        the stream is then neither lost nor shown twice. Without a tail, it is followed from its start."""
        received: asyncio.Queue[str | None] = asyncio.Queue()

        async def pump(stream: str) -> None:
            tail = tails.get(stream)
            before = b""  # what came while the tail's end is not found yet
            rest = b""

            def lines_of(data: bytes) -> None:
                nonlocal rest
                *complete, rest = (rest + data).split(b"\n")
                for line in complete:
                    received.put_nowait(line.decode("utf-8", errors="replace"))

            try:
                opened = self.api.follow_task_log(alloc_id, TASK, stream, origin="end", offset=len(tail) + LOG_SLACK) \
                    if tail is not None else self.api.follow_task_log(alloc_id, TASK, stream, origin="start")
                async for chunk in opened:
                    if tail is not None:
                        before += chunk
                        at = before.find(tail)
                        if at < 0 and len(before) <= len(tail) + LOG_SLACK:
                            continue
                        # Not found (rotated meanwhile): rather a line twice than one lost.
                        chunk, tail = (before[at + len(tail):] if at >= 0 else before), None
                    lines_of(chunk)
                if tail is not None:  # it ended before the tail's end came: likewise
                    lines_of(before)
                if rest:
                    received.put_nowait(rest.decode("utf-8", errors="replace"))
            except FleetError as e:
                received.put_nowait(f"({stream} could not be followed: {e.message})")
            finally:
                received.put_nowait(None)

        pumps = [asyncio.create_task(pump(stream), name=f"nomad-log:{alloc_id}:{stream}") for stream in LOG_STREAMS]
        try:
            ended = 0
            while ended < len(pumps):
                line = await received.get()
                if line is None:
                    ended += 1
                else:
                    yield line
        finally:  # the reader stopped (or all ended): close the streams still open
            for running in pumps:
                running.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def forget_unknown(self, known: set[str]) -> list[str]:
        removed = []
        for stub in await self.api.jobs(prefix="fvtt-"):
            job_id = str(stub.get("ID", ""))
            if job_id == PROVISION_JOB_ID or job_id.startswith(PROVISION_JOB_ID + "/") or stub.get("Type") != "service":
                continue
            meta = stub.get("Meta")
            if meta is None:  # older list stubs carry no meta: the job itself does
                job = await self.api.job(job_id)
                meta = (job or {}).get("Meta") or {}
            instance = str(meta.get(META_INSTANCE) or "")
            if meta.get(META_FLEET) != self.jobs.fleet_id or not instance or instance in known:
                continue
            await self.api.deregister_job(job_id, purge=True)
            self._events.append(TaskEvent(instance, "strays",
                                          f"purged the Nomad job {job_id}, which the fleet no longer knows"))
            removed.append(instance)
        return removed

    async def forget_instance(self, name: str) -> None:
        """Purge the instance's job if any is left, then deregister its data and install volumes on
        whichever node holds them (Nomad refuses to delete a volume an allocation still uses). Its
        files on the node stay where the fleet's deletion put them (archived or purged)."""
        job_id = instance_job_id(name)
        if await self.api.job(job_id) is not None:
            await self._purge_and_wait(job_id)
        wanted = {host_volume_name(name, "data"), host_volume_name(name, "install")}
        nodes = {str(n.get("ID")): str(n.get("Name") or n.get("ID")) for n in (await self.api.nodes()).value}
        released: dict[str, list[str]] = {}
        for volume in await self.api.host_volumes():
            if volume.get("Name") in wanted and self._ours(volume):
                await self.api.delete_host_volume(str(volume["ID"]))
                node = str(volume.get("NodeID") or "")
                released.setdefault(nodes.get(node, node), []).append(str(volume["Name"]))
        for node, names in sorted(released.items()):
            self._events.append(TaskEvent(name, "released",
                                          f"deregistered the Nomad host volumes {', '.join(sorted(names))} on node {node}"))

    def host_processes(self) -> set[int]:
        return set()  # the tasks are Nomad's children, not the fleet's

    def take_events(self) -> list[TaskEvent]:
        events, self._events = self._events, []
        return events

    async def nodes(self) -> list[NodeInfo]:
        self.view.watch_nodes()
        view = await self._loaded("nodes", "allocations")
        allocs = list(view.allocs.values())
        result = []
        for node in sorted(view.node_stubs or [], key=lambda n: str(n.get("Name"))):
            instances = sum(1 for a in allocs if a.get("NodeID") == node.get("ID") and placement.alloc_active(a)
                            and _is_instance_job(str(a.get("JobID", ""))))
            status = str(node.get("Status") or "unknown")
            if status == "ready" and not placement.node_healthy(node):
                status = "ready, draining" if node.get("Drain") else "ready, ineligible"
            result.append(NodeInfo(name=str(node.get("Name")), address=str(node.get("Address") or ""),
                                   healthy=placement.node_healthy(node), status=status, instances=instances,
                                   free_memory_mb=placement.free_memory_mb(node, allocs, self._job_memory),
                                   storage=self._home_of(node)))
        return result


def _job(handle: TaskHandle) -> str:
    job_id = handle.state.get("job_id")
    return job_id if isinstance(job_id, str) and job_id else instance_job_id(handle.name)


def _is_instance_job(job_id: str) -> bool:
    return job_id.startswith("fvtt-") and not job_id.startswith(PROVISION_JOB_ID) and "/" not in job_id


def _exit_of(allocs: list[dict[str, Any]], job_id: str) -> TaskExit | None:
    """The task's exit when its newest allocation is over and Nomad will not replace it."""
    if not allocs:
        return TaskExit(exit_code=None, signal=None, reason=f"the Nomad job {job_id} has no allocation any more")
    current = allocs[-1]
    status = current.get("ClientStatus")
    if status not in ("complete", "failed") or current.get("NextAllocation"):
        return None  # running, pending, or lost (Nomad places a replacement: a move, not an exit)
    state = (current.get("TaskStates") or {}).get(TASK) or {}
    last = _last_termination(state)
    code = last.get("ExitCode") if isinstance(last.get("ExitCode"), int) else None
    signal = last.get("Signal") or None
    oom = bool(last.get("OOMKilled"))
    if status == "complete":
        return TaskExit(exit_code=code, signal=signal, oom_killed=oom)
    restarts = int(state.get("Restarts") or 0)
    what = _events(current) or (f"exited with code {code}" if code is not None else "failed")
    return TaskExit(exit_code=code, signal=signal, oom_killed=oom, gave_up=True,
                    reason=f"Nomad gave up after {restarts} restart{'s' if restarts != 1 else ''}: {what}")


def _last_termination(state: Mapping[str, Any]) -> Mapping[str, Any]:
    for event in reversed(state.get("Events") or []):
        if event.get("Type") == "Terminated":
            return event
    return {}


def _events(alloc: Mapping[str, Any]) -> str:
    """The last task events Nomad recorded with a message (why it ended, in Nomad's words)."""
    messages = []
    for state in (alloc.get("TaskStates") or {}).values():
        for event in (state or {}).get("Events") or []:
            text = event.get("DisplayMessage") or event.get("Message") or event.get("DriverError") or ""
            if text:
                messages.append(f"{event.get('Type', 'event')}: {text}")
    return "; ".join(messages[-3:])


def _placement_failure(evaluation: Mapping[str, Any] | None) -> str | None:
    """Why Nomad placed nothing, from an evaluation's FailedTGAllocs (AllocMetric per group)."""
    if not evaluation or evaluation.get("Status") in ("pending", None):
        return None
    failed = evaluation.get("FailedTGAllocs") or {}
    if not failed:
        if evaluation.get("Status") in ("failed", "canceled"):
            return f"its evaluation {evaluation.get('Status')}: {evaluation.get('StatusDescription') or 'no reason'}"
        return None
    reasons = []
    for group, metric in failed.items():
        metric = metric or {}
        parts = [f"{metric.get('NodesEvaluated', 0)} nodes evaluated"]
        for dimension, count in (metric.get("ConstraintFiltered") or {}).items():
            parts.append(f"{count} filtered by {dimension}")
        for dimension, count in (metric.get("DimensionExhausted") or {}).items():
            parts.append(f"{count} exhausted {dimension}")
        if len(parts) == 1:  # no detail: the counts at least
            parts += [f"{metric.get(key)} {what}" for key, what in (("NodesFiltered", "filtered"),
                                                                    ("NodesExhausted", "without room"))
                      if metric.get(key)]
        available = metric.get("NodesAvailable")
        if isinstance(available, dict) and not any(available.values()):
            parts.append("no node in its datacenters")
        reasons.append(f"group {group}: {', '.join(parts)}")
    return "; ".join(reasons)
