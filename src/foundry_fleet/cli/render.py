"""Rendering for people (rich tables) and for programs (--json)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from foundry_fleet.domain.idle import format_idle_after
from foundry_fleet.domain.text import escape_controls
from foundry_fleet.domain.units import human_bytes

# No emoji codes: tenants' text may hold ":x:" and must be shown as written (and the table of codes
# is the slowest part of rich to load).
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

STATE_STYLE = {
    "running": "green", "starting": "yellow", "creating": "yellow", "stopping": "yellow",
    "stopped": "dim", "failed": "bold red", "sleeping": "cyan",
}


def shown(value: object) -> Text:
    """A table cell from text that may be a tenant's: no markup is read in it, no control reaches the terminal."""
    return Text(escape_controls(str(value)))


def safe(value: object) -> str:
    """The same, for text placed inside a markup string."""
    return escape(escape_controls(str(value)))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


INSTANCE_COLUMNS = ("name", "state", "sleeps", "release", "port", "pid", "restarts", "url")
# Left out in this order when the table would not fit the terminal (80 columns hold about six): the
# name, state and when it sleeps are what a glance is for; `instance show` and --json have the rest.
NARROW_LEAVES_OUT = ("pid", "url", "port", "restarts")


def instances_table(instances: list[dict[str, Any]], width: int | None = None) -> Table:
    """One row per instance, as many columns as fit in `width` (the terminal's, by default): a caption
    names those left out."""
    now = time.time()
    rows = [{
        "name": shown(i["name"]), "state": Text(escape_controls(i["state"]), style=STATE_STYLE.get(i["state"], "")),
        "sleeps": shown(sleep_text(i, now)), "release": shown(i["release"]), "port": shown(i["port"]),
        "pid": shown(i["pid"] or "-"), "restarts": shown(i["restarts"]), "url": shown(i["url"]),
    } for i in instances]
    columns = list(INSTANCE_COLUMNS)
    room = console.width if width is None else width
    need = {c: max([len(c)] + [r[c].cell_len for r in rows]) for c in columns}
    for col in NARROW_LEAVES_OUT:
        if sum(need[c] for c in columns) + 3 * len(columns) + 1 <= room:  # a cell's padding and border: 3
            break
        columns.remove(col)
    left_out = [c for c in INSTANCE_COLUMNS if c not in columns]
    caption = f"not shown at this width: {', '.join(left_out)} (instance show NAME has them)" if left_out else None
    t = Table(title=None, show_lines=False, caption=caption)
    for col in columns:
        t.add_column(col, no_wrap=col == "name")
    for row in rows:
        t.add_row(*(row[c] for c in columns))
    return t


def sleep_text(i: dict[str, Any], now: float) -> str:
    """When it sleeps: "never", "asleep", "in 12min" (idle now), "after 1h idle" (busy now)."""
    after = i.get("sleeps_after")
    if i.get("state") == "sleeping":
        return "asleep"
    if after is None:
        return "never"
    if i.get("state") != "running":
        return "-"
    since = i.get("idle_since")
    if since is None:
        return f"after {format_idle_after(after)} idle"
    return f"in {duration_text(max(0.0, since + after - now))}"


def duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def idle_rows(i: dict[str, Any]) -> list[tuple[str, str]]:
    after = i.get("sleeps_after")
    whose = "its own" if i.get("idle_after_own") else "the fleet's"
    since = i.get("idle_since")
    return [
        ("sleeps_after", f"{format_idle_after(after)} idle ({whose})"),
        ("idle_since", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "-"),
    ]


