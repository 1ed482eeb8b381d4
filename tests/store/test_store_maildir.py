"""The Maildir store: layout, unique names, CRLF to LF under any chunking, publishing."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.store import open_store
from popvault.store.maildir import CrlfToLf, crlf_to_lf, unique_name
from workspace import reference_lf

NAME = re.compile(
    r"(?P<secs>\d+)\.M(?P<usec>\d+)P(?P<pid>\d+)Q(?P<q>\d+)R(?P<rand>[0-9a-f]{16})\.(?P<host>[^/]+)"
    r",S=(?P<size>\d+)"
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length), empty chunks included."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


line_soup = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r", b"a", b".", b"\x00", b"\xff"]),
    max_size=60,
).map(b"".join)
cut_points = st.lists(st.integers(min_value=0, max_value=400), max_size=12)


@given(data=line_soup | st.binary(max_size=200), cuts=cut_points)
def test_crlf_to_lf_matches_reference_under_any_chunking(data: bytes, cuts: list[int]) -> None:
    lines = CrlfToLf()
    out = b"".join(lines.feed(chunk) for chunk in split_at(data, cuts)) + lines.finish()
    assert out == reference_lf(data)


@given(data=line_soup | st.binary(max_size=200))
def test_crlf_to_lf_of_one_piece_matches_reference(data: bytes) -> None:
    # Its two paths (every CR in a CRLF: CRs deleted; else replace) meet the same rule.
    assert crlf_to_lf(data) == reference_lf(data)


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"a\r", b"\nb"], b"a\nb"),  # a CRLF split across chunks is one line ending
        ([b"a\r", b"", b"\nb"], b"a\nb"),  # even with an empty chunk in between
        ([b"a\r", b"b"], b"a\rb"),  # a bare CR stays
        ([b"a\n\r"], b"a\n\r"),  # a bare LF stays, and a CR at the very end is released
        ([b"\r", b"\r", b"\n"], b"\r\n"),
    ],
)
def test_crlf_to_lf_boundaries(chunks: list[bytes], expected: bytes) -> None:
    lines = CrlfToLf()
    out = b"".join(lines.feed(c) for c in chunks) + lines.finish()
    assert out == expected


@settings(max_examples=40, deadline=None)
@given(data=line_soup, cuts=cut_points)
def test_stored_file_is_lf_converted_with_matching_size_and_digest(
    data: bytes, cuts: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store("maildir", Path(tmp), "box")
        writer = store.begin(received_at=datetime.now(UTC))
        for chunk in split_at(data, cuts):
            writer.write(chunk)
        sealed = writer.seal()
        writer.commit()
        stored = (Path(tmp) / sealed.relpath).read_bytes()
    assert stored == reference_lf(data)
    assert sealed.size == len(stored)
    assert sealed.sha256 == hashlib.sha256(stored).hexdigest()
    assert sealed.relpath.endswith(f",S={len(stored)}")


def test_layout_and_name_follow_the_maildir_convention(
    tmp_path: Path, received_at: datetime
) -> None:
    store = open_store("maildir", tmp_path, "alice/personal")
    with store.begin(received_at=received_at) as writer:
        writer.write(b"Subject: x\r\n\r\nhello\r\n")
        sealed = writer.seal()
        writer.commit()
    box = tmp_path / "alice" / "personal"
    assert sorted(p.name for p in box.iterdir()) == ["cur", "new", "tmp"]
    folder, sub, name = sealed.relpath.rsplit("/", 2)
    assert (folder, sub) == ("alice/personal", "new")
    match = NAME.fullmatch(name)
    assert match is not None, name
    assert int(match["secs"]) == int(received_at.timestamp())
    assert int(match["usec"]) == received_at.microsecond
    assert int(match["pid"]) == os.getpid()
    assert int(match["size"]) == sealed.size == len(b"Subject: x\n\nhello\n")
    assert ":" not in name  # ':' would start the Maildir info part


def test_unique_name_escapes_slash_and_colon_in_the_host(received_at: datetime) -> None:
    name = unique_name(received_at, host="mail/host:1")
    assert name.endswith(".mail\\057host\\0721")
    assert "/" not in name
    assert ":" not in name


def test_unique_names_differ_within_one_microsecond(received_at: datetime) -> None:
    names = {unique_name(received_at, host="h") for _ in range(2000)}
    assert len(names) == 2000


def test_nothing_in_new_before_commit(tmp_path: Path, received_at: datetime) -> None:
    store = open_store("maildir", tmp_path, "box")
    writer = store.begin(received_at=received_at)
    writer.write(b"a\r\n")
    sealed = writer.seal()
    new = tmp_path / "box" / "new"
    assert list(new.iterdir()) == []
    assert store.stat(sealed.relpath) is None
    assert list(store.iter_files()) == []
    writer.commit()
    assert [p.name for p in new.iterdir()] == [sealed.relpath.rsplit("/", 1)[1]]
    assert list((tmp_path / "box" / "tmp").iterdir()) == []
    assert store.stat(sealed.relpath) == sealed.size


def test_iter_files_lists_new_and_cur_but_not_tmp_or_dotfiles(
    tmp_path: Path, received_at: datetime
) -> None:
    store = open_store("maildir", tmp_path, "box")
    published = []
    for body in (b"one\r\n", b"two\r\n"):
        with store.begin(received_at=received_at) as writer:
            writer.write(body)
            published.append(writer.seal().relpath)
            writer.commit()
    pending = store.begin(received_at=received_at)
    pending.write(b"not yet")
    # A mail reader moves a seen message to cur/ and adds the info part.
    first = tmp_path / published[0]
    moved = tmp_path / "box" / "cur" / (first.name + ":2,S")
    first.rename(moved)
    (tmp_path / "box" / "new" / ".hidden").write_bytes(b"x")
    assert list(store.iter_files()) == [published[1], f"box/cur/{moved.name}"]
    pending.abort()


def test_open_reads_the_stored_bytes(tmp_path: Path, received_at: datetime) -> None:
    store = open_store("maildir", tmp_path, "box")
    with store.begin(received_at=received_at) as writer:
        writer.write(b"line one\r\nline two\r\n")
        sealed = writer.seal()
        writer.commit()
    with store.open(sealed.relpath) as stored:
        assert stored.read() == b"line one\nline two\n"


def test_an_empty_message_is_stored_empty(tmp_path: Path, received_at: datetime) -> None:
    store = open_store("maildir", tmp_path, "box")
    with store.begin(received_at=received_at) as writer:
        sealed = writer.seal()
        writer.commit()
    assert sealed.size == 0
    assert sealed.sha256 == hashlib.sha256(b"").hexdigest()
    assert (tmp_path / sealed.relpath).read_bytes() == b""


def _publish(store, body: bytes) -> str:
    with store.begin(received_at=datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)) as writer:
        writer.write(body)
        sealed = writer.seal()
        writer.commit()
    return sealed.relpath


def test_a_message_a_mail_reader_moved_to_cur_is_still_found(tmp_path: Path) -> None:
    store = open_store("maildir", tmp_path, "acct")
    first = _publish(store, b"Subject: one\r\n\r\nfirst\r\n")
    second = _publish(store, b"Subject: two\r\n\r\nsecond\r\n")
    name = first.rsplit("/", 1)[1]
    # A reader marks it seen: new/NAME -> cur/NAME:2,S (the Maildir convention).
    os.rename(tmp_path / first, tmp_path / "acct" / "cur" / f"{name}:2,S")
    assert store.stat(first) == len(b"Subject: one\n\nfirst\n")
    with store.open(first) as stream:
        assert stream.read() == b"Subject: one\n\nfirst\n"
    assert store.canonical(f"acct/cur/{name}:2,S") == first
    assert store.canonical(second) == second
    # A move after the first lookup is seen too (the index follows cur/).
    other = second.rsplit("/", 1)[1]
    os.rename(tmp_path / second, tmp_path / "acct" / "cur" / f"{other}:2,RS")
    assert store.stat(second) == len(b"Subject: two\n\nsecond\n")
    # A message gone from both folders is missing, not confused with another.
    (tmp_path / "acct" / "cur" / f"{name}:2,S").unlink()
    assert store.stat(first) is None
