"""A streamed answer whose stream is always closed when the answer ends, however it ends.

Starlette leaves a stream it stops reading (the client went away, the send failed) suspended, to be
closed whenever it is collected; a stream that cleans up after itself (an export removes its snapshot)
must be closed at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class ClosingStream(StreamingResponse):
    def __init__(self, content: AsyncGenerator[bytes, None], media_type: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._stream = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.aclose()
