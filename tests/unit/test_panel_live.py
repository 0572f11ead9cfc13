"""The panel's event streams, driven directly: what they send when, and when they stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from foundry_fleet.domain.errors import NotFound
from foundry_fleet.services.access import Principal
from foundry_fleet.services.bulletin import Bulletin
from foundry_fleet.services.panel_cards import InstanceCard
from foundry_fleet.services.panel_sessions import PanelUser
from foundry_fleet.services.views import InstanceView
from foundry_fleet.web.panel import live
from foundry_fleet.web.panel.live import LiveStreams, sse
from foundry_fleet.web.panel.services import Panel, PanelServices

USER = PanelUser(Principal("500000000000000001"), "Discord user 500000000000000001")


def view(name: str, state: str = "running") -> InstanceView:
    return InstanceView(name=name, state=state, desired="running", state_reason="", release="13.345", port=30000,
                        host=f"{name}.localhost", hosts=[f"{name}.localhost"], url=f"https://{name}.localhost/-/",
                        data_dir="/d", install_dir="/i", pid=None, restarts=0, owner=USER.principal.discord_id,
                        uid=None, created_at=0.0)


def card(name: str, state: str = "running") -> InstanceCard:
    return InstanceCard(view=view(name, state), uptime_s=None, players=None, memory_bytes=None,
                        memory_limit_bytes=None, cpu_percent=None, memory_history=(), cpu_history=(),
                        history_slots=120, last_backup_at=None, certificate="valid")


class Cards:
    def __init__(self, *cards: InstanceCard) -> None:
        self.shown = {c.name: c for c in cards}

    def cards(self, _principal: Principal) -> list[InstanceCard]:
        return [self.shown[n] for n in sorted(self.shown)]

    def card(self, _principal: Principal, name: str, _action: str = "view") -> InstanceCard:
        if name not in self.shown:
            raise NotFound(f"you have no instance named {name}")
        return self.shown[name]


class Sessions:
    def __init__(self) -> None:
        self.signed_in = True

    def user(self, _cookie: str | None) -> PanelUser | None:
        return USER if self.signed_in else None


def streams(cards: Cards, logs: Any = None) -> tuple[LiveStreams, PanelServices, Sessions]:
    sessions = Sessions()
    services = PanelServices(access=None, cards=cards, operations=None, backups=None, releases=None,  # type: ignore[arg-type]
                             logs=logs, bulletin=Bulletin(), port_suffix="")
    return LiveStreams(Panel(sessions, services)), services, sessions  # type: ignore[arg-type]


async def next_of(stream: AsyncIterator[str], timeout: float = 2.0) -> str:
    return await asyncio.wait_for(anext(stream), timeout)


def test_an_event_is_one_data_line_per_line() -> None:
    assert sse("lines", "a\nb") == "event: lines\ndata: a\ndata: b\n\n"


def test_the_overview_sends_a_row_when_it_changes_and_the_body_when_instances_come_or_go() -> None:
    async def scenario() -> None:
        cards = Cards(card("alice"), card("bob"))
        panel, services, sessions = streams(cards)
        stream = panel._overview_events(services, USER, "cookie")
        first = asyncio.ensure_future(next_of(stream))
        await asyncio.sleep(0.1)
        assert not first.done()  # what the page shows already is not sent again
        cards.shown["alice"] = card("alice", "stopped")
        services.bulletin.bump()
        event = await first
        assert event.startswith("event: row-alice\n") and "state-stopped" in event and "bob" not in event
        cards.shown["carol"] = card("carol")
        services.bulletin.bump()
        event = await next_of(stream)
        assert event.startswith("event: rows\n") and 'id="row-carol"' in event and 'id="row-alice"' in event
        # Signed out (or the session expired): the stream ends at the next change.
        sessions.signed_in = False
        services.bulletin.bump()
        with pytest.raises(StopAsyncIteration):
            await next_of(stream)

    asyncio.run(scenario())


def test_a_quiet_stream_sends_a_comment_to_stay_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "KEEPALIVE", 0.05)

    async def scenario() -> None:
        panel, services, _ = streams(Cards(card("alice")))
        assert await next_of(panel._overview_events(services, USER, "cookie")) == ": keepalive\n\n"

    asyncio.run(scenario())


def test_the_instance_stream_ends_when_the_instance_is_gone() -> None:
    async def scenario() -> None:
        cards = Cards(card("alice"))
        panel, services, _ = streams(cards)
        stream = panel._instance_events(services, USER, "cookie", "alice")
        pending = asyncio.ensure_future(next_of(stream))
        await asyncio.sleep(0.05)
        cards.shown["alice"] = replace(card("alice"), players=3)
        services.bulletin.bump()
        event = await pending
        assert event.startswith("event: card-alice\n") and "<dd>3</dd>" in event
        del cards.shown["alice"]
        services.bulletin.bump()
        with pytest.raises(StopAsyncIteration):
            await next_of(stream)

    asyncio.run(scenario())


def test_a_flooding_log_is_sent_in_capped_escaped_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "LOG_BATCH_LINES", 5)

    async def logs(_name: str, _lines: int, _follow: bool) -> AsyncIterator[str]:
        for i in range(40):
            yield f"<b>line {i}</b>" + "x" * (5000 if i == 0 else 0)

    async def scenario() -> None:
        panel, services, _ = streams(Cards(card("alice")), logs)
        stream = panel._log_lines(services, "alice", "cookie")
        event = await next_of(stream)
        assert event.startswith("event: lines\n")
        data = [line[len("data: "):] for line in event.splitlines() if line.startswith("data: ")]
        assert data[0].startswith("&lt;b&gt;line 0&lt;/b&gt;") and len(data[0]) <= live.LOG_LINE_CHARS + 20
        assert data[1:5] == [f"&lt;b&gt;line {i}&lt;/b&gt;" for i in range(1, 5)]
        assert data[5].startswith("[… ") and "more lines not shown here" in data[5]
        assert "<b>" not in event
        await stream.aclose()
        assert panel.log_streams == 0

    asyncio.run(scenario())
