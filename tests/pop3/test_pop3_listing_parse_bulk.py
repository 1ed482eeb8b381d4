"""UIDL and LIST lines parsed in bulk (popvault.pop3.listing) against the per-line parsers.

The rule, for any lines: the bulk parse gives what the per-line parser gives
line by line, or None (then the caller parses line by line); and for lines
in the plain form every server sends, it never gives None.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from popvault.errors import RemoteProtocolError
from popvault.pop3.listing import list_entries, uidl_entries
from popvault.pop3.parsing import MAX_UID_OCTETS, parse_list_line, parse_uidl_entry

numbers = st.integers(min_value=0, max_value=10**19 - 1)
uids = st.lists(
    st.integers(min_value=0x21, max_value=0x7E), min_size=1, max_size=MAX_UID_OCTETS
).map(bytes)
plain_uidl = st.builds(lambda n, uid: b"%d %s" % (n, uid), numbers, uids)
plain_list = st.builds(lambda n, size: b"%d %d" % (n, size), numbers, numbers)
# Near misses and anything else: every way a line can leave the plain form.
odd = st.one_of(
    st.binary(max_size=20),
    st.builds(
        lambda line, extra: line + extra,
        plain_uidl | plain_list,
        st.sampled_from([b" ", b"\t", b"\r", b"\n", b" x", b"\x00", b"\xff", b" (seen)", b"\n1 a"]),
    ),
    st.builds(
        lambda extra, line: extra + line,
        st.sampled_from([b" ", b"0", b"-", b"+", b"\t", b"1 "]),
        plain_uidl | plain_list,
    ),
    st.builds(lambda n: b"%d %s" % (n, b"u" * (MAX_UID_OCTETS + 1)), numbers),
    st.builds(lambda n: b"1%019d 5" % n, numbers),  # a 20-digit number
)


def per_line(parse, lines):  # type: ignore[no-untyped-def]
    """Every line's parse, or the first error's message."""
    try:
        return [parse(line) for line in lines]
    except RemoteProtocolError as exc:
        return exc.message


@given(st.lists(plain_uidl | odd, max_size=12))
@example([b"1 a\n2 b", b""])  # an LF inside a line, an empty line
@example([b"1 a\n2 b"])
@example([b"01 a", b"1 a"])
def test_uidl_bulk_is_the_per_line_parse_or_none(lines: list[bytes]) -> None:
    entries = uidl_entries(lines)
    if entries is not None:
        assert entries == per_line(parse_uidl_entry, lines)


@given(st.lists(plain_list | odd, max_size=12))
@example([b"1 2\n3 4"])
@example([b"1 2 3"])
def test_list_bulk_is_the_per_line_parse_or_none(lines: list[bytes]) -> None:
    entries = list_entries(lines)
    if entries is not None:
        assert entries == per_line(parse_list_line, lines)


@given(st.lists(plain_uidl, max_size=30))
def test_plain_uidl_lines_are_taken_in_bulk(lines: list[bytes]) -> None:
    assert uidl_entries(lines) == [parse_uidl_entry(line) for line in lines]


@given(st.lists(plain_list, max_size=30))
def test_plain_list_lines_are_taken_in_bulk(lines: list[bytes]) -> None:
    assert list_entries(lines) == [parse_list_line(line) for line in lines]


def test_types_are_the_per_line_parsers() -> None:
    [(number, uid)] = uidl_entries([b"7 Qh:x~!"]) or []
    assert (type(number), type(uid), number, uid) == (int, str, 7, "Qh:x~!")
    assert list_entries([b"007 0012"]) == [(7, 12)]
    assert uidl_entries([]) == list_entries([]) == []
