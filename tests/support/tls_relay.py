"""A TLS connection held by one thread, offered to the caller as a plain local socket.

websockets' sync client reads in a thread of its own (blocked in recv() from before the opening request
is sent) while the caller's thread writes. Python's ssl sockets do not allow that: both threads drive the
one OpenSSL connection object, which OpenSSL does not lock. Under load, about one connection in several
hundred lost its opening request that way: Caddy had the TLS handshake and nothing after it, the client
timed out, and Caddy hung up a minute later; another failed with "[SSL] internal error" while sending.

Here an event loop in a thread of its own is the only one to touch the TLS connection (asyncio keeps
it in memory buffers, on one thread), and copies bytes between it and one end of a socket pair; the
caller gets the other end, and speaks plain websocket over it. What reaches the edge is unchanged:
the same TLS, the same SNI, the same bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
import threading

_CHUNK = 1 << 16


def tls_relay(port: int, host: str, context: ssl.SSLContext, timeout: float = 10.0) -> socket.socket:
    """A local socket whose bytes go, over TLS to 127.0.0.1:`port` with `host` as SNI, both ways.

    The TLS handshake is over when this returns: a certificate the context refuses raises here, as
    the ssl module's own error. The relay ends once both sides have closed."""
    ours, theirs = socket.socketpair()
    opened: concurrent.futures.Future[None] = concurrent.futures.Future()
    relay = _relay(theirs, port, host, context, timeout, opened)
    threading.Thread(target=asyncio.run, args=(relay,), name=f"tls relay to {host}", daemon=True).start()
    try:
        opened.result()  # the relay's own timeout bounds the wait
    except BaseException:
        ours.close()
        raise
    return ours


async def _relay(inner: socket.socket, port: int, host: str, context: ssl.SSLContext, timeout: float,
                 opened: concurrent.futures.Future[None]) -> None:
    remote = None
    try:
        remote = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host), timeout)
        local = await asyncio.open_connection(sock=inner)
    except BaseException as exc:
        inner.close()
        if remote is not None:
            remote[1].close()
        opened.set_exception(exc)  # the caller waits on this, whatever failed
        return
    opened.set_result(None)
    try:
        await asyncio.gather(_copy(remote[0], local[1]), _copy(local[0], remote[1]))
    finally:
        local[1].close()
        remote[1].close()


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Until `source` ends; then the end goes on: a half-close where the sink can (the socket pair), a
    close where it cannot (TLS has no half-close)."""
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, ssl.SSLError):
        pass  # the other side went away: ending the sink tells its reader so
    finally:
        if sink.can_write_eof() and not sink.is_closing():
            try:
                sink.write_eof()
            except (ConnectionError, OSError):
                sink.close()
        else:
            sink.close()
