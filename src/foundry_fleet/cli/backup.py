"""`foundry-fleet backup ...`: snapshots of an instance's data."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from foundry_fleet.domain.snapshot_choice import choose_snapshot
from foundry_fleet.domain.units import human_bytes
from foundry_fleet.cli.confirm import confirm_or_refuse
from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json, safe
from foundry_fleet.cli.typer_compat import command_group

app = command_group("Snapshots of instance data: take, list, plan, restore, status.")


@app.command()
def now(
    ctx: typer.Context,
    name: str,
    label: Annotated[str, typer.Option(help="names the snapshot <label>-<time>; never thinned")] = "manual",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Take a snapshot now (needs the daemon)."""
    c: CliContext = ctx.obj
    snap = c.require_daemon().take_snapshot(name, label)
    if json_out:
        print_json(snap)
    else:
        console.print(f"snapshot {snap['name']} of {name} ({human_bytes(snap['bytes_new'])} new on disk)")


@app.command("list")
def list_(ctx: typer.Context, name: str, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """An instance's snapshots, oldest first."""
    c: CliContext = ctx.obj
    snaps = c.read(lambda fleet: fleet.list_snapshots(name))
    if json_out:
        print_json(snaps)
        return
    t = Table()
    for col in ("snapshot", "taken", "new on disk", "files"):
        t.add_column(col)
    for s in snaps:
        t.add_row(s["name"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created_at"])),
                  human_bytes(s["bytes_new"]), str(s["files"]))
    console.print(t)


@app.command()
def plan(
    ctx: typer.Context,
    name: str,
    new_plan: Annotated[Optional[str], typer.Argument(help="e.g. '7d=>1h,30d=>1d,1y=>1w'")] = None,
    default: Annotated[bool, typer.Option("--default", help="follow the fleet's default plan again")] = False,
) -> None:
    """Show or set (needs the daemon) an instance's snapshot plan (znapzend syntax; m = month, min = minute)."""
    c: CliContext = ctx.obj
    if new_plan is None and not default:
        console.print(c.read(lambda fleet: fleet.backup_status(name))["instances"][0]["plan"])
        return
    shown = c.require_daemon().set_backup_plan(name, None if default else new_plan)["plan"]
    console.print(f"{name}: {shown}")


@app.command()
def restore(
    ctx: typer.Context,
    name: str,
    snapshot: Annotated[str, typer.Argument(help="its name, `latest`, or the start of a name only it has")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (needed without a terminal)")] = False,
) -> None:
    """Restore a snapshot: stop, keep the current data as a safety snapshot, restore, start again (needs the daemon)."""
    c: CliContext = ctx.obj
    client = c.require_daemon()
    # Named in full before asking: the question must say which snapshot `latest` or a prefix is.
    snapshot = choose_snapshot(snapshot, ((s["name"], s["created_at"]) for s in client.list_snapshots(name)), name)
    confirm_or_refuse(f"Replace the data of {name} with snapshot {snapshot}? (the current data is kept)", yes)
    result = client.restore(name, snapshot)
    safety, state = result["safety_snapshot"], result["instance"]["state"]
    snapshot = result.get("snapshot") or snapshot
    console.print(f"restored {snapshot} into {name} ({state}); the data before is kept as snapshot {safety}")


@app.command()
def status(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="only this instance")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Snapshots per instance, and per backup destination the last synced snapshot and how far behind it is."""
    c: CliContext = ctx.obj
    result = c.read(lambda fleet: fleet.backup_status(name))
    if json_out:
        print_json(result)
        return
    t = Table(title="snapshots here")
    for col in ("instance", "plan", "snapshots", "newest"):
        t.add_column(col)
    for row in result["instances"]:
        t.add_row(row["instance"], row["plan"], str(row["snapshots"]), row["newest"] or "-")
    console.print(t)
    if not result["destinations"]:
        console.print(escape("no backup destinations ([[backups.destinations]] in fleet.toml)"))
        return
    t = Table(title="backup destinations")
    for col in ("instance", "destination", "last synced", "behind", "last error"):
        t.add_column(col)
    for row in result["destinations"]:
        behind = f"{row['snapshots_behind']} snapshot(s)"
        if row["seconds_behind"]:
            behind += f", {_duration(row['seconds_behind'])}"
        t.add_row(row["instance"], row["destination"], row["last_snapshot"] or "never", behind,
                  safe(row["last_error"] or ""))
    console.print(t)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
