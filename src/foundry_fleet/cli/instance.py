"""`foundry-fleet instance ...`: create, inspect, start, stop and delete Foundry instances."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from foundry_fleet.cli import data as data_cmds
from foundry_fleet.cli.confirm import confirm_or_refuse
from foundry_fleet.cli import sftp_keys as sftp_key_cmds
from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import (
    console, err_console, human_bytes, idle_rows, instance_detail, instances_table, print_json, safe,
)
from foundry_fleet.cli.typer_compat import command_group
from foundry_fleet.cli.waiting import follow, require_running
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.release import parse_version
from foundry_fleet.domain.text import escape_controls

app = command_group("Foundry instances, one per tenant.")

JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable output")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="do not ask (needed without a terminal)")]


def _read_secret_file(path: Path, what: str = "password") -> str:
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}", f"give a readable file holding the {what}") from None
    value = text.rstrip("\r\n")
    if not value or "\n" in value:
        raise InvalidInput(f"{path} must hold the {what} on one line", f"write just the {what} into it")
    return value


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="becomes the host <name>.<domain>: lowercase letters, digits, dashes")],
    release: Annotated[str, typer.Option("--release", "-r", help="a version from `release list`, e.g. 13.345")],
    license_key: Annotated[Optional[str], typer.Option("--license", help="the tenant's Foundry license key")] = None,
    license_file: Annotated[
        Optional[Path], typer.Option(help="file holding the license key (keeps it out of the process list)")
    ] = None,
    license_from_account: Annotated[Optional[Path], typer.Option(
        help="file (chmod 600) with a foundryvtt.com username and password: use the account's license key")] = None,
    license_index: Annotated[int, typer.Option(help="which of the account's license keys, from 1", min=1)] = 1,
    owner: Annotated[Optional[str], typer.Option(help="the tenant's Discord user id")] = None,
    admin_password_file: Annotated[
        Optional[Path], typer.Option(help="file holding the Foundry admin password (else one is generated)")
    ] = None,
    start: Annotated[bool, typer.Option(help="start it once created")] = True,
    extra_host: Annotated[
        Optional[list[str]], typer.Option(help="another hostname for it (repeatable), e.g. the tenant's own domain")
    ] = None,
    node: Annotated[
        Optional[str], typer.Option(help="the node to run it on, as `status` lists them (else the runtime chooses)")
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create an instance: storage, install, options.json, license.json, admin.txt, a port (needs the daemon)."""
    c: CliContext = ctx.obj
    if sum(x is not None for x in (license_key, license_file, license_from_account)) > 1:
        raise InvalidInput("give the license with one of --license, --license-file or --license-from-account")
    if license_file:
        license_key = _read_secret_file(license_file, "license key")
    if license_from_account:
        license_key = c.services().releases.account_license_key(license_from_account, license_index)
    password = _read_secret_file(admin_password_file) if admin_password_file else None
    client = c.require_daemon()
    result: dict[str, Any] = follow(client, name, lambda: client.create_instance(
        name=name, release=release, license_key=license_key, owner=owner, admin_password=password, start=start,
        extra_hosts=extra_host or [], node=node,
    ))
    if json_out:
        print_json(result)
    else:
        console.print(instance_detail(result["instance"]))
    if result.get("admin_password"):
        # Shown once: only its hash is kept (Config/admin.txt).
        err_console.print(f"Foundry admin password (shown once, keep it safe): [bold]{result['admin_password']}[/]",
                          highlight=False)
    if license_key is None:
        err_console.print(f"[yellow]warning:[/] no license: {safe(name)} will show Foundry's license page until a key is "
                          f"set with `foundry-fleet instance set {safe(name)} --license-file FILE`", highlight=False)
    if start:
        require_running(client, result["instance"], "start")


