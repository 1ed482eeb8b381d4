"""DotDecoder on large reads: any split of a stuffed body decodes as a line-by-line reference does.

The decoder looks for a dot first and for LF "." only from there
(body._next_dot_line); these bodies put dots everywhere a line can hold them,
including lines a server forgot to stuff, and feed them the way the core does
(a bytearray buffer, decode, consumed octets deleted).
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.pop3.body import DotDecoder

_PIECES = st.sampled_from([b".", b"..", b"a", b"x.y", b"\r", b"=", b"A" * 76, b". ", b".\r"])
_ENDS = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def wires(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A multi-line reply as a server sends it (the terminator included), then the next reply."""
    lines = []
    for pieces, end in draw(st.lists(st.tuples(st.lists(_PIECES, max_size=6), _ENDS), max_size=30)):
        line = b"".join(pieces)
        if line.rstrip(b"\r") == b".":
            line = b"a."  # a lone dot would end the reply early, whatever the stuffing
        stuffed = draw(st.booleans())  # False: the server did not stuff (RFC 1939 says it must)
        lines.append((b"." + line if stuffed and line.startswith(b".") else line) + end)
    terminator = draw(st.sampled_from([b".\r\n", b".\n"]))
    trailing = draw(st.sampled_from([b"", b"+OK next\r\n", b".\r\n"]))
    return b"".join(lines) + terminator, trailing


def reference_decode(wire: bytes) -> bytes:
    """Line by line (RFC 1939 section 3): drop the first of two leading dots, stop at "."."""
    out = []
    pieces = wire.split(b"\n")  # lines end at LF only: a lone CR stays inside its line
    for line in [piece + b"\n" for piece in pieces[:-1]] + [pieces[-1]]:
        if line in (b".\n", b".\r\n"):
            break
        out.append(line[1:] if line.startswith(b"..") else line)
    return b"".join(out)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


@settings(max_examples=500, deadline=None)
@given(wire=wires(), cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=25))
def test_any_split_decodes_like_the_line_by_line_reference(
    wire: tuple[bytes, bytes], cuts: list[int]
) -> None:
    reply, trailing = wire
    decoder = DotDecoder()
    buffer = bytearray()
    out = []
    for chunk in split_at(reply + trailing, cuts):
        buffer += chunk
        content, used = decoder.decode(buffer)
        out.append(content)
        del buffer[:used]
    assert decoder.done
    assert b"".join(out) == reference_decode(reply)
    assert bytes(buffer) == trailing  # the next reply is left where it was


@given(wire=wires())
def test_one_read_of_a_whole_reply_decodes_like_the_reference(wire: tuple[bytes, bytes]) -> None:
    reply, trailing = wire
    decoder = DotDecoder()
    content, used = decoder.decode(bytearray(reply + trailing))
    assert decoder.done
    assert (content, used) == (reference_decode(reply), len(reply))
