"""Snapshot plans and thinning against znapzend's rules (units, m = month, slots, band edges, manual snapshots)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundry_fleet.domain.backup_plan import (
    MAX_SNAPSHOTS,
    Band,
    TimeFormat,
    current_slot,
    parse_duration,
    parse_plan,
    thin,
)
from foundry_fleet.domain.errors import InvalidInput

H, D, W = 3600, 86400, 7 * 86400
UTC = TimeFormat("%Y-%m-%d-%H%M%SZ")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5sec", 5), ("1second", 1), ("15min", 900), ("2mins", 120), ("1h", H), ("3hours", 3 * H),
     ("7d", 7 * D), ("2w", 2 * W), ("1m", 30 * D), ("6mon", 180 * D), ("1month", 30 * D), ("1y", 365.25 * D),
     ("2years", 730.5 * D)],
)
def test_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_m_is_a_month_not_a_minute() -> None:
    assert parse_duration("1m") == 30 * D and parse_duration("1min") == 60


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "empty"), ("7d", "retention=>interval"), ("1h=>7d", "shorter than the interval"),
     ("7d=>1h,7d=>1d", "given twice"), ("7x=>1h", "not a duration"), ("0d=>1h", "positive"),
     ("7d=>1h,", "retention=>interval"), ("1w=>1h,7d=>2h", "given twice")],
)
def test_bad_plans_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_plan(text)
    assert says in e.value.message and e.value.hint


def test_plan_is_sorted_and_canonical() -> None:
    plan = parse_plan("1y=>1w, 7d=>1h,30d=>1d")
    assert plan.bands == (Band(7 * D, H), Band(30 * D, D), Band(365.25 * D, W))
    assert str(plan) == "7d=>1h,30d=>1d,1y=>1w"
    assert plan.smallest_interval == H and plan.band_for(7 * D) == Band(7 * D, H)
    assert plan.band_for(7 * D + 1) == Band(30 * D, D) and plan.band_for(400 * D) is None


def test_slots_are_epoch_aligned() -> None:
    plan = parse_plan("1d=>15min")
    assert current_slot(1_000_000_123, plan) == 1_000_000_123 // 900 * 900


def test_names_round_trip_and_foreign_names_are_ignored() -> None:
    t = 1_795_000_000.0
    assert UTC.name(t) == "2026-11-18-110640Z"
    assert UTC.parse(UTC.name(t)) == t
    for foreign in ("manual-before-upgrade", "2026-11-18-110640", "2026-13-18-110640Z", "safety-2026-11-18-110640Z"):
        assert UTC.parse(foreign) is None
    with pytest.raises(InvalidInput):
        TimeFormat("%Y-%m-%d")
    with pytest.raises(InvalidInput):
        TimeFormat("%Y%m%d%H%M%S%z")


def test_thinning_example() -> None:
    plan = parse_plan("2h=>30min,1d=>6h")
    now = 1_795_000_000 // 86400 * 86400 + 12 * H  # noon UTC
    hourly = [now - i * 900 for i in range(0, 4 * 24)]  # a snapshot every 15 min for a day
    names = [UTC.name(t) for t in hourly] + ["manual-keep-me"]
    result = thin(names, now, plan, UTC)
    kept = sorted(UTC.parse(n) for n in result.keep if n != "manual-keep-me")
    assert "manual-keep-me" in result.keep
    assert now in kept  # never the snapshot of this moment
    recent = [t for t in kept if now - t <= 2 * H]
    older = [t for t in kept if now - t > 2 * H]
    assert len({int(t // 1800) for t in recent}) == len(recent)  # one per 30 min slot
    assert len({int(t // (6 * H)) for t in older}) == len(older)  # one per 6 h slot
    assert all(now - t <= D for t in kept)
    assert set(result.keep) | set(result.destroy) == set(names)
    assert not set(result.keep) & set(result.destroy)


durations = st.sampled_from(["30min", "1h", "2h", "6h", "1d", "2d", "1w", "1m"])


@st.composite
def plans(draw):  # type: ignore[no-untyped-def]
    pairs = draw(st.lists(st.tuples(durations, durations), min_size=1, max_size=4))
    text = ",".join(f"{max(a, b, key=parse_duration)}=>{min(a, b, key=parse_duration)}" for a, b in pairs)
    try:
        return parse_plan(text)
    except InvalidInput:
        return parse_plan("1d=>1h")  # a retention given twice: hypothesis explores the valid ones


@settings(max_examples=200, deadline=None)
@given(plans(), st.lists(st.integers(0, 60 * D), max_size=200), st.integers(0, 60 * D), st.booleans())
def test_thinning_invariants(plan, offsets: list[int], now_offset: int, with_manual: bool) -> None:  # type: ignore[no-untyped-def]
    base = 1_700_000_000
    now = base + now_offset
    times = sorted({base + o for o in offsets})
    names = [UTC.name(t) for t in times] + (["manual-label"] if with_manual else [])
    result = thin(names, now, plan, UTC)
    assert sorted(result.keep + result.destroy) == sorted(names)
    if with_manual:
        assert "manual-label" in result.keep
    kept = [UTC.parse(n) for n in result.keep if n != "manual-label"]
    for n in result.destroy:
        t = UTC.parse(n)
        assert t is not None and t < now  # nothing of this moment, nothing foreign
    seen = set()
    for t in kept:
        if t >= now:
            continue
        band = plan.band_for(now - t)
        assert band is not None, "a snapshot beyond the longest retention must go"
        slot = (band.retention, int(t // band.interval))
        assert slot not in seen, "one snapshot per band slot"
        seen.add(slot)
    for n in result.destroy:
        t = UTC.parse(n)
        band = plan.band_for(now - t)
        if band is not None:
            # Destroyed inside a band only because an older snapshot holds the same slot.
            slot_mates = [k for k in kept if k < t and plan.band_for(now - k) == band and int(k // band.interval) == int(t // band.interval)]
            assert slot_mates, "destroyed although it was the first of its slot"
    # Thinning what thinning kept changes nothing.
    again = thin(result.keep, now, plan, UTC)
    assert again.destroy == []


# --- how many snapshots a plan may keep -----------------------------------------------------------


def test_a_plan_keeping_billions_of_snapshots_is_refused() -> None:
    with pytest.raises(InvalidInput) as e:
        parse_plan("100y=>1s")
    # 100 years of one snapshot a second: the count and the limit are both in the message.
    assert "3,155,760,000 snapshots" in e.value.message and "10,000" in e.value.message
    assert "7d=>1h" in (e.value.hint or "")
    assert parse_plan("7d=>1h,30d=>1d,1y=>1w").snapshots_kept == 251  # the default: 168 + 30 + 52.2
    assert parse_plan("1d=>1min,1y=>1d").snapshots_kept == 1440 + 366
    with pytest.raises(InvalidInput, match="10,080 snapshots"):
        parse_plan("1w=>1min")  # one a minute for a week: just past the limit
    assert parse_plan("1000y=>1y").snapshots_kept == 1000


@pytest.mark.parametrize("text", ["99999999999999999999999999999y=>1h", f"{10**400}s=>1h", "1001y=>1y",
                                  "7d=>1h,1y=>1w,99999999999999999999min=>1y"])
def test_absurd_durations_are_refused_not_overflowed(text: str) -> None:
    with pytest.raises(InvalidInput, match="longer than 1000 years"):
        parse_plan(text)


units = st.sampled_from(["s", "min", "h", "d", "w", "m", "y"])
bands = st.tuples(st.integers(1, 400), units, st.integers(1, 400), units)


@settings(max_examples=300, deadline=None)
@given(st.lists(bands, min_size=1, max_size=4))
def test_plans_are_refused_exactly_when_they_would_keep_too_many(drawn: list[tuple[int, str, int, str]]) -> None:
    text = ",".join(f"{r}{ru}=>{i}{iu}" for r, ru, i, iu in drawn)
    retentions = [r * parse_duration(f"1{ru}") for r, ru, _i, _iu in drawn]
    valid_shape = (len(set(retentions)) == len(retentions)
                   and all(r * parse_duration(f"1{ru}") >= i * parse_duration(f"1{iu}") for r, ru, i, iu in drawn))
    kept = sum(r * parse_duration(f"1{ru}") / (i * parse_duration(f"1{iu}")) for r, ru, i, iu in drawn)
    if not valid_shape:
        with pytest.raises(InvalidInput):
            parse_plan(text)
    elif kept > MAX_SNAPSHOTS:
        with pytest.raises(InvalidInput, match="would keep up to .* more than the limit of 10,000"):
            parse_plan(text)
    else:
        assert parse_plan(text).snapshots_kept <= MAX_SNAPSHOTS


small = st.sampled_from(["1h", "2h", "3h", "6h", "12h", "1d", "2d"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(small, small), min_size=1, max_size=3), st.integers(0, 3600))
def test_the_count_bounds_what_thinning_keeps(pairs: list[tuple[str, str]], phase: int) -> None:
    """snapshots_kept is what the plan really keeps: a snapshot every smallest interval, thinned, leaves
    no more than that (plus one slot per band edge and the snapshot of this moment)."""
    text = ",".join(f"{max(a, b, key=parse_duration)}=>{min(a, b, key=parse_duration)}" for a, b in pairs)
    try:
        plan = parse_plan(text)
    except InvalidInput:
        return  # a retention given twice
    step = int(plan.smallest_interval)
    now = 1_700_000_000 + phase
    names = [UTC.name(t) for t in range(now - int(plan.longest_retention) - 5 * step, now + 1, step)]
    kept = thin(names, now, plan, UTC).keep
    assert len(kept) <= plan.snapshots_kept + 2 * len(plan.bands) + 1
