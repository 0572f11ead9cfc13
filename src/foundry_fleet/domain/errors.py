"""Errors that reach a person: what was wrong, and what to do next."""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error the fleet reports to a person.

    `hint` says what to do next; adapters print it under the message.
    """

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, str | None]:
        return {"error": self.kind, "message": self.message, "hint": self.hint}


class InvalidInput(FleetError):
    kind = "invalid"
    exit_code = 2


class NotFound(FleetError):
    kind = "not_found"
    exit_code = 3


class Conflict(FleetError):
    kind = "conflict"
    exit_code = 4


class Unsupported(FleetError):
    kind = "unsupported"
    exit_code = 5


class DaemonNotRunning(FleetError):
    kind = "daemon_not_running"
    exit_code = 6


class ExternalFailure(FleetError):
    """Something outside the fleet (network, a binary, the kernel) failed; also an instance's server that
    did not start (the CLI's create, start and restart end with this exit code)."""

    kind = "external"
    exit_code = 7


class Forbidden(FleetError):
    """The person asking may not do this (not the instance's owner, not an admin)."""

    kind = "forbidden"
    exit_code = 8


class RateLimited(FleetError):
    """Too many attempts or requests; `retry_after` seconds until the next one is accepted."""

    kind = "rate_limited"
    exit_code = 9

    def __init__(self, message: str, hint: str | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


ERROR_KINDS: dict[str, type[FleetError]] = {
    cls.kind: cls
    for cls in (FleetError, InvalidInput, NotFound, Conflict, Unsupported, DaemonNotRunning, ExternalFailure,
                Forbidden, RateLimited)
}

# The HTTP status each kind is answered with, by the control API and the panel alike.
HTTP_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409, "unsupported": 422, "external": 502,
               "daemon_not_running": 503, "forbidden": 403, "rate_limited": 429}


def http_status(error: FleetError) -> int:
    return HTTP_STATUS.get(error.kind, 500)
