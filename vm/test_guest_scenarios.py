"""Each scenario the guest ran, as a test here: passed, failed with the guest's own report, or missing
with what the guest's console last said."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lane import GuestRun

SCENARIOS = Path(__file__).resolve().parent / "guest" / "scenarios"


def _scenario_ids() -> list[str]:
    ids = []
    for path in sorted(SCENARIOS.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                ids.append(f"{path.name}::{node.name}")
    return ids


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.parametrize("scenario", _scenario_ids(), ids=_scenario_ids())
def test_in_the_guest(guest_run: GuestRun, scenario: str) -> None:
    case = guest_run.cases.get(scenario)
    if case is None and guest_run.selected:
        pytest.skip(f"not selected by FOUNDRY_FLEET_VM_SELECT={guest_run.selected!r}")
    if case is None:
        where = "the guest was killed at the lane's time limit" if guest_run.boot.timed_out else (
            f"the guest's run ended with exit {guest_run.boot.exit_code}")
        pytest.fail(f"{scenario} did not run in the guest ({where}).\nentry log:\n{_tail(guest_run.entry_log())}"
                    f"\nconsole:\n{_tail(guest_run.boot.console)}", pytrace=False)
    for kind in ("failure", "error", "skipped"):
        found = case.find(kind)
        if found is not None:
            out = "\n".join(_tail(e.text or "", 80) for e in case.iter() if e.tag in ("system-out", "system-err"))
            pytest.fail(f"in the guest, {scenario}: {kind}: {found.get('message', '')}\n{found.text or ''}\n{out}",
                        pytrace=False)
