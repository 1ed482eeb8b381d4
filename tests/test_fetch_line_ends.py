"""Line ends of received chunks: the fetch's bare-LF count and the Maildir conversion after it.

fetch.bare_line_feeds takes a fast path for chunks whose line ends are all
CRLF (store.lineends.crlf_only), and the Maildir writer reuses that judgment
of the same chunk; these chunks mix CRLF with bare CR, bare LF and CRLFs split
between chunks, and compare with references done one octet at a time.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from popvault.fetch import bare_line_feeds
from popvault.store.lineends import crlf_only, known_crlf_only
from popvault.store.maildir import CrlfToLf
from workspace import reference_lf

line_soup = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r", b"a", b".", b"\x00"]),
    max_size=60,
).map(b"".join)
mostly_crlf = st.lists(
    st.sampled_from([b"abc\r\n", b"\r\n", b"x" * 40 + b"\r\n"]), max_size=30
).map(b"".join)
bodies = line_soup | mostly_crlf | st.binary(max_size=200)
cut_points = st.lists(st.integers(min_value=0, max_value=1000), max_size=12)


def reference_bare_lf(data: bytes) -> int:
    """LFs with no CR right before them, one octet at a time."""
    return sum(1 for i, octet in enumerate(data) if octet == 0x0A and data[i - 1 : i] != b"\r")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(c % (len(data) + 1) for c in cuts)
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)]) if b > a]


@given(data=bodies, cuts=cut_points)
def test_bare_lf_count_is_the_same_under_any_chunking(data: bytes, cuts: list[int]) -> None:
    total, after_cr = 0, False
    for chunk in split_at(data, cuts):
        total += bare_line_feeds(chunk, after_cr=after_cr)
        after_cr = chunk.endswith(b"\r")
    assert total == reference_bare_lf(data)


@given(data=bodies, after_cr=st.booleans())
def test_bare_lf_count_of_one_chunk(data: bytes, after_cr: bool) -> None:
    # after_cr: a CR ended the chunk before, so a first-octet LF is not bare.
    expected = reference_bare_lf(data) - (after_cr and data.startswith(b"\n"))
    assert bare_line_feeds(data, after_cr=after_cr) == expected


def reference_crlf_only(data: bytes) -> bool:
    """Every CR but a last octet's before an LF, every LF but a first octet's after a CR."""
    return all(
        (data[i + 1 : i + 2] == b"\n") == (octet == 0x0D) for i, octet in enumerate(data[:-1])
    )


@given(data=bodies)
def test_crlf_only_follows_its_rule(data: bytes) -> None:
    assert crlf_only(data) is reference_crlf_only(data)
    assert known_crlf_only(data) is reference_crlf_only(data)  # judged just now
    if len(data) > 1:  # (CPython shares one object for each 0- and 1-octet value)
        assert known_crlf_only(bytes(bytearray(data))) is False  # an equal chunk, not judged


@given(data=bodies, cuts=cut_points)
def test_maildir_conversion_after_the_fetch_judged_each_chunk(data: bytes, cuts: list[int]) -> None:
    # The fetch's order: each chunk judged (bare LFs counted), then converted by
    # the writer, which takes the judgment instead of looking for a bare CR.
    lines = CrlfToLf()
    out, after_cr = [], False
    for chunk in split_at(data, cuts):
        bare_line_feeds(chunk, after_cr=after_cr)
        out.append(lines.feed(chunk))
        after_cr = chunk.endswith(b"\r")
    assert b"".join(out) + lines.finish() == reference_lf(data)
