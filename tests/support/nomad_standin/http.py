"""The stand-in's HTTP API: Nomad's paths, query parameters, headers and answers (a Starlette app)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.nomad_standin import decode, validate
from tests.support.nomad_standin.canonical import canonicalize
from tests.support.nomad_standin.drivers import exec_log
from tests.support.nomad_standin.cluster import TERMINAL, Cluster, Refused
from tests.support.nomad_standin.store import parse_wait
from tests.support.nomad_standin.usage import UsageMeter

Handler = Callable[[Request, list[str]], Awaitable[Response]]
STUB_DROP = ("Job",)
FOLLOW_POLL = 0.05  # how often a followed log is looked at for new bytes


def _text(status: int, message: str) -> Response:
    return Response(message, status_code=status, media_type="text/plain")


def node_cores(node: Any) -> int:
    """The cores a simulated node reports: one per 2000 MHz of its CPU."""
    return max(node.cpu_mhz // 2000, 1)


def _public(value: Any) -> Any:
    """Internal keys (leading underscore) stay inside."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


class Api:
    def __init__(self, cluster: Cluster, token: str | None, calls: list[tuple[str, str, dict[str, str]]]) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.token = token
        self.calls = calls
        self.usage = UsageMeter()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/{rest:path}", self.handle,
                                       methods=["GET", "PUT", "POST", "DELETE"])])

    # ---------------------------------------------------------------------------------- plumbing

    async def handle(self, request: Request) -> Response:
        query = dict(request.query_params)
        self.calls.append((request.method, request.url.path, query))
        if request.url.path != "/v1/status/leader" and self.token is not None:
            given = request.headers.get("x-nomad-token") or \
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given != self.token:
                return _text(403, "Permission denied")
        region = query.get("region")
        if region and region != self.cluster.region:
            return _text(500, "No path to region")
        parts = request.path_params["rest"].split("/")
        try:
            return await self.route(request, parts, query)
        except Refused as e:
            return _text(e.status, e.message)
        except decode.DecodeError as e:
            return _text(400, str(e))
        except ValueError as e:
            return _text(400, str(e))

    def namespace(self, query: dict[str, str], write: bool = False) -> str:
        namespace = query.get("namespace") or "default"
        if namespace != "*" and namespace not in self.cluster.namespaces:
            raise Refused(400 if write else 404, f'nonexistent namespace "{namespace}"')
        return namespace

    def in_namespace(self, item: dict[str, Any], namespace: str) -> bool:
        return namespace == "*" or item.get("Namespace") == namespace

    async def body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw or b"null")
        except ValueError as e:
            raise decode.DecodeError(f"failed to decode request body: {e}") from None

    async def blocking(self, query: dict[str, str], tables: tuple[str, ...],
                       answer: Callable[[], Any]) -> Response:
        """A read: blocks while `tables` are at or below `index` (up to `wait`), then answers with the
        three headers Nomad's clients require."""
        try:
            index = int(query.get("index") or 0)
        except ValueError:
            raise Refused(400, f"Invalid index: {query.get('index')}") from None
        wait = parse_wait(query.get("wait"))
        at = await self.store.block(tables, index, wait)
        value = answer()
        return Response(json.dumps(_public(value)), media_type="application/json", headers={
            "X-Nomad-Index": str(max(at, 1)), "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"})

    def written(self, value: Any) -> Response:
        return Response(json.dumps(_public(value)), media_type="application/json",
                        headers={"X-Nomad-Index": str(self.store.index)})

    # ---------------------------------------------------------------------------------- routes

    async def route(self, request: Request, parts: list[str], query: dict[str, str]) -> Response:
        method = request.method
        head = parts[0]
        if head == "status" and parts[1:] == ["leader"]:
            return Response(json.dumps("127.0.0.1:4647"), media_type="application/json")
        if head == "jobs" and len(parts) == 1:
            if method in ("PUT", "POST"):
                return await self.register(request, query)
            namespace = self.namespace(query)
            prefix = query.get("prefix", "")
            return await self.blocking(query, ("jobs", "allocs"), lambda: [
                self.job_stub(j) for (ns, jid), j in sorted(self.store.jobs.items())
                if (namespace == "*" or ns == namespace) and jid.startswith(prefix)])
        if head == "job" and len(parts) >= 2:
            return await self.job_route(request, parts[1:], query)
        if head == "allocations" and len(parts) == 1:
            namespace = self.namespace(query)
            prefix = query.get("prefix", "")
            return await self.blocking(query, ("allocs",), lambda: [
                self.alloc_stub(a, query) for a in self.store.allocs.values()
                if self.in_namespace(a, namespace) and a["ID"].startswith(prefix)])
        if head == "allocation" and len(parts) == 2:
            return await self.blocking(query, ("allocs",), lambda: self.found(self.store.allocs.get(parts[1]),
                                                                             "alloc not found"))
        if head == "evaluation" and len(parts) == 2:
            return await self.blocking(query, ("evals",), lambda: self.found(self.store.evals.get(parts[1]),
                                                                            "eval not found"))
        if head == "service" and len(parts) == 2:
            namespace = self.namespace(query)
            return await self.blocking(query, ("services",), lambda: sorted(
                (s for s in self.store.services.values()
                 if s["ServiceName"] == parts[1] and self.in_namespace(s, namespace)),
                key=lambda s: s["CreateIndex"]))
        if head == "services" and len(parts) == 1:
            namespace = self.namespace(query)
            return await self.blocking(query, ("services",), lambda: self.service_list(namespace))
        if head == "nodes" and len(parts) == 1:
            resources = query.get("resources") == "true"
            return await self.blocking(query, ("nodes",), lambda: [
                self.node_stub(n, resources) for n in self.cluster.nodes.values()])
        if head == "node" and len(parts) == 2:
            node = self.cluster.nodes.get(parts[1])
            return await self.blocking(query, ("nodes",), lambda: self.node_full(self.found(node, "node not found")))
        if head == "volume" and parts[1:2] == ["host"]:
            return await self.volume_route(request, parts[2:], query)
        if head == "volumes" and len(parts) == 1:
            if query.get("type") != "host":
                raise Refused(400, "unsupported volume type")
            namespace = self.namespace(query)
            node_id = query.get("node_id")
            return await self.blocking(query, ("volumes",), lambda: [
                self.volume_stub(v) for v in self.store.volumes.values()
                if self.in_namespace(v, namespace) and (not node_id or v["NodeID"] == node_id)])
        if head == "client" and parts[1:3] == ["fs", "logs"] and len(parts) == 4:
            return self.logs(parts[3], query)
        if head == "client" and parts[1:2] == ["allocation"] and parts[3:] == ["stats"]:
            return await self.alloc_stats(parts[2])
        return _text(404, f"Invalid URL path: /v1/{'/'.join(parts)}")

    @staticmethod
    def found(value: Any, message: str) -> Any:
        if value is None:
            raise Refused(404, message)
        return value

    # ---------------------------------------------------------------------------------- jobs

    async def register(self, request: Request, query: dict[str, str], path_id: str | None = None) -> Response:
        body = decode.check_body(await self.body(request), decode.REGISTER_REQUEST, "JobRegisterRequest")
        job = body.get("Job")
        if job is None:
            raise Refused(400, "Job must be specified")
        if path_id is not None and job.get("ID") != path_id:
            raise Refused(400, "Job ID does not match name")
        namespace = job.get("Namespace") or query.get("namespace") or "default"
        self.namespace({"namespace": namespace}, write=True)
        job = canonicalize(job, namespace, self.cluster.region)
        if job["Region"] != self.cluster.region:
            raise Refused(500, "No path to region")
        errors = validate.job_errors(job)
        if errors:
            raise Refused(400, validate.format_errors(errors))
        return self.written(self.cluster.register(job))

    async def job_route(self, request: Request, rest: list[str], query: dict[str, str]) -> Response:
        method = request.method
        # A dispatched child's ID holds a slash: the verb, if any, is the last part.
        verb = rest[-1] if len(rest) > 1 and rest[-1] in ("allocations", "dispatch", "evaluations",
                                                           "summary", "versions") else None
        job_id = "/".join(rest[:-1] if verb else rest)
        namespace = self.namespace(query, write=method != "GET")
        if verb == "dispatch" and method in ("PUT", "POST"):
            body = decode.check_body(await self.body(request), decode.DISPATCH_REQUEST, "JobDispatchRequest")
            answer = self.cluster.dispatch(namespace, job_id, body.get("Meta") or {}, body.get("Payload"),
                                           body.get("IdPrefixTemplate"))
            return self.written(answer)
        if verb == "allocations" and method == "GET":
            self.cluster.job(namespace, job_id)
            return await self.blocking(query, ("allocs",), lambda: [
                self.alloc_stub(a, {}) for a in self.store.allocs.values()
                if a["JobID"] == job_id and a["Namespace"] == namespace])
        if verb == "summary" and method == "GET":
            return await self.blocking(query, ("jobs", "allocs"),
                                       lambda: self.summary(self.cluster.job(namespace, job_id)))
        if verb is None and method == "GET":
            return await self.blocking(query, ("jobs", "allocs"),
                                       lambda: self.job_full(self.cluster.job(namespace, job_id)))
        if verb is None and method in ("PUT", "POST"):
            return await self.register(request, query, job_id)
        if verb is None and method == "DELETE":
            return self.written(self.cluster.deregister(namespace, job_id, query.get("purge") == "true"))
        return _text(405, "Invalid method")

    def job_full(self, job: dict[str, Any]) -> dict[str, Any]:
        return {**job, "Status": self.cluster.job_status(job)}

    def summary(self, job: dict[str, Any]) -> dict[str, Any]:
        groups = {g["Name"]: {"Queued": 0, "Complete": 0, "Failed": 0, "Running": 0, "Starting": 0, "Lost": 0,
                              "Unknown": 0} for g in job["TaskGroups"]}
        for alloc in self.store.allocs.values():
            if alloc["JobID"] == job["ID"] and alloc["Namespace"] == job["Namespace"] and alloc["TaskGroup"] in groups:
                key = {"pending": "Starting", "running": "Running", "complete": "Complete", "failed": "Failed",
                       "lost": "Lost"}.get(alloc["ClientStatus"], "Unknown")
                groups[alloc["TaskGroup"]][key] += 1
        children = {"Pending": 0, "Running": 0, "Dead": 0}
        for child in self.store.jobs.values():
            if child.get("ParentID") == job["ID"] and child["Namespace"] == job["Namespace"]:
                children[{"pending": "Pending", "running": "Running"}.get(self.cluster.job_status(child), "Dead")] += 1
        return {"JobID": job["ID"], "Namespace": job["Namespace"], "Summary": groups, "Children": children,
                "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"]}

    def job_stub(self, job: dict[str, Any]) -> dict[str, Any]:
        keys = ("ID", "ParentID", "Name", "Namespace", "Datacenters", "NodePool", "Multiregion", "Type", "Priority",
                "Stop", "StatusDescription", "Meta", "CreateIndex", "ModifyIndex", "JobModifyIndex",
                "SubmitTime", "Version")
        stub = {k: job.get(k) for k in keys}
        stub.update(Status=self.cluster.job_status(job), ParameterizedJob=job.get("ParameterizedJob") is not None,
                    Periodic=job.get("Periodic") is not None, JobSummary=self.summary(job))
        return stub

    @staticmethod
    def alloc_stub(alloc: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        """An AllocListStub: AllocatedResources only with resources=true, TaskStates unless
        task_states=false (as Nomad's list endpoints give them)."""
        stub = {k: v for k, v in alloc.items() if k not in STUB_DROP}
        if query.get("resources") != "true":
            stub["AllocatedResources"] = None
        if query.get("task_states") == "false":
            stub["TaskStates"] = None
        return stub

    def service_list(self, namespace: str) -> list[dict[str, Any]]:
        by_ns: dict[str, dict[str, set[str]]] = {}
        for s in self.store.services.values():
            if self.in_namespace(s, namespace):
                by_ns.setdefault(s["Namespace"], {}).setdefault(s["ServiceName"], set()).update(s["Tags"])
        return [{"Namespace": ns, "Services": [{"ServiceName": n, "Tags": sorted(t)} for n, t in sorted(names.items())]}
                for ns, names in sorted(by_ns.items())]

    # ---------------------------------------------------------------------------------- nodes

    def node_resources(self, node: Any) -> dict[str, Any]:
        return {"Cpu": {"CpuShares": node.cpu_mhz, "TotalCpuCores": node_cores(node)},
                "Memory": {"MemoryMB": node.memory_mb}, "Disk": {"DiskMB": 100_000},
                "Networks": [{"Mode": "host", "Device": "lo", "IP": node.address, "CIDR": f"{node.address}/32"}],
                "MinDynamicPort": self.cluster.port_range[0], "MaxDynamicPort": self.cluster.port_range[1]}

    @staticmethod
    def reserved() -> dict[str, Any]:
        return {"Cpu": {"CpuShares": 0}, "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0}, "Networks": {"ReservedHostPorts": ""}}

    def drivers(self) -> dict[str, Any]:
        return {name: {"Attributes": {}, "Detected": True, "Healthy": True, "HealthDescription": "Healthy",
                       "UpdateTime": "2026-01-01T00:00:00Z"} for name in ("exec", "raw_exec", "podman")}

    def node_stub(self, node: Any, resources: bool) -> dict[str, Any]:
        stub = {"Address": node.address, "ID": node.id, "Attributes": {"os.name": "linux"}, "Datacenter": node.datacenter,
                "Name": node.name, "NodeClass": "", "NodePool": "default", "Version": "1.10.0", "Drain": False,
                "SchedulingEligibility": "eligible", "Status": node.status, "StatusDescription": "",
                "Drivers": self.drivers(), "HostVolumes": self.host_volumes_of(node), "LastDrain": None,
                "CreateIndex": node.create_index, "ModifyIndex": node.modify_index}
        if resources:
            stub["NodeResources"] = self.node_resources(node)
            stub["ReservedResources"] = self.reserved()
        return stub

    def host_volumes_of(self, node: Any) -> dict[str, Any]:
        volumes = {name: {"Name": name, "Path": str(path), "ReadOnly": False, "ID": ""}
                   for name, path in node.host_volumes.items()}
        for v in self.store.volumes.values():
            if v["NodeID"] == node.id:
                volumes[v["Name"]] = {"Name": v["Name"], "Path": v["HostPath"], "ReadOnly": False, "ID": v["ID"]}
        return volumes

    def node_full(self, node: Any) -> dict[str, Any]:
        return {"ID": node.id, "Name": node.name, "Datacenter": node.datacenter, "HTTPAddr": f"{node.address}:4646",
                "TLSEnabled": False, "NodeClass": "", "NodePool": "default", "Drain": False,
                "SchedulingEligibility": "eligible", "Status": node.status, "StatusDescription": "",
                "Attributes": {"unique.network.ip-address": node.address, "unique.hostname": node.name,
                               "kernel.name": "linux", "os.name": "linux", "driver.exec": "1", "driver.raw_exec": "1",
                               "cpu.totalcompute": str(node.cpu_mhz),
                               "memory.totalbytes": str(node.memory_mb * 1024 * 1024)},
                "Meta": {}, "NodeResources": self.node_resources(node), "ReservedResources": self.reserved(),
                "Drivers": self.drivers(), "HostVolumes": self.host_volumes_of(node), "Links": {},
                "CreateIndex": node.create_index, "ModifyIndex": node.modify_index}

    # ---------------------------------------------------------------------------------- host volumes

    async def volume_route(self, request: Request, rest: list[str], query: dict[str, str]) -> Response:
        method = request.method
        if rest == ["register"] and method in ("PUT", "POST"):
            body = decode.check_body(await self.body(request), decode.VOLUME_REGISTER_REQUEST,
                                     "HostVolumeRegisterRequest")
            volume = body.get("Volume")
            if volume is None:
                raise Refused(400, "missing volume definition")
            namespace = volume.get("Namespace") or query.get("namespace") or "default"
            self.namespace({"namespace": namespace}, write=True)
            return self.written(self.cluster_register_volume(volume, namespace))
        if len(rest) == 1 and method == "GET":
            return await self.blocking(query, ("volumes",), lambda: self.found(self.store.volumes.get(rest[0]),
                                                                              "volume not found"))
        if len(rest) == 1 and method == "DELETE":
            volume = self.found(self.store.volumes.get(rest[0]), "volume not found")
            users = [a["ID"] for a in self.store.allocs.values()
                     if a["NodeID"] == volume["NodeID"] and a["ClientStatus"] not in TERMINAL
                     and any(v.get("Source") == volume["Name"] for g in a["Job"]["TaskGroups"]
                             if g["Name"] == a["TaskGroup"] for v in (g.get("Volumes") or {}).values())]
            if users:
                raise Refused(400, f"volume {volume['ID']} in use by allocations: {users}")
            del self.store.volumes[rest[0]]
            self.store.bump("volumes", "nodes")
            return self.written({})
        return _text(405, "Invalid method")

    def cluster_register_volume(self, volume: dict[str, Any], namespace: str) -> dict[str, Any]:
        errors = []
        if not volume.get("Name"):
            errors.append("missing name")
        if not volume.get("NodeID"):
            errors.append("missing node ID")
        elif volume["NodeID"] not in self.cluster.nodes:
            errors.append(f"node {volume['NodeID']} does not exist")
        if not volume.get("HostPath"):
            errors.append("missing host path")
        if errors:
            raise Refused(400, validate.format_errors(errors))
        existing = None
        if volume.get("ID"):
            existing = self.store.volumes.get(volume["ID"])
            if existing is None:
                raise Refused(400, f"cannot register volume with ID {volume['ID']}: no such volume")
        else:
            # The same name on the same node is the same volume: registered again, it is updated.
            existing = next((v for v in self.store.volumes.values() if v["Name"] == volume["Name"]
                             and v["NodeID"] == volume["NodeID"] and v["Namespace"] == namespace), None)
        index = self.store.bump("volumes", "nodes")
        stored = {"Namespace": namespace, "ID": existing["ID"] if existing else str(uuid.uuid4()),
                  "Name": volume["Name"], "PluginID": volume.get("PluginID") or "", "NodePool": "default",
                  "NodeID": volume["NodeID"], "Constraints": volume.get("Constraints"),
                  "RequestedCapacityMinBytes": volume.get("RequestedCapacityMinBytes") or 0,
                  "RequestedCapacityMaxBytes": volume.get("RequestedCapacityMaxBytes") or 0,
                  "CapacityBytes": volume.get("CapacityBytes") or 0,
                  "RequestedCapabilities": volume.get("RequestedCapabilities"),
                  "Parameters": volume.get("Parameters"), "HostPath": volume["HostPath"], "State": "ready",
                  "CreateIndex": existing["CreateIndex"] if existing else index,
                  "CreateTime": existing["CreateTime"] if existing else time.time_ns(),
                  "ModifyIndex": index, "ModifyTime": time.time_ns()}
        self.store.volumes[stored["ID"]] = stored
        self.cluster.retry_blocked("volume-register")
        return {"Volume": stored, "Warnings": ""}

    def volume_stub(self, volume: dict[str, Any]) -> dict[str, Any]:
        keys = ("ID", "Name", "Namespace", "PluginID", "NodePool", "NodeID", "CapacityBytes", "State",
                "CreateIndex", "CreateTime", "ModifyIndex", "ModifyTime")
        return {k: volume.get(k) for k in keys}

    # ---------------------------------------------------------------------------------- stats

    async def alloc_stats(self, alloc_id: str) -> Response:
        """Nomad's answers (nomad/client_alloc_endpoint.go, client/alloc_endpoint.go): an unknown
        allocation, or one on a node the servers have no connection to, is a 404 with Nomad's text; one the
        client still holds but no task of which runs is a 200 with nothing summed and Timestamp 0."""
        alloc = self.store.allocs.get(alloc_id)
        if alloc is None:
            raise Refused(404, f'Unknown allocation "{alloc_id}"')
        node = self.cluster.nodes[alloc["NodeID"]]
        if node.status == "down":
            raise Refused(404, "No path to node")
        answer = await self.usage.allocation(alloc, self.cluster.runners.get(alloc_id, []), node.cpu_mhz,
                                             node_cores(node))
        return Response(json.dumps(answer), media_type="application/json")

    # ---------------------------------------------------------------------------------- logs

    def logs(self, alloc_id: str, query: dict[str, str]) -> Response:
        """A task's stdout or stderr: the bytes asked for (`origin`/`offset`), and with `follow=true`
        every byte appended after them, streamed until the task is dead and all is sent (as Nomad's
        client does) or the caller hangs up. Plain bytes with `plain=true`, else Nomad's JSON frames."""
        alloc = self.store.allocs.get(alloc_id)
        if alloc is None:
            raise Refused(404, "Unknown allocation")
        task = query.get("task") or ""
        stream = query.get("type") or ""
        if task not in alloc["TaskStates"]:
            raise Refused(400, f'unknown task name "{task}"')
        if stream not in ("stdout", "stderr"):
            raise Refused(400, "must provide a valid log type (stdout or stderr)")
        origin = query.get("origin") or "start"
        if origin not in ("start", "end"):
            raise Refused(400, 'origin must be "start" or "end"')
        try:
            offset = int(query.get("offset") or 0)
        except ValueError:
            raise Refused(400, f"failed to parse offset: {query.get('offset')!r}") from None
        plain = query.get("plain") == "true"
        data = self.log_bytes(alloc_id, task, stream)
        position = max(0, len(data) - offset) if origin == "end" else min(offset, len(data))
        file = f"alloc/logs/{task}.{stream}.0"

        def frame(chunk: bytes, at: int) -> bytes:
            return chunk if plain else json.dumps({"Data": base64.b64encode(chunk).decode(), "File": file,
                                                   "Offset": at}).encode()

        if query.get("follow") != "true":
            return Response(frame(data[position:], len(data)), media_type="text/plain" if plain else "application/json")

        async def follow() -> AsyncIterator[bytes]:
            at = position
            while True:
                data = self.log_bytes(alloc_id, task, stream)
                if len(data) < at:  # rotated or truncated: it starts again
                    at = 0
                if len(data) > at:
                    yield frame(data[at:], len(data))
                    at = len(data)
                    continue
                state = alloc["TaskStates"].get(task) or {}
                if state.get("State") == "dead" or alloc["ClientStatus"] in TERMINAL:
                    return  # the task wrote all it ever will
                await asyncio.sleep(FOLLOW_POLL)

        return StreamingResponse(follow(), media_type="text/plain" if plain else "application/json")

    def log_bytes(self, alloc_id: str, task: str, stream: str) -> bytes:
        ctx = self.cluster.contexts.get((alloc_id, task))
        if ctx is None:
            return b""
        if ctx.task["Driver"] == "raw_exec":
            path = ctx.log_file(stream)
        elif stream == "stdout":
            # The exec and podman tasks' runtimes keep stdout and stderr in one log: it is their stdout
            # here (Nomad would keep two), so a reader of both streams sees each line once.
            path = exec_log(ctx)
        else:
            return b""
        try:
            return path.read_bytes()
        except OSError:
            return b""
