"""The defaults Nomad fills into a registered job (its Canonicalize step), so a job read back looks as
it would from a real server: Region global, Priority 50, Type service, Count 1, restart and reschedule
policies per job type, task resources, kill timeout, log config, template and service defaults."""

from __future__ import annotations

import copy
from typing import Any

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def restart_default(job_type: str) -> dict[str, Any]:
    if job_type in ("batch", "sysbatch"):
        return {"Attempts": 3, "Interval": 24 * HOUR, "Delay": 15 * SECOND, "Mode": "fail", "RenderTemplates": False}
    return {"Attempts": 2, "Interval": 30 * MINUTE, "Delay": 15 * SECOND, "Mode": "fail", "RenderTemplates": False}


def reschedule_default(job_type: str) -> dict[str, Any] | None:
    if job_type == "service":
        return {"Attempts": 0, "Interval": 0, "Delay": 30 * SECOND, "DelayFunction": "exponential",
                "MaxDelay": HOUR, "Unlimited": True}
    if job_type == "batch":
        return {"Attempts": 1, "Interval": 24 * HOUR, "Delay": 5 * SECOND, "DelayFunction": "constant",
                "MaxDelay": 0, "Unlimited": False}
    return {"Attempts": 0, "Interval": 0, "Delay": 0, "DelayFunction": "", "MaxDelay": 0, "Unlimited": False}


def _fill(target: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Fields the job left out (or null) take the default; what it set stays."""
    for key, value in defaults.items():
        if target.get(key) is None:
            target[key] = copy.deepcopy(value)
    return target


def canonicalize(job: dict[str, Any], namespace: str, region: str) -> dict[str, Any]:
    job = copy.deepcopy(job)
    _fill(job, {"Region": region, "Namespace": namespace, "Type": "service", "Priority": 50,
                "AllAtOnce": False, "NodePool": "default", "Stop": False, "Dispatched": False,
                "ParentID": "", "Datacenters": ["*"], "Meta": None, "Constraints": None})
    if job.get("Name") is None:
        job["Name"] = job.get("ID")
    if not job["Datacenters"]:
        job["Datacenters"] = ["*"]
    job_type = job["Type"]
    if job.get("ParameterizedJob") is not None:
        _fill(job["ParameterizedJob"], {"Payload": "optional", "MetaRequired": None, "MetaOptional": None})
        if job["ParameterizedJob"]["Payload"] == "":
            job["ParameterizedJob"]["Payload"] = "optional"
    for group in job.get("TaskGroups") or []:
        _group(group, job_type)
    return job


def _group(group: dict[str, Any], job_type: str) -> None:
    _fill(group, {"Name": "", "Count": 1})
    group["RestartPolicy"] = _fill(group.get("RestartPolicy") or {}, restart_default(job_type))
    reschedule = reschedule_default(job_type)
    if reschedule is not None:
        group["ReschedulePolicy"] = _fill(group.get("ReschedulePolicy") or {}, reschedule)
    group["EphemeralDisk"] = _fill(group.get("EphemeralDisk") or {}, {"Sticky": False, "Migrate": False, "SizeMB": 300})
    for network in group.get("Networks") or []:
        if not network.get("Mode"):
            network["Mode"] = "host"
        for port in network.get("DynamicPorts") or []:
            _fill(port, {"Value": 0, "To": 0, "HostNetwork": "default"})
    for volume in (group.get("Volumes") or {}).values():
        _fill(volume, {"ReadOnly": False, "Sticky": False, "PerAlloc": False})
    for service in group.get("Services") or []:
        _service(service)
    for task in group.get("Tasks") or []:
        _task(task, group)


def _service(service: dict[str, Any]) -> None:
    # Nomad's default provider is Consul: a service meant for Nomad's own catalogue says "nomad".
    if not service.get("Provider"):
        service["Provider"] = "consul"
    if not service.get("AddressMode"):
        service["AddressMode"] = "auto"
    if not service.get("OnUpdate"):
        service["OnUpdate"] = "require_healthy"
    for check in service.get("Checks") or []:
        if not check.get("OnUpdate"):
            check["OnUpdate"] = service["OnUpdate"]


def _task(task: dict[str, Any], group: dict[str, Any]) -> None:
    _fill(task, {"KillTimeout": 5 * SECOND, "Leader": False, "ShutdownDelay": 0, "KillSignal": "", "User": ""})
    # A task's restart policy is its group's, with what the task sets itself on top.
    task["RestartPolicy"] = _fill(task.get("RestartPolicy") or {}, group["RestartPolicy"])
    task["Resources"] = _fill(task.get("Resources") or {}, {"CPU": 100, "Cores": 0, "MemoryMB": 300,
                                                              "MemoryMaxMB": 0})
    task["LogConfig"] = _fill(task.get("LogConfig") or {}, {"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False})
    for mount in task.get("VolumeMounts") or []:
        _fill(mount, {"ReadOnly": False, "PropagationMode": "private", "SELinuxLabel": ""})
    for template in task.get("Templates") or []:
        _fill(template, {"SourcePath": "", "DestPath": "", "EmbeddedTmpl": "", "ChangeMode": "restart",
                         "Once": False, "Splay": 5 * SECOND, "Perms": "0644", "LeftDelim": "{{",
                         "RightDelim": "}}", "Envvars": False, "ErrMissingKey": False, "VaultGrace": 0})
        if template.get("ChangeSignal") is None:
            template["ChangeSignal"] = "SIGHUP" if template["ChangeMode"] == "signal" else ""
        else:
            template["ChangeSignal"] = template["ChangeSignal"].upper()
    for service in task.get("Services") or []:
        _service(service)
