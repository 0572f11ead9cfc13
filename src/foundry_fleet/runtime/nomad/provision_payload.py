"""What the fleet hands the `fvtt-provision` job for one instance: its dispatch payload and meta.

Pure: no I/O. The fleet builds a `ProvisionPayload` and dispatches `to_bytes()` with `meta()`; the node
reads the file Nomad wrote (`${NOMAD_TASK_DIR}/payload.json`) back with `from_bytes()`, which refuses
anything it does not understand rather than guess.

No secrets travel here: Nomad keeps a dispatch payload readable to anyone who may read the job. An
instance's options.json, license.json and admin.txt are written into its data directory on the node's
own fleet root by the fleet's provisioning at create (services/provisioning.py), as for every runtime;
the node command only writes options.json again when it is missing, and that file holds no secret.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.homes import HOME_NAME, MAIN_HOME
from foundry_fleet.domain.names import validate_instance_name
from foundry_fleet.domain.release import format_version, parse_version

# Nomad refuses a dispatch payload above 16 KiB (DispatchPayloadSizeLimit in its server).
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_NODE_ID = 256
# An instance never runs as root or as a host account: the fleet's uid_range starts at 1000 at least.
MIN_UID = 1000
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no change" to chown
_REQUIRED = ("instance", "release", "node", "uid")
_OPTIONAL = ("port", "home")

_HINT = "dispatch fvtt-provision again from the fleet (`foundry-fleet` builds the payload)"


@dataclass(frozen=True)
class ProvisionPayload:
    instance: str  # the instance's name (a DNS label)
    release: str  # the Foundry version its install must hold, e.g. "13.345"
    node: str  # Nomad's node ID of the node that holds its data: only that node acts
    uid: int  # the uid (and gid) its data belongs to and its task runs as
    # The port the fleet reserved for it: only needed to write options.json again when it is missing
    # (the task gets its real port from Nomad on the command line).
    port: int | None = None
    # The home ([[nomad.homes]]) whose storage holds its data: where the node lays it out.
    home: str = MAIN_HOME

    def __post_init__(self) -> None:
        _check_text("instance", self.instance)
        validate_instance_name(self.instance)
        _check_text("release", self.release)
        generation, build = parse_version(self.release)
        if self.release != format_version(generation, build):
            raise InvalidInput(f"release {self.release!r} is not written as the fleet writes versions",
                               f"use {format_version(generation, build)!r}")
        _check_text("node", self.node)
        if not self.node or len(self.node) > MAX_NODE_ID or not self.node.isprintable() or any(
                c.isspace() for c in self.node):
            raise InvalidInput(f"node {self.node[:80]!r} is not a Nomad node ID",
                               "give the node's ID as `nomad node status` shows it (${node.unique.id})")
        _check_whole("uid", self.uid)
        if not MIN_UID <= self.uid <= MAX_UID:
            raise InvalidInput(f"uid {self.uid} is outside [{MIN_UID}, {MAX_UID}]",
                               "instances run as a uid of the fleet's [instances] uid_range, never root")
        if self.port is not None:
            _check_whole("port", self.port)
            if not 1 <= self.port <= 65535:
                raise InvalidInput(f"port {self.port} is not a TCP port", "give a port in 1-65535")
        _check_text("home", self.home)
        if not HOME_NAME.match(self.home):
            raise InvalidInput(f"home {self.home[:80]!r} is not a home's name",
                               "name a [[nomad.homes]] of fleet.toml, or \"fleet\" for the fleet's own")

    def meta(self) -> dict[str, str]:
        """The dispatch meta (MetaRequired of fvtt-provision): shown by Nomad for every dispatched child."""
        return {"instance": self.instance, "release": self.release, "node": self.node}

    def to_bytes(self) -> bytes:
        """Compact JSON; refused when Nomad would refuse it (above 16 KiB)."""
        # Without a home of its own the payload is what it was before homes, so older nodes still take it.
        fields = {k: v for k, v in asdict(self).items() if v is not None and not (k == "home" and v == MAIN_HOME)}
        data = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
        if len(data) > MAX_PAYLOAD_BYTES:
            raise InvalidInput(f"the provision payload for {self.instance} is {len(data)} bytes; "
                               f"Nomad takes at most {MAX_PAYLOAD_BYTES}", "shorten what it carries")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> ProvisionPayload:
        """Read a payload back, refusing (InvalidInput, saying what) anything but exactly what `to_bytes` writes."""
        if len(data) > MAX_PAYLOAD_BYTES:
            raise InvalidInput(f"the payload is {len(data)} bytes; a provision payload is at most "
                               f"{MAX_PAYLOAD_BYTES}", _HINT)
        try:
            parsed: Any = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput("the payload is not UTF-8 text", _HINT) from None
        except json.JSONDecodeError as e:
            raise InvalidInput(f"the payload is not JSON ({e.msg} at line {e.lineno} column {e.colno})",
                               _HINT) from None
        if not isinstance(parsed, dict):
            raise InvalidInput(f"the payload is a JSON {type(parsed).__name__}, not an object", _HINT)
        unknown = sorted(set(parsed) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise InvalidInput(f"the payload has unknown key{'s' if len(unknown) > 1 else ''} {shown} "
                               f"(known: {', '.join(_REQUIRED + _OPTIONAL)})",
                               "this node's foundry-fleet may be older than the fleet's: upgrade it, or " + _HINT)
        missing = [k for k in _REQUIRED if k not in parsed]
        if missing:
            raise InvalidInput(f"the payload lacks {', '.join(missing)}", _HINT)
        try:
            return cls(**parsed)
        except InvalidInput as e:
            raise InvalidInput(f"the payload's {e.message}", e.hint or _HINT) from None


def _check_text(key: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"{key} is {_shown(value)}, not text", _HINT)


def _check_whole(key: str, value: object) -> None:
    # bool is an int subclass; `true` is not a uid.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} is {_shown(value)}, not a whole number", _HINT)


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
