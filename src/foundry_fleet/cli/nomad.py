"""`foundry-fleet nomad ...`: the Nomad jobs the fleet submits, printed for operators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from foundry_fleet.cli import nomad_provision
from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console
from foundry_fleet.cli.typer_compat import command_group

app = command_group("The nomad runtime: the jobs the fleet submits to Nomad.")


@app.command()
def render(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(metavar="[NAME]", help="an instance: its job; none: the fleet's own jobs")] = None,
    fmt: Annotated[str, typer.Option("--format", help="hcl (for reading) | json (as submitted) | both")] = "both",
    write_deploy: Annotated[Optional[Path], typer.Option(
        help="write the operator files of deploy/nomad/ (example settings) into this directory instead")] = None,
) -> None:
    """Print the exact jobs the fleet submits: provisioning (and Caddy with [edge] on_nomad), or NAME's."""
    from foundry_fleet.domain.errors import InvalidInput
    from foundry_fleet.wiring import nomad_jobs

    if fmt not in nomad_jobs.FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(nomad_jobs.FORMATS)}", param_hint="'--format'")
    if write_deploy is not None:
        if name is not None:
            raise InvalidInput("--write-deploy writes the fleet's own jobs, not an instance's", "leave NAME out")
        for path in nomad_jobs.write_deploy_files(write_deploy):
            console.print(f"wrote {path}")
        return
    c: CliContext = ctx.obj
    if name is None:
        jobs = nomad_jobs.fleet_jobs(c.config, c.config_file())
    else:
        jobs = [nomad_jobs.instance_job_for(c.services(), c.config_file(), name)]
    typer.echo(nomad_jobs.render(jobs, fmt), nl=False)  # plain: no markup, no wrapping


@app.command("provision")
def provision(
    ctx: typer.Context,
    node_id: Annotated[str, typer.Option("--node-id", help="this node's Nomad ID (${node.unique.id})")],
    payload: Annotated[str, typer.Option("--payload", help="the dispatch payload file (${NOMAD_TASK_DIR}/payload.json)")],
) -> None:
    """Lay out one instance on this node from a fvtt-provision dispatch (only the node it names acts)."""
    # The node-side half, run by the job on every node: see cli/nomad_provision.py.
    code = nomad_provision.run(ctx.obj, node_id, payload)
    if code:
        raise typer.Exit(code)
