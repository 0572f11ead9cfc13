"""Strict decoding of request bodies, as Nomad's JSON decoder does it: a key no field names is refused
(at any depth), and a value of the wrong JSON type is refused with the Go field path and type."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from tests.support.nomad_standin.fields import FIELDS, Kind

GO_TYPES = {"str": "string", "int": "int", "bool": "bool", "float": "float64", "duration": "time.Duration",
            "base64": "[]uint8", "object": "map[string]interface {}"}


class DecodeError(ValueError):
    """Answered as HTTP 400 with this text."""


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}" if isinstance(value, float) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _go_type(kind: Kind) -> str:
    if isinstance(kind, tuple):
        container, inner = kind
        return f"[]{_go_type(inner)}" if container == "list" else f"map[string]{_go_type(inner)}"
    return GO_TYPES.get(kind, f"api.{kind}")


def check(value: Any, kind: Kind, where: str) -> None:
    """Raise DecodeError unless `value` decodes into `kind`; `where` is the Go field path so far."""
    if value is None or kind == "any":
        return  # null decodes into anything (a nil pointer, an empty slice or map)
    wrong = DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct field {where} "
                        f"of type {_go_type(kind)}")
    if isinstance(kind, tuple):
        container, inner = kind
        if container == "list":
            if not isinstance(value, list):
                raise wrong
            for item in value:
                check(item, inner, where)
        else:
            if not isinstance(value, dict):
                raise wrong
            for item in value.values():
                check(item, inner, where)
        return
    if kind == "str":
        ok = isinstance(value, str)
    elif kind in ("int", "duration"):
        # Durations are integer nanoseconds: "30s" is refused as Go's decoder refuses it.
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "object":
        ok = isinstance(value, dict)
    elif kind == "base64":
        ok = isinstance(value, str)
        if ok:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise DecodeError(f"illegal base64 data in Go struct field {where}") from None
    else:
        ok = isinstance(value, dict)
        if ok:
            check_struct(value, kind, where)
    if not ok:
        raise wrong


def check_struct(value: dict[str, Any], struct: str, where: str | None = None) -> None:
    fields = FIELDS[struct]
    for key, item in value.items():
        if key not in fields:
            raise DecodeError(f'json: unknown field "{key}"')
        check(item, fields[key], f"{where or struct}.{key}")


def check_body(body: Any, allowed: dict[str, Kind], what: str) -> dict[str, Any]:
    """A request body: an object whose keys are `allowed` (the request struct's fields)."""
    if not isinstance(body, dict):
        raise DecodeError(f"json: cannot unmarshal {_json_type(body)} into Go value of type structs.{what}")
    for key, item in body.items():
        if key not in allowed:
            raise DecodeError(f'json: unknown field "{key}"')
        check(item, allowed[key], f"{what}.{key}")
    return body


# The request wrappers' own fields (a write request also carries Region, Namespace, SecretID).
_WRITE = {"Region": "str", "Namespace": "str", "SecretID": "str", "IdempotencyToken": "str"}
REGISTER_REQUEST: dict[str, Kind] = {
    "Job": "Job", "EnforceIndex": "bool", "JobModifyIndex": "int", "PolicyOverride": "bool",
    "PreserveCounts": "bool", "EvalPriority": "int", "Submission": "any", **_WRITE,
}
DISPATCH_REQUEST: dict[str, Kind] = {
    "JobID": "str", "Payload": "base64", "Meta": ("map", "str"), "IdPrefixTemplate": "str", **_WRITE,
}
VOLUME_REGISTER_REQUEST: dict[str, Kind] = {"Volume": "HostVolume", "PolicyOverride": "bool", **_WRITE}
