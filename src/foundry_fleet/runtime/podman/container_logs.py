"""The instance's log as conmon writes it (k8s-file): `<time> <stream> <F|P> <text>` a line.

conmon caps the file at the container's log size by starting it again (a new file renamed over the
old), which the follower in runtime/logs.py tells by the file's identity, as for the local runtime's
rotation. Here each line loses its prefix, and a line conmon split (`P`, partial) is joined again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def _split(raw: str) -> tuple[str, str] | None:
    """(tag, text) of one conmon line; None when it is not one (then it is shown as it is)."""
    parts = raw.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("stdout", "stderr") or parts[2] not in ("F", "P"):
        return None
    return parts[2], parts[3] if len(parts) == 4 else ""


def server_lines(raw_lines: Iterable[str]) -> Iterator[str]:
    """The server's own lines from conmon's."""
    pending = ""
    for raw in raw_lines:
        found = _split(raw)
        if found is None:
            yield pending + raw
            pending = ""
            continue
        tag, text = found
        if tag == "P":
            pending += text
            continue
        yield pending + text
        pending = ""
    if pending:
        yield pending
