"""`foundry-fleet release ...`: the host's cache of Foundry releases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from foundry_fleet.cli.confirm import confirm_or_refuse
from foundry_fleet.cli.render import console, print_json, releases_table
from foundry_fleet.cli.typer_compat import command_group

app = command_group("Add, list and remove Foundry releases.")


@app.command("add")
def add(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        help="a release zip path, an https URL (e.g. a timed download URL), or with --account a version (13.345)")],
    account: Annotated[Optional[Path], typer.Option(
        "--account", help="file (chmod 600) with a foundryvtt.com username and password on two lines")] = None,
) -> None:
    """Add a release to the cache (downloads once; cached versions never hit the network again)."""
    from rich.progress import (
        BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as progress:
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int | None) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        releases = ctx.obj.services().releases
        if account is not None:
            release = releases.add_from_account(source, account, on_progress)
        else:
            release = releases.add(source, on_progress)
    console.print(f"release [bold]{release.version}[/] ready ({release.layout} build, Node.js {release.node})")


@app.command("list")
def list_(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Releases in this fleet, and which instances use them."""
    rows = [r.to_dict() for r in ctx.obj.services().releases.list()]
    if json_out:
        print_json(rows)
    else:
        console.print(releases_table(rows))


@app.command("remove")
def remove(
    ctx: typer.Context,
    version: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask (needed without a terminal)")] = False,
) -> None:
    """Remove a release (refused while an instance uses it)."""
    confirm_or_refuse(f"Remove release {version} from this host? (adding it again downloads it again)", yes)
    ctx.obj.services().releases.remove(version)
    console.print(f"removed release {version}")
