"""A request, left for the running daemon, that its next exit stop the instances even where it was
started with --leave-running: what `service uninstall` asks before it stops the unit, so that nothing
of the fleet keeps running once its service is gone (a plain restart still leaves them running)."""

from __future__ import annotations

from pathlib import Path

from foundry_fleet.config_file import FleetPaths
from foundry_fleet.files.atomic import write_atomic


def _request(paths: FleetPaths) -> Path:
    return paths.run / "stop-instances-on-exit"


def request_stop_instances(paths: FleetPaths) -> None:
    write_atomic(_request(paths), "", 0o600)


def take_stop_request(paths: FleetPaths) -> bool:
    """Whether a stop of the instances was asked for; the request is used up."""
    try:
        _request(paths).unlink()
    except FileNotFoundError:
        return False
    return True
