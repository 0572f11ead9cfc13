"""The stand-in's server and clients in one: jobs, evaluations, placement on the simulated nodes,
allocations whose tasks really run (drivers.py), their task events and restart policy, services
registered while a task runs, nodes going down and up, host volumes."""

from __future__ import annotations

import asyncio
import base64
import copy
import fnmatch
import os
import re
import secrets
import shutil
import signal as signals
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundry_fleet.runtime.host_ports import host_port_is_free
from tests.support.nomad_standin import drivers
from tests.support.nomad_standin.store import Store

TERMINAL = ("complete", "failed", "lost")
MAX_PAYLOAD = 16 * 1024
STOP_GRACE_CAP = 10.0  # seconds: what the stand-in's own shutdown waits per task at most


def now_ns() -> int:
    return time.time_ns()


@dataclass
class Node:
    name: str
    address: str
    memory_mb: int
    cpu_mhz: int
    datacenter: str
    host_volumes: dict[str, Path]  # static host volumes: name -> path
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: str = "ready"
    create_index: int = 1
    modify_index: int = 1
    runtime: Any = None  # the exec driver's LocalRuntime for this node
    podman: Any = None  # the podman driver's PodmanRuntime for this node, made at its first podman task
    images: Any = None


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class TaskRunner:
    alloc_id: str
    name: str
    run: Any = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    kill_timeout: float = 5.0
    kill_signal: int = signals.SIGTERM


def _event(kind: str, message: str = "", **extra: Any) -> dict[str, Any]:
    display = {
        "Received": "Task received by client",
        "Task Setup": "Building Task Directory",
        "Started": "Task started by client",
        "Killed": "Task successfully killed",
    }.get(kind, message)
    event = {"Type": kind, "Time": now_ns(), "Message": message, "DisplayMessage": display or message,
             "Details": {}, "ExitCode": 0, "Signal": 0, "KillTimeout": 0, "KillError": "", "KillReason": "",
             "StartDelay": 0, "RestartReason": "", "DriverError": "", "DriverMessage": "", "FailsTask": False,
             "SetupError": "", "ValidationError": ""}
    event.update(extra)
    return event


def _interpolate(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\$\{([^}]+)\}", lambda m: variables.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [_interpolate(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, variables) for k, v in value.items()}
    return value


