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
from foundry_fleet.domain.units import human_bytes, human_duration

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


INSTANCE_COLUMNS = ("name", "state", "release", "uptime", "memory", "cpu", "players", "backup", "sleeps", "restarts",
                    "port", "pid")
# Left out in this order when the table would not fit the terminal: the name, the state and its reason,
# and the figures are what a glance is for; `instance show` and --json have the rest (and the URL).
NARROW_LEAVES_OUT = ("pid", "port", "restarts", "release", "uptime", "cpu", "sleeps")
STATE_ROOM = len("suspended: unpaid")  # what the state may take when columns are counted; longer wraps
NOT_FROM_DAEMON = "–"  # a figure only the daemon knows, asked while it is not running
NOT_APPLICABLE = "-"
DAEMON_DOWN_NOTE = f"{NOT_FROM_DAEMON}: only the running daemon knows uptime, memory, CPU, players and backups"


def instances_table(instances: list[dict[str, Any]], width: int | None = None, daemon_running: bool = True,
                    now: float | None = None) -> Table:
    """One row per instance, as many columns as fit in `width` (the terminal's, by default): a caption
    names those left out."""
    now = time.time() if now is None else now
    rows = [_instance_row(i, now, daemon_running) for i in instances]
    columns = list(INSTANCE_COLUMNS)
    room = console.width if width is None else width
    for col in NARROW_LEAVES_OUT:
        if _table(rows, columns, None, STATE_ROOM).__rich_measure__(console, console.options.update_width(10**4)).maximum <= room:
            break
        columns.remove(col)
    left_out = [c for c in INSTANCE_COLUMNS if c not in columns]
    notes = [f"not shown at this width: {', '.join(left_out)} (instance show NAME has them)"] if left_out else []
    if not daemon_running and instances:
        notes.append(DAEMON_DOWN_NOTE)
    return _table(rows, columns, "\n".join(notes) or None)


def _table(rows: list[dict[str, Text]], columns: list[str], caption: str | None,
           state_width: int | None = None) -> Table:
    # No outer border and two spaces between columns: at 80 columns that leaves room for the figures.
    t = Table(box=None, padding=(0, 1), show_edge=False, pad_edge=False, caption=caption, header_style="bold")
    for col in columns:
        # Only the state wraps, its reason onto more lines: a long reason costs no figure its column.
        t.add_column(col, no_wrap=col != "state", justify="right" if col in ("cpu", "players") else "left",
                     max_width=state_width if col == "state" else None)
    for row in rows:
        t.add_row(*(row[c] for c in columns))
    return t


def _instance_row(i: dict[str, Any], now: float, daemon_running: bool) -> dict[str, Text]:
    state = i["state"]
    figure = _figure_text(i, now) if daemon_running else dict.fromkeys(_FIGURE_COLUMNS, NOT_FROM_DAEMON)
    return {
        "name": shown(i["name"]),
        "state": Text(escape_controls(state_text(i)), style=STATE_STYLE.get(state, "")),
        "release": shown(i["release"]), **{c: shown(figure[c]) for c in _FIGURE_COLUMNS},
        "sleeps": shown(sleep_text(i, now)), "restarts": shown(i["restarts"]), "port": shown(i["port"]),
        "pid": shown(i["pid"] or NOT_APPLICABLE),
    }


_FIGURE_COLUMNS = ("uptime", "memory", "cpu", "players", "backup")


def state_text(i: dict[str, Any]) -> str:
    """The state with why, where why matters: "failed: crashed 5 times in 10 min", "suspended: unpaid"."""
    if i.get("suspended") is not None:
        return f"suspended: {i['suspended']}" if i["suspended"] else "suspended"
    if i["state"] == "failed" and i.get("state_reason"):
        return f"failed: {i['state_reason']}"
    return str(i["state"])


def _figure_text(i: dict[str, Any], now: float) -> dict[str, str]:
    uptime, used, limit = i.get("uptime_s"), i.get("memory_bytes"), i.get("memory_limit_bytes")
    cpu, players, backup = i.get("cpu_percent"), i.get("players"), i.get("last_backup_at")
    memory = NOT_APPLICABLE if used is None else human_bytes(used) + (f" / {human_bytes(limit)}" if limit else "")
    return {
        "uptime": NOT_APPLICABLE if uptime is None else human_duration(uptime),
        "memory": memory,
        "cpu": NOT_APPLICABLE if cpu is None else f"{cpu:.1f}%" if cpu < 10 else f"{cpu:.0f}%",
        "players": NOT_APPLICABLE if players is None else str(players),
        "backup": "none" if backup is None else f"{human_duration(now - backup)} ago",
    }


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
    return f"in {compact_duration(max(0.0, since + after - now))}"


