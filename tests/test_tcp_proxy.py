"""The tests' TCP proxy (tests/tcp_proxy.py) does what the lease tests rely on.

Latency delays what the server sends, pause holds bytes inside the proxy with
the connection open, resume lets them through, drop_all cuts the client, and
every line the client sent is recorded per connection with its time.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tcp_proxy import TcpProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A server that sends back every chunk it receives, on as many connections as come."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection:
            while chunk := connection.recv(65536):
                connection.sendall(chunk)

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield int(listener.getsockname()[1])
    stop.set()
    acceptor.join(2)
    listener.close()


def receive(client: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    client.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_bytes_go_both_ways_and_every_client_line_is_recorded(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        with socket.create_connection((proxy.host, proxy.port)) as first:
            first.sendall(b"USER a\r\nRETR 1\r\nQU")
            assert receive(first, 18) == b"USER a\r\nRETR 1\r\nQU"
            first.sendall(b"IT\r\n")
            assert receive(first, 4) == b"IT\r\n"
            with socket.create_connection((proxy.host, proxy.port)) as second:
                second.sendall(b"DELE 2\r\n")
                assert receive(second, 8) == b"DELE 2\r\n"
        assert proxy.connections == 2
        assert proxy.client_lines(0) == [b"USER a", b"RETR 1", b"QUIT"]
        assert proxy.client_lines(1) == [b"DELE 2"]
        assert proxy.client_bytes(0) == b"USER a\r\nRETR 1\r\nQUIT\r\n"


def test_latency_delays_what_the_server_sends(echo_port: int) -> None:
    with (
        TcpProxy("127.0.0.1", echo_port, latency=0.3) as proxy,
        socket.create_connection((proxy.host, proxy.port)) as client,
    ):
        started = time.monotonic()
        client.sendall(b"NOOP\r\n")
        assert receive(client, 6) == b"NOOP\r\n"
        assert time.monotonic() - started >= 0.3


def test_pause_holds_bytes_with_the_connection_open_and_resume_delivers_them(
    echo_port: int,
) -> None:
    with (
        TcpProxy("127.0.0.1", echo_port) as proxy,
        socket.create_connection((proxy.host, proxy.port)) as client,
    ):
        client.sendall(b"one\r\n")
        assert receive(client, 5) == b"one\r\n"
        proxy.pause()
        marker = time.monotonic()
        client.sendall(b"two\r\n")
        with pytest.raises(TimeoutError):
            receive(client, 5, timeout=0.3)
        assert proxy.open_connections == 1
        # Recorded when read, though not forwarded.
        assert proxy.commands_after(0, marker) == [b"two"]
        proxy.resume()
        assert receive(client, 5) == b"two\r\n"


def test_drop_all_cuts_the_client(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        with socket.create_connection((proxy.host, proxy.port)) as client:
            client.sendall(b"hi\r\n")
            assert receive(client, 4) == b"hi\r\n"
            proxy.drop_all()
            client.settimeout(5)
            try:
                ended = client.recv(10)
            except ConnectionResetError:
                ended = b""
            assert ended == b""
        assert proxy.open_connections == 0
