"""`status` sums the instances up by state in one line, and its table fits the terminal: at 80 columns
the least needed columns are left out (and named) rather than every column cut short."""

from __future__ import annotations

import io

from rich.console import Console

from foundry_fleet.cli.render import instances_table
from foundry_fleet.domain.instance import states_summary


def instance(name: str, state: str, **more: object) -> dict[str, object]:
    return {"name": name, "state": state, "release": "13.345", "port": 30001, "pid": None, "restarts": 0,
            "url": f"https://{name}.games.example.org/", "sleeps_after": 3600.0, "idle_since": None,
            "suspended": None, **more}


def rendered(table: object, width: int) -> list[str]:
    written = io.StringIO()
    Console(width=width, file=written, color_system=None).print(table)
    return written.getvalue().splitlines()


def test_the_summary_counts_states_serving_first_and_suspended_apart() -> None:
    fleet = [instance("a", "sleeping"), instance("b", "running"), instance("c", "sleeping"),
             instance("d", "sleeping"), instance("e", "stopped", suspended="unpaid"), instance("f", "failed")]
    assert states_summary(fleet) == "6 instances: 1 running, 3 sleeping, 1 suspended, 1 failed"
    assert states_summary(fleet[:1]) == "1 instance: 1 sleeping"
    assert states_summary([]) == "no instances"


def test_at_80_columns_names_states_and_sleep_times_are_whole() -> None:
    fleet = [instance("alice", "running", pid=1234567, idle_since=None),
             instance("bob-the-long-name", "sleeping"), instance("carol", "stopped")]
    lines = rendered(instances_table(fleet, width=80), 80)
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    for whole in ("bob-the-long-name", "sleeping", "asleep", "after 1h idle", "running", "stopped"):
        assert whole in text, whole
    assert "…" not in text and "1234567" not in text and "https://" not in text
    assert "not shown at this width: pid, url (instance show NAME has them)" in text
    wide = "\n".join(rendered(instances_table(fleet, width=200), 200))
    assert "not shown" not in wide and "https://bob-the-long-name.games.example.org/" in wide and "1234567" in wide
