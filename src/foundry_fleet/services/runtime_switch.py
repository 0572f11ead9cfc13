"""`foundry-fleet runtime set DRIVER`: move an existing fleet to another runtime driver (and back).

The rule: the daemon is not running, and no instance is live (starting, running or stopping). The
daemon reads [runtime] once when it starts and holds the old driver's resources (its firewall chain and
network helpers, or its podman service) and the handles of the tasks it started; a task of the old
driver would keep running unseen by the new one, and two drivers could then serve one instance. So the
switch holds the daemon's own lock while it works: no daemon can start half-way through.

Stopping the daemon with Ctrl-C stops its instances (their desired state stays `running`, so the next
`up` starts them on the new runtime); `instance stop NAME` stops one for good. Stored task handles of
the old driver mean nothing to the new one and are dropped; running the switch again repairs a switch
that was interrupted between rewriting fleet.toml and dropping them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from foundry_fleet.config import load_config
from foundry_fleet.domain.errors import Conflict
from foundry_fleet.domain.events import Outcome
from foundry_fleet.domain.instance import LIVE_STATES
from foundry_fleet.services.config_keys import set_section_keys
from foundry_fleet.services.daemon_lock import DaemonLock
from foundry_fleet.services.events import record
from foundry_fleet.store.database import open_database
from foundry_fleet.store.models import Instance

ACTION = "runtime.switch"


@dataclass(frozen=True)
class RuntimeSwitch:
    previous: str
    driver: str
    changed: bool  # fleet.toml now names another driver
    cleared: list[str] = field(default_factory=list)  # instances whose old driver's task handle was dropped

    def to_dict(self) -> dict[str, object]:
        return {"previous": self.previous, "driver": self.driver, "changed": self.changed, "cleared": self.cleared}


def switch_runtime(config_path: Path, driver: str, actor: str) -> RuntimeSwitch:
    """Make fleet.toml's [runtime] say `driver`; refused (and recorded) while anything still runs."""
    config = load_config(config_path)
    previous = config.runtime.driver
    sessions = open_database(config.paths.database)
    target = str(config.root)
    lock = DaemonLock(config.paths.daemon_lock)
    try:
        lock.acquire()
    except Conflict:
        holder = lock.holder() or {}
        live = _live_instances(sessions)
        with sessions.begin() as s:
            record(s, actor, ACTION, target, Outcome.REFUSED, f"{previous} -> {driver}: the daemon is running")
        stop_first = f"stop the instances ({_stop_commands(live)}), then " if live else ""
        raise Conflict(
            f"the fleet daemon is running (pid {holder.get('pid', '?')}) on the {previous} runtime; "
            "the runtime is switched with the daemon stopped",
            f"{stop_first}stop the daemon (Ctrl-C on `foundry-fleet up`, which also stops its instances) and retry",
        ) from None
    try:
        live = _live_instances(sessions)
        if live:
            names = ", ".join(f"{name} ({state})" for name, state in live)
            with sessions.begin() as s:
                record(s, actor, ACTION, target, Outcome.REFUSED, f"{previous} -> {driver}: still live: {names}")
            raise Conflict(
                f"{len(live)} instance(s) may still run on the {previous} runtime: {names}",
                f"start the daemon (foundry-fleet up) and stop them ({_stop_commands(live)}) or stop the "
                "daemon with Ctrl-C (it stops its instances), then retry",
            )
        changed = driver != previous
        if changed:
            # The file first: if this dies before the handles are dropped, running it again finishes.
            set_section_keys(config_path, "runtime", {"driver": json.dumps(driver)})
        with sessions.begin() as s:
            cleared = []
            for row in s.scalars(select(Instance)):  # a JSON column: SQL's IS NULL does not see a stored null
                if row.task and (not isinstance(row.task, dict) or row.task.get("driver") != driver):
                    row.task, row.address, row.pid = None, None, None
                    cleared.append(row.name)
            if changed or cleared:
                dropped = f"; dropped the {previous} task handles of {', '.join(cleared)}" if cleared else ""
                record(s, actor, ACTION, target, Outcome.OK, f"{previous} -> {driver}{dropped}",
                       previous=previous, driver=driver, cleared=cleared)
        return RuntimeSwitch(previous=previous, driver=driver, changed=changed, cleared=sorted(cleared))
    finally:
        lock.release()


def _live_instances(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    live_states = [state.value for state in LIVE_STATES]
    with sessions() as s:
        rows = s.execute(select(Instance.name, Instance.state).where(Instance.state.in_(live_states))
                         .order_by(Instance.name)).all()
        return [(name, state) for name, state in rows]


def _stop_commands(live: list[tuple[str, str]]) -> str:
    return "; ".join(f"foundry-fleet instance stop {name}" for name, _ in live)
