"""Following an instance while a request waits for it to settle, and saying plainly when it did not start.

The control API answers start, restart and create once the instance has settled, which can take half a
minute for a release that crash-loops: the instance's state is polled meanwhile so the person sees it
change, and a start that ends anywhere but `running` is an error with the server's last log lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from foundry_fleet.cli.render import err_console, safe
from foundry_fleet.domain.errors import ExternalFailure, FleetError
from foundry_fleet.domain.text import escape_controls

POLL_SECONDS = 0.5
LOG_LINES = 20
# The daemon answers once the instance has settled, which can be a moment before its first health check
# has passed: a start still under way gets this much longer before it counts as not healthy in time.
START_GRACE_SECONDS = 10.0


class InstanceReader(Protocol):
    def get_instance(self, name: str) -> dict[str, Any]: ...

    def instance_logs(self, name: str, lines: int) -> list[str]: ...


def state_line(row: dict[str, Any]) -> str:
    line = f"{row['name']}: {row['state']}"
    if row.get("restarts"):
        line += f", {row['restarts']} crash{'es' if row['restarts'] != 1 else ''}"
    if row.get("state_reason") and row["state_reason"] != row["state"]:
        line += f" ({row['state_reason']})"
    return line


def follow(client: InstanceReader, name: str, call: Callable[[], Any], poll: float | None = None) -> Any:
    """Run `call` (a request answered once `name` has settled), showing `name`'s state each time it changes:
    a live status line on a terminal, one plain line per change otherwise (logs, CI)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    live = err_console.is_terminal
    seen: str | None = None
    status = err_console.status(f"{name}: waiting") if live else None
    if status is not None:
        status.start()
    try:
        while worker.is_alive():
            worker.join(POLL_SECONDS if poll is None else poll)
            if not worker.is_alive():
                break
            try:
                line = state_line(client.get_instance(name))
            except FleetError:
                continue  # not made yet (create), or the daemon is busy: the request itself says
            if line == seen:
                continue
            seen = line
            if status is not None:
                status.update(safe(line))
            else:
                err_console.print(safe(line), highlight=False)
    finally:
        if status is not None:
            status.stop()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


STARTING = ("creating", "starting")


def _while_starting(client: InstanceReader, row: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + START_GRACE_SECONDS
    while row["state"] in STARTING and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        try:
            row = client.get_instance(row["name"])
        except FleetError:
            break
    return row


def require_running(client: InstanceReader, row: dict[str, Any], verb: str) -> None:
    """Raise (with the server's last log lines printed first) unless the settled instance runs."""
    name = row["name"]
    if row["state"] in STARTING:
        row = follow(client, name, lambda: _while_starting(client, row))
    if row["state"] == "running":
        return
    try:
        lines = client.instance_logs(name, LOG_LINES)
    except FleetError:
        lines = []
    if lines:
        err_console.print(f"last {len(lines)} lines of {safe(name)}'s server log:", highlight=False)
        for line in lines:
            err_console.print(escape_controls(line), highlight=False, markup=False)
    if row["state"] in STARTING:
        why = "did not become healthy in time"
    else:
        why = row["state"] + (f": {row['state_reason']}" if row.get("state_reason") else "")
    raise ExternalFailure(f"{name} did not {verb} ({why})",
                          f"see `foundry-fleet instance logs {name}`; fix the cause, then `foundry-fleet instance "
                          f"start {name}`")
