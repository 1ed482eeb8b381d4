"""Whether a received chunk's line ends are all CRLF, judged once per chunk.

Two readers of every chunk of a message need to know: the fetch, which
counts bare LFs (LIST counts line ends as CRLF, RFC 1939 section 11), and the
Maildir writer, which turns CRLF into LF and may delete every CR outright when
none is bare. The test costs ~70 ms for 100 MB; the answer for the last chunk
judged is kept, by identity, so that the second reader of the same chunk
object gets it for free. A chunk is immutable ``bytes`` and the memo holds a
reference to it, so no other object can take its identity while it is kept;
the memo is one tuple, replaced in one assignment, so threads see a whole one.
"""

from __future__ import annotations

from typing import Final

_CR_MARKS: Final = bytes(1 if octet == 0x0D else 0 for octet in range(256))
_LF_MARKS: Final = bytes(1 if octet == 0x0A else 0 for octet in range(256))

# (the last chunk judged, its answer): one chunk of at most a read's size held.
_last: tuple[bytes, bool] | None = None


def crlf_only(chunk: bytes) -> bool:
    """Whether every CR of ``chunk`` but a last octet's is followed by an LF, and
    every LF but a first octet's follows a CR.

    Two ``translate`` calls (one table lookup an octet) mark the CRs and the
    LFs; the marks shifted by one octet compare equal exactly then.
    """
    global _last  # noqa: PLW0603 - the one-chunk memo described in the module docstring
    last = _last
    if last is not None and last[0] is chunk:
        return last[1]
    answer = chunk.translate(_CR_MARKS)[:-1] == chunk.translate(_LF_MARKS)[1:]
    _last = (chunk, answer)
    return answer


def known_crlf_only(chunk: bytes) -> bool:
    """True if :func:`crlf_only` was the last to judge ``chunk`` and found it so.

    False says nothing: the chunk may never have been judged.
    """
    last = _last
    return last is not None and last[0] is chunk and last[1]
