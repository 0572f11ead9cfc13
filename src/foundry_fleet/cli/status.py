"""`foundry-fleet status`: the daemon, the runtime and every instance with its figures, once or
redrawn in place every few seconds (`--watch`)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from foundry_fleet.cli.render import (
    console, hosts_table, instances_table, print_edge, print_runtime, safe,
)
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.instance import states_summary

NOT_A_TERMINAL = "status --watch redraws the screen in place, and this output is not a terminal"
NOT_A_TERMINAL_HINT = "in scripts and pipes use `status` (or `status --json`) and repeat it yourself"


def print_status(data: dict[str, Any], out: Console = console) -> None:
    d = data["daemon"]
    if d["running"]:
        out.print(f"daemon: [green]running[/] (pid {d['pid']}) for {safe(d['root'])}")
    else:
        out.print(f"daemon: [red]not running[/] for {safe(d['root'])} (states below are the last recorded)")
    runtime = data.get("runtime")
    print_runtime(runtime, out=out)
    shown_with_runtime = {line["name"] for line in (runtime or {}).get("health") or []}
    for cap in data["capabilities"]:
        if not cap["available"] and cap["name"] not in shown_with_runtime:
            out.print(f"[yellow]not available:[/] {cap['name']}: {safe(cap['detail'])}")
    out.print(states_summary(data["instances"]), highlight=False)
    if data["instances"]:
        out.print(instances_table(data["instances"], width=out.width,
                                  daemon_running=bool(d["running"])))
        unlicensed = [i["name"] for i in data["instances"] if i.get("license") == "missing"]
        if unlicensed:
            out.print(f"[yellow]license missing:[/] {safe(', '.join(unlicensed))} (Foundry shows its license page "
                      "until one is set: `foundry-fleet instance set NAME --license-file FILE`)")
    if data.get("hosts"):
        out.print(hosts_table(data["hosts"]))
    print_edge(data.get("edge"), out=out)


def seconds(interval: str) -> float:
    """--interval: seconds between redraws, 0.5 at least (a shorter one would mostly redraw the same)."""
    try:
        value = float(interval)
    except ValueError:
        raise InvalidInput(f"--interval must be a number of seconds, not {interval!r}") from None
    if not value >= 0.5:
        raise InvalidInput(f"--interval {interval} is too short", "redraw every 0.5 seconds or more")
    return value


def watch(read: Callable[[], dict[str, Any]], interval: float, out: Console = console,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Redraw the status every `interval` seconds until Ctrl-C, which ends it as a normal exit.
    Refused when `out` is not a terminal: redrawing writes cursor moves a file or a pipe cannot use."""
    if not out.is_terminal:
        raise InvalidInput(NOT_A_TERMINAL, NOT_A_TERMINAL_HINT)
    try:
        with Live(_screen(read(), interval, out), console=out, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                sleep(interval)
                live.update(_screen(read(), interval, out), refresh=True)
    except KeyboardInterrupt:
        pass


def _screen(data: dict[str, Any], interval: float, out: Console) -> Text:
    # Drawn on a console of its own: printing on `out` while Live holds it would draw Live's block too.
    page = Console(file=io.StringIO(), width=out.width, force_terminal=True, color_system=out.color_system,
                   emoji=False)
    page.print(f"every {interval:g} s, Ctrl-C to stop; last at {time.strftime('%H:%M:%S')}", highlight=False)
    print_status(data, page)
    return Text.from_ansi(page.file.getvalue())  # type: ignore[attr-defined]
