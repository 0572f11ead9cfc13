"""When an instance sleeps (pure rules): idle times as people write them, whose setting counts, when an
instance counts as idle and for how long, and which instances the edge sends to the wake handler."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundry_fleet.domain.errors import InvalidInput
from foundry_fleet.domain.idle import (
    LONGEST, SHORTEST, Activity, IdleSetting, format_idle_after, idle_since, parse_idle_after, sleep_due,
)
from foundry_fleet.domain.instance import DesiredState, InstanceState, goes_to_wake_handler

MINUTE, HOUR, DAY = 60, 3600, 86400


# --- writing an idle time ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("45s", 45), ("1s", 1), ("90min", 90 * MINUTE), ("60 min", HOUR), ("2h", 2 * HOUR), ("2 hours", 2 * HOUR),
    ("1d", DAY), ("30d", 30 * DAY), ("1w", 7 * DAY), ("  2H ", 2 * HOUR), ("3mins", 3 * MINUTE),
])
def test_durations_are_read_in_seconds(text: str, seconds: int) -> None:
    assert parse_idle_after(text) == seconds


@pytest.mark.parametrize("text", ["off", "OFF", " never ", "none"])
def test_off_means_it_never_sleeps(text: str) -> None:
    assert parse_idle_after(text) is None
    assert format_idle_after(None) == "off"


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1s"), (59, "59s"), (60, "1min"), (90, "90s"), (5400, "90min"), (3600, "1h"), (7200, "2h"),
    (86400, "1d"), (90000, "25h"), (30 * DAY, "30d"), (DAY + 1, "86401s"), (7 * DAY, "7d"),
    (1_000_001, "1000001s"), (30 * DAY - 1, "2591999s"),  # seconds, however many: never "1e+06s"
])
def test_an_idle_time_is_written_back_the_shortest_exact_way(seconds: int, text: str) -> None:
    assert format_idle_after(float(seconds)) == text


@given(st.integers(min_value=int(SHORTEST), max_value=int(LONGEST)))
def test_every_idle_time_in_range_is_written_back_as_itself(seconds: int) -> None:
    written = format_idle_after(float(seconds))
    assert parse_idle_after(written) == seconds, written
    # The fleet's configuration keeps the written form: writing it again changes nothing.
    assert format_idle_after(parse_idle_after(written)) == written


UNITS = {"s": 1, "sec": 1, "seconds": 1, "min": MINUTE, "mins": MINUTE, "minutes": MINUTE, "h": HOUR,
         "hours": HOUR, "d": DAY, "days": DAY, "w": 7 * DAY}


@given(st.sampled_from(sorted(UNITS)), st.data(), st.booleans())
def test_a_written_duration_means_what_it_says_or_is_refused_as_out_of_range(
        unit: str, data: st.DataObject, spaced: bool) -> None:
    # Up to twice the longest idle time: half of them in range, half not.
    count = data.draw(st.integers(min_value=1, max_value=2 * int(LONGEST) // UNITS[unit]))
    text = f"{count}{' ' if spaced else ''}{unit}"
    seconds = count * UNITS[unit]
    if seconds > LONGEST:
        with pytest.raises(InvalidInput) as info:
            parse_idle_after(text)
        assert "out of range" in info.value.message and info.value.hint == "use between 1s and 30d, or off"
    else:
        assert parse_idle_after(text) == seconds
        assert parse_idle_after(format_idle_after(seconds)) == seconds


@pytest.mark.parametrize("text", ["90m", "90 m", "2ms", "1mon", "1 month", "2 months"])
def test_m_is_refused_with_the_hint_that_minutes_are_min(text: str) -> None:
    """In backup plans (znapzend's syntax) `m` is a month: an idle time of "90m" is almost surely meant
    as minutes, and is refused rather than taken as 90 months (and then as out of range)."""
    with pytest.raises(InvalidInput) as info:
        parse_idle_after(text)
    assert info.value.message == f"{text!r} is not an idle time"
    assert info.value.hint is not None and "`min`" in info.value.hint and "60min" in info.value.hint


@pytest.mark.parametrize("text", ["31d", "2592001s", "5w", "1y", "43201min"])
def test_idle_times_longer_than_30_days_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_idle_after(text)
    assert info.value.message == f"an idle time of {text!r} is out of range"
    assert info.value.hint == "use between 1s and 30d, or off"


@pytest.mark.parametrize("text", ["0s", "0min", "-5min", "1.5h", "soon", "", "h", "10", "2h30min", "1e6s"])
def test_what_is_no_duration_is_refused_saying_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_idle_after(text)
    assert info.value.message == f"{text.strip()!r} is not an idle time"
    assert info.value.hint == "write a duration such as 60min, 2h or 1d, or off"


@pytest.mark.parametrize("text", ["fleet", " Fleet "])
def test_fleet_is_an_instances_setting_and_no_idle_time(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_idle_after(text)
    assert "`fleet` is an instance's setting" in info.value.message
    assert info.value.hint == "write a duration, or off"


# --- whose setting counts ------------------------------------------------------------------------


@pytest.mark.parametrize(("own", "fleet", "idle_after"), [
    (None, 3600.0, 3600.0),  # its own: follow the fleet's
    (None, None, None),  # the fleet's is off
    (0.0, 3600.0, None),  # its own is off, whatever the fleet says
    (0.0, None, None),
    (120.0, 3600.0, 120.0),  # its own time wins, shorter...
    (7200.0, 60.0, 7200.0),  # ... or longer
    (7200.0, None, 7200.0),  # and even when the fleet's is off
])
def test_an_instances_own_idle_time_wins_over_the_fleets(own: float | None, fleet: float | None,
                                                         idle_after: float | None) -> None:
    assert IdleSetting(own=own, fleet=fleet).idle_after == idle_after


# --- idle, and for how long -------------------------------------------------------------------------


@pytest.mark.parametrize(("users", "in_flight", "busy"), [
    (0, 0, False),  # nobody: idle
    (1, 0, True),  # a player in the game
    (0, 1, True),  # a request of its hosts under way (an open websocket, a page loading)
    (3, 2, True),
    (None, 0, True),  # its Foundry did not say: never taken for idle
    (None, 5, True),
])
def test_only_a_foundry_that_counts_no_user_with_nothing_under_way_is_idle(
        users: int | None, in_flight: int, busy: bool) -> None:
    assert Activity(users=users, requests_in_flight=in_flight).busy is busy


IDLE = Activity(users=0, requests_in_flight=0)


def test_the_idle_clock_starts_when_it_turns_idle_and_is_kept_while_it_stays_so() -> None:
    assert idle_since(None, IDLE, now=1000.0) == 1000.0
    # Later rounds keep the moment it turned idle, not the moment of the round.
    assert idle_since(1000.0, IDLE, now=1015.0) == 1000.0
    assert idle_since(1000.0, IDLE, now=5000.0) == 1000.0


@pytest.mark.parametrize("busy", [
    Activity(users=1, requests_in_flight=0), Activity(users=0, requests_in_flight=1),
    Activity(users=None, requests_in_flight=0),
])
def test_anything_busy_stops_the_idle_clock(busy: Activity) -> None:
    assert idle_since(1000.0, busy, now=1015.0) is None
    assert idle_since(None, busy, now=1015.0) is None
    # Idle again afterwards: the clock starts over, it does not resume.
    assert idle_since(idle_since(1000.0, busy, 1015.0), IDLE, now=1020.0) == 1020.0


def test_sleep_is_due_once_idle_for_its_idle_time_and_never_when_off_or_busy() -> None:
    assert not sleep_due(1000.0, 60.0, now=1059.9)
    assert sleep_due(1000.0, 60.0, now=1060.0)
    assert sleep_due(1000.0, 60.0, now=99999.0)
    assert not sleep_due(None, 60.0, now=99999.0)  # busy
    assert not sleep_due(1000.0, None, now=99999.0)  # off


def test_rounds_of_idleness_lead_to_sleep_only_without_a_busy_round_in_between() -> None:
    """The watch's loop in small: a round every 15 s, an idle time of 60 s."""
    since: float | None = None
    due_at = []
    rounds = [IDLE] * 3 + [Activity(users=0, requests_in_flight=1)] + [IDLE] * 6
    for i, activity in enumerate(rounds):
        now = 15.0 * i
        since = idle_since(since, activity, now)
        if sleep_due(since, 60.0, now):
            due_at.append(now)
    # Idle from 0 s to 30 s (not long enough), busy at 45 s, idle again from 60 s: due at 120 s on.
    assert due_at == [120.0, 135.0]


# --- which instances the edge sends to the wake handler ------------------------------------------

# Written out rather than derived: every state of an instance that is to run and is not suspended,
# and what its visitors get.
TO_THE_WAKE_HANDLER = {
    InstanceState.SLEEPING: True,  # the first visit wakes it
    InstanceState.STARTING: True,  # on its way up: the page follows it
    InstanceState.STOPPING: True,  # on its way down (to sleep, or for a restart)
    InstanceState.STOPPED: False,  # the fleet is down, or it starts in a moment: its static page says stopped
    InstanceState.FAILED: True,  # the page says why
    InstanceState.RUNNING: False,  # Foundry itself
    InstanceState.CREATING: False,  # not set up yet: the edge's own page
}


def test_every_state_is_decided() -> None:
    assert set(TO_THE_WAKE_HANDLER) == set(InstanceState)


@pytest.mark.parametrize(("state", "desired", "suspended"),
                         list(itertools.product(InstanceState, DesiredState, (False, True))))
def test_only_instances_that_are_to_run_and_do_not_go_to_the_wake_handler(
        state: InstanceState, desired: DesiredState, suspended: bool) -> None:
    expected = desired is DesiredState.RUNNING and not suspended and TO_THE_WAKE_HANDLER[state]
    # Stopped, suspended or being deleted: never woken by a visit, whatever its state says.
    assert goes_to_wake_handler(state.value, desired.value, suspended) is expected
