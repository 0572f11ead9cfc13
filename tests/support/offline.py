"""Test set-up on a fleet whose daemon is not running: an instance made through the service layer in
this process, as a fleet that was stopped holds it (the CLI itself creates only through the daemon)."""

from __future__ import annotations

from typing import Any

from tests.support.harness import FleetHarness


def create_offline(h: FleetHarness, name: str, release: str = "13.345", owner: str | None = None,
                   start: bool = False, extra_hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    """Like `instance create --json` (with --no-start unless `start`): {"instance": ..., "admin_password": ...}."""
    from foundry_fleet.config import load_config
    from foundry_fleet.wiring.services import open_services

    provisioning = open_services(load_config(h.config)).provisioning
    return provisioning.create("cli:test", name, release, owner=owner, start=start,
                               extra_hosts=list(extra_hosts)).to_dict()
