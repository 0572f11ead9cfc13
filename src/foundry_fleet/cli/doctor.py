"""`foundry-fleet doctor`: the host checked before going live and after an upgrade (services/doctor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from foundry_fleet.cli.context import CliContext
from foundry_fleet.cli.render import console, print_json, shown
from foundry_fleet.domain.text import escape_controls

if TYPE_CHECKING:
    from foundry_fleet.services.doctor import DoctorReport

LABELS = {"pass": ("pass", "green"), "warn": ("WARN", "yellow"), "fail": ("FAIL", "bold red"), "skip": ("skip", "dim")}


def doctor(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
    public_address: Annotated[Optional[list[str]], typer.Option(
        "--public-address", metavar="ADDRESS",
        help="an address of this host's that no interface has (a NAT in front of it forwards it here); "
             "repeat for more")] = None,
) -> None:
    """Check this host as an operator would before going live and after an upgrade: DNS of the domain, the
    edge's ports and certificates, ZFS pool health and space, the runtime's tools and Node.js per release,
    clock sync, backup destinations and disk space. Each problem comes with a one-line fix. Exit code 0
    only when no check failed (warnings and checks that do not apply fail nothing)."""
    import ipaddress

    from foundry_fleet.domain.errors import InvalidInput
    from foundry_fleet.wiring.doctor import doctor_report

    c: CliContext = ctx.obj
    addresses = public_address or []
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise InvalidInput(f"--public-address {address!r} is not an IP address",
                               "give the IPv4 or IPv6 address the domain's DNS records name") from None
    status = c.read(lambda fleet: fleet.status())  # the daemon's, or the state it left
    report = doctor_report(c.config, c.services(), status, addresses)
    if json_out:
        print_json(report.to_dict())
    elif console.is_terminal:
        _print_table(report)
    else:
        _print_lines(report)
    if not report.ok:
        raise typer.Exit(1)


def _daemon_line(report: DoctorReport) -> str:
    if report.daemon.get("running"):
        return f"daemon: running (pid {report.daemon.get('pid')})"
    return "daemon: not running (what only it can tell is skipped)"


def _summary(report: DoctorReport) -> str:
    n = report.counts()
    return (f"{n['fail']} failed, {n['warn']} warning{'s' if n['warn'] != 1 else ''}, {n['pass']} passed, "
            f"{n['skip']} not applicable")


def _print_table(report: DoctorReport) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False)
    table.add_column("")
    table.add_column("check", no_wrap=True)
    table.add_column("found")
    for check in report.checks:
        label, style = LABELS[check.status.value]
        found = shown(check.detail)
        if check.fix:
            found.append("\nfix: ", style="bold")
            found.append(escape_controls(check.fix))
        table.add_row(Text(label, style=style), shown(check.name), found)
    console.print(_daemon_line(report), highlight=False)
    console.print(table)
    console.print(_summary(report), highlight=False)


def _print_lines(report: DoctorReport) -> None:
    """For a log or a pipe: one line a check, its fix on the next."""
    lines = [_daemon_line(report)]
    for check in report.checks:
        label, _style = LABELS[check.status.value]
        lines.append(f"{label:<4}  {escape_controls(check.name)}: {escape_controls(check.detail)}")
        if check.fix:
            lines.append(f"      fix: {escape_controls(check.fix)}")
    lines.append(_summary(report))
    typer.echo("\n".join(lines))
