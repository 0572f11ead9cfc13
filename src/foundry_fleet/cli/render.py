"""Rendering for people (rich tables) and for programs (--json)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

STATE_STYLE = {
    "running": "green", "starting": "yellow", "creating": "yellow", "stopping": "yellow",
    "stopped": "dim", "failed": "bold red",
}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def instances_table(instances: list[dict[str, Any]]) -> Table:
    t = Table(title=None, show_lines=False)
    for col in ("name", "state", "release", "port", "pid", "restarts", "url"):
        t.add_column(col)
    for i in instances:
        style = STATE_STYLE.get(i["state"], "")
        t.add_row(i["name"], f"[{style}]{i['state']}[/]" if style else i["state"], i["release"], str(i["port"]),
                  str(i["pid"] or "-"), str(i["restarts"]), i["url"])
    return t


def instance_detail(i: dict[str, Any]) -> Table:
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    for key in ("name", "state", "state_reason", "desired", "release", "url", "hosts", "port", "pid",
                "restarts", "owner", "uid", "data_dir", "install_dir"):
        value = i.get(key)
        t.add_row(key, ", ".join(value) if isinstance(value, list) else str(value if value is not None else "-"))
    t.add_row("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i["created_at"])))
    return t


def hosts_table(hosts: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("host", "certificate", "valid until", "issuer"):
        t.add_column(col)
    styles = {"valid": "green", "invalid": "bold red", "none": "yellow", "unreachable": "red"}
    for h in hosts:
        state = h["state"] + (f" ({h['detail']})" if h.get("detail") else "")
        t.add_row(h["host"], f"[{styles.get(h['state'], '')}]{state}[/]", h.get("not_after") or "-", h.get("issuer") or "-")
    return t


def print_edge(edge: dict[str, Any] | None) -> None:
    """Whether Caddy serves the current state (with the daemon), and hostnames it does not serve."""
    if not edge:
        return
    if edge.get("in_sync") is False:
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(edge['since']))}" if edge.get("since") else ""
        console.print(f"edge: [bold red]out of date[/]{since}: {escape(edge.get('problem') or '')}")
    elif edge.get("in_sync"):
        console.print("edge: [green]up to date[/]")
    for c in edge.get("host_conflicts", []):
        console.print(f"[yellow]host {escape(c['host'])} is not served for {escape(c['instance'])}:[/] {escape(c['why'])}")


def releases_table(releases: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("version", "layout", "node", "size", "sha256", "instances", "source"):
        t.add_column(col)
    for r in releases:
        t.add_row(r["version"], r["layout"], r["node"], human_bytes(r["unpacked_bytes"]), r["sha256"][:12],
                  ", ".join(r["instances"]) or "-", r["source"])
    return t


def events_table(events: list[dict[str, Any]]) -> Table:
    t = Table()
    for col in ("time", "actor", "action", "target", "outcome"):
        t.add_column(col, no_wrap=True)
    t.add_column("message")
    for e in events:
        t.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"])), e["actor"], e["action"],
                  e["target"], e["outcome"], e["message"])
    return t


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
