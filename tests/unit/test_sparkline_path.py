"""The sparkline's SVG path: where points go, gaps, flat stretches, and how short it stays."""

from __future__ import annotations

import random
import re

import pytest

from foundry_fleet.domain.sparkline_path import sparkline_path


def points(d: str) -> list[list[tuple[int, int]]]:
    """The path's runs of (x, y), read back as an SVG renderer reads them."""
    runs = []
    for run in re.findall(r"M([^M]*)", d):
        numbers = [int(n) for n in re.findall(r"-?\d+", run.removesuffix("h0"))]
        runs.append(list(zip(numbers[::2], numbers[1::2], strict=True)))
    return runs


def test_values_span_the_box_the_largest_at_the_top_zero_at_the_bottom() -> None:
    assert sparkline_path([0, 50, 100], 101, 11) == "M0 10 50 5 100 0"


def test_top_scales_and_clamps_and_slots_keep_a_young_history_on_the_right() -> None:
    assert sparkline_path([50, 200, -5], 11, 11, top=100) == "M0 5 5 0 10 10"
    # 3 values of a history that holds 11: the last three places, the newest at the right edge.
    assert sparkline_path([1, 2, 3], 11, 11, top=3, slots=11) == "M8 7 9 3 10 0"


def test_gaps_break_the_line_and_a_lone_point_is_a_dot() -> None:
    assert sparkline_path([None, 4, 4, None, 2, None, None, 4], 8, 5) == "M1 0 2 0M4 2h0M7 0h0"
    assert sparkline_path([None, None], 10, 10) == "" and sparkline_path([], 10, 10) == ""


def test_a_flat_stretch_keeps_its_ends_only() -> None:
    d = sparkline_path([5, 5, 5, 5, 5, 10, 10, 10, 0], 9, 3)
    assert d == "M0 1 4 1 5 0 7 0 8 2"


def test_all_zero_or_a_zero_top_lies_on_the_bottom() -> None:
    assert sparkline_path([0, 0, 0], 3, 4) == "M0 3 2 3"
    assert sparkline_path([1, 2], 3, 4, top=0) == "M0 3 2 3"


def test_an_hour_of_samples_is_integers_in_the_box_and_short() -> None:
    rng = random.Random(7)
    memory = [200_000_000 + rng.randrange(-5_000_000, 5_000_000) for _ in range(120)]
    d = sparkline_path(memory, 120, 24)
    (run,) = points(d)
    assert all(0 <= x < 120 and 0 <= y < 24 for x, y in run)
    xs = [x for x, _ in run]
    assert xs == sorted(set(xs)) and (xs[0], xs[-1]) == (0, 119)  # one a pixel, but where a flat stretch is left out
    assert len(d) < 900  # x 200 instances: under 180 KB for a page of lines that move every sample
    steady = sparkline_path([150_000_000] * 119 + [150_100_000], 120, 24, top=512_000_000)
    assert len(steady) < 30


def test_a_box_must_have_room() -> None:
    with pytest.raises(ValueError):
        sparkline_path([1], 0, 10)
