"""Tests of the TCP proxy (tests/tcp_proxy.py) that fault-injection tests rely on.

Against a tiny local echo server, so that each property (forwarding, latency,
pause, record, drop) is checked on its own, fast, before a POP3 test trusts it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tcp_proxy import TcpProxy


class EchoServer:
    """Echoes back every chunk it receives, on any number of connections, until closed."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            with self._lock:
                self._socks.append(sock)
            thread = threading.Thread(target=self._echo, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _echo(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(2)
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(2)
        for sock in socks:
            sock.close()
        self.listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo.port) as p:
        yield p


@contextlib.contextmanager
def client(proxy: TcpProxy, timeout: float = 2.0) -> Iterator[socket.socket]:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_until(predicate: object, timeout: float = 2.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_forwards_both_ways(proxy: TcpProxy) -> None:
    assert proxy.host == "127.0.0.1"
    assert proxy.port > 0
    with client(proxy) as sock:
        sock.sendall(b"USER alice\r\n")
        assert recv_exactly(sock, 12) == b"USER alice\r\n"
        big = bytes(range(256)) * 1024  # more than one 64 KiB chunk
        sock.sendall(big)
        assert recv_exactly(sock, len(big)) == big
        assert proxy.connections == 1
        assert proxy.open_connections == 1


def test_latency_delays_delivery(echo: EchoServer) -> None:
    with TcpProxy("127.0.0.1", echo.port, latency=0.2) as proxy, client(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"NOOP\r\n")
        assert recv_exactly(sock, 6) == b"NOOP\r\n"
        assert time.monotonic() - started >= 0.2
        # Settable at any time: back to no delay.
        proxy.latency = 0.0
        started = time.monotonic()
        sock.sendall(b"STAT\r\n")
        assert recv_exactly(sock, 6) == b"STAT\r\n"
        assert time.monotonic() - started < 0.2


def test_pause_holds_bytes_and_resume_delivers_them(proxy: TcpProxy) -> None:
    with client(proxy) as sock:
        sock.sendall(b"NOOP\r\n")
        assert recv_exactly(sock, 6) == b"NOOP\r\n"
        proxy.pause()
        sock.sendall(b"RETR 1\r\n")
        sock.sendall(b"RETR 2\r\n")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1024)
        # Recorded when read, although held: both commands, on an open connection.
        assert wait_until(lambda: proxy.client_lines(0)[-2:] == [b"RETR 1", b"RETR 2"])
        assert proxy.open_connections == 1
        proxy.resume()
        sock.settimeout(2.0)
        assert recv_exactly(sock, 16) == b"RETR 1\r\nRETR 2\r\n"


def test_client_lines_are_recorded_per_connection(proxy: TcpProxy) -> None:
    with client(proxy) as first:
        first.sendall(b"USER a\r\nPA")
        first.sendall(b"SS x\r")
        assert recv_exactly(first, 15) == b"USER a\r\nPASS x\r"
        marker = time.monotonic()
        first.sendall(b"\nSTAT\r\nLIST")
        assert recv_exactly(first, 11) == b"\nSTAT\r\nLIST"
        with client(proxy) as second:
            second.sendall(b"CAPA\r\n")
            assert recv_exactly(second, 6) == b"CAPA\r\n"
            assert proxy.connections == 2
            assert proxy.client_lines(0) == [b"USER a", b"PASS x", b"STAT"]
            assert proxy.client_bytes(0) == b"USER a\r\nPASS x\r\nSTAT\r\nLIST"
            assert proxy.client_lines(1) == [b"CAPA"]
            # PASS began before the marker, STAT after; LIST is not complete yet.
            assert proxy.commands_after(0, marker) == [b"STAT"]
            assert proxy.commands_after(1, marker) == [b"CAPA"]
            assert proxy.commands_after(1, time.monotonic()) == []


def test_drop_all_closes_the_client_side(proxy: TcpProxy) -> None:
    with client(proxy) as sock:
        sock.sendall(b"NOOP\r\n")
        assert recv_exactly(sock, 6) == b"NOOP\r\n"
        proxy.pause()  # a drop must cut even a connection held by a pause
        proxy.drop_all()
        assert proxy.open_connections == 0
        assert proxy.connections == 1
        sock.settimeout(2.0)
        try:
            data = sock.recv(1024)
        except ConnectionError:
            data = b""
        assert data == b""
        proxy.resume()
        # The proxy still accepts new connections after a drop.
        with client(proxy) as again:
            again.sendall(b"STAT\r\n")
            assert recv_exactly(again, 6) == b"STAT\r\n"
            assert proxy.connections == 2
            assert proxy.open_connections == 1


def test_close_does_not_hang_with_paused_connections(echo: EchoServer) -> None:
    started = time.monotonic()
    with TcpProxy("127.0.0.1", echo.port) as proxy, client(proxy) as sock:
        proxy.pause()
        sock.sendall(b"RETR 1\r\n")
        # The kernel accepts before the proxy's acceptor thread records the connection.
        assert wait_until(lambda: proxy.connections == 1 and proxy.client_lines(0) == [b"RETR 1"])
    assert time.monotonic() - started < 1.5
    assert proxy.open_connections == 0


def test_peak_open_counts_connections_open_at_once(proxy: TcpProxy) -> None:
    with client(proxy) as first, client(proxy) as second:
        for sock in (first, second):
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        assert proxy.peak_open == 2
    assert wait_until(lambda: proxy.open_connections == 0)
    proxy.reset_peak()
    assert proxy.peak_open == 0
    for _ in range(3):  # one after another: never more than one open
        with client(proxy) as sock:
            sock.sendall(b"y")
            assert recv_exactly(sock, 1) == b"y"
        assert wait_until(lambda: proxy.open_connections == 0)
    assert proxy.peak_open == 1
    assert proxy.connections == 5
