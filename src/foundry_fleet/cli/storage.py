"""`foundry-fleet storage ...`: where instance data lives (directories, or ZFS datasets)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from foundry_fleet.domain.units import human_bytes
from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json
from foundry_fleet.domain.errors import Conflict, InvalidInput
from foundry_fleet.cli.typer_compat import command_group

app = command_group("Instance storage: lay out ZFS datasets, show space and limits.")


@app.command()
def init(
    ctx: typer.Context,
    zfs: Annotated[str, typer.Option("--zfs", metavar="POOL[/PATH]", help="lay the fleet out on this ZFS dataset")] = "",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lay out <base>/shared, releases/, instances/ as disko would; re-running repairs what differs."""
    from foundry_fleet.services.storage_setup import init_zfs_storage

    c: CliContext = ctx.obj
    if not zfs:
        raise InvalidInput("say where: foundry-fleet storage init --zfs POOL[/PATH]",
                           "plain directories need no set-up (they are the default)")
    storage = c.config.storage
    if c.daemon() is not None and (storage.driver != "zfs" or storage.zfs_base != zfs.strip("/")):
        raise Conflict("the fleet daemon is running on the current storage", "stop it (Ctrl-C on `up`), then retry")
    status = init_zfs_storage(c.config_file(), zfs)
    if json_out:
        print_json(status)
        return
    console.print(f"storage: ZFS datasets under {status['base']}; fleet.toml now says so")
    _print_status(status)


@app.command()
def status(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Pool health, space, and per instance the space used (data and snapshots) against its limit."""
    c: CliContext = ctx.obj
    result = c.services().disk_limits.report()
    if json_out:
        print_json(result)
        return
    _print_status(result)


def _print_status(status: dict[str, Any]) -> None:
    if status["driver"] == "zfs":
        pool = status["pool"]
        console.print(f"pool {pool['name']}: {pool['health']}, size {pool['size']}, free {pool['free']}")
        console.print(f"{status['base']}: {human_bytes(status['used'] or 0)} used, "
                      f"{human_bytes(status['available'] or 0)} available")
    else:
        console.print(f"directories under {status['root']}: {human_bytes(status['used'])} used, "
                      f"{human_bytes(status['available'])} free on the file system")
    t = Table()
    for col in ("instance", "used (data + snapshots)", "limit", "use"):
        t.add_column(col)
    for name, row in sorted(status["instances"].items()):
        limit = row.get("limit")
        use = f"{100 * (row['used'] or 0) / limit:.0f}%" if limit else "-"
        if limit and (row["used"] or 0) >= limit:
            use += " (at the limit)"
        t.add_row(name, human_bytes(row["used"] or 0), human_bytes(limit) if limit else "none", use)
    console.print(t)
    if status["driver"] != "zfs" and any(row.get("limit") for row in status["instances"].values()):
        console.print("on directory storage the limit is kept by refusing new snapshots of an instance at it")
