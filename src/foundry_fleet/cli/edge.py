"""`foundry-fleet edge ...`: what Caddy is told to serve."""

from __future__ import annotations

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import print_json
from foundry_fleet.cli.typer_compat import command_group

app = command_group("The edge (Caddy): routes and certificates for every tenant host.")


@app.command()
def show(ctx: typer.Context) -> None:
    """Print the Caddy JSON configuration generated from the fleet's desired state."""
    c: CliContext = ctx.obj
    print_json(c.read(lambda fleet: fleet.edge_config()))
