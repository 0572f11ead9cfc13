"""A Nomad job (the API's JSON: Go field names, nanosecond durations) as a readable HCL2 jobspec.

For people: `foundry-fleet nomad render` and the files in deploy/nomad/. It knows the fields the
fleet's jobs use (jobs.py) and refuses any other, so what it prints is never silently partial.
Attributes of one block are aligned the way `nomad fmt` aligns them. Nomad's runtime variables
(`${node.unique.id}`, `${NOMAD_PORT_http}`, `${attr...}`, `${meta...}`) stay as they are: Nomad
interpolates them when it places the job; any other `${` or `%{` is escaped so it stays literal.
"""

from __future__ import annotations

import json
import re
from typing import Any

INDENT = "  "
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_RUNTIME_VARIABLE = re.compile(r"\$\{(?:node|attr|meta|env|NOMAD_)[^}]*\}")
_NANOSECONDS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}

# How one Go field is written: (hcl name, kind). Kinds: "attr" (a value), "duration" (nanoseconds as
# "30s"), "block:<Struct>" (one block), "blocks:<Struct>" (a block per list item), "labeled:<Struct>"
# (a block per item, labelled by its Name or the map's key), "map" (a block of key = value), "raw" (the
# driver's own config: its keys as they are).
_STRUCTS: dict[str, dict[str, tuple[str, str]]] = {
    "Job": {
        "Name": ("name", "attr"), "Type": ("type", "attr"), "Region": ("region", "attr"),
        "Namespace": ("namespace", "attr"), "Priority": ("priority", "attr"),
        "Datacenters": ("datacenters", "attr"), "NodePool": ("node_pool", "attr"), "Meta": ("meta", "map"),
        "Constraints": ("constraint", "blocks:Constraint"),
        "ParameterizedJob": ("parameterized", "block:Parameterized"),
        "TaskGroups": ("group", "labeled:TaskGroup"),
    },
    "Constraint": {"LTarget": ("attribute", "attr"), "Operand": ("operator", "attr"), "RTarget": ("value", "attr")},
    "Parameterized": {"Payload": ("payload", "attr"), "MetaRequired": ("meta_required", "attr"),
                      "MetaOptional": ("meta_optional", "attr")},
    "TaskGroup": {
        "Count": ("count", "attr"), "Constraints": ("constraint", "blocks:Constraint"),
        "Networks": ("network", "blocks:Network"), "Services": ("service", "blocks:Service"),
        "Volumes": ("volume", "labeled:Volume"), "RestartPolicy": ("restart", "block:Restart"),
        "ReschedulePolicy": ("reschedule", "block:Reschedule"), "Meta": ("meta", "map"),
        "Tasks": ("task", "labeled:Task"),
    },
    "Network": {"Mode": ("mode", "attr"), "DynamicPorts": ("port", "labeled:Port"),
                "ReservedPorts": ("port", "labeled:Port")},
    "Port": {"Value": ("static", "attr"), "To": ("to", "attr"), "HostNetwork": ("host_network", "attr")},
    "Service": {
        "Name": ("name", "attr"), "Provider": ("provider", "attr"), "PortLabel": ("port", "attr"),
        "Tags": ("tags", "attr"), "Checks": ("check", "blocks:Check"),
    },
    "Check": {
        "Name": ("name", "attr"), "Type": ("type", "attr"), "Path": ("path", "attr"), "Method": ("method", "attr"),
        "PortLabel": ("port", "attr"), "Interval": ("interval", "duration"), "Timeout": ("timeout", "duration"),
    },
    "Volume": {"Type": ("type", "attr"), "Source": ("source", "attr"), "ReadOnly": ("read_only", "attr")},
    "Restart": {"Attempts": ("attempts", "attr"), "Interval": ("interval", "duration"),
                "Delay": ("delay", "duration"), "Mode": ("mode", "attr")},
    "Reschedule": {"Attempts": ("attempts", "attr"), "Interval": ("interval", "duration"),
                   "Delay": ("delay", "duration"), "DelayFunction": ("delay_function", "attr"),
                   "MaxDelay": ("max_delay", "duration"), "Unlimited": ("unlimited", "attr")},
    "Task": {
        "Driver": ("driver", "attr"), "User": ("user", "attr"), "Config": ("config", "raw"),
        "Env": ("env", "map"), "Meta": ("meta", "map"), "VolumeMounts": ("volume_mount", "blocks:VolumeMount"),
        "Resources": ("resources", "block:Resources"), "KillTimeout": ("kill_timeout", "duration"),
        "LogConfig": ("logs", "block:Logs"), "DispatchPayload": ("dispatch_payload", "block:DispatchPayload"),
    },
    "VolumeMount": {"Volume": ("volume", "attr"), "Destination": ("destination", "attr"),
                    "ReadOnly": ("read_only", "attr")},
    "Resources": {"CPU": ("cpu", "attr"), "MemoryMB": ("memory", "attr"), "MemoryMaxMB": ("memory_max", "attr")},
    "Logs": {"MaxFiles": ("max_files", "attr"), "MaxFileSizeMB": ("max_file_size", "attr")},
    "DispatchPayload": {"File": ("file", "attr")},
}
# Labels: the job by its ID, a group or task by Name, a port by Label; volumes by their map key.
_LABELS = {"Job": "ID", "TaskGroup": "Name", "Task": "Name", "Port": "Label"}


