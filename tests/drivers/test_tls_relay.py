"""The tests' TLS relay (tests/support/tls_relay.py), against a real TLS websocket server: what the
client sends arrives over TLS, the server's close reaches the client, a certificate the client does not
trust is refused where the connection is opened, and the relay's thread ends with its connection."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

from tests.support.releases import make_certificate
from tests.support.tls_relay import tls_relay


class TlsEcho:
    """A websocket server over TLS (for `localhost`) that echoes, and says goodbye on "bye"."""

    def __init__(self, folder: Path) -> None:
        self.cert, key = make_certificate(folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.seen: list[tuple[bool, str]] = []  # (over TLS, Host) of each connection

        def echo(ws: ServerConnection) -> None:
            self.seen.append((isinstance(ws.socket, ssl.SSLSocket), ws.request.headers["Host"]))
            for message in ws:
                if message == "bye":
                    ws.close(1000, "goodbye")
                    return
                ws.send(message)

        self.server: Server = serve(echo, "127.0.0.1", 0, ssl=context)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture
def tls_echo(tmp_path: Path) -> Iterator[TlsEcho]:
    server = TlsEcho(tmp_path)
    yield server
    server.server.shutdown()


def relays_alive() -> list[threading.Thread]:
    # Only this file's: other tests' relays go to tenant hosts (`alice.localhost`), not `localhost`.
    return [t for t in threading.enumerate() if t.name == "tls relay to localhost" and t.is_alive()]


def wait_no_relays(timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while relays_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not relays_alive(), relays_alive()


def test_messages_cross_over_tls_both_ways_and_the_relay_ends_with_the_connection(tls_echo: TlsEcho) -> None:
    for n in range(20):
        relayed = tls_relay(tls_echo.port, "localhost", tls_echo.client_context())
        with connect(f"ws://localhost:{tls_echo.port}/-/socket.io/", sock=relayed, open_timeout=5) as ws:
            big = "x" * (200_000 + n)  # several TLS records, several reads of the relay
            for message in (f"hello {n}", big):
                ws.send(message)
                assert ws.recv(timeout=5) == message
    assert tls_echo.seen == [(True, f"localhost:{tls_echo.port}")] * 20
    wait_no_relays()


def test_the_servers_close_reaches_the_client(tls_echo: TlsEcho) -> None:
    relayed = tls_relay(tls_echo.port, "localhost", tls_echo.client_context())
    with connect(f"ws://localhost:{tls_echo.port}/", sock=relayed, open_timeout=5) as ws:
        ws.send("bye")
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "goodbye")
    wait_no_relays()


def test_a_certificate_the_client_does_not_trust_is_refused_when_the_relay_opens(tls_echo: TlsEcho) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_relay(tls_echo.port, "localhost", ssl.create_default_context())  # the system's CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_relay(tls_echo.port, "alice.localhost", tls_echo.client_context())  # not the certificate's name
    wait_no_relays()
    assert tls_echo.seen == []
