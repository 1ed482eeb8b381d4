"""A threaded TCP proxy that tests put between a client and a server.

Why a proxy and not a hook in the fake server: what tests here need to provoke
are *network* faults -- a slow path, a black-holed path that keeps the
connection open while nothing gets through, a connection cut in the middle --
and these must look the same to the client whatever server sits behind (the
fake, Dovecot, a peer). A proxy is the one place that can do that for all of
them, and it can also record exactly what the client sent, per connection and
with timestamps, so a test can assert which commands went out after a fault.

Use::

    with TcpProxy("127.0.0.1", server_port, latency=0.05) as proxy:
        connect_to(proxy.host, proxy.port)
        proxy.pause()      # nothing flows, connections stay open
        proxy.resume()     # the bytes held meanwhile flow
        proxy.drop_all()   # every connection cut, both sides
        proxy.client_lines(0)

Each accepted connection gets four daemon threads: for each direction a reader
that reads as soon as bytes arrive (so the record is complete even while
paused, and bytes received while paused stay buffered *inside the proxy*,
unsent) and a writer that waits for the gate, applies the latency and sends.
Nothing here blocks without a bound or a way to be woken, so closing the proxy
never hangs.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

_CHUNK = 65536
# How often a thread blocked on the gate or a queue looks whether it should stop.
_POLL = 0.05
# How long closing waits for the threads of one connection.
_JOIN_TIMEOUT = 2.0


def _shutdown(sock: socket.socket, how: int) -> None:
    """Shut a socket down, ignoring that it may already be closed or reset.

    Shutting down (not closing) is what wakes another thread blocked in
    ``recv`` on the same socket, so it is the first step of every teardown.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class _Connection:
    """One client connection and its upstream, with the record of what the client sent."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.aborted = threading.Event()
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._running = 0
        self._sockets_closed = False
        self._data = bytearray()
        self._lines: list[tuple[float, bytes]] = []
        self._partial = bytearray()
        self._partial_start = 0.0

    # -- record ---------------------------------------------------------------

    def record(self, chunk: bytes, when: float) -> None:
        """Keep what the client sent, split into CRLF lines stamped with their first byte's time."""
        with self._lock:
            self._data += chunk
            start = self._partial_start if self._partial else when
            buf = self._partial + chunk
            while (end := buf.find(b"\r\n")) >= 0:
                self._lines.append((start, bytes(buf[:end])))
                del buf[: end + 2]
                start = when
            self._partial = buf
            self._partial_start = start

    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def lines(self) -> list[tuple[float, bytes]]:
        with self._lock:
            return list(self._lines)

    # -- life cycle -----------------------------------------------------------

    def start(self, server: socket.socket) -> None:
        """Start the four pump threads; the last one to finish closes both sockets."""
        self.server = server
        c2s: queue.Queue[bytes | None] = queue.Queue()
        s2c: queue.Queue[bytes | None] = queue.Queue()
        pumps: list[tuple[str, Callable[[], None]]] = [
            ("c2s-read", functools.partial(self._reader, self.client, c2s, True)),
            ("c2s-write", functools.partial(self._writer, server, c2s, False)),
            ("s2c-read", functools.partial(self._reader, server, s2c, False)),
            ("s2c-write", functools.partial(self._writer, self.client, s2c, True)),
        ]
        self._running = len(pumps)
        for name, pump in pumps:
            thread = threading.Thread(
                target=self._run, args=(pump,), name=f"tcp-proxy-{name}", daemon=True
            )
            self.threads.append(thread)
        for thread in self.threads:
            thread.start()

    def _run(self, pump: Callable[[], None]) -> None:
        """Run one pump and, when the last one ends, close the sockets.

        Sockets are closed only after every thread using them has returned, so
        no thread is ever left in ``recv`` on a file descriptor that was closed
        (and possibly reused) under it.
        """
        try:
            pump()
        except OSError:
            self.abort()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self.close_sockets()

    def _reader(
        self, src: socket.socket, out: queue.Queue[bytes | None], from_client: bool
    ) -> None:
        """Read as soon as bytes arrive, whatever the gate, and hand them to the writer."""
        try:
            while not self.aborted.is_set():
                chunk = src.recv(_CHUNK)
                if not chunk:
                    break
                if from_client:
                    self.record(chunk, time.monotonic())
                out.put(chunk)
        except OSError:
            self.abort()
        finally:
            out.put(None)

    def _writer(self, dst: socket.socket, src: queue.Queue[bytes | None], to_client: bool) -> None:
        """Forward queued chunks once the gate is open; pass end-of-stream on as a half close."""
        while not self.aborted.is_set():
            try:
                chunk = src.get(timeout=_POLL)
            except queue.Empty:
                continue
            if to_client and chunk is not None:
                latency = self.proxy.latency
                if latency > 0 and self.aborted.wait(latency):
                    return
            if not self._wait_gate():
                return
            if chunk is None:
                _shutdown(dst, socket.SHUT_WR)
                return
            try:
                dst.sendall(chunk)
            except OSError:
                self.abort()
                return

    def _wait_gate(self) -> bool:
        """Wait while the proxy is paused; False if the connection was aborted meanwhile."""
        gate = self.proxy._gate
        while not gate.wait(_POLL):
            if self.aborted.is_set():
                return False
        return not self.aborted.is_set()

    def abort(self) -> None:
        """Cut both sides abruptly: a reset (linger 0) after a shutdown that wakes the pumps."""
        if self.aborted.is_set():
            return
        self.aborted.set()
        for sock in (self.client, self.server):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            _shutdown(sock, socket.SHUT_RDWR)
        if not self.threads:
            self.close_sockets()

    def close_sockets(self) -> None:
        with self._lock:
            if self._sockets_closed:
                return
            self._sockets_closed = True
        for sock in (self.client, self.server):
            if sock is not None:
                sock.close()
        self.closed.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self.threads:
            # Not started yet (ident None): a drop raced start(); it ends on its own.
            if thread is not current and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))


