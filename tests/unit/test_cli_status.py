"""`status` sums the instances up by state in one line, and its table fits the terminal: at 80 columns
the least needed columns are left out (and named) rather than every column cut short. Each row has the
state with its reason and the daemon's figures; `--watch` redraws it in a terminal and refuses elsewhere."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from foundry_fleet.cli.render import instance_detail, instances_table, state_text
from foundry_fleet.cli.status import seconds, watch
from foundry_fleet.domain.instance import DAEMON_FIGURES, states_summary
from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.services.init import init_fleet
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import Instance, Release
from tests.support.cli import run_main


NOW = 1_800_000_000.0
MIB = 1024 * 1024
RUNNING_FIGURES: dict[str, object] = {
    "uptime_s": 12000.0, "players": 3, "memory_bytes": 312 * MIB, "memory_limit_bytes": 2048 * MIB,
    "cpu_percent": 7.5, "last_backup_at": NOW - 720}


def instance(name: str, state: str, **more: object) -> dict[str, object]:
    """An instance as `status --json` gives it, figures unknown unless given."""
    return {"name": name, "state": state, "state_reason": "", "release": "13.345", "port": 30001, "pid": None,
            "restarts": 0, "url": f"https://{name}.games.example.org/", "sleeps_after": 3600.0, "idle_since": None,
            "suspended": None, **dict.fromkeys(DAEMON_FIGURES), **more}


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


def test_at_80_columns_names_states_and_figures_are_whole() -> None:
    fleet = [instance("alice", "running", pid=1234567, idle_since=None, **RUNNING_FIGURES),
             instance("bob-the-long-name", "sleeping"), instance("carol", "stopped")]
    lines = rendered(instances_table(fleet, width=80, now=NOW), 80)
    assert all(len(line) <= 80 for line in lines), lines
    text = "\n".join(lines)
    for whole in ("bob-the-long-name", "sleeping", "running", "stopped", "312.0 MiB / 2.0 GiB", "12 min ago",
                  "players", "none"):
        assert whole in text, whole
    assert "…" not in text and "1234567" not in text and "https://" not in text
    assert "not shown at this width: release, uptime, cpu, sleeps," in text
    wide = "\n".join(rendered(instances_table(fleet, width=200, now=NOW), 200))
    assert "not shown" not in wide and "1234567" in wide and "asleep" in wide and "after 1h idle" in wide
    assert "https://" not in wide  # the URL is `instance show`'s


def test_at_160_columns_every_figure_has_its_column() -> None:
    fleet = [instance("alice", "running", pid=4242, **RUNNING_FIGURES),
             instance("bob", "failed", state_reason="crashed 5 times in 10 min", last_backup_at=NOW - 3 * 86400),
             instance("carol", "stopped", suspended="unpaid"), instance("dave", "sleeping")]
    lines = rendered(instances_table(fleet, width=160, now=NOW), 160)
    assert all(len(line) <= 160 for line in lines), lines
    header = lines[0].split()
    assert header[:8] == ["name", "state", "release", "uptime", "memory", "cpu", "players", "backup"], header
    row = {line.split()[0]: line for line in lines[1:] if line.strip()}
    for figure in ("3 h 20 min", "312.0 MiB / 2.0 GiB", "7.5%", " 3 ", "12 min ago", "13.345"):
        assert figure in row["alice"], figure
    assert "failed: crashed 5 times in 10 min" in row["bob"] and "3 d ago" in row["bob"]
    assert "suspended: unpaid" in row["carol"] and row["carol"].split()[-1] != "–"
    assert "sleeping" in row["dave"] and " none " in row["dave"]
    assert "only the running daemon" not in "\n".join(lines)


def test_the_sleeps_column_reads_like_the_idle_setting_and_the_uptime_like_the_panel() -> None:
    # Two notations on purpose (cli/render.compact_duration says why): a row shows both.
    idle = instance("alice", "running", **{**RUNNING_FIGURES, "uptime_s": 9000.0},
                    sleeps_after=4 * 3600.0, idle_since=NOW - 5400)
    row = " ".join(rendered(instances_table([idle], width=200, now=NOW), 200))
    assert "2 h 30 min" in row and "in 2.5h" in row  # the uptime; the time left until it sleeps
    soon = instance("bob", "running", sleeps_after=3600.0, idle_since=NOW - 48 * 60)
    assert "in 12min" in " ".join(rendered(instances_table([soon], width=200, now=NOW), 200))


def test_the_reason_of_a_failure_or_suspension_is_part_of_the_state() -> None:
    assert state_text(instance("a", "failed", state_reason="crashed 5 times in 10 min")) == (
        "failed: crashed 5 times in 10 min")
    assert state_text(instance("a", "stopped", suspended="unpaid")) == "suspended: unpaid"
    assert state_text(instance("a", "stopped", suspended="")) == "suspended"
    assert state_text(instance("a", "running", state_reason="healthy")) == "running"
    assert state_text(instance("a", "sleeping", state_reason="idle for 1h")) == "sleeping"
    # At 80 columns a long reason wraps in its cell; it pushes no figure out.
    lines = rendered(instances_table([instance("bob", "failed", state_reason="crashed 5 times in 10 min "
                                               "and the last lines of its log said why"),
                                      instance("alice", "running", **RUNNING_FIGURES)], width=80, now=NOW), 80)
    assert all(len(line) <= 80 for line in lines) and "312.0 MiB / 2.0 GiB" in "\n".join(lines)


def test_without_the_daemon_its_figures_are_dashes_and_the_note_says_so_once() -> None:
    fleet = [instance("alice", "running"), instance("bob", "stopped")]
    text = "\n".join(rendered(instances_table(fleet, width=160, daemon_running=False, now=NOW), 160))
    assert text.count("only the running daemon knows uptime, memory, CPU, players and backups") == 1
    alice = next(line for line in text.splitlines() if line.startswith("alice"))
    assert alice.count("–") == 5 and "none" not in alice


def test_status_json_has_the_figures_and_the_state_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """While the daemon is down, --json still names every figure (null) beside the recorded reasons, and
    the table shows them as dashes, said once."""
    config = init_fleet(tmp_path / "fleet")
    sessions = open_database(load_config(config).paths.database)
    with sessions.begin() as s:
        s.add(Release(version="13.345", generation=13, build=345, layout="node", entry="main.js", sha256="0" * 64,
                      zip_bytes=1, unpacked_bytes=1, path="/nowhere", source="test"))
        s.add(Instance(name="bob", release_version="13.345", port=30001, desired="running", state="failed",
                       state_reason="crashed 5 times in 10 min", extra_hosts=[], crash_times=[], restarts=5,
                       created_at=1.0))
        s.add(Instance(name="carol", release_version="13.345", port=30002, desired="stopped", state="stopped",
                       suspended_reason="unpaid", extra_hosts=[], crash_times=[], restarts=0, created_at=2.0))
    code, out, err = run_main(monkeypatch, capsys, "--config", str(config), "status", "--json")
    assert code == 0, err
    data = json.loads(out)
    by_name = {i["name"]: i for i in data["instances"]}
    assert data["daemon"]["running"] is False
    assert {k: by_name["bob"][k] for k in DAEMON_FIGURES} == dict.fromkeys(DAEMON_FIGURES)
    assert by_name["bob"]["state_reason"] == "crashed 5 times in 10 min" and by_name["carol"]["suspended"] == "unpaid"
    code, out, err = run_main(monkeypatch, capsys, "--config", str(config), "status")
    assert code == 0, err
    text = " ".join(out.split())
    assert "failed: crashed 5" in text and "times in 10 min" in text and "suspended: unpaid" in text
    assert text.count("only the running daemon knows") == 1


def test_watch_refuses_without_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(monkeypatch, capsys, "--config", "nowhere.toml", "status", "--watch")
    assert code == 2 and out == "", out
    err = " ".join(err.split())
    assert "not a terminal" in err and "status --json" in err and "Traceback" not in err
    code, _, err = run_main(monkeypatch, capsys, "status", "--watch", "--json")
    assert code == 2 and "--json prints once" in err
    for bad in ("0.1", "soon", "nan"):
        with pytest.raises(InvalidInput):
            seconds(bad)
    assert seconds("2") == 2.0 and seconds("0.5") == 0.5


def test_watch_redraws_until_ctrl_c_and_then_ends_normally() -> None:
    written = io.StringIO()
    screen = Console(width=100, file=written, force_terminal=True, color_system=None)
    reads: list[int] = []
    waits: list[float] = []

    def read() -> dict[str, object]:
        reads.append(1)
        return {"daemon": {"running": True, "pid": 7, "root": "/fleet"}, "capabilities": [], "runtime": None,
                "instances": [instance("alice", "running", players=len(reads))], "hosts": [], "edge": None}

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise KeyboardInterrupt

    watch(read, 0.5, screen, sleep)  # returns: Ctrl-C is the way out, not an error
    assert len(reads) == 3 and waits == [0.5, 0.5, 0.5]
    assert "every 0.5 s, Ctrl-C to stop" in written.getvalue() and "alice" in written.getvalue()


def test_status_help_names_watch_and_interval(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(monkeypatch, capsys, "status", "--help")
    assert code == 0 and "--watch" in out and "--interval" in out and "--json" in out


def test_instance_list_without_the_daemon_says_its_figures_are_unknown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = init_fleet(tmp_path / "fleet")
    sessions = open_database(load_config(config).paths.database)
    with sessions.begin() as s:
        s.add(Release(version="13.345", generation=13, build=345, layout="node", entry="main.js", sha256="0" * 64,
                      zip_bytes=1, unpacked_bytes=1, path="/nowhere", source="test"))
        s.add(Instance(name="alice", release_version="13.345", port=30001, desired="running", state="running",
                       extra_hosts=[], crash_times=[], restarts=0, created_at=1.0))
    code, out, err = run_main(monkeypatch, capsys, "--config", str(config), "instance", "list")
    assert code == 0, err
    assert out.count("only the running daemon knows") == 1 and "none" not in out


def test_instance_show_has_the_figures_and_an_operations_answer_none() -> None:
    detail = "\n".join(rendered(instance_detail(instance("alice", "running", created_at=NOW, **RUNNING_FIGURES)),
                                100))
    assert re.search(r"memory\s+312.0 MiB / 2.0 GiB", detail) and re.search(r"players\s+3", detail), detail
    down = "\n".join(rendered(instance_detail(instance("alice", "running", created_at=NOW), daemon_running=False),
                              100))
    assert re.search(r"memory\s+–", down) and "only the running daemon knows" in down
    answer = {k: v for k, v in instance("alice", "running", created_at=NOW).items() if k not in DAEMON_FIGURES}
    assert "memory" not in "\n".join(rendered(instance_detail(answer), 100))
