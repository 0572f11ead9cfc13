"""Status updates from the event log: what is worth a message, de-duplication, the ops channel's rate
limit, and a closed DM inbox that is not retried in a loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from foundry_fleet.config import load_config
from foundry_fleet.domain.events import Outcome
from foundry_fleet.services.status_updates import Undeliverable, update_for
from foundry_fleet.wiring.services import FleetServices, make_status_updates, open_services
from tests.support.harness import Clock, FleetHarness
from tests.support.offline import create_offline

ALICE, BOB = "111111111111111111", "222222222222222222"


class Recorder:
    """Stands in for Discord: records what was sent; Bob's DMs are closed (Discord error 50007)."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.dms: list[tuple[str, str]] = []
        self.dm_attempts: list[str] = []

    async def post_ops(self, text: str) -> None:
        self.ops.append(text)

    async def send_dm(self, user_id: str, text: str) -> None:
        self.dm_attempts.append(user_id)
        if user_id == BOB:
            raise Undeliverable("Cannot send messages to this user (50007)")
        self.dms.append((user_id, text))


@pytest.fixture
def svc(fleet: FleetHarness, release_zips: dict[str, Path]) -> FleetServices:
    services = open_services(load_config(fleet.config), actor="supervisor")
    # Added in this process, as the instances are created: `release add` itself is tested through the CLI.
    services.releases.add(str(release_zips["node"]))
    for name, owner in (("alice", ALICE), ("bob", BOB), ("nobody", None)):
        create_offline(fleet, name, owner=owner)
    return services


def test_only_events_worth_a_message_become_updates() -> None:
    assert update_for("instance.crashed", "failed", "alice", "exit 1").text == "**alice** crashed and is being restarted: exit 1"
    assert update_for("instance.upgrade", "failed", "alice", "").key == "instance.upgrade:failed:alice"
    assert update_for("instance.start", "ok", "alice", "") is None
    assert update_for("backup.snapshot", "ok", "alice", "") is None


def test_sleeping_is_no_news_but_a_refused_wake_is() -> None:
    assert update_for("instance.sleep", "ok", "alice", "idle for 1h") is None  # routine, however often
    assert update_for("instance.wake", "ok", "alice", "") is None
    refused = update_for("instance.wake", "refused", "alice", "the host is full: 100 MiB free, waking alice needs 768 MiB")
    assert refused is not None and refused.key == "instance.wake:refused:alice"
    assert refused.text == ("**alice** was not woken for a visitor: the host is full: 100 MiB free, waking alice "
                            "needs 768 MiB")


def test_updates_are_deduplicated_counted_and_sent_to_the_owner(svc: FleetServices) -> None:
    clock, out = Clock(), Recorder()
    updates = make_status_updates(svc, out, clock=clock, repeat_after=1800)
    updates.start_from_now()
    svc.events.record("instance.start", "alice", Outcome.OK)  # routine: no message
    for _ in range(3):
        svc.events.record("instance.crashed", "alice", Outcome.FAILED, "exit 1")
    assert asyncio.run(updates.run_once()) == 1
    assert out.ops == ["**alice** crashed and is being restarted: exit 1"]
    assert out.dms == [(ALICE, out.ops[0])]

    clock.now += 1801
    svc.events.record("instance.crashed", "alice", Outcome.FAILED, "exit 1")
    asyncio.run(updates.run_once())
    assert out.ops[-1].endswith("(and 2 more time(s) since the last message)")
    svc.events.record("instance.failed", "nobody", Outcome.FAILED, "crash loop")
    asyncio.run(updates.run_once())
    assert "nobody" in out.ops[-1] and len(out.dms) == 2  # no owner, no DM


def test_a_closed_inbox_is_not_retried_and_the_ops_channel_is_rate_limited(svc: FleetServices) -> None:
    clock, out = Clock(), Recorder()
    updates = make_status_updates(svc, out, clock=clock, repeat_after=0, ops_burst=5, ops_window=600, dm_block=86400)
    updates.start_from_now()
    for i in range(12):
        svc.events.record("instance.crashed", "bob", Outcome.FAILED, f"exit {i}")
        clock.now += 1
        asyncio.run(updates.run_once())
    assert out.dm_attempts == [BOB]  # tried once; closed inbox remembered for a day
    assert len(out.ops) == 5  # the burst; the rest held back
    clock.now += 601
    svc.events.record("instance.crashed", "bob", Outcome.FAILED, "exit 12")
    asyncio.run(updates.run_once())
    assert len(out.ops) == 6 and out.dm_attempts == [BOB]
    clock.now += 86400
    svc.events.record("instance.crashed", "bob", Outcome.FAILED, "exit 13")
    asyncio.run(updates.run_once())
    assert out.dm_attempts == [BOB, BOB]  # a day later it is tried again, once


def test_a_restart_does_not_repeat_old_news(svc: FleetServices) -> None:
    svc.events.record("instance.failed", "alice", Outcome.FAILED, "before the restart")
    out = Recorder()
    updates = make_status_updates(svc, out)
    updates.start_from_now()
    assert asyncio.run(updates.run_once()) == 0 and out.ops == []
