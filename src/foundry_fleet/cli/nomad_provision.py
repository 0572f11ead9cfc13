"""`foundry-fleet nomad provision`: the fvtt-provision job's task, run as root on every node by Nomad.

Nomad keeps what a task prints and the fleet shows the end of its stderr when the job fails, so the
output is plain text, one line: what was done on stdout (exit 0), or what was wrong and what to do on
stderr (exit 1; 2 for a usage error, as for every command). Nothing secret is ever printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.text import escape_controls


def provision(
    ctx: typer.Context,
    node_id: Annotated[str, typer.Option("--node-id", help="this node's Nomad ID (${node.unique.id})")],
    payload: Annotated[str, typer.Option("--payload", help="the dispatch payload file (${NOMAD_TASK_DIR}/payload.json)")],
) -> None:
    """Lay out one instance on this node from a fvtt-provision dispatch (only the node it names acts)."""
    from foundry_fleet.services.node_provisioning import provision_on_node, read_payload
    from foundry_fleet.wiring.drivers import make_home_storage

    c: CliContext = ctx.obj
    try:
        wanted = read_payload(Path(payload))
        config = c.config
        result = provision_on_node(config, node_id, wanted,
                                   storage=make_home_storage(config, wanted.home, on_node=True))
    except FleetError as e:
        _fail(e.message, e.hint)
    except OSError as e:  # the host refused something (a full disk, a read-only file system): say what
        _fail(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}", "fix that on this node, then dispatch again")
    print(_one_line(result.summary()), flush=True)


def _fail(message: str, hint: str | None) -> NoReturn:
    line = f"error: {message}" + (f"; {hint}" if hint else "")
    print(_one_line(line), file=sys.stderr, flush=True)
    raise typer.Exit(1)


def _one_line(text: str) -> str:
    return escape_controls(" ".join(text.split()))
