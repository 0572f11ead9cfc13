"""`foundry-fleet nomad provision`: the fvtt-provision job's task, run as root on every node by Nomad.

Nomad keeps what a task prints and the fleet shows the end of its stderr when the job fails, so the
output is plain text, one line: what was done on stdout (exit 0), or what was wrong and what to do on
stderr (exit 1; 2 for a usage error, as for every command). Nothing secret is ever printed.

The job is a sysbatch job: every node runs every dispatch, and all but the one the payload names only
answer "not this node". So `python -m foundry_fleet` serves the job's own command line here before it
loads the rest of the command line (`serve_job_line`), and that answer reads the payload and nothing
else (services/provision_addressee.py). Only the node that acts imports the provisioning code. Any other
command line (a usage error, --help) goes through the full command line as every command does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from foundry_fleet.cli.context import CliContext
from foundry_fleet.domain.errors import FleetError
from foundry_fleet.domain.text import escape_controls

# The job's command line: `[--config F] nomad provision --config F --node-id ID --payload FILE`.
_VALUE_OPTIONS = {"--config": "config", "-c": "config", "--node-id": "node_id", "--payload": "payload"}


def serve_job_line(argv: list[str]) -> None:
    """Run the provisioning and exit when `argv` is exactly the job's command line; else return."""
    given = job_line_options(argv)
    if given is None:
        return
    try:
        code = run(CliContext(config_path=given.get("config")), given["node_id"], given["payload"])
    except KeyboardInterrupt:  # Nomad stops a task with SIGINT: quietly, as every command does (cli/main.py)
        code = 130
    sys.exit(code)


def run(c: CliContext, node_id: str, payload: str) -> int:
    """Lay out the payload's instance when it names this node; the exit code."""
    # Imported here, not above: every command of the command line loads this module (cli/nomad.py).
    from foundry_fleet.services.provision_addressee import payload_for_another_node

    elsewhere = payload_for_another_node(Path(payload), node_id)
    if elsewhere is not None:
        # As services/node_provisioning.py says it for a payload it does not act on.
        print(_one_line(f"not this node: {elsewhere.instance} is provisioned on node {elsewhere.node}"), flush=True)
        return 0
    from foundry_fleet.services.node_provisioning import provision_on_node, read_payload
    from foundry_fleet.wiring.drivers import make_home_storage

    try:
        wanted = read_payload(Path(payload))
        config = c.config
        result = provision_on_node(config, node_id, wanted,
                                   storage=make_home_storage(config, wanted.home, on_node=True))
    except FleetError as e:
        return _fail(e.message, e.hint)
    except OSError as e:  # the host refused something (a full disk, a read-only file system): say what
        return _fail(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}",
                     "fix that on this node, then dispatch again")
    print(_one_line(result.summary()), flush=True)
    return 0


def job_line_options(argv: list[str]) -> dict[str, str] | None:
    """The options of the job's command line, or None for anything else (left to the full command line)."""
    given: dict[str, str] = {}
    words: list[str] = []
    i = 0
    while i < len(argv):
        option, has_value, value = argv[i].partition("=")
        if option not in _VALUE_OPTIONS or option == "-c" and has_value:
            words.append(argv[i])
            i += 1
            continue
        if not has_value:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        i += 1
        key = _VALUE_OPTIONS[option]
        if key in given or not value or key != "config" and words != ["nomad", "provision"]:
            return None  # given twice, empty, or an option of `provision` before it: the full command line says
        given[key] = value
    if words != ["nomad", "provision"] or "node_id" not in given or "payload" not in given:
        return None
    return given


def _fail(message: str, hint: str | None) -> int:
    line = f"error: {message}" + (f"; {hint}" if hint else "")
    print(_one_line(line), file=sys.stderr, flush=True)
    return 1


def _one_line(text: str) -> str:
    return escape_controls(" ".join(text.split()))
