"""Nomad's validation of a registered job (the server's structs' Validate), after its defaults are in:
what it refuses, with its wording. A host volume no client has is not refused here: that is a
placement failure (the job is accepted, its allocation never placed)."""

from __future__ import annotations

import re
from typing import Any

JOB_TYPES = ("service", "batch", "system", "sysbatch")
PAYLOAD_MODES = ("optional", "required", "forbidden")
RESTART_MODES = ("delay", "fail")
MIN_RESTART_INTERVAL = 5_000_000_000  # 5 s
SERVICE_NAME = re.compile(r"^(?i:[a-z0-9]|[a-z0-9][a-z0-9\-]{0,61}[a-z0-9])$")
INTERPOLATION = re.compile(r"\$\{[^}]*\}")


def _duration(ns: int) -> str:
    """Go's time.Duration String() for whole seconds, minutes, hours (enough for messages)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    if rest:
        return f"{ns / 1e9:g}s"
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def job_errors(job: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    job_id = job.get("ID") or ""
    if not job_id:
        errors.append("Missing job ID")
    elif " " in job_id:
        errors.append("Job ID contains a space")
    elif "\0" in job_id:
        errors.append("Job ID contains a null character")
    if not job.get("Name"):
        errors.append("Missing job name")
    if not job.get("Namespace"):
        errors.append("Job must be in a namespace")
    job_type = job.get("Type")
    if not job_type:
        errors.append("Missing job type")
    elif job_type not in JOB_TYPES:
        errors.append(f'Invalid job type: "{job_type}"')
    if not 1 <= int(job.get("Priority") or 0) <= 100:
        errors.append("Job priority must be between [1, 100]")
    if not job.get("Datacenters"):
        errors.append("Missing job datacenters")
    groups = job.get("TaskGroups") or []
    if not groups:
        errors.append("Missing job task groups")
    seen: dict[str, int] = {}
    for index, group in enumerate(groups, 1):
        name = group.get("Name") or ""
        if not name:
            errors.append(f"Job task group {index} missing name")
        elif name in seen:
            errors.append(f"Job task group {index} redefines '{name}' from group {seen[name]}")
        else:
            seen[name] = index
        errors += [f"Task group {name} validation failed: {e}" for e in _group_errors(group, job_type)]
    parameterized = job.get("ParameterizedJob")
    if parameterized is not None:
        if job_type not in ("batch", "sysbatch"):
            errors.append('Parameterized job can only be used with "batch" or "sysbatch" scheduler')
        if parameterized.get("Payload") not in PAYLOAD_MODES:
            errors.append(f"Unknown payload requirement: \"{parameterized.get('Payload')}\"")
        both = sorted(set(parameterized.get("MetaRequired") or []) & set(parameterized.get("MetaOptional") or []))
        if both:
            errors.append(f"Required and optional meta keys should be disjoint. Following keys exist in both: {both}")
    return errors


def _restart_errors(policy: dict[str, Any]) -> list[str]:
    errors = []
    mode, attempts = policy.get("Mode"), int(policy.get("Attempts") or 0)
    interval, delay = int(policy.get("Interval") or 0), int(policy.get("Delay") or 0)
    if mode not in RESTART_MODES:
        errors.append(f'Unsupported restart mode: "{mode}"')
    if attempts == 0 and mode != "fail":
        errors.append(f'Restart policy "{mode}" with {attempts} attempts is ambiguous')
    if interval < MIN_RESTART_INTERVAL:
        errors.append(f"Interval can not be less than {_duration(MIN_RESTART_INTERVAL)} (got {_duration(interval)})")
    if attempts * delay > interval:
        errors.append(f"Nomad can't restart the TaskGroup {attempts} times in an interval of "
                      f"{_duration(interval)} with a delay of {_duration(delay)}")
    return errors


def _service_errors(service: dict[str, Any], ports: set[str]) -> list[str]:
    errors = []
    name = service.get("Name") or ""
    if not SERVICE_NAME.match(INTERPOLATION.sub("a", name)):
        errors.append(f'Service name must be valid per RFC 1123 and can contain only alphanumeric characters '
                      f'or dashes: "{name}"')
    if service.get("Provider") not in ("consul", "nomad"):
        errors.append(f"Service provider must be one of 'consul' or 'nomad', got \"{service.get('Provider')}\"")
    label = service.get("PortLabel") or ""
    if label and not label.isdigit() and label not in ports:
        errors.append(f"Port label {label} referenced by services {name} does not exist")
    for check in service.get("Checks") or []:
        check_label = check.get("PortLabel") or ""
        if check_label and not check_label.isdigit() and check_label not in ports:
            errors.append(f"check {check.get('Name') or ''} invalid: port label {check_label} does not exist")
        if check.get("Type") in ("http", "tcp") and int(check.get("Interval") or 0) <= 0:
            errors.append(f"check {check.get('Name') or ''} invalid: interval must be greater than 0")
    return errors


def _group_errors(group: dict[str, Any], job_type: str | None) -> list[str]:
    errors: list[str] = []
    if int(group.get("Count") or 0) < 0:
        errors.append("Task group count can't be negative")
    errors += _restart_errors(group.get("RestartPolicy") or {})
    ports = {p.get("Label") for n in group.get("Networks") or [] for p in
             [*(n.get("DynamicPorts") or []), *(n.get("ReservedPorts") or [])]}
    services = [*(group.get("Services") or []), *(s for t in group.get("Tasks") or [] for s in t.get("Services") or [])]
    providers = {s.get("Provider") for s in services}
    if len(providers) > 1:
        errors.append("Multiple service providers used: task group services must use the same provider")
    for service in group.get("Services") or []:
        errors += _service_errors(service, ports)
    volumes = group.get("Volumes") or {}
    for name, volume in volumes.items():
        if volume.get("Type") not in ("host", "csi"):
            errors.append(f"Volume {name} has unrecognised type {volume.get('Type')}")
        if not volume.get("Source"):
            errors.append(f"Volume {name} has an empty source")
    tasks = group.get("Tasks") or []
    if not tasks:
        errors.append("Missing tasks for task group")
    names: set[str] = set()
    for task in tasks:
        name = task.get("Name") or ""
        if not name:
            errors.append("Task missing name")
        elif name in names:
            errors.append(f"Task {name} defined more than once")
        names.add(name)
        task_errors = []
        if not task.get("Driver"):
            task_errors.append("Missing task driver")
        if int(task.get("KillTimeout") or 0) < 0:
            task_errors.append("KillTimeout must be a positive value")
        resources = task.get("Resources") or {}
        if int(resources.get("CPU") or 0) < 1 and not resources.get("Cores"):
            task_errors.append("minimum CPU value is 1")
        if int(resources.get("MemoryMB") or 0) < 10:
            task_errors.append("minimum MemoryMB value is 10")
        task_errors += _restart_errors(task.get("RestartPolicy") or {})
        for index, mount in enumerate(task.get("VolumeMounts") or []):
            if mount.get("Volume") not in volumes:
                task_errors.append(f"Volume Mount ({index}) references undefined volume {mount.get('Volume')}")
            if not (mount.get("Destination") or ""):
                task_errors.append(f"Volume Mount ({index}) has an empty destination")
        for template in task.get("Templates") or []:
            if template.get("Envvars") and template.get("ChangeMode") == "signal":
                task_errors.append("cannot use signals with env var templates")
            if template.get("ChangeMode") not in ("noop", "restart", "signal", "script"):
                task_errors.append(f"Unsupported change mode: \"{template.get('ChangeMode')}\"")
            if not template.get("DestPath"):
                task_errors.append("Must specify a destination for the template")
        for service in task.get("Services") or []:
            task_errors += _service_errors(service, ports)
        errors += [f"Task {name} validation failed: {e}" for e in task_errors]
    return errors


def format_errors(errors: list[str]) -> str:
    """Nomad's multierror text."""
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} {noun} occurred:\n" + "".join(f"\t* {e}\n" for e in errors) + "\n"
