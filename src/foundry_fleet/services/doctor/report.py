"""What a check says: a plain value, the same for the table, --json and the exit code."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from foundry_fleet.domain.errors import FleetError


class Status(str, enum.Enum):
    PASS = "pass"
    WARN = "warn"  # works, but will not for long or not for everyone: said why in the detail
    FAIL = "fail"  # something the fleet needs is missing or broken here
    SKIP = "skip"  # does not apply to this fleet (the detail says why): fails nothing


@dataclass(frozen=True)
class Check:
    name: str  # what was checked, e.g. "port 443 (https)"
    status: Status
    detail: str  # what was found, one line
    fix: str | None = None  # one line a person can act on (a command, a key of fleet.toml); None when fine

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "detail": self.detail, "fix": self.fix}


def passed(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def skipped(name: str, why: str) -> Check:
    return Check(name, Status.SKIP, why)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.FAIL, detail, fix)


def warned(name: str, detail: str, fix: str) -> Check:
    return Check(name, Status.WARN, detail, fix)


@dataclass(frozen=True)
class DoctorReport:
    checks: list[Check]
    daemon: dict[str, Any] = field(default_factory=dict)  # {"running": bool, "pid": int | None}

    @property
    def ok(self) -> bool:
        """No check failed (warnings and skips do not fail the run)."""
        return not any(c.status is Status.FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        found = Counter(c.status.value for c in self.checks)
        return {s.value: found.get(s.value, 0) for s in Status}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts(), "daemon": self.daemon,
                "checks": [c.to_dict() for c in self.checks]}


CheckGroup = tuple[str, Callable[[], list[Check]]]  # a concern's name, and what checks it


def run_groups(groups: list[CheckGroup], workers: int = 4) -> list[Check]:
    """Every group's checks, in the groups' order; groups run side by side (a resolver or a destination
    that takes its time holds up no other). A group that breaks is one failed check naming why, and the
    others still report."""

    def run(group: CheckGroup) -> list[Check]:
        name, checks = group
        try:
            return checks()
        except FleetError as e:
            return [failed(name, e.message, e.hint or "see the message; the other checks ran")]
        except Exception as e:  # noqa: BLE001 - one broken probe must not hide every other finding
            return [failed(name, f"could not be checked: {type(e).__name__}: {e}",
                           "see the message; the other checks ran")]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="doctor") as pool:
        return [check for found in pool.map(run, groups) for check in found]