def compact_duration(seconds: float) -> str:
    """A time left in the notation of `idle_after` (fleet.toml, `instance set --idle-after`): 45s, 12min, 2.5h.

    Not domain.units.human_duration ("12 min", "2 h 30 min"), though both write durations: this one
    fills the sleeps column beside "after 1h idle", which is that setting as the operator wrote it, so
    the column reads in one notation; the uptime and backup columns read in the other, like the panel.
    Merging them would change what one of those shows."""
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


def instance_detail(i: dict[str, Any], daemon_running: bool = True) -> Table:
    """`daemon_running`: whether `i` came from the daemon; an answer without the figures (an operation's)
    shows none of them."""
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for key in ("name", "state", "state_reason", "desired", "release", "url", "hosts", "node", "home", "port", "address",
                "pid", "restarts", "owner", "uid", "license", "data_dir", "install_dir"):
        value = i.get(key)
        t.add_row(key, shown(", ".join(value) if isinstance(value, list) else value if value is not None else "-"))
    for key, text in idle_rows(i):
        t.add_row(key, shown(text))
    if "memory_bytes" in i:
        figures = _figure_text(i, time.time()) if daemon_running else dict.fromkeys(_FIGURE_COLUMNS, NOT_FROM_DAEMON)
        for column in _FIGURE_COLUMNS:
            t.add_row(column, shown(figures[column]))
        if not daemon_running:
            t.add_row("", shown(DAEMON_DOWN_NOTE))
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


def print_edge(edge: dict[str, Any] | None, out: Console = console) -> None:
    """Whether Caddy serves the current state (with the daemon), and hostnames it does not serve."""
    if not edge:
        return
    if edge.get("in_sync") is False:
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(edge['since']))}" if edge.get("since") else ""
        out.print(f"edge: [bold red]out of date[/]{since}: {safe(edge.get('problem') or '')}")
    elif edge.get("in_sync"):
        out.print("edge: [green]up to date[/]")
    for c in edge.get("host_conflicts", []):
        out.print(f"[yellow]host {safe(c['host'])} is not served for {safe(c['instance'])}:[/] {safe(c['why'])}")


def print_runtime(runtime: dict[str, Any] | None, every_line: bool = False, out: Console = console) -> None:
    """The runtime line of `status`: the driver and what it offers; its health lines that are not
    available (all of them with `every_line`), or that its health is unknown without the daemon."""
    if not runtime:
        return
    offers = []
    if runtime.get("isolation") is not None:
        offers.append(f"isolation {safe(runtime['isolation'])}")
        offers.append("limits enforced" if runtime.get("limits") else "no limits")
        offers.append("runs an image" if runtime.get("needs_image") else "no image")
    out.print(f"runtime: [bold]{safe(runtime['driver'])}[/]" + (f" ({', '.join(offers)})" if offers else ""),
                  highlight=False)
    health = runtime.get("health")
    if health is None:
        out.print("  health on this host: unknown (the daemon finds it when it starts)")
    for line in health or []:
        if not line["available"]:
            out.print(f"  [yellow]not available:[/] {safe(line['name'])}: {safe(line['detail'])}", highlight=False)
        elif every_line:
            out.print(f"  [green]available:[/] {safe(line['name'])}: {safe(line['detail'])}", highlight=False)
    for node in runtime.get("nodes") or []:
        health = "[green]healthy[/]" if node["healthy"] else f"[yellow]{safe(node['status'])}[/]"
        free = "unknown" if node["free_memory_mb"] is None else f"{node['free_memory_mb']} MB"
        out.print(f"  node {safe(node['name'])} ({safe(node['address'])}): {health}, "
                      f"{node['instances']} instance{'s' if node['instances'] != 1 else ''}, free memory {free}"
                      + (f", home {safe(node['home'])}" if node.get("home") else ""), highlight=False)
    if runtime.get("nodes_problem"):
        out.print(f"  [yellow]nodes unknown:[/] {safe(runtime['nodes_problem'])}", highlight=False)
    for image in runtime.get("images") or []:
        state = {True: "[green]image present[/]", False: "[yellow]no image yet[/]", None: "image unknown"}[image["present"]]
        out.print(f"  {state} for Foundry v{image['generation']} ({safe(', '.join(image['releases']))}): "
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


