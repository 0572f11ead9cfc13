"""A sparkline as SVG polyline points: small integers, so hundreds of them keep a page light."""

from __future__ import annotations

from collections.abc import Sequence


def sparkline_points(values: Sequence[float], width: int = 90, height: int = 20) -> str:
    """"x,y x,y ..." scaled into width x height (y down, the highest value at the top, zero at the
    bottom); "" for fewer than two values."""
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = (width - 1) / (len(values) - 1)
    return " ".join(f"{round(i * step)},{round((height - 1) * (1 - max(0.0, v) / top))}"
                    for i, v in enumerate(values))