def duration(nanoseconds: int) -> str:
    """Nanoseconds as a Go duration, largest units first: 600e9 -> "10m", 90e9 -> "1m30s"."""
    if isinstance(nanoseconds, bool) or not isinstance(nanoseconds, int) or nanoseconds < 0:
        raise ValueError(f"a duration is a non-negative integer of nanoseconds, not {nanoseconds!r}")
    if nanoseconds == 0:
        return "0s"
    parts = []
    rest = nanoseconds
    for unit, size in _NANOSECONDS.items():
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def string(value: str) -> str:
    """An HCL string literal; Nomad's runtime variables kept, any other template sequence escaped."""
    out = []
    pos = 0
    for m in _RUNTIME_VARIABLE.finditer(value):
        out.append(_escape(value[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape(value[pos:]))
    return '"' + "".join(out) + '"'


def _escape(text: str) -> str:
    text = json.dumps(text, ensure_ascii=False)[1:-1]  # backslash, quote and control characters
    return text.replace("${", "$${").replace("%{", "%%{")


def value(v: Any, depth: int = 0) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, list):
        items = [value(x, depth + 1) for x in v]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 60 and "\n" not in one_line:
            return one_line
        pad = INDENT * depth
        return "[\n" + "".join(f"{pad}{INDENT}{item},\n" for item in items) + pad + "]"
    if isinstance(v, dict):
        pad = INDENT * depth
        lines = [f"{pad}{INDENT}{_key(k)} = {value(x, depth + 1)}" for k, x in v.items()]
        return "{\n" + "\n".join(lines) + "\n" + pad + "}" if lines else "{}"
    raise ValueError(f"{v!r} has no HCL form")


def _key(name: str) -> str:
    return name if _IDENTIFIER.match(name) else string(name)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._attrs: list[tuple[int, str, str]] = []  # consecutive attributes, aligned on flush

    def attr(self, depth: int, name: str, rendered: str) -> None:
        self._attrs.append((depth, name, rendered))

    def line(self, depth: int, text: str) -> None:
        self._flush()
        self.lines.append(INDENT * depth + text)

    def _flush(self) -> None:
        # Like `nomad fmt`: a run of one-line attributes is aligned; a multi-line value ends the run.
        run: list[tuple[int, str, str]] = []
        for attr in self._attrs:
            if "\n" in attr[2]:
                self._aligned(run)
                run = []
                self.lines.append(f"{INDENT * attr[0]}{attr[1]} = {attr[2]}")
            else:
                run.append(attr)
        self._aligned(run)
        self._attrs = []

    def _aligned(self, run: list[tuple[int, str, str]]) -> None:
        width = max((len(name) for _, name, _ in run), default=0)
        for depth, name, rendered in run:
            self.lines.append(f"{INDENT * depth}{name.ljust(width)} = {rendered}")

    def text(self) -> str:
        self._flush()
        return "\n".join(self.lines) + "\n"


def _block(w: _Writer, depth: int, struct: str, data: dict[str, Any], header: str) -> None:
    fields = _STRUCTS[struct]
    label_key = _LABELS.get(struct)
    unknown = [k for k in data if k not in fields and k != label_key]
    if unknown:
        raise ValueError(f"no HCL form for {struct}.{unknown[0]} (hcl.py knows the fields the fleet's jobs use)")
    w.line(depth, header + " {")
    inner = depth + 1
    for go_name, (name, kind) in fields.items():
        if go_name not in data or data[go_name] is None:
            continue
        item = data[go_name]
        if go_name == "Name" and struct == "Job" and item == data.get("ID"):
            continue  # the label already says it
        _field(w, inner, name, kind, item)
    w.line(depth, "}")
    # `port "http" {}` reads better on one line
    if w.lines[-2].endswith(" {") and w.lines[-2].strip().startswith("port "):
        w.lines[-2:] = [w.lines[-2] + "}"]


def _field(w: _Writer, depth: int, name: str, kind: str, item: Any) -> None:
    if kind == "attr":
        w.attr(depth, name, value(item, depth))
    elif kind == "duration":
        w.attr(depth, name, string(duration(item)))
    elif kind == "map":
        _map_block(w, depth, name, item)
    elif kind == "raw":
        _raw_block(w, depth, name, item)
    else:
        how, struct = kind.split(":")
        if how == "block":
            _block(w, depth, struct, item, name)
        elif how == "blocks":
            for entry in item:
                _block(w, depth, struct, entry, name)
        else:  # labeled
            entries: list[tuple[str, dict[str, Any]]]
            if isinstance(item, dict):  # a map (volumes): the key is the label, its Name repeats it
                entries = [(key, {k: v for k, v in entry.items() if k != "Name"}) for key, entry in item.items()]
            else:
                entries = [(entry[_LABELS[struct]], entry) for entry in item]
            for label, entry in entries:
                _block(w, depth, struct, entry, f"{name} {string(label)}")


def _map_block(w: _Writer, depth: int, name: str, item: dict[str, Any]) -> None:
    if not item:
        return
    w.line(depth, name + " {")
    for key, v in item.items():
        w.attr(depth + 1, _key(key), value(v, depth + 1))
    w.line(depth, "}")


def _raw_block(w: _Writer, depth: int, name: str, item: dict[str, Any]) -> None:
    w.line(depth, name + " {")
    for key, v in item.items():
        if isinstance(v, dict):  # a driver's nested block, e.g. podman's logging {}
            _raw_block(w, depth + 1, key, v)
        else:
            w.attr(depth + 1, _key(key), value(v, depth + 1))
    w.line(depth, "}")


def render_job(job: dict[str, Any], header: str | None = None) -> str:
    """The job as an HCL2 jobspec; `header` (comment lines, without `#`) goes on top."""
    w = _Writer()
    for line in (header or "").splitlines():
        w.line(0, f"# {line}".rstrip())
    if header:
        w.line(0, "")
    _block(w, 0, "Job", job, f"job {string(job['ID'])}")
    return w.text()

