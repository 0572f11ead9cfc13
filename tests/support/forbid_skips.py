"""A pytest plugin: with FOUNDRY_FLEET_FORBID_SKIPS=1 (as CI runs), a run in which any test skipped
fails, and the skipped tests are listed with their reasons. A skipped test did not run, and a run that
did not run everything is no pass."""

from __future__ import annotations

import os

import pytest

# CI sets this: a test that skips there did not run, and a run that did not run everything is no pass.
FORBID_SKIPS = "FOUNDRY_FLEET_FORBID_SKIPS"


def _skipped(session_or_config: pytest.Session | pytest.Config) -> list[pytest.TestReport]:
    config = session_or_config if isinstance(session_or_config, pytest.Config) else session_or_config.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return list(reporter.stats.get("skipped", [])) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(FORBID_SKIPS) == "1" and exitstatus == pytest.ExitCode.OK and _skipped(session):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if os.environ.get(FORBID_SKIPS) != "1" or not skipped:
        return
    terminalreporter.write_sep("=", f"{len(skipped)} skipped, and {FORBID_SKIPS}=1 counts a skip as a failure",
                               red=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
