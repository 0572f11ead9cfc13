"""`foundry-fleet trust`: this machine's browsers trust the fleet's local CA (services/trust.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, safe


def trust(
    ctx: typer.Context,
    print_only: Annotated[bool, typer.Option("--print", help="only print the commands, for every store")] = False,
    uninstall: Annotated[bool, typer.Option(help="remove the fleet's CA from the stores instead")] = False,
) -> None:
    """Trust the fleet's local CA ([edge] tls = "internal") on this machine, as `caddy trust` does: the system
    store (as root), the user's NSS database for Chrome/Chromium (~/.pki/nssdb) and Firefox's profiles
    (with certutil). What cannot be done here is printed as the commands to run."""
    from foundry_fleet.services.trust import TrustSetup, carry_out, trust_plan
    from foundry_fleet.wiring.drivers import managed_caddy
    from foundry_fleet.wiring.runtimes import fleet_id

    c: CliContext = ctx.obj
    config = c.config
    if config.edge.tls != "internal" and not uninstall:
        console.print(f"[edge] tls is {config.edge.tls}: the fleet's certificates come from a public CA, which "
                      "browsers trust already; nothing to do", highlight=False)
        return
    steps = trust_plan(managed_caddy(config).local_ca_root(), fleet_id(config), TrustSetup.of_this_machine(),
                       uninstall=uninstall)
    if print_only:
        for step in steps:
            console.print(f"{safe(step.store)}:", highlight=False)
            for line in step.shown():
                console.print(f"  {safe(line)}", highlight=False, soft_wrap=True)
        return
    for line in carry_out(steps, uninstall=uninstall):
        console.print(safe(line), highlight=False, soft_wrap=True)
