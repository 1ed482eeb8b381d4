"""The fake server's own encoder, checked against a decoder written here."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from popvault.testing import _wire

# Lines made of the awkward parts: dots, CR, LF, and ordinary text.
bodies = st.lists(st.sampled_from([b".", b"..", b"a", b"\r\n", b"\n", b"\r", b" "])).map(b"".join)


def unstuff(wire: bytes) -> bytes:
    """The client's side of RFC 1939 section 3, written plainly and separately."""
    assert wire.endswith(b".\r\n")
    lines = wire[: -len(b".\r\n")].split(b"\n")
    assert lines[-1] == b""
    out = [line[1:] if line.startswith(b".") else line for line in lines[:-1]]
    return b"".join(line + b"\n" for line in out)


@given(bodies)
def test_multiline_round_trips(body: bytes) -> None:
    wire = _wire.multiline(body)
    expected = body if body == b"" or body.endswith(b"\n") else body + b"\r\n"
    assert unstuff(wire) == expected


@given(bodies)
def test_no_line_on_the_wire_is_a_bare_dot_before_the_end(body: bytes) -> None:
    lines = _wire.multiline(body).split(b"\n")
    assert lines[-2:] == [b".\r", b""]
    assert all(line not in {b".", b".\r"} for line in lines[:-2])


def test_multiline_examples() -> None:
    assert _wire.multiline(b"") == b".\r\n"
    assert _wire.multiline(b".\r\n") == b"..\r\n.\r\n"
    assert _wire.multiline(b"a\r\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"


def test_top_keeps_the_header_and_n_body_lines() -> None:
    raw = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree"
    assert _wire.top(raw, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert _wire.top(raw, 2) == b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n"
    assert _wire.top(raw, 3) == raw
    assert _wire.top(b"A: 1\r\n", 5) == b"A: 1\r\n"  # no body at all
    assert _wire.top(b"\r\nbody\r\n\r\nmore\r\n", 1) == b"\r\nbody\r\n"  # empty header


def test_status_and_raw_lines() -> None:
    assert _wire.status_line(True) == b"+OK\r\n"
    assert _wire.status_line(False, "no") == b"-ERR no\r\n"
    assert _wire.raw_line("-ERR x") == b"-ERR x\r\n"
    assert _wire.raw_line("+OK\r\n") == b"+OK\r\n"
    assert _wire.to_bare_lf(b"a\r\nb\r\n") == b"a\nb\n"
