"""foundry-fleet: the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from foundry_fleet.cli import backup as backup_cmds
from foundry_fleet.cli import doctor as doctor_cmds
from foundry_fleet.cli import trust as trust_cmds
from foundry_fleet.cli import edge as edge_cmds
from foundry_fleet.cli import instance as instance_cmds
from foundry_fleet.cli import invite as invite_cmds
from foundry_fleet.cli import nomad as nomad_cmds
from foundry_fleet.cli import panel as panel_cmds
from foundry_fleet.cli import release as release_cmds
from foundry_fleet.cli import runtime as runtime_cmds
from foundry_fleet.cli import service as service_cmds
from foundry_fleet.cli import storage as storage_cmds
from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.typer_compat import ClickException, with_usage
from foundry_fleet.cli.render import console, err_console, events_table, print_json, safe
from foundry_fleet.domain.errors import FleetError, InvalidInput
from foundry_fleet.domain.text import escape_controls

app = typer.Typer(
    name="foundry-fleet",
    help="Host Foundry Virtual Tabletop for many game masters on one server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text (see typer_compat)
)
app.add_typer(release_cmds.app, name="release")
app.add_typer(instance_cmds.app, name="instance")
app.add_typer(edge_cmds.app, name="edge")
app.add_typer(backup_cmds.app, name="backup")
app.add_typer(storage_cmds.app, name="storage")
app.add_typer(invite_cmds.app, name="invite")
app.add_typer(runtime_cmds.app, name="runtime")
app.add_typer(nomad_cmds.app, name="nomad")
app.add_typer(service_cmds.app, name="service")
app.add_typer(panel_cmds.app, name="panel")
app.command("doctor")(doctor_cmds.doctor)
app.command("trust")(trust_cmds.trust)

ConfigOption = Annotated[
    Optional[str],
    typer.Option("--config", "-c", help="fleet.toml (else $FOUNDRY_FLEET_CONFIG, ./fleet.toml, ./fleet-data/fleet.toml)"),
]


def _print_version(value: bool) -> None:
    """--version: the version of the installed distribution (its metadata), then exit."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"foundry-fleet {version('foundry-fleet')}")
    except PackageNotFoundError:
        typer.echo("foundry-fleet: not installed as a distribution, so it has no version", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit()


VersionOption = Annotated[
    bool, typer.Option("--version", is_eager=True, callback=_print_version, help="print the version and exit"),
]


@app.callback()
def main_callback(ctx: typer.Context, config: ConfigOption = None, version: VersionOption = False) -> None:
    ctx.obj = CliContext(config_path=config)


@app.command()
def init(
    root: Annotated[Path, typer.Option(help="directory for the fleet's state and fleet.toml")] = Path("fleet-data"),
    domain: Annotated[Optional[str], typer.Option(help="serve tenants at <instance>.<domain> (ACME on 80/443)")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="edge HTTP port (default 8080, or 80 with --domain)")] = None,
    https_port: Annotated[Optional[int], typer.Option(help="edge HTTPS port (default 8443, or 443 with --domain)")] = None,
    web_port: Annotated[Optional[int], typer.Option(
        help="loopback port of the fleet's own web endpoints, behind the edge (default 8099)")] = None,
    instance_ports: Annotated[Optional[str], typer.Option(
        help="LOW-HIGH: the instances' ports (default 30000-30999), outside the kernel's ephemeral range")] = None,
    tls: Annotated[Optional[str], typer.Option(help="internal | acme | on-demand")] = None,
    storage: Annotated[str, typer.Option(help="directory | zfs")] = "directory",
    zfs_base: Annotated[Optional[str], typer.Option(help="with --storage zfs: POOL[/PATH] for the datasets")] = None,
    runtime: Annotated[str, typer.Option(
        help="what runs the instances: local (bubblewrap) | podman (containers) | nomad (Nomad jobs)")] = "local",
    nomad_addr: Annotated[Optional[str], typer.Option(
        help="with --runtime nomad: Nomad's HTTP API (default http://127.0.0.1:4646)")] = None,
    nomad_token_file: Annotated[Optional[Path], typer.Option(
        help="with --runtime nomad: a 0600 file holding the ACL token")] = None,
    nomad_ca_file: Annotated[Optional[Path], typer.Option(
        help="with --runtime nomad: the CA of Nomad's TLS certificate (https)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing fleet.toml")] = False,
) -> None:
    """Create a fleet: write a documented fleet.toml under ROOT."""
    from foundry_fleet.services.init import ephemeral_ports, init_fleet

    path = init_fleet(root, domain, http_port, https_port, tls, storage, force, zfs_base=zfs_base, runtime=runtime,
                      runtimes=runtime_cmds.offered_runtimes(), nomad_address=nomad_addr,
                      nomad_token_file=nomad_token_file, nomad_ca_file=nomad_ca_file, web_port=web_port,
                      instance_ports=instance_ports, ephemeral=ephemeral_ports())
    console.print(f"wrote {path}")
    console.print(f"next: foundry-fleet --config {path} up")


