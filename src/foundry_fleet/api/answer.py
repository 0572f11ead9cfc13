"""A control API response as the caller sees it: its JSON, or the FleetError it carries, raised again as
the kind it was raised as in the daemon (NotFound, Conflict ...), with its hint."""

from __future__ import annotations

import json
from typing import Any, Protocol

from foundry_fleet.domain.errors import ERROR_KINDS, FleetError


class Response(Protocol):
    """What both clients' responses have (httpx's, and the CLI's own over the unix socket)."""

    status_code: int

    @property
    def text(self) -> str: ...


def answer(r: Response) -> Any:
    if r.status_code >= 400:
        try:
            body = json.loads(r.text)
        except ValueError:
            raise FleetError(f"control API answered {r.status_code}: {r.text[:200]}") from None
        cls = ERROR_KINDS.get(body.get("error", ""), FleetError)
        raise cls(body.get("message", r.text), body.get("hint"))
    return json.loads(r.text)
