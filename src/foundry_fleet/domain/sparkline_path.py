"""A sparkline as the `d` of an SVG path: a short history drawn as one line in a small box.

Beside domain/sparkline.py's polyline points (the panel's): a path can break, so a gap in the
history (a sample without a CPU rate, a stop) is drawn as one rather than as a zero; a young history
keeps its place at the right, in time; and the inner points of a flat stretch are left out (a steady
memory line is a few points). Integer coordinates and SVG's implicit line-to make a point two numbers
and two spaces, so a page with a line for each of 200 instances stays small.
"""

from __future__ import annotations

from collections.abc import Sequence


def sparkline_path(values: Sequence[float | None], width: int, height: int, *, top: float | None = None,
              slots: int | None = None) -> str:
    """The path drawing `values` (oldest first) in a `width` x `height` box, the newest at the right edge.

    `slots`: how many values the box spans (default: as many as there are, so they fill it); a history's
    capacity here keeps a young history on the right, at its place in time. `top`: the value at the top
    edge (default the largest); larger ones are drawn there too, 0 and below at the bottom. A gap (None)
    breaks the line; a lone point between gaps is a zero-length segment, which a round line cap shows.
    Draw it with fill="none"; "" when there is nothing to draw.
    """
    if width < 1 or height < 1:
        raise ValueError(f"a sparkline needs a box of at least 1 x 1, not {width} x {height}")
    known = [v for v in values if v is not None]
    if not known:
        return ""
    scale = top if top is not None else max(known)
    slots = max(slots or len(values), len(values))
    first = slots - len(values)
    runs: list[list[tuple[int, int]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        x = round((first + i) * (width - 1) / (slots - 1)) if slots > 1 else width - 1
        share = min(max(value / scale, 0.0), 1.0) if scale > 0 else 0.0
        point = (x, height - 1 - round((height - 1) * share))
        if not runs[-1] or runs[-1][-1] != point:
            runs[-1].append(point)
    return "".join(_path(run) for run in runs if run)


def _path(points: list[tuple[int, int]]) -> str:
    kept = [p for i, p in enumerate(points)
            if i in (0, len(points) - 1) or not points[i - 1][1] == p[1] == points[i + 1][1]]
    x, y = kept[0]
    if len(kept) == 1:
        return f"M{x} {y}h0"
    return f"M{x} {y} " + " ".join(f"{x} {y}" for x, y in kept[1:])
