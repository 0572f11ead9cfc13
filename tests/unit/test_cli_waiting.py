"""`instance create`, `start` and `restart` follow the instance while the daemon waits for it, and an
instance that ends anywhere but running is an error that says why, with the server's last log lines;
stopping a stopped instance (or starting a running one) says so and succeeds."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from foundry_fleet.cli.context import CliContext
from foundry_fleet.domain.errors import ExternalFailure, NotFound
from tests.support.cli import run_main


def row(state: str, restarts: int = 0, reason: str = "") -> dict[str, Any]:
    return {"name": "alice", "state": state, "state_reason": reason, "restarts": restarts, "release": "13.345",
            "port": 30001, "pid": None, "url": "https://alice.example.org/", "hosts": ["alice.example.org"],
            "desired": "running", "suspended": None, "created_at": 1_800_000_000.0, "data_dir": "/d",
            "install_dir": "/i", "owner": None, "uid": None, "node": None, "sleeps_after": None,
            "idle_after_own": False, "idle_since": None}


class FakeDaemon:
    """Answers a waiting request once the polls have seen each of `states`."""

    def __init__(self, states: list[dict[str, Any]], logs: list[str] | None = None) -> None:
        self.states = states
        self.logs = logs or []
        self.polls = 0
        self.actions: list[str] = []
        self.seen_all = threading.Event()

    def get_instance(self, name: str) -> dict[str, Any]:
        if self.polls >= len(self.states):
            self.seen_all.set()
            return self.states[-1]
        self.polls += 1
        if self.states[self.polls - 1] is None:
            raise NotFound(f"no instance {name}")
        return self.states[self.polls - 1]

    def instance_logs(self, name: str, lines: int) -> list[str]:
        return self.logs[-lines:]

    def action(self, name: str, verb: str, wait: bool = True) -> dict[str, Any]:
        self.actions.append(verb)
        if wait and verb != "stop":
            self.seen_all.wait(10)
        return self.states[-1]

    def create_instance(self, **body: Any) -> dict[str, Any]:
        self.actions.append("create")
        self.seen_all.wait(10)
        return {"instance": self.states[-1], "admin_password": "pw"}


@pytest.fixture()
def daemon(monkeypatch: pytest.MonkeyPatch) -> list[FakeDaemon]:
    made: list[FakeDaemon] = []
    monkeypatch.setattr(CliContext, "require_daemon", lambda self: made[0])
    monkeypatch.setattr("foundry_fleet.cli.waiting.POLL_SECONDS", 0.01)
    monkeypatch.setattr("foundry_fleet.cli.waiting.START_GRACE_SECONDS", 0.05)
    return made


def test_a_create_that_crash_loops_shows_each_state_and_fails_with_the_reason_and_the_log(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    log = [f"line {i}" for i in range(30)] + ["Error: \x1b[31mboom"]
    daemon.append(FakeDaemon([None, row("creating"), row("starting", reason="starting"),
                              row("starting", 1, "exited with 3"),
                              row("failed", 5, "crashed 5 times in 60 s")], log))
    code, out, err = run_main(monkeypatch, capsys, "instance", "create", "alice", "--release", "13.345")
    assert code == ExternalFailure.exit_code
    for said in ("alice: creating", "alice: starting", "alice: starting, 1 crash (exited with 3)",
                 "alice: failed, 5 crashes (crashed 5 times in 60 s)"):
        assert said + "\n" in err, err
    assert "alice did not start (failed: crashed 5 times in 60 s)" in err
    assert "last 20 lines of alice's server log" in err
    assert "line 11\n" in err and "line 10\n" not in err
    assert "\x1b" not in err  # the tenant's log cannot command the terminal
    assert "instance logs alice" in err


def test_a_start_that_settles_running_exits_0(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.append(FakeDaemon([row("stopped"), row("starting"), row("running")]))
    code, out, err = run_main(monkeypatch, capsys, "instance", "start", "alice")
    assert code == 0, err
    assert "alice: starting\n" in err and out == "alice: running\n"


def test_a_start_answered_before_its_first_health_check_is_followed_until_it_runs(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("foundry_fleet.cli.waiting.START_GRACE_SECONDS", 5)
    fake = FakeDaemon([row("stopped"), row("starting")])
    daemon.append(fake)
    answered = threading.Event()
    threading.Timer(0.2, lambda: (answered.set(), fake.states.append(row("running")))).start()
    code, out, err = run_main(monkeypatch, capsys, "instance", "start", "alice")
    assert answered.is_set() and code == 0, err


def test_a_restart_still_starting_at_the_timeout_is_a_failure(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.append(FakeDaemon([row("starting")], ["listening soon"]))
    code, _, err = run_main(monkeypatch, capsys, "instance", "restart", "alice")
    assert code == ExternalFailure.exit_code
    assert "did not restart (did not become healthy in time)" in err and "listening soon" in err


@pytest.mark.parametrize(("verb", "state"), [("stop", "stopped"), ("start", "running")])
def test_nothing_to_do_says_so_and_succeeds(verb: str, state: str, daemon: list[FakeDaemon],
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    daemon.append(FakeDaemon([row(state)]))
    code, out, _ = run_main(monkeypatch, capsys, "instance", verb, "alice")
    assert (code, out) == (0, f"alice is already {state}\n")
    assert daemon[0].actions == []


class UpgradeDaemon(FakeDaemon):
    def upgrade(self, name: str, release: str) -> dict[str, Any]:
        self.actions.append(f"upgrade {release}")
        return {"upgraded": True, "snapshot": "before-upgrade", "instance": row("running")}


@pytest.mark.parametrize("yes", [False, True])
def test_a_downgrade_without_a_terminal_is_refused_unless_yes(
        yes: bool, daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    daemon.append(UpgradeDaemon([row("running")]))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, out, err = run_main(monkeypatch, capsys, "instance", "upgrade", "alice", "--release", "12.331",
                              *(["--yes"] if yes else []))
    if yes:
        assert code == 0 and daemon[0].actions == ["upgrade 12.331"]
    else:
        assert code == 2 and daemon[0].actions == []
        said = " ".join(err.split())  # as wrapped to the terminal's width
        assert "downgrade alice from 13.345 to 12.331? Foundry may not open worlds saved by 13.345" in said
        assert "pass --yes" in err


def test_a_downgrade_at_a_terminal_asks_and_no_stops_it(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.append(UpgradeDaemon([row("running")]))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    asked: list[str] = []

    def no(question: str, default: bool) -> bool:
        asked.append(question)
        return False

    monkeypatch.setattr("typer.confirm", no)
    code, _, err = run_main(monkeypatch, capsys, "instance", "upgrade", "alice", "--release", "13.300")
    assert code == 1 and daemon[0].actions == [] and asked[0].startswith("downgrade alice from 13.345 to 13.300?")
    assert "nothing changed" in err


def test_an_upgrade_to_a_newer_release_is_not_asked(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.append(UpgradeDaemon([row("running")]))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, out, _ = run_main(monkeypatch, capsys, "instance", "upgrade", "alice", "--release", "13.346")
    assert code == 0 and "alice now runs 13.346" in out


class LicenseDaemon(FakeDaemon):
    def set_license(self, name: str, key: str) -> dict[str, Any]:
        self.actions.append(f"license {key}")
        self.seen_all.wait(10)
        return self.states[-1]


def test_a_license_set_whose_restart_fails_is_not_taken_for_success(
        daemon: list[FakeDaemon], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Any) -> None:
    daemon.append(LicenseDaemon([row("running"), row("starting"), row("failed", 3, "crash loop")], ["bad start"]))
    key = tmp_path / "key"
    key.write_text("ABCD-EFGH-IJKL-MNOP-QRST-UVWX\n")
    code, out, err = run_main(monkeypatch, capsys, "instance", "set", "alice", "--license-file", str(key))
    assert code == ExternalFailure.exit_code and daemon[0].actions == ["license ABCD-EFGH-IJKL-MNOP-QRST-UVWX"]
    assert out == "alice: license set, restarted\n"
    assert "alice did not restart (failed: crash loop)" in err and "bad start" in err


def test_on_a_terminal_the_state_is_one_live_line_not_a_line_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from foundry_fleet.cli import waiting

    screen = io.StringIO()
    monkeypatch.setattr(waiting, "err_console", Console(file=screen, force_terminal=True, width=80))
    fake = FakeDaemon([row("starting"), row("starting", 1, "exited with 3"), row("running")])
    answer = waiting.follow(fake, "alice", lambda: fake.action("alice", "start"), poll=0.2)
    assert answer["state"] == "running"
    drawn = screen.getvalue()
    assert "alice: starting, 1 crash (exited with 3)" in drawn and "\x1b[" in drawn  # redrawn in place
    assert "alice: starting\n" not in drawn
