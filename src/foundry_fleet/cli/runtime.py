"""`foundry-fleet runtime ...`: which driver runs the instances, switching it, and its images."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json, print_runtime
from foundry_fleet.cli.typer_compat import command_group

app = command_group("The runtime that runs the instances: show it, switch it, prepare its images.")


def offered_runtimes() -> list[str]:
    """The drivers a person may choose; `fake` runs nothing and is for the tests."""
    from foundry_fleet.wiring.runtimes import RUNTIMES

    return sorted(name for name in RUNTIMES if name != "fake")


@app.command()
def show(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The driver, what it offers (isolation, limits, images) and, with the daemon, its health here."""
    c: CliContext = ctx.obj
    report: dict[str, Any] = c.read(lambda fleet: fleet.status())["runtime"]
    if json_out:
        print_json(report)
        return
    print_runtime(report, every_line=True)


@app.command("set")
def set_(
    ctx: typer.Context,
    driver: Annotated[str, typer.Argument(metavar="DRIVER", help="local | podman")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Switch the fleet to DRIVER (with the daemon and every instance stopped; running ones are refused)."""
    from foundry_fleet.domain.errors import InvalidInput
    from foundry_fleet.services.runtime_switch import switch_runtime

    c: CliContext = ctx.obj
    offered = offered_runtimes()
    if driver not in offered:
        raise InvalidInput(f"unknown runtime driver {driver!r}", f"use {' or '.join(offered)}")
    result = switch_runtime(c.config_file(), driver, actor=c.actor())
    if json_out:
        print_json(result.to_dict())
        return
    if result.changed:
        console.print(f"runtime: {result.previous} -> [bold]{driver}[/]; the next `foundry-fleet up` runs the "
                      "instances with it")
    else:
        console.print(f"runtime: already {driver}")
    if result.cleared:
        console.print(f"dropped the old runtime's task handles of {', '.join(result.cleared)}")
    if driver == "podman":
        console.print("images: `foundry-fleet runtime image` prepares them now (else the first start does)")
