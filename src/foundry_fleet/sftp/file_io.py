"""A tenant's file bytes at an offset: one pwrite or pread each, and a write is done whole or refused.

asyncssh's own file server seeks, then writes, and tells the client "written" whatever count the write
returned: a regular file that takes only part of a write (a quota reached midway) would lose the rest
silently. Here the rest is written, or its error goes to the client.

Both run on the event loop, as asyncssh's did: a 255 KiB write into the page cache takes tens of
microseconds, and handing it to a worker thread per request costs more CPU than it saves
(bench/RESULTS.md, "Tenants' SFTP")."""

from __future__ import annotations

import os
from typing import BinaryIO


def write_at(file_obj: BinaryIO, offset: int, data: bytes) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(file_obj.fileno(), view[done:], offset + done)
    return done


def read_at(file_obj: BinaryIO, offset: int, size: int) -> bytes:
    return os.pread(file_obj.fileno(), size, offset)
