"""An instance's export: the zip of a snapshot taken for it, and that snapshot removed once the zip is sent.

The snapshot keeps the zip consistent however long the client takes to read it, but nobody asked to keep
it: it is removed when the stream ends, however it ends (read to the end, failed half way, or closed by a
client that went away). Only that snapshot, by the name it was taken under, is removed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator

log = logging.getLogger(__name__)


class Export:
    def __init__(self, instance: str, snapshot: str, chunks: Generator[bytes, None, None],
                 remove: Callable[[], None]) -> None:
        """`chunks`: the zip of `snapshot`, made as it is read; `remove`: removes `snapshot`."""
        self.instance = instance
        self.snapshot = snapshot
        self._chunks = chunks
        self._remove = remove
        # A piece may still be being read in a worker thread when the reader goes away: the removal
        # waits for it, rather than pulling the snapshot from under it.
        self._reading = threading.Lock()

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The zip, piece by piece, each read in a worker thread (the daemon's loop never waits on the
        disk). Stream it once, and close it (`aclose`) if it is not read to the end."""
        try:
            while (chunk := await asyncio.to_thread(self._next)) is not None:
                yield chunk
        finally:
            # Started in a thread of its own, so a reader that is being cancelled (a client gone away)
            # does not stop it; awaited when the reader is not.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, self._finish))

    def _next(self) -> bytes | None:
        with self._reading:
            return next(self._chunks, None)

    def _finish(self) -> None:
        with self._reading:
            try:
                try:
                    self._chunks.close()
                finally:
                    self._remove()
            except Exception as e:  # noqa: BLE001 - nobody may be waiting for the answer: it is logged
                log.warning("after the export of %s, snapshot %s: %s", self.instance, self.snapshot, e)
