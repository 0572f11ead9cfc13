"""`foundry-fleet panel ...`: the web panel at https://<fleet host>/."""

from __future__ import annotations

from typing import Annotated

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json
from foundry_fleet.cli.typer_compat import command_group

app = command_group("The web panel on the fleet host.")


@app.command()
def login(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a link that signs you in to the web panel as a fleet admin (it works once, within 10 minutes)."""
    c: CliContext = ctx.obj
    link = c.require_daemon().panel_login_link()
    if json_out:
        print_json(link)
        return
    # On a line of its own and never wrapped: it is copied whole into a browser.
    typer.echo(link["url"])
    minutes = max(1, int(link["expires_in"]) // 60)
    console.print(f"Open it in your browser and press Sign in. It works once, within {minutes} minutes; "
                  "anyone who has it can sign in as a fleet admin, so do not share it.", highlight=False)
