"""The fake server's own POP3 encoder.

Deliberately independent of :mod:`popvault.pop3`: if the client and the fake
server shared one codec, a bug in it would be on both sides of every test and
would cancel out.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

CRLF = b"\r\n"
# RFC 1939 section 3: a multi-line response ends with a line holding one ".".
TERMINATOR = b".\r\n"


def status_line(ok: bool, text: str = "") -> bytes:
    """One ``+OK``/``-ERR`` line (RFC 1939 section 3), CRLF included."""
    word = "+OK" if ok else "-ERR"
    line = f"{word} {text}" if text else word
    return line.encode("utf-8") + CRLF


def challenge_line(data: bytes) -> bytes:
    """An AUTH challenge (RFC 5034 section 4): ``+``, a space, base64, CRLF."""
    return b"+ " + base64.b64encode(data) + CRLF


def raw_line(text: str) -> bytes:
    """A scripted response as given, CRLF added unless it already ends a line."""
    data = text.encode("utf-8")
    return data if data.endswith(b"\n") else data + CRLF


def multiline(body: bytes) -> bytes:
    """Dot-stuff ``body`` and append the terminator (RFC 1939 section 3).

    A line that starts with "." gets another "." in front. A body whose last
    line is not ended gets a CRLF first, as real servers do, so that the
    terminator stands on a line of its own. A line ended by a bare LF counts
    as ended: the fake server sends stored bytes as they are.
    """
    stuffed = body.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\n"):
        stuffed += CRLF
    return stuffed + TERMINATOR


def listing(lines: Iterable[str]) -> bytes:
    """The body of a multi-line listing (LIST, UIDL, CAPA), terminated."""
    return multiline(b"".join(line.encode("utf-8") + CRLF for line in lines))


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """Split a message into its header (with the blank line) and its body.

    RFC 5322 section 2.1: the header ends at the first empty line. A message
    without one is all header.
    """
    for blank in (b"\r\n", b"\n"):
        if raw.startswith(blank):
            return blank, raw[len(blank) :]
    ends = [(raw.find(b), b) for b in (b"\r\n\r\n", b"\n\n")]
    found = [(at, b) for at, b in ends if at >= 0]
    if not found:
        return raw, b""
    at, blank = min(found)
    return raw[: at + len(blank)], raw[at + len(blank) :]


def top(raw: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` body lines (RFC 1939 TOP)."""
    header, body = split_header(raw)
    end = 0
    for _ in range(lines):
        newline = body.find(b"\n", end)
        if newline < 0:
            return header + body
        end = newline + 1
    return header + body[:end]


def to_bare_lf(data: bytes) -> bytes:
    """Every CRLF as a bare LF: the quirk of a broken server."""
    return data.replace(CRLF, b"\n")