def instance_detail(i: dict[str, Any]) -> Table:
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for key in ("name", "state", "state_reason", "desired", "release", "url", "hosts", "node", "home", "port", "address",
                "pid", "restarts", "owner", "uid", "data_dir", "install_dir"):
        value = i.get(key)
        t.add_row(key, shown(", ".join(value) if isinstance(value, list) else value if value is not None else "-"))
    for key, text in idle_rows(i):
        t.add_row(key, shown(text))
    t.add_row("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i["created_at"])))
    return t


def hosts_table(hosts: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("host", "certificate", "valid until", "issuer"):
        t.add_column(col)
    styles = {"valid": "green", "invalid": "bold red", "none": "yellow", "unreachable": "red"}
    for h in hosts:
        state = h["state"] + (f" ({h['detail']})" if h.get("detail") else "")
        t.add_row(shown(h["host"]), Text(escape_controls(state), style=styles.get(h["state"], "")),
                  shown(h.get("not_after") or "-"), shown(h.get("issuer") or "-"))
    return t


def print_edge(edge: dict[str, Any] | None) -> None:
    """Whether Caddy serves the current state (with the daemon), and hostnames it does not serve."""
    if not edge:
        return
    if edge.get("in_sync") is False:
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(edge['since']))}" if edge.get("since") else ""
        console.print(f"edge: [bold red]out of date[/]{since}: {safe(edge.get('problem') or '')}")
    elif edge.get("in_sync"):
        console.print("edge: [green]up to date[/]")
    for c in edge.get("host_conflicts", []):
        console.print(f"[yellow]host {safe(c['host'])} is not served for {safe(c['instance'])}:[/] {safe(c['why'])}")


def print_runtime(runtime: dict[str, Any] | None, every_line: bool = False) -> None:
    """The runtime line of `status`: the driver and what it offers; its health lines that are not
    available (all of them with `every_line`), or that its health is unknown without the daemon."""
    if not runtime:
        return
    offers = []
    if runtime.get("isolation") is not None:
        offers.append(f"isolation {safe(runtime['isolation'])}")
        offers.append("limits enforced" if runtime.get("limits") else "no limits")
        offers.append("runs an image" if runtime.get("needs_image") else "no image")
    console.print(f"runtime: [bold]{safe(runtime['driver'])}[/]" + (f" ({', '.join(offers)})" if offers else ""),
                  highlight=False)
    health = runtime.get("health")
    if health is None:
        console.print("  health on this host: unknown (the daemon finds it when it starts)")
    for line in health or []:
        if not line["available"]:
            console.print(f"  [yellow]not available:[/] {safe(line['name'])}: {safe(line['detail'])}", highlight=False)
        elif every_line:
            console.print(f"  [green]available:[/] {safe(line['name'])}: {safe(line['detail'])}", highlight=False)
    for node in runtime.get("nodes") or []:
        health = "[green]healthy[/]" if node["healthy"] else f"[yellow]{safe(node['status'])}[/]"
        free = "unknown" if node["free_memory_mb"] is None else f"{node['free_memory_mb']} MB"
        console.print(f"  node {safe(node['name'])} ({safe(node['address'])}): {health}, "
                      f"{node['instances']} instance{'s' if node['instances'] != 1 else ''}, free memory {free}"
                      + (f", home {safe(node['home'])}" if node.get("home") else ""), highlight=False)
    if runtime.get("nodes_problem"):
        console.print(f"  [yellow]nodes unknown:[/] {safe(runtime['nodes_problem'])}", highlight=False)
    for image in runtime.get("images") or []:
        state = {True: "[green]image present[/]", False: "[yellow]no image yet[/]", None: "image unknown"}[image["present"]]
        console.print(f"  {state} for Foundry v{image['generation']} ({safe(', '.join(image['releases']))}): "
                      f"{safe(image['detail'])}", highlight=False)


def releases_table(releases: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("version", "layout", "node", "size", "sha256", "instances", "source"):
        t.add_column(col)
    for r in releases:
        t.add_row(shown(r["version"]), shown(r["layout"]), shown(r["node"]), human_bytes(r["unpacked_bytes"]),
                  shown(r["sha256"][:12]), shown(", ".join(r["instances"]) or "-"), shown(r["source"]))
    return t


def events_table(events: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("time", "actor", "action", "target", "outcome"):
        t.add_column(col, no_wrap=True)
    t.add_column("message")
    for e in events:
        t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), shown(e["actor"]), shown(e["action"]),
                  shown(e["target"]), shown(e["outcome"]), shown(e["message"]))
    return t


