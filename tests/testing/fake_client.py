"""Independent peers for the fake server's tests: a bare-socket POP3 client and waits.

Deliberately not popvault.pop3: a bug shared by the client and the fake
server would cancel out (DESIGN.md, layout).
"""

from __future__ import annotations

import poplib
import socket
import time
from collections.abc import Callable

from popvault.testing import FakePop3Server

TIMEOUT = 5.0
# RFC 1939 section 3: a multi-line response ends with CRLF "." CRLF.
END = b"\r\n.\r\n"


class Raw:
    """A bare-socket POP3 peer: sends what it is told, reads octets as they come."""

    def __init__(self, srv: FakePop3Server, *, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.buf = b""

    def send(self, *lines: str) -> None:
        self.sock.sendall(b"".join(line.encode() + b"\r\n" for line in lines))

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def multi(self) -> bytes:
        """Octets of a multi-line body, terminator included, as sent."""
        out = b""
        while not out.endswith(END) and out != b".\r\n":
            out += self.line()
        return out

    def command(self, line: str) -> bytes:
        """Send one command; its status line, CRLF included."""
        self.send(line)
        return self.line()

    def until_closed(self) -> bytes:
        out, self.buf = self.buf, b""
        while data := self.sock.recv(65536):
            out += data
        return out

    def login(self, srv: FakePop3Server) -> None:
        self.line()
        self.send(f"USER {srv.username}", f"PASS {srv.password}")
        assert self.line().startswith(b"+OK")
        assert self.line().startswith(b"+OK")

    def close(self) -> None:
        self.sock.close()


def unstuff(body: bytes) -> bytes:
    """A multi-line body as sent (terminator included) back to its content."""
    assert body.endswith(END) or body == b".\r\n", body[-20:]
    lines = body[: -len(b".\r\n")].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def login(srv: FakePop3Server) -> poplib.POP3:
    client = poplib.POP3(srv.host, srv.port, timeout=TIMEOUT)
    client.user(srv.username)
    client.pass_(srv.password)
    return client


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