@app.command()
def hosts(
    ctx: typer.Context,
    name: str,
    extra_hosts: Annotated[Optional[list[str]], typer.Argument(help="the full list of extra hostnames")] = None,
    clear: Annotated[bool, typer.Option(help="remove every extra hostname")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Show, or set (needs the daemon), the hostnames an instance answers on besides <name>.<domain>."""
    c: CliContext = ctx.obj
    if extra_hosts or clear:
        row = c.require_daemon().set_hosts(name, [] if clear else list(extra_hosts or []))
    else:
        row = c.read(lambda fleet: fleet.get_instance(name))
    if json_out:
        print_json(row["hosts"])
    else:
        for host in row["hosts"]:
            console.print(host)


@app.command("set")
def set_(
    ctx: typer.Context,
    name: str,
    idle_after: Annotated[Optional[str], typer.Option(
        "--idle-after", help="idle time before it sleeps: a duration (60min, 2h), off, or fleet ([instances] idle_after)",
    )] = None,
    license_file: Annotated[Optional[Path], typer.Option(
        help="file holding the tenant's Foundry license key (restarts it if it runs)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Change an instance's settings (needs the daemon)."""
    c: CliContext = ctx.obj
    if idle_after is None and license_file is None:
        raise typer.BadParameter("say what to set, e.g. --idle-after 2h or --license-file FILE", param_hint="options")
    client = c.require_daemon()
    row: dict[str, Any] = {}
    if license_file is not None:
        key = _read_secret_file(license_file, "license key")
        row, restarts = _restarting(client, name, lambda: client.set_license(name, key))
        if not json_out:
            console.print(f"{name}: license set" + (", restarted" if restarts else
                                                    f" ({row['state']}: read at its next start)"))
        if restarts:
            require_running(client, row, "restart")
    if idle_after is not None:
        row = client.set_idle_after(name, idle_after)
        if not json_out:
            for key, text in idle_rows(row):
                console.print(f"{safe(name)}: {key} {safe(text)}")
    if json_out:
        print_json(row)


@app.command("reset-admin-password")
def reset_admin_password(
    ctx: typer.Context,
    name: str,
    password_file: Annotated[Optional[Path], typer.Option(
        help="file holding the new Foundry admin password (else one is generated and shown once)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Set a new Foundry admin password for an instance, restarting it if it runs (needs the daemon)."""
    c: CliContext = ctx.obj
    client = c.require_daemon()
    password = _read_secret_file(password_file) if password_file else None
    result, restarts = _restarting(client, name, lambda: client.reset_admin_password(name, password))
    row = result["instance"]
    if json_out:
        print_json(result)
    else:
        console.print(f"{name}: admin password " + ("generated" if result["admin_password"] else "set")
                      + (", restarted" if restarts else f" ({row['state']}: used from its next start)"))
    if result["admin_password"] and not json_out:
        err_console.print(f"Foundry admin password (shown once, keep it safe): [bold]{result['admin_password']}[/]",
                          highlight=False)
    if restarts:
        require_running(client, row, "restart")


def _restarting(client: Any, name: str, call: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Make a change the daemon follows with a restart when the instance runs: followed like `restart`,
    so a restart that fails is not taken for success. Also says whether it was restarted."""
    if client.get_instance(name)["state"] not in ("running", "starting"):
        return call(), False
    return follow(client, name, call), True


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Every instance with its state, port and URL."""
    c: CliContext = ctx.obj
    rows = c.read(lambda fleet: fleet.list_instances())
    if json_out:
        print_json(rows)
    else:
        console.print(instances_table(rows, daemon_running=c.read_from_daemon))


@app.command()
def show(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """One instance in detail."""
    c: CliContext = ctx.obj
    row = c.read(lambda fleet: fleet.get_instance(name))
    if json_out:
        print_json(row)
    else:
        console.print(instance_detail(row, daemon_running=c.read_from_daemon))


def _action(ctx: typer.Context, name: str, verb: str, wait: bool, json_out: bool) -> None:
    c: CliContext = ctx.obj
    client = c.require_daemon()
    already = {"start": "running", "stop": "stopped"}.get(verb)
    if already and (now := client.get_instance(name))["state"] == already:
        # Nothing to do is not a failure, but it must not look as if something was done.
        if json_out:
            print_json(now)
        else:
            console.print(f"{name} is already {already}")
        return
    starts = verb in ("start", "restart")
    if wait and starts:
        row = follow(client, name, lambda: client.action(name, verb, wait=wait))
    else:
        row = client.action(name, verb, wait=wait)
    if json_out:
        print_json(row)
    else:
        console.print(f"{name}: {row['state']}" + (f" ({safe(row['state_reason'])})" if row["state_reason"] else ""))
    if wait and starts:
        require_running(client, row, verb)


WaitFlag = Annotated[bool, typer.Option(help="wait until the instance settles")]


@app.command()
def start(ctx: typer.Context, name: str, wait: WaitFlag = True, json_out: JsonFlag = False) -> None:
    """Start an instance (also after it failed in a crash loop)."""
    _action(ctx, name, "start", wait, json_out)


@app.command()
def stop(ctx: typer.Context, name: str, wait: WaitFlag = True, json_out: JsonFlag = False) -> None:
    """Stop an instance gracefully (SIGTERM, then SIGKILL after stop_timeout)."""
    _action(ctx, name, "stop", wait, json_out)


@app.command()
def restart(ctx: typer.Context, name: str, wait: WaitFlag = True, json_out: JsonFlag = False) -> None:
    """Restart an instance."""
    _action(ctx, name, "restart", wait, json_out)


@app.command()
def move(
    ctx: typer.Context,
    name: str,
    node: Annotated[str, typer.Option(help="the node to run it on, as `status` lists them")],
    json_out: JsonFlag = False,
) -> None:
    """Run an instance on another node (nomad runtime): restarted there; to a node of another home
    ([[nomad.homes]]) its data is sent there first, with a short stop; a stopped one moves at its next
    start (needs the daemon)."""
    c: CliContext = ctx.obj
    result = c.require_daemon().move(name, node)
    if json_out:
        print_json(result)
    elif result["outcome"] == "already there":
        console.print(f"{name} is already on node {safe(result['node'])}: nothing to move")
    elif result["outcome"] == "pinned":
        console.print(f"{name} is {result['instance']['state']}: it moves to node {safe(result['node'])} at its "
                      "next start")
    elif result["outcome"] == "moved":
        where = f"{name} moved from node {safe(result['previous'] or '-')} to node {safe(result['node'])}"
        if result.get("home") and result.get("home") != result.get("previous_home"):
            where += f" (home {safe(result['previous_home'])} -> {safe(result['home'])})"
        running = result["instance"]["state"] == "running"
        console.print(f"{where}: {'running there' if running else 'it runs there at its next start'}")
        if result.get("home") and result.get("home") != result.get("previous_home"):
            console.print(_copied(result))
    else:
        row = result["instance"]
        err_console.print(f"[bold red]{name} is not running on node {safe(result['node'])}:[/] {row['state']} "
                          f"({safe(row['state_reason'])}); its data is on node {safe(result['now_on'] or '-')}")
    if result["outcome"] == "not moved":
        raise typer.Exit(1)


def _copied(result: dict[str, Any]) -> str:
    """What a move between homes sent, and how long the instance was down."""
    snaps = result.get("copied_snapshots") or []
    line = f"copied {len(snaps)} snapshot{'s' if len(snaps) != 1 else ''} ({human_bytes(int(result.get('copied_bytes') or 0))})"
    if snaps:
        line += f": {safe(snaps[0])}" + (f" .. {safe(snaps[-1])}" if len(snaps) > 1 else "")
    down = result.get("downtime_seconds")
    return line + (f"; down {down:.1f} s (stopped -> running again)" if down is not None else "")


@app.command()
def suspend(
    ctx: typer.Context,
    name: str,
    reason: Annotated[str, typer.Option(help="why (the tenant sees it when they try to start it)")] = "",
    yes: YesFlag = False,
    json_out: JsonFlag = False,
) -> None:
    """Stop an instance and keep it stopped: its tenant cannot start it until it is resumed (needs the daemon)."""
    c: CliContext = ctx.obj
    client = c.require_daemon()
    client.health()  # before asking: the suspension cannot happen without the daemon
    confirm_or_refuse(f"Stop {name} and keep its tenant from starting it?", yes)
    row = client.suspend(name, reason)
    if json_out:
        print_json(row)
    else:
        console.print(f"{name}: suspended ({safe(row['suspended'] or '')}), {row['state']}")


@app.command()
def resume(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Lift a suspension and start the instance again (needs the daemon)."""
    c: CliContext = ctx.obj
    row = c.require_daemon().resume(name)
    if json_out:
        print_json(row)
    else:
        console.print(f"{name}: resumed, {row['state']}")


@app.command()
def upgrade(
    ctx: typer.Context,
    name: str,
    release: Annotated[str, typer.Option("--release", "-r", help="the release to move to")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask before a downgrade")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Move an instance to another release: snapshot first, roll back if it does not become healthy."""
    c: CliContext = ctx.obj
    client = c.require_daemon()
    current = client.get_instance(name)["release"]
    if _older(release, current):
        confirm_or_refuse(f"downgrade {name} from {current} to {release}? Foundry may not open worlds saved by {current}", yes)
    result = client.upgrade(name, release)
    if json_out:
        print_json(result)
    elif result["upgraded"]:
        console.print(f"{name} now runs {release} (snapshot {result['snapshot']} taken before)")
    else:
        err_console.print(f"[bold red]{name} did not become healthy on {release}:[/] {safe(result['reason'])}")
        err_console.print(f"rolled back to {result['instance']['release']} and the data of snapshot {result['snapshot']}")
    if not result["upgraded"]:
        raise typer.Exit(1)


def _older(target: str, current: str) -> bool:
    try:
        return parse_version(target) < parse_version(current)
    except InvalidInput:
        return False  # not a version: the daemon refuses it with its own message


@app.command()
def delete(
    ctx: typer.Context,
    name: str,
    purge: Annotated[bool, typer.Option(help="also destroy its data (otherwise kept under archive/)")] = False,
    yes: YesFlag = False,
) -> None:
    """Delete an instance after a final snapshot; its data is kept under archive/ unless --purge (needs the daemon)."""
    c: CliContext = ctx.obj
    client = c.require_daemon()
    client.health()  # before asking: the delete cannot happen without the daemon
    confirm_or_refuse(f"Destroy all data of {name}? This cannot be undone." if purge else
                      f"Delete {name}? (its data is kept under archive/)", yes)
    kept = client.delete_instance(name, purge)["kept_at"]
    console.print(f"deleted {name}" + (f"; data kept at {kept}" if kept else "; data destroyed"))


@app.command()
def logs(
    ctx: typer.Context,
    name: str,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0)] = 100,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
) -> None:
    """An instance's server log (stdout and stderr), with terminal controls shown escaped."""
    import asyncio

    from foundry_fleet.wiring.runtimes import make_runtime

    c: CliContext = ctx.obj
    c.read(lambda fleet: fleet.get_instance(name))  # NotFound for an instance that does not exist

    async def show() -> None:
        # As the fleet's runtime keeps the log (the local driver: its log files, by instance name).
        async for line in make_runtime(c.config).logs(name, lines, follow_):
            # The tenant's server wrote these lines: raw, an escape sequence would command the admin's terminal.
            typer.echo(escape_controls(line))

    try:
        asyncio.run(show())
    except KeyboardInterrupt:
        pass


app.command("import")(data_cmds.import_data)
app.command("export")(data_cmds.export_data)
app.add_typer(sftp_key_cmds.app, name="sftp-key")
