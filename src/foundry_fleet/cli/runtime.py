"""`foundry-fleet runtime ...`: which driver runs the instances, switching it, and its images."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json, print_runtime, safe
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
    report: dict[str, Any] | None = c.read(lambda fleet: fleet.status()).get("runtime")
    if report is None:  # a daemon from before runtimes were reported, still running
        report = {"driver": c.config.runtime.driver, "health": None, "images": None}
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


@app.command()
def image(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Make the Node.js image every cached release needs (podman: pulled, or built offline from this host's
    node); optional, as an instance's start makes a missing one. Re-running makes nothing new."""
    import asyncio

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from foundry_fleet.services.runtime_images import prepare_images
    from foundry_fleet.wiring.podman_images import node_images

    c: CliContext = ctx.obj
    driver = c.config.runtime.driver
    if driver != "podman":
        note = f"the {driver} runtime runs no image (instances use this host's node): nothing to prepare"
        print_json({"driver": driver, "images": []}) if json_out else console.print(note)
        return
    releases = c.services().releases.list()
    if not releases:
        print_json({"driver": driver, "images": []}) if json_out else console.print(
            "no releases in the cache yet: `foundry-fleet release add ZIP_OR_URL` first")
        return

    async def make(on_progress: Any) -> list[Any]:
        async with node_images(c.config) as images:
            return await prepare_images(images, releases, on_progress)

    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=json_out) as progress:
        bars: dict[int, Any] = {}

        def on_progress(generation: int, phase: str, fraction: float | None) -> None:
            if generation not in bars:
                bars[generation] = progress.add_task("", total=None)
            progress.update(bars[generation], description=f"Foundry v{generation}: {phase}",
                            total=None if fraction is None else 1.0, completed=fraction or 0.0)

        made = asyncio.run(make(on_progress))
    if json_out:
        print_json({"driver": driver, "images": [m.to_dict() for m in made]})
    else:
        for m in made:
            versions = ", ".join(m.releases)
            if m.present:
                console.print(f"[green]ready[/] Foundry v{m.generation} ({safe(versions)}): {safe(m.detail)}",
                              highlight=False)
            else:
                console.print(f"[red]failed[/] Foundry v{m.generation} ({safe(versions)}): {safe(m.detail)}",
                              highlight=False)
    if any(not m.present for m in made):
        raise typer.Exit(1)
