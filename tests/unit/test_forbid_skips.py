"""CI never passes with a skipped test: the forbid_skips plugin turns any skip into a failed run."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

ONE_SKIPS = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="needs a thing this host lacks")
def test_cannot_run_here():
    pass
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, forbid: str | None) -> pytest.RunResult:
    if forbid is None:
        monkeypatch.delenv("FOUNDRY_FLEET_FORBID_SKIPS", raising=False)
    else:
        monkeypatch.setenv("FOUNDRY_FLEET_FORBID_SKIPS", forbid)
    pytester.makepyfile(test_sample=ONE_SKIPS)
    return pytester.runpytest_inprocess("-p", "tests.support.forbid_skips", "-p", "no:cacheprovider")


def test_a_skip_fails_the_run_and_is_listed_with_its_reason(pytester, monkeypatch) -> None:
    result = _run(pytester, monkeypatch, "1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*1 skipped, and FOUNDRY_FLEET_FORBID_SKIPS=1 counts a skip as a failure*",
                                 "SKIPPED test_sample.py::test_cannot_run_here: *needs a thing this host lacks"])


def test_without_the_setting_a_skip_is_reported_but_passes(pytester, monkeypatch) -> None:
    result = _run(pytester, monkeypatch, None)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
