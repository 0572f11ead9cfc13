"""`foundry-fleet service ...`: run the fleet as a systemd service on this host."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, safe
from foundry_fleet.cli.typer_compat import command_group

if TYPE_CHECKING:
    from foundry_fleet.deploy.service_install import Step

app = command_group("Run the fleet as a systemd service: install the unit, or remove it.")

RootOption = Annotated[Optional[Path], typer.Option(
    help="the fleet's root (its fleet.toml is ROOT/fleet.toml); default: --config or the usual lookup")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="only show the plan")]


def _fleet(ctx: typer.Context, root: Path | None) -> tuple[CliContext, Path]:
    c: CliContext = ctx.obj
    if root is not None:
        c = CliContext(config_path=str(root / "fleet.toml"))
    return c, c.config_file().resolve()


def _carry_out(title: str, steps: list[Step], dry_run: bool) -> None:
    console.print(f"{title}:")
    for number, step in enumerate(steps, 1):
        console.print(f"  {number}. {safe(step.description)}")
    if dry_run:
        console.print("dry run: nothing was changed")
        return
    for number, step in enumerate(steps, 1):
        step.action()
        console.print(f"  [green]done[/] {number}. {safe(step.description)}")


@app.command()
def install(
    ctx: typer.Context,
    root: RootOption = None,
    leave_running: Annotated[bool, typer.Option(
        "--leave-running/--stop-instances",
        help="what a stop or restart of the service does with the instances: leave them running for the next "
             "start to re-attach (players stay connected), or stop them")] = True,
    dry_run: DryRunOption = False,
) -> None:
    """Install the fleet's systemd unit, enable it and (re)start it; shows the plan first (root only)."""
    from foundry_fleet.deploy.service_install import check_can_install, install_plan

    c, config_path = _fleet(ctx, root)
    config = c.config
    if not dry_run:
        check_can_install(config)
    _carry_out(f"install the fleet at {config.root} as a systemd service",
               install_plan(config, config_path, leave_running), dry_run)
    if not dry_run:
        console.print(f"the fleet runs: foundry-fleet --config {safe(str(config_path))} status; its log: "
                      "journalctl -u foundry-fleet")


@app.command()
def uninstall(ctx: typer.Context, root: RootOption = None, dry_run: DryRunOption = False) -> None:
    """Stop the service and its instances, and remove its unit; the fleet's data stays (root only)."""
    from foundry_fleet.deploy.service_install import check_can_install, uninstall_plan

    c, _config_path = _fleet(ctx, root)
    config = c.config
    if not dry_run:
        check_can_install(config)
    _carry_out(f"remove the systemd service of the fleet at {config.root}", uninstall_plan(config), dry_run)