class TcpProxy:
    """A loopback TCP proxy to one target, with latency, pause/resume, drops and a record.

    A context manager: entering starts listening on ``127.0.0.1`` on a port the
    OS chooses (:attr:`port`), leaving closes every connection and the listener.
    """

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, latency: float = 0.0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        #: Seconds each chunk read from the server waits before it goes to the client.
        #: Read for every chunk, so a test may change it at any time.
        self.latency = latency
        self.port = 0
        # Set = forwarding; cleared by pause(). Shared by every connection.
        self._gate = threading.Event()
        self._gate.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[_Connection] = []
        self._peak = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        # A timeout so that the accept loop sees the stop flag: closing a
        # listening socket does not reliably wake a thread blocked in accept().
        listener.settimeout(_POLL)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="tcp-proxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, cut every connection and wait (bounded) for the threads."""
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        self.drop_all()
        # Release writers parked on the gate so nothing is left waiting.
        self._gate.set()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            conn = _Connection(self, client)
            with self._lock:
                self._conns.append(conn)
                now_open = sum(1 for each in self._conns if not each.closed.is_set())
                self._peak = max(self._peak, now_open)
            try:
                server = socket.create_connection((self.target_host, self.target_port), timeout=5)
            except OSError:
                # The target refused: the client sees a reset, as it would without a proxy.
                conn.abort()
                continue
            server.settimeout(None)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.start(server)

    # -- faults ---------------------------------------------------------------

    def pause(self) -> None:
        """Stop forwarding both ways; connections stay open and what arrives stays buffered here."""
        self._gate.clear()

    def resume(self) -> None:
        """Forward again; the bytes held while paused flow, in order."""
        self._gate.set()

    def drop_all(self) -> None:
        """Cut every current connection abruptly, both sides, and wait until they are closed."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()
        for conn in conns:
            conn.join(_JOIN_TIMEOUT)

    # -- record ---------------------------------------------------------------

    @property
    def connections(self) -> int:
        """How many connections were accepted so far (open or not)."""
        with self._lock:
            return len(self._conns)

    @property
    def peak_open(self) -> int:
        """The most connections open at once so far (counted at each accept)."""
        with self._lock:
            return self._peak

    def reset_peak(self) -> None:
        """Count :attr:`peak_open` from now: from the connections open now."""
        with self._lock:
            self._peak = sum(1 for each in self._conns if not each.closed.is_set())

    @property
    def open_connections(self) -> int:
        """How many accepted connections are not closed yet."""
        with self._lock:
            return sum(1 for conn in self._conns if not conn.closed.is_set())

    def _conn(self, index: int) -> _Connection:
        with self._lock:
            return self._conns[index]

    def client_bytes(self, index: int) -> bytes:
        """Everything connection ``index`` (0-based, accept order) sent toward the server so far.

        Recorded when read, so it includes bytes still held by :meth:`pause`.
        """
        return self._conn(index).data()

    def client_lines(self, index: int) -> list[bytes]:
        """The complete CRLF-terminated lines of :meth:`client_bytes`, without the CRLF."""
        return [line for _, line in self._conn(index).lines()]

    def commands_after(self, index: int, marker_time: float) -> list[bytes]:
        """Lines whose first byte was read at or after ``marker_time`` (``time.monotonic()``)."""
        return [line for when, line in self._conn(index).lines() if when >= marker_time]
