"""A command that talks to the daemon starts at once: it imports no service, no database, no migration
tool and no Discord library (issue 9: `status` and `instance list` in <= 0.2 s; bench/cli_latency.py).

Each command runs in a fresh interpreter against a small HTTP server on the control socket that answers
as the daemon does, and reports the modules it imported."""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support.harness import CliResult

HEAVY = ("sqlalchemy", "alembic", "discord", "foundry_fleet.services", "foundry_fleet.store")

INSTANCE = {"name": "alice", "state": "running", "desired": "running", "state_reason": "", "release": "13.345",
            "port": 30001, "host": "alice.localhost", "hosts": ["alice.localhost"],
            "url": "https://alice.localhost:8443/-/", "data_dir": "/x/data", "install_dir": "/x/install", "pid": 7,
            "restarts": 0, "owner": None, "uid": None, "created_at": 1.0, "suspended": None}
ANSWERS = {
    "/v1/health": {"ok": True},
    "/v1/status": {"daemon": {"running": True, "pid": 1, "started_at": 1.0, "root": "/x"}, "capabilities": [],
                   "instances": [INSTANCE], "hosts": [], "edge": {"in_sync": True}},
    "/v1/instances": [INSTANCE],
    "/v1/instances/alice": INSTANCE,
    "/v1/instances/alice/start": INSTANCE,
    "/v1/panel/login-link": {"url": "https://fleet.localhost:8443/login/link?t=eyJpZCI6IjAwIn0.aGVsbG8.c2lnbmVk",
                             "expires_in": 600},
}


class _Daemon(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = ANSWERS.get(self.path.split("?")[0])
        data = json.dumps(body if body is not None else {"error": "not_found", "message": "no", "hint": None})
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    do_GET = do_POST = _answer

    def address_string(self) -> str:  # a unix socket has no client address
        return "control.sock"

    def log_message(self, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fleet_toml(tmp_path: Path) -> Iterator[Path]:
    config = tmp_path / "fleet.toml"
    config.write_text('[fleet]\nroot = "."\n')
    (tmp_path / "run").mkdir()
    server = _UnixHTTPServer(str(tmp_path / "run" / "control.sock"), _Daemon)
    # shutdown() waits for serve_forever to look again: every 0.05 s, not its default 0.5 s.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield config
    finally:
        server.shutdown()
        server.server_close()


PROBE = """
import json, sys
sys.argv = ["foundry-fleet", *json.loads(sys.argv[1])]
from foundry_fleet.cli.main import main
try:
    main()
finally:
    sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def run_cli(*args: str) -> tuple[CliResult, list[str]]:
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200",
                                                                 "NO_COLOR": "1", "PYTHONPATH": ":".join(sys.path)})
    err, _, modules = p.stderr.rpartition("\nMODULES ")
    return CliResult(p.returncode, p.stdout, err), json.loads(modules)


@pytest.mark.parametrize("args", [["status"], ["instance", "list"], ["instance", "show", "alice"],
                                  ["instance", "start", "alice"], ["status", "--json"]],
                         ids=" ".join)
def test_a_command_that_asks_the_daemon_imports_nothing_heavy(fleet_toml: Path, args: list[str]) -> None:
    result, modules = run_cli("--config", str(fleet_toml), *args)
    assert result.code == 0, result.err
    assert "alice" in result.out
    heavy = [m for m in modules if m.startswith(HEAVY)]
    assert heavy == [], heavy
    # Nor pydantic (0.1 s): the daemon validated fleet.toml; typer's own parsing of text and flags skips it.
    # Nor httpx: one question over a unix socket needs only the standard library's HTTP.
    assert "pydantic" not in modules and "httpx" not in modules


def test_panel_login_prints_the_link_whole_and_how_long_it_works(fleet_toml: Path) -> None:
    result, modules = run_cli("--config", str(fleet_toml), "panel", "login")
    assert result.code == 0, result.err
    url = ANSWERS["/v1/panel/login-link"]["url"]  # type: ignore[index]
    assert result.out.splitlines()[0] == url  # on a line of its own, never wrapped
    assert "works once, within 10 minutes" in result.out
    assert [m for m in modules if m.startswith(HEAVY)] == [] and "httpx" not in modules and "pydantic" not in modules


def test_an_operation_without_the_daemon_says_so_and_imports_nothing_heavy(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[fleet]\nroot = "."\n')
    result, modules = run_cli("--config", str(config), "instance", "stop", "alice")
    assert result.code == 6 and "daemon is not running" in result.err and "foundry-fleet up" in result.err
    assert "Traceback" not in result.err
    assert [m for m in modules if m.startswith(HEAVY)] == []
