"""A one-connection socket server that runs a scripted handler, for faults the fake won't script."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

Handler = Callable[[socket.socket], None]


def read_line(conn: socket.socket) -> bytes:
    """One command line from the client, CRLF removed (b"" at EOF)."""
    line = b""
    while not line.endswith(b"\n"):
        octet = conn.recv(1)
        if not octet:
            return line
        line += octet
    return line.rstrip(b"\r\n")


def login_prelude(conn: socket.socket) -> None:
    """Greet, refuse CAPA, accept USER and PASS, refuse the CAPA after login."""
    conn.sendall(b"+OK scripted\r\n")
    for reply in (b"-ERR no CAPA\r\n", b"+OK\r\n", b"+OK in\r\n", b"-ERR no CAPA\r\n"):
        read_line(conn)
        conn.sendall(reply)


class ScriptedServer:
    """Accepts one connection on 127.0.0.1 and hands it to ``handler`` in a thread.

    Errors in the handler are re-raised on exit, so a broken script fails the test.
    """

    def __init__(self, handler: Handler) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._handler = handler
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._handler(conn)
        except OSError:
            pass  # the client hung up first: that is what several tests do on purpose
        except BaseException as exc:  # re-raised in the test's thread on exit
            self._error = exc

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._thread.join(timeout=10)
        self._listener.close()
        if self._error is not None:
            raise self._error
