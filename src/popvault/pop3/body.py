"""Streaming dot-unstuffing of multi-line replies (RFC 1939 section 3).

The decoder keeps no line buffer: it holds back at most the two octets after
a line-initial dot (``"."`` or ``".\\r"``) until it can tell a terminator from
a stuffed line, so memory does not grow with line or message length. Bare LF
line endings are accepted like CRLF ones and all line endings are kept as sent.
"""

from __future__ import annotations

_DOT = 0x2E
_LF = 0x0A


class DotDecoder:
    """Turns the octets of a multi-line body into its content, chunk by chunk."""

    __slots__ = ("_at_line_start", "done")

    def __init__(self) -> None:
        self._at_line_start = True
        self.done = False

    def decode(self, data: bytes | bytearray) -> tuple[bytes, int]:
        """Decode as much of ``data`` as can be decided.

        Returns the unstuffed content and the number of input octets consumed;
        octets past the terminator (the next reply) and a held-back dot stay
        unconsumed. Sets :attr:`done` once the terminating line was seen.
        """
        out: list[bytes | bytearray] = []
        pos, size = 0, len(data)
        while pos < size and not self.done:
            if not self._at_line_start:
                pos = self._scan(data, pos, out)
            elif data[pos] != _DOT:
                self._at_line_start = False
            else:
                step = self._after_dot(data, pos, out)
                if step == 0:
                    break  # a dot whose meaning depends on octets not yet received
                pos += step
        return b"".join(out), pos

    def _after_dot(self, data: bytes | bytearray, pos: int, out: list[bytes | bytearray]) -> int:
        """Handle a line-initial dot; return the octets consumed (0: need more)."""
        following = data[pos + 1 : pos + 3]
        if following.startswith(b"\n") or following == b"\r\n":
            self.done = True  # "." CRLF, or "." LF from a bare-LF server
            return 1 + (1 if following.startswith(b"\n") else 2)
        if following in (b"", b"\r"):
            return 0
        self._at_line_start = False
        out.append(b".")
        if following.startswith(b"."):
            return 2  # a stuffed line: the first of the two dots goes
        # A line starting with one dot that is not the terminator: the server did
        # not stuff it (RFC 1939 section 3 says it must). Keep the dot: that keeps
        # the message as the server has it, and drops nothing.
        return 1

    def _scan(self, data: bytes | bytearray, pos: int, out: list[bytes | bytearray]) -> int:
        """Copy content up to the next line that starts with a dot, or to the end."""
        found = data.find(b"\n.", pos)
        if found < 0:
            out.append(data[pos:])
            self._at_line_start = data[-1] == _LF
            return len(data)
        out.append(data[pos : found + 1])
        self._at_line_start = True
        return found + 1