class Cluster:
    def __init__(self, root: Path, nodes: list[Node], port_range: tuple[int, int], store: Store,
                 namespaces: tuple[str, ...], region: str) -> None:
        self.root = root
        self.nodes = {n.id: n for n in nodes}
        self.port_range = port_range
        self.store = store
        self.namespaces = namespaces
        self.region = region
        self.runners: dict[str, list[TaskRunner]] = {}
        self.alloc_tasks: dict[str, asyncio.Task] = {}
        self.blocked: list[tuple[tuple[str, str], str, str, str | None]] = []  # job key, group, name, prev
        self.contexts: dict[tuple[str, str], drivers.TaskContext] = {}
        self.tag = secrets.token_hex(2)

    # ------------------------------------------------------------------------------ lookups

    def node_by_name(self, name: str) -> Node:
        for node in self.nodes.values():
            if node.name == name:
                return node
        raise KeyError(f"no node named {name}")

    def job(self, namespace: str, job_id: str) -> dict[str, Any]:
        job = self.store.jobs.get((namespace, job_id))
        if job is None:
            raise Refused(404, "job not found")
        return job

    def job_status(self, job: dict[str, Any]) -> str:
        if job.get("ParameterizedJob") is not None or job.get("Periodic") is not None:
            return "dead" if job.get("Stop") else "running"
        allocs = [a for a in self.store.allocs.values()
                  if a["JobID"] == job["ID"] and a["Namespace"] == job["Namespace"]]
        if any(a["ClientStatus"] not in TERMINAL for a in allocs):
            return "running"
        if job.get("Stop"):
            return "dead"
        if job["Type"] in ("batch", "sysbatch") and allocs and not self._blocked_for(job):
            return "dead"
        return "pending"

    def _blocked_for(self, job: dict[str, Any]) -> bool:
        return any(key == (job["Namespace"], job["ID"]) for key, *_ in self.blocked)

    # ------------------------------------------------------------------------------ jobs

    def register(self, job: dict[str, Any]) -> dict[str, Any]:
        key = (job["Namespace"], job["ID"])
        old = self.store.jobs.get(key)
        index = self.store.bump("jobs")
        job.update(CreateIndex=old["CreateIndex"] if old else index, ModifyIndex=index, JobModifyIndex=index,
                   SubmitTime=now_ns(), Version=(old["Version"] + 1) if old else 0, Stable=False,
                   Status="pending", StatusDescription="")
        changed = old is None or _spec(old) != _spec(job) or old.get("Stop")
        self.store.jobs[key] = job
        if old is not None and changed:
            for alloc in self._live_allocs(key):
                self._stop_alloc(alloc, "alloc is being updated due to job update")
            self.blocked = [b for b in self.blocked if b[0] != key]
        evaluation = self._evaluate(job, "job-register", place=changed)
        return {"EvalID": evaluation["ID"], "EvalCreateIndex": evaluation["CreateIndex"],
                "JobModifyIndex": index, "Warnings": "", "Index": index, "LastIndex": index, "KnownLeader": False,
                "LastContact": 0, "NextToken": ""}

    def deregister(self, namespace: str, job_id: str, purge: bool) -> dict[str, Any]:
        key = (namespace, job_id)
        job = self.job(namespace, job_id)
        self.blocked = [b for b in self.blocked if b[0] != key]
        for alloc in self._live_allocs(key):
            self._stop_alloc(alloc, "alloc not needed due to job update")
        if purge:
            del self.store.jobs[key]
        else:
            job["Stop"] = True
        index = self.store.bump("jobs")
        job["ModifyIndex"] = job["JobModifyIndex"] = index
        evaluation = self._new_eval(job, "job-deregister")
        return {"EvalID": evaluation["ID"], "EvalCreateIndex": evaluation["CreateIndex"],
                "JobModifyIndex": index, "VolumeEvalID": "", "VolumeEvalIndex": 0, "Index": index,
                "LastIndex": index, "RequestTime": 0}

    def dispatch(self, namespace: str, job_id: str, meta: dict[str, str], payload: str | None,
                 id_prefix: str | None) -> dict[str, Any]:
        parent = self.job(namespace, job_id)
        config = parent.get("ParameterizedJob")
        if config is None:
            raise Refused(400, f'Specified job "{job_id}" is not a parameterized job')
        if parent.get("Stop"):
            raise Refused(400, f'Specified job "{job_id}" is stopped')
        data = base64.b64decode(payload) if payload else b""
        mode = config.get("Payload") or "optional"
        if mode == "required" and not data:
            raise Refused(400, "Payload is not provided but required by the parameterized job")
        if mode == "forbidden" and data:
            raise Refused(400, "Payload provided but forbidden by the parameterized job")
        if len(data) > MAX_PAYLOAD:
            raise Refused(400, f"Payload exceeds maximum size; {len(data)} > {MAX_PAYLOAD}")
        required = set(config.get("MetaRequired") or [])
        allowed = required | set(config.get("MetaOptional") or [])
        missing = sorted(required - set(meta))
        if missing:
            raise Refused(400, f"Dispatch did not provide required meta keys: {missing}")
        unpermitted = sorted(set(meta) - allowed)
        if unpermitted:
            raise Refused(400, f"Dispatch contains unpermitted meta keys: {unpermitted}")
        prefix = f"{id_prefix}-" if id_prefix else ""
        child_id = f"{job_id}/dispatch-{int(time.time())}-{prefix}{secrets.token_hex(4)}"
        child = copy.deepcopy(parent)
        child.update(ID=child_id, Name=child_id, ParentID=job_id, Dispatched=True, ParameterizedJob=None,
                     Payload=payload or None, Meta={**(parent.get("Meta") or {}), **meta})
        answer = self.register(child)
        return {"DispatchedJobID": child_id, "EvalID": answer["EvalID"], "EvalCreateIndex": answer["EvalCreateIndex"],
                "JobCreateIndex": answer["JobModifyIndex"], "Index": answer["JobModifyIndex"]}

    def _live_allocs(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return [a for a in self.store.allocs.values() if (a["Namespace"], a["JobID"]) == key
                and a["DesiredStatus"] == "run" and a["ClientStatus"] not in TERMINAL]

    # ------------------------------------------------------------------------------ evaluations

    def _new_eval(self, job: dict[str, Any], trigger: str, status: str = "complete") -> dict[str, Any]:
        index = self.store.bump("evals")
        evaluation = {"ID": str(uuid.uuid4()), "Namespace": job["Namespace"], "Priority": job["Priority"],
                      "Type": job["Type"], "TriggeredBy": trigger, "JobID": job["ID"],
                      "JobModifyIndex": job.get("JobModifyIndex", 0), "Status": status, "StatusDescription": "",
                      "FailedTGAllocs": None, "BlockedEval": "", "QueuedAllocations": {},
                      "CreateIndex": index, "ModifyIndex": index, "CreateTime": now_ns(), "ModifyTime": now_ns()}
        self.store.evals[evaluation["ID"]] = evaluation
        return evaluation

    def _evaluate(self, job: dict[str, Any], trigger: str, place: bool = True) -> dict[str, Any]:
        evaluation = self._new_eval(job, trigger)
        if not place or job.get("Stop") or job.get("ParameterizedJob") is not None:
            return evaluation
        failed: dict[str, Any] = {}
        for group in job["TaskGroups"]:
            if job["Type"] == "sysbatch" or job["Type"] == "system":
                metric = self._place_on_every_node(job, group, evaluation)
            else:
                metric = None
                for i in range(int(group["Count"])):
                    name = f"{job['ID']}.{group['Name']}[{i}]"
                    problem = self._place(job, group, name, evaluation, None)
                    if problem is not None:
                        if metric is None:
                            metric = problem
                        else:
                            metric["CoalescedFailures"] += 1
                        self.blocked.append(((job["Namespace"], job["ID"]), group["Name"], name, None))
            if metric is not None:
                failed[group["Name"]] = metric
        if failed:
            blocked = self._new_eval(job, "queued-allocs", status="blocked")
            evaluation.update(FailedTGAllocs=failed, BlockedEval=blocked["ID"])
            evaluation["ModifyIndex"] = self.store.bump("evals")
        return evaluation

    def _place_on_every_node(self, job: dict[str, Any], group: dict[str, Any], evaluation: dict[str, Any]):
        placed = 0
        metric = None
        for node in self.nodes.values():
            if node.status != "ready":
                continue
            ok, _ = self._feasible(job, group, node)
            if ok:
                self._make_alloc(job, group, f"{job['ID']}.{group['Name']}[{placed}]", node, evaluation, None)
                placed += 1
        if placed == 0:
            metric = self._metric(job, group)
        return metric

    def _metric(self, job: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
        """Why no node fits, as Nomad's AllocMetric counts it."""
        metric = {"NodesEvaluated": 0, "NodesFiltered": 0, "NodesInPool": len(self.nodes), "NodesAvailable": {},
                  "ClassFiltered": None, "ConstraintFiltered": None, "NodesExhausted": 0, "ClassExhausted": None,
                  "DimensionExhausted": None, "QuotaExhausted": None, "ResourcesExhausted": None, "Scores": None,
                  "AllocationTime": 1000, "CoalescedFailures": 0}
        for node in self.nodes.values():
            if node.status != "ready":
                continue
            metric["NodesAvailable"][node.datacenter] = metric["NodesAvailable"].get(node.datacenter, 0) + 1
            metric["NodesEvaluated"] += 1
            ok, reason = self._feasible(job, group, node)
            if ok:
                continue
            kind, text = reason
            if kind == "constraint":
                metric["NodesFiltered"] += 1
                metric["ConstraintFiltered"] = metric["ConstraintFiltered"] or {}
                metric["ConstraintFiltered"][text] = metric["ConstraintFiltered"].get(text, 0) + 1
            else:
                metric["NodesExhausted"] += 1
                metric["DimensionExhausted"] = metric["DimensionExhausted"] or {}
                metric["DimensionExhausted"][text] = metric["DimensionExhausted"].get(text, 0) + 1
        return metric

    def _place(self, job: dict[str, Any], group: dict[str, Any], name: str, evaluation: dict[str, Any],
               previous: dict[str, Any] | None) -> dict[str, Any] | None:
        """Place one allocation; None when placed, else the metric saying why not."""
        fits = [n for n in self.nodes.values() if n.status == "ready" and self._feasible(job, group, n)[0]]
        if not fits:
            return self._metric(job, group)
        node = max(fits, key=lambda n: (self._free_memory(n), n.name))
        self._make_alloc(job, group, name, node, evaluation, previous)
        return None

    def retry_blocked(self, trigger: str) -> None:
        """Nodes or volumes changed: place what could not be placed before, where it now fits."""
        waiting, self.blocked = self.blocked, []
        for key, group_name, name, previous_id in waiting:
            job = self.store.jobs.get(key)
            if job is None or job.get("Stop"):
                continue
            group = next(g for g in job["TaskGroups"] if g["Name"] == group_name)
            evaluation = self._new_eval(job, trigger)
            previous = self.store.allocs.get(previous_id) if previous_id else None
            problem = self._place(job, group, name, evaluation, previous)
            if problem is not None:
                evaluation["FailedTGAllocs"] = {group_name: problem}
                self.blocked.append((key, group_name, name, previous_id))
            else:
                self.store.bump("jobs")  # the job's status moves

    # ------------------------------------------------------------------------------ feasibility

    def node_variables(self, node: Node) -> dict[str, str]:
        return {"node.unique.id": node.id, "node.unique.name": node.name, "node.datacenter": node.datacenter,
                "attr.unique.network.ip-address": node.address, "node.class": "", "node.pool": "default",
                "attr.unique.hostname": node.name}

    def _constraint_ok(self, constraint: dict[str, Any], node: Node) -> bool:
        variables = self.node_variables(node)
        left = _interpolate(constraint.get("LTarget") or "", variables)
        right = _interpolate(constraint.get("RTarget") or "", variables)
        operand = constraint.get("Operand") or "="
        if operand in ("=", "==", "is"):
            return left == right
        if operand in ("!=", "not"):
            return left != right
        if operand == "regexp":
            return re.search(right, left) is not None
        if operand == "set_contains":
            return set(right.split(",")) <= {x.strip() for x in left.split(",")}
        return False

    def host_volume(self, node: Node, namespace: str, source: str) -> Path | None:
        if source in node.host_volumes:
            return node.host_volumes[source]
        for volume in self.store.volumes.values():
            if volume["NodeID"] == node.id and volume["Name"] == source and volume["Namespace"] == namespace:
                return Path(volume["HostPath"])
        return None

    def _free_memory(self, node: Node) -> int:
        used = 0
        for alloc in self.store.allocs.values():
            if alloc["NodeID"] == node.id and alloc["ClientStatus"] not in TERMINAL and alloc["DesiredStatus"] == "run":
                used += sum(t["Memory"]["MemoryMB"] for t in alloc["AllocatedResources"]["Tasks"].values())
        return node.memory_mb - used

    def _feasible(self, job: dict[str, Any], group: dict[str, Any], node: Node) -> tuple[bool, tuple[str, str]]:
        if not any(fnmatch.fnmatchcase(node.datacenter, dc) for dc in job["Datacenters"]):
            return False, ("constraint", "missing datacenter")
        constraints = [*(job.get("Constraints") or []), *(group.get("Constraints") or []),
                       *(c for t in group["Tasks"] for c in t.get("Constraints") or [])]
        for constraint in constraints:
            if not self._constraint_ok(constraint, node):
                text = f"{constraint.get('LTarget')} {constraint.get('Operand')} {constraint.get('RTarget')}"
                return False, ("constraint", text)
        for volume in (group.get("Volumes") or {}).values():
            if volume.get("Type") == "host" and self.host_volume(node, job["Namespace"], volume["Source"]) is None:
                return False, ("constraint", "missing compatible host volumes")
        for task in group["Tasks"]:
            if task["Driver"] not in drivers.CONFIG_KEYS:
                return False, ("constraint", f"missing drivers: {task['Driver']}")
        wanted = sum(int(t["Resources"]["MemoryMB"]) for t in group["Tasks"])
        if wanted > self._free_memory(node):
            return False, ("exhausted", "memory")
        return True, ("", "")

    # ------------------------------------------------------------------------------ allocations

    def _ports_in_use(self) -> set[int]:
        used = set()
        for alloc in self.store.allocs.values():
            if alloc["ClientStatus"] not in TERMINAL:
                used |= {p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"]}
        return used

    def _dynamic_port(self, node: Node) -> int:
        used = self._ports_in_use()
        low, high = self.port_range
        for port in range(low, high + 1):
            if port not in used and host_port_is_free(port, node.address):
                return port
        raise Refused(500, f"no free port left in {low}-{high}")

    def _make_alloc(self, job: dict[str, Any], group: dict[str, Any], name: str, node: Node,
                    evaluation: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        ports = []
        networks = []
        for network in group.get("Networks") or []:
            dynamic = [{"Label": p["Label"], "Value": self._dynamic_port(node), "To": p.get("To") or 0,
                        "HostNetwork": "default"} for p in network.get("DynamicPorts") or []]
            for p in dynamic:  # taken before the next label picks one
                ports.append({"Label": p["Label"], "Value": p["Value"], "To": p["To"], "HostIP": node.address})
            reserved = [dict(p) for p in network.get("ReservedPorts") or []]
            ports += [{"Label": p["Label"], "Value": p["Value"], "To": p.get("To") or 0, "HostIP": node.address}
                      for p in reserved]
            networks.append({"Mode": network.get("Mode") or "host", "IP": node.address, "DynamicPorts": dynamic,
                             "ReservedPorts": reserved or None, "MBits": 0})
        index = self.store.bump("allocs")
        alloc = {
            "ID": str(uuid.uuid4()), "EvalID": evaluation["ID"], "Name": name, "Namespace": job["Namespace"],
            "NodeID": node.id, "NodeName": node.name, "JobID": job["ID"], "JobType": job["Type"],
            "JobVersion": job["Version"], "TaskGroup": group["Name"], "DesiredStatus": "run",
            "DesiredDescription": "", "ClientStatus": "pending", "ClientDescription": "No tasks have started",
            "TaskStates": {t["Name"]: {"State": "pending", "Failed": False, "Restarts": 0, "LastRestart": None,
                                       "StartedAt": None, "FinishedAt": None, "Events": []} for t in group["Tasks"]},
            "AllocatedResources": {
                "Shared": {"Networks": networks, "Ports": ports, "DiskMB": group["EphemeralDisk"]["SizeMB"]},
                "Tasks": {t["Name"]: {"Cpu": {"CpuShares": t["Resources"]["CPU"]},
                                      "Memory": {"MemoryMB": t["Resources"]["MemoryMB"],
                                                 "MemoryMaxMB": t["Resources"].get("MemoryMaxMB") or 0},
                                      "Networks": None} for t in group["Tasks"]},
            },
            "PreviousAllocation": previous["ID"] if previous else "", "NextAllocation": "",
            "FollowupEvalID": "", "RescheduleTracker": None, "DeploymentStatus": None,
            "CreateIndex": index, "ModifyIndex": index, "AllocModifyIndex": index,
            "CreateTime": now_ns(), "ModifyTime": now_ns(), "Job": job,
        }
        self.store.allocs[alloc["ID"]] = alloc
        if previous is not None:
            previous["NextAllocation"] = alloc["ID"]
        self.alloc_tasks[alloc["ID"]] = asyncio.get_running_loop().create_task(self._run_alloc(alloc, node))
        return alloc

    def _touch(self, alloc: dict[str, Any]) -> None:
        alloc["ModifyIndex"] = self.store.bump("allocs")
        alloc["ModifyTime"] = now_ns()

    def _add_event(self, alloc: dict[str, Any], task: str, event: dict[str, Any], **state: Any) -> None:
        task_state = alloc["TaskStates"][task]
        task_state["Events"].append(event)
        task_state.update(state)
        self._update_client_status(alloc)
        self._touch(alloc)

    def _update_client_status(self, alloc: dict[str, Any]) -> None:
        if alloc["ClientStatus"] == "lost":
            return
        states = alloc["TaskStates"].values()
        if any(s["State"] == "running" for s in states):
            status, text = "running", "Tasks are running"
        elif all(s["State"] == "dead" for s in states):
            failed = any(s["Failed"] for s in states)
            status, text = ("failed", "Failed tasks") if failed else ("complete", "All tasks have completed")
        else:
            return
        if status != alloc["ClientStatus"]:
            alloc["ClientStatus"], alloc["ClientDescription"] = status, text
            self.store.bump("jobs")  # the job's status and summary follow its allocations

    def _context(self, alloc: dict[str, Any], node: Node, task: dict[str, Any]) -> drivers.TaskContext:
        job = alloc["Job"]
        group = next(g for g in job["TaskGroups"] if g["Name"] == alloc["TaskGroup"])
        alloc_dir = self.root / "allocs" / alloc["ID"]
        task_dir = alloc_dir / task["Name"]
        for d in (alloc_dir / "alloc" / "logs", alloc_dir / "alloc" / "data", task_dir / "local",
                  task_dir / "secrets", task_dir / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        ports = {p["Label"]: p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"]}
        env = {
            "NOMAD_ALLOC_DIR": str(alloc_dir / "alloc"), "NOMAD_TASK_DIR": str(task_dir / "local"),
            "NOMAD_SECRETS_DIR": str(task_dir / "secrets"), "NOMAD_ALLOC_ID": alloc["ID"],
            "NOMAD_SHORT_ALLOC_ID": alloc["ID"][:8], "NOMAD_ALLOC_NAME": alloc["Name"],
            "NOMAD_ALLOC_INDEX": alloc["Name"].rsplit("[", 1)[-1].rstrip("]"),
            "NOMAD_GROUP_NAME": group["Name"], "NOMAD_TASK_NAME": task["Name"], "NOMAD_JOB_ID": job["ID"],
            "NOMAD_JOB_NAME": job["Name"], "NOMAD_NAMESPACE": job["Namespace"], "NOMAD_REGION": job["Region"],
            "NOMAD_DC": node.datacenter, "NOMAD_CPU_LIMIT": str(task["Resources"]["CPU"]),
            "NOMAD_MEMORY_LIMIT": str(task["Resources"]["MemoryMB"]),
        }
        if job.get("ParentID"):
            env["NOMAD_JOB_PARENT_ID"] = job["ParentID"]
        for label, port in ports.items():
            env[f"NOMAD_PORT_{label}"] = env[f"NOMAD_HOST_PORT_{label}"] = str(port)
            env[f"NOMAD_IP_{label}"] = node.address
            env[f"NOMAD_ADDR_{label}"] = f"{node.address}:{port}"
        for key, value in {**(job.get("Meta") or {}), **(group.get("Meta") or {}), **(task.get("Meta") or {})}.items():
            env[f"NOMAD_META_{key}"] = env[f"NOMAD_META_{key.upper()}"] = str(value)
        variables = {**env, **self.node_variables(node)}
        env.update(_interpolate(task.get("Env") or {}, variables))
        volumes = {}
        for name, volume in (group.get("Volumes") or {}).items():
            path = self.host_volume(node, job["Namespace"], volume["Source"])
            if path is not None:
                volumes[name] = path
        ctx = drivers.TaskContext(
            alloc_id=alloc["ID"], job_id=job["ID"], group=group["Name"], task=task,
            config=_interpolate(task.get("Config") or {}, variables), env=env, node_name=node.name,
            node_address=node.address, alloc_dir=alloc_dir, task_dir=task_dir, ports=ports, volumes=volumes,
            mounts=task.get("VolumeMounts") or [])
        dispatch = task.get("DispatchPayload")
        if dispatch and dispatch.get("File") and job.get("Payload"):
            target = task_dir / "local" / dispatch["File"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(job["Payload"]))
        self.contexts[(alloc["ID"], task["Name"])] = ctx
        return ctx

    async def _run_alloc(self, alloc: dict[str, Any], node: Node) -> None:
        group = next(g for g in alloc["Job"]["TaskGroups"] if g["Name"] == alloc["TaskGroup"])
        runners = [TaskRunner(alloc["ID"], t["Name"], kill_timeout=int(t["KillTimeout"]) / 1e9,
                              kill_signal=getattr(signals, t.get("KillSignal") or "SIGTERM", signals.SIGTERM))
                   for t in group["Tasks"]]
        self.runners[alloc["ID"]] = runners
        try:
            await asyncio.gather(*(self._run_task(alloc, node, group, task, runner)
                                   for task, runner in zip(group["Tasks"], runners, strict=True)))
        finally:
            self._deregister_services(alloc["ID"])

    async def _run_task(self, alloc: dict[str, Any], node: Node, group: dict[str, Any], task: dict[str, Any],
                        runner: TaskRunner) -> None:
        try:
            await self._run_task_steps(alloc, node, group, task, runner)
        except Exception as exc:  # a fault of the stand-in itself: the task fails and says so
            if runner.run is not None:
                await runner.run.stop(0, signals.SIGKILL)
                await runner.run.destroy()
                runner.run = None
            text = f"the stand-in's client failed: {exc!r}"
            self._add_event(alloc, task["Name"], _event("Driver Failure", text, DriverError=text, FailsTask=True),
                            State="dead", Failed=True, FinishedAt=now_ns())

    async def _run_task_steps(self, alloc: dict[str, Any], node: Node, group: dict[str, Any],
                              task: dict[str, Any], runner: TaskRunner) -> None:
        name = task["Name"]
        job = alloc["Job"]
        self._add_event(alloc, name, _event("Received"))
        self._add_event(alloc, name, _event("Task Setup", "Building Task Directory"))
        policy = task["RestartPolicy"]
        restarts: list[float] = []
        while not runner.stopping.is_set():
            try:
                ctx = await asyncio.to_thread(self._context, alloc, node, task)
                drivers.check_config(task["Driver"], ctx.config)
                if task["Driver"] == "raw_exec":
                    run = await drivers.start_raw_exec(ctx)
                elif task["Driver"] == "exec":
                    run = await drivers.start_exec(ctx, node.runtime)
                else:
                    run = await self._start_podman(ctx, node)
            except drivers.ValidationFailure as exc:
                self._add_event(alloc, name, _event("Failed Validation", str(exc), ValidationError=str(exc),
                                                    FailsTask=True), State="dead", Failed=True, FinishedAt=now_ns())
                return
            except drivers.DriverFailure as exc:
                self._add_event(alloc, name, _event("Driver Failure", str(exc), DriverError=str(exc)))
                if not await self._restart_or_fail(alloc, name, policy, restarts, runner, job):
                    return
                continue
            runner.run = run
            if runner.stopping.is_set():  # stopped while starting
                await run.stop(0, signals.SIGKILL)
            self._add_event(alloc, name, _event("Started"), State="running", StartedAt=now_ns())
            self._register_services(alloc, node, group, task)
            code, sig, _ = await run.wait()
            self._deregister_services(alloc["ID"], name)
            await run.destroy()
            runner.run = None
            message = f"Exit Code: {code if code is not None else 0}" + (f", Signal: {sig}" if sig else "")
            self._add_event(alloc, name, _event("Terminated", message, ExitCode=code if code is not None else 0,
                                                Signal=sig or 0))
            if runner.stopping.is_set():
                break
            if job["Type"] in ("batch", "sysbatch") and code == 0 and not sig:
                alloc["TaskStates"][name].update(State="dead", Failed=False, FinishedAt=now_ns())
                self._update_client_status(alloc)
                self._touch(alloc)
                return
            if not await self._restart_or_fail(alloc, name, policy, restarts, runner, job):
                return
        if alloc["TaskStates"][name]["State"] != "dead":
            self._add_event(alloc, name, _event("Killed"), State="dead", FinishedAt=now_ns())

    async def _restart_or_fail(self, alloc: dict[str, Any], name: str, policy: dict[str, Any],
                               restarts: list[float], runner: TaskRunner, job: dict[str, Any]) -> bool:
        """Nomad's restart policy: Attempts restarts within Interval, each after Delay; past that, mode
        fail ends the task (failed), mode delay waits for the interval to pass."""
        now = time.monotonic()
        interval, delay = policy["Interval"] / 1e9, policy["Delay"] / 1e9
        restarts[:] = [t for t in restarts if now - t < interval]
        if len(restarts) >= int(policy["Attempts"]):
            if policy["Mode"] == "fail":
                text = (f"Exceeded allowed attempts {policy['Attempts']} in interval "
                        f"{_go_duration(policy['Interval'])} and mode is \"fail\"")
                self._add_event(alloc, name, _event("Not Restarting", text, FailsTask=True),
                                State="dead", Failed=True, FinishedAt=now_ns())
                return False
            delay = max(interval - (now - restarts[0]), delay) if restarts else delay
        restarts.append(now)
        state = alloc["TaskStates"][name]
        self._add_event(alloc, name, _event("Restarting", f"Task restarting in {_go_duration(int(delay * 1e9))}",
                                            StartDelay=int(delay * 1e9),
                                            RestartReason="Restart within policy"),
                        State="pending", Restarts=state["Restarts"] + 1, LastRestart=now_ns())
        try:
            await asyncio.wait_for(runner.stopping.wait(), delay)
        except TimeoutError:
            pass
        return not runner.stopping.is_set()

    async def _start_podman(self, ctx: drivers.TaskContext, node: Node) -> Any:
        if node.podman is None:
            # Made at the first podman task: a test of exec tasks starts no Podman service.
            from foundry_fleet.runtime.podman.driver import PodmanRuntime
            from foundry_fleet.runtime.podman.service import PodmanService

            node.images = drivers.ImageOfTask()
            service = PodmanService(self.root / "run" / "podman")
            node.podman = PodmanRuntime(self.podman_fleet_id(node), service, lambda api: node.images,
                                        listen_host=node.address)
            await service.ensure()
        return await drivers.start_podman(ctx, node.podman, node.images)

    def podman_fleet_id(self, node: Node) -> str:
        """The podman runtime's fleet id for `node`: its containers' names and labels."""
        index = list(self.nodes).index(node.id)
        return f"nomad{os.getpid() % 100000}{self.tag}n{index}"

    def _stop_alloc(self, alloc: dict[str, Any], why: str, lost: bool = False) -> asyncio.Task | None:
        """Desired stop: each task gets its kill signal, then SIGKILL after its KillTimeout (at once
        when its node is lost)."""
        alloc["DesiredStatus"] = "stop"
        alloc["DesiredDescription"] = why
        if lost:
            alloc["ClientStatus"], alloc["ClientDescription"] = "lost", why
        self._touch(alloc)
        self.store.bump("jobs")
        runners = self.runners.get(alloc["ID"], [])
        return asyncio.get_running_loop().create_task(self._kill(alloc, runners, lost))

    async def _kill(self, alloc: dict[str, Any], runners: list[TaskRunner], lost: bool) -> None:
        async def kill(runner: TaskRunner) -> None:
            runner.stopping.set()
            if runner.run is None:
                return
            timeout = 0.0 if lost else runner.kill_timeout
            self._add_event(alloc, runner.name, _event(
                "Killing", f"Sent interrupt. Waiting {_go_duration(int(timeout * 1e9))} before force killing",
                KillTimeout=int(timeout * 1e9)))
            await runner.run.stop(timeout, signals.SIGKILL if lost else runner.kill_signal)

        await asyncio.gather(*(kill(r) for r in runners))
        task = self.alloc_tasks.get(alloc["ID"])
        if task is not None:
            await asyncio.wait([task])  # its tasks have stopped: their events are in
        if not lost and alloc["ClientStatus"] not in TERMINAL:
            alloc["ClientStatus"], alloc["ClientDescription"] = "complete", "All tasks have completed"
            self._touch(alloc)
            self.store.bump("jobs")

    # ------------------------------------------------------------------------------ services

    def _register_services(self, alloc: dict[str, Any], node: Node, group: dict[str, Any],
                           task: dict[str, Any]) -> None:
        ports = {p["Label"]: p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"]}
        wanted = [("group", s) for s in group.get("Services") or []] if task is group["Tasks"][0] else []
        wanted += [("task", s) for s in task.get("Services") or []]
        for level, service in wanted:
            if service.get("Provider") != "nomad":
                continue  # Consul's catalogue, not Nomad's
            label = service.get("PortLabel") or ""
            port = int(label) if label.isdigit() else ports.get(label, 0)
            owner = group["Name"] if level == "group" else task["Name"]
            service_id = f"_nomad-task-{alloc['ID']}-{owner}-{service['Name']}-{label}"
            index = self.store.bump("services")
            self.store.services[service_id] = {
                "ID": service_id, "ServiceName": service["Name"], "Namespace": alloc["Namespace"],
                "NodeID": node.id, "Datacenter": node.datacenter, "JobID": alloc["JobID"], "AllocID": alloc["ID"],
                "Tags": list(service.get("Tags") or []), "Address": node.address, "Port": port,
                "CreateIndex": index, "ModifyIndex": index, "_task": task["Name"],
            }

    def _deregister_services(self, alloc_id: str, task: str | None = None) -> None:
        gone = [k for k, s in self.store.services.items()
                if s["AllocID"] == alloc_id and (task is None or s["_task"] == task)]
        for key in gone:
            del self.store.services[key]
        if gone:
            self.store.bump("services")

    # ------------------------------------------------------------------------------ nodes

    async def set_node_status(self, name: str, status: str) -> None:
        node = self.node_by_name(name)
        if node.status == status:
            return
        node.status = status
        node.modify_index = self.store.bump("nodes")
        if status == "down":
            kills = []
            for alloc in list(self.store.allocs.values()):
                if alloc["NodeID"] != node.id or alloc["ClientStatus"] in TERMINAL:
                    continue
                kills.append(self._stop_alloc(alloc, "alloc is lost since its node is down", lost=True))
                job = self.store.jobs.get((alloc["Namespace"], alloc["JobID"]))
                if job is not None and job["Type"] in ("service", "batch") and alloc["DesiredStatus"] != "run":
                    self.blocked.append(((job["Namespace"], job["ID"]), alloc["TaskGroup"], alloc["Name"],
                                         alloc["ID"]))
            await asyncio.gather(*(k for k in kills if k is not None))
        self.retry_blocked("node-update")

    # ------------------------------------------------------------------------------ shutdown

    async def stop_everything(self) -> None:
        stops = []
        for alloc in list(self.store.allocs.values()):
            if alloc["ClientStatus"] not in TERMINAL or alloc["ID"] in self.runners:
                for runner in self.runners.get(alloc["ID"], []):
                    runner.kill_timeout = min(runner.kill_timeout, STOP_GRACE_CAP)
                if alloc["ClientStatus"] not in TERMINAL:
                    stops.append(self._stop_alloc(alloc, "the stand-in is shutting down"))
        await asyncio.gather(*(s for s in stops if s is not None), return_exceptions=True)
        await asyncio.gather(*self.alloc_tasks.values(), return_exceptions=True)
        for node in self.nodes.values():
            if node.podman is not None:
                await node.podman.forget_unknown(set())  # a container a failed start left behind
                await node.podman.service.stop()
                await node.podman.api.aclose()

    def remove_alloc_dirs(self) -> None:
        shutil.rmtree(self.root / "allocs", ignore_errors=True)
        os.makedirs(self.root / "allocs", exist_ok=True)


def _spec(job: dict[str, Any]) -> dict[str, Any]:
    """What decides whether a re-registered job changed (not its indexes and status)."""
    volatile = {"CreateIndex", "ModifyIndex", "JobModifyIndex", "SubmitTime", "Version", "Stable", "Status",
                "StatusDescription", "Stop"}
    return {k: v for k, v in job.items() if k not in volatile}


def _go_duration(ns: int) -> str:
    from tests.support.nomad_standin.validate import _duration

    return _duration(ns)