@app.command()
def up(
    ctx: typer.Context,
    leave_running: Annotated[
        bool, typer.Option(help="on exit, leave instances running for the next `up` to re-attach")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the fleet daemon in the foreground: supervise instances, serve the control API."""
    import asyncio
    import logging

    from rich.logging import RichHandler

    from foundry_fleet.wiring.daemon import serve

    handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
    handler.addFilter(_escape_log_record)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler],
                        force=True)  # replaces the silence main() sets up for every other command
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(serve(ctx.obj.config, leave_running=leave_running, config_file=ctx.obj.config_file()))


def _escape_log_record(record: Any) -> bool:  # a logging.LogRecord
    """The daemon's log shows tenants' text too (state reasons, their servers' last lines): no controls."""
    record.msg = escape_controls(record.getMessage(), multiline=True)
    record.args = None
    return True


@app.command()
def status(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="redraw every --interval seconds until Ctrl-C "
                                                         "(a terminal only)")] = False,
    # Text, read here: a number parameter makes typer load pydantic, which `status` avoids (typer_compat).
    interval: Annotated[str, typer.Option(help="seconds between redraws with --watch (0.5 at least)")] = "2",
) -> None:
    """The daemon and every instance, at a glance: state and why, uptime, memory, CPU, players, last backup."""
    from foundry_fleet.cli import status as status_view

    c: CliContext = ctx.obj
    if watch and json_out:
        raise InvalidInput("--watch redraws a table; --json prints once", "use one or the other")
    if watch:
        status_view.watch(lambda: c.read(lambda fleet: fleet.status()), status_view.seconds(interval))
        return
    data = c.read(lambda fleet: fleet.status())
    if json_out:
        print_json(data)
        return
    status_view.print_status(data)


@app.command()
def events(
    ctx: typer.Context,
    instance: Annotated[Optional[str], typer.Option(help="only events about this instance")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What happened, who did it, and how it went."""
    rows = [e.to_dict() for e in ctx.obj.services().events.recent(instance, limit)]
    if json_out:
        print_json(rows)
    else:
        console.print(events_table(rows))


@app.command()
def reload(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Read fleet.toml again (as SIGHUP does): a bad file changes nothing; says what changed at once and what
    needs `up` again (needs the daemon)."""
    result = ctx.obj.require_daemon().reload()
    if json_out:
        print_json(result)
    else:
        console.print(safe(result["summary"]), highlight=False)


@app.command("api-schema")
def api_schema(ctx: typer.Context) -> None:
    """Print the control API's OpenAPI schema (from the running daemon)."""
    print_json(ctx.obj.require_daemon().openapi())


def hoist_config_option(argv: list[str]) -> list[str]:
    """Accept --config/-c anywhere on the line (`foundry-fleet instance list --config f.toml`)."""
    args, hoisted, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args += argv[i:]
            break
        if a in ("--config", "-c") and i + 1 < len(argv):
            hoisted = [a, argv[i + 1]]
            i += 2
            continue
        if a.startswith("--config="):
            hoisted = [a]
        else:
            args.append(a)
        i += 1
    return hoisted + args


def _silence_logs() -> None:
    """A command's output is its own words: what went wrong reaches the person as the error it raises,
    and the event log keeps the record. Without a handler, Python's last-resort one would print the
    fleet's and its libraries' warnings (an event's log line, httpx's) beside that error."""
    import logging

    logging.getLogger().addHandler(logging.NullHandler())


def main() -> None:
    _silence_logs()
    try:
        # Without standalone mode, click hands back the code of a typer.Exit instead of exiting.
        code = app(args=hoist_config_option(sys.argv[1:]), prog_name="foundry-fleet", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except FleetError as e:
        err_console.print(f"[bold red]error:[/] {safe(e.message)}", highlight=False)
        if e.hint:
            err_console.print(f"[dim]hint:[/] {safe(e.hint)}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except (typer.Abort, typer.Exit) as e:
        sys.exit(getattr(e, "exit_code", 1))
    except ClickException as e:  # usage errors and the like: one message and their own exit code
        with_usage(e, app, sys.argv[1:])
        e.show()  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
