"""The EML store: bytes exactly as received, filed under YYYY/MM by the Date: header."""

from __future__ import annotations

import hashlib
import itertools
import re
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.store import open_store
from popvault.store.eml import HEADER_LIMIT, HeaderSniffer, folder_date

NAME = re.compile(r"(?P<stamp>\d{8}T\d{6}Z)-(?P<token>[0-9a-f]{32})\.eml")

BODY = b"\r\nHello,\r\n.\r\nDate: Fri, 01 Jan 1999 00:00:00 +0000\r\n"


def message(*headers: str) -> bytes:
    # surrogateescape lets a test write raw non-ASCII octets as "\udcXX".
    return "".join(f"{h}\r\n" for h in headers).encode(errors="surrogateescape") + BODY


def archive(store_root: Path, data: bytes, received_at: datetime, chunk: int = 0) -> str:
    """Write ``data`` (in chunks of ``chunk`` octets, or whole) and return its relpath."""
    store = open_store("eml", store_root, "acct")
    with store.begin(received_at=received_at) as writer:
        step = chunk or max(1, len(data))
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
        sealed = writer.seal()
        writer.commit()
    return sealed.relpath


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_bytes_are_stored_exactly_under_any_chunking(data: bytes, cuts: list[int]) -> None:
    points = sorted(c % (len(data) + 1) for c in cuts)
    edges = [0, *points, len(data)]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store("eml", Path(tmp), "acct")
        writer = store.begin(received_at=datetime.now(UTC))
        for a, b in itertools.pairwise(edges):
            writer.write(data[a:b])
        sealed = writer.seal()
        writer.commit()
        stored = (Path(tmp) / sealed.relpath).read_bytes()
    assert stored == data
    assert sealed.size == len(data)
    assert sealed.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["Date: Tue, 01 Mar 2022 10:00:00 +0200"], "2022/03/20220301T080000Z"),
        # The zone moves it into the next month (and year) in UTC.
        (["Date: Fri, 31 Dec 2021 23:30:00 -0200"], "2022/01/20220101T013000Z"),
        (["Date: Tue, 01 Mar 2022 10:00:00 -0000"], "2022/03/20220301T100000Z"),
        (["Date: Tue, 01 Mar 2022 10:00:00 EST"], "2022/03/20220301T150000Z"),
        (["Date:", " Tue, 01 Mar 2022 10:00:00 +0000"], "2022/03/20220301T100000Z"),  # folded
        (["date: 1 Mar 2022 10:00 +0000"], "2022/03/20220301T100000Z"),  # any case, no weekday
        (
            ["Date: Tue, 01 Mar 2022 10:00:00 +0000", "Date: Sun, 01 May 2022 10:00:00 +0000"],
            "2022/03/20220301T100000Z",
        ),
        # Within a day of the archive time is clock skew, and is kept.
        (["Date: Sat, 18 May 2024 11:00:00 +0000"], "2024/05/20240518T110000Z"),
    ],
)
def test_date_header_files_the_message(
    tmp_path: Path, received_at: datetime, headers: list[str], expected: str
) -> None:
    relpath = archive(tmp_path, message("From: a@example.org", *headers), received_at)
    assert relpath.startswith(f"acct/{expected}-")
    assert NAME.fullmatch(relpath.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    "headers",
    [
        ["Subject: no date"],
        ["Date: yesterday, probably"],
        ["Date: Wed, 31 Dec 1969 23:59:59 +0000"],  # before 1970
        ["Date: Mon, 20 May 2024 12:30:46 +0000"],  # more than a day after received_at
        ["Date: Fri, 31 Dec 9999 23:00:00 -1200"],  # overflows when turned into UTC
        ["Date: Tue, 99 Mar 2022 10:00:00 +0000"],  # no such day
        ["Date: Tue, 01 Mar 2022 \udcff10:00:00 +0000"],  # a raw 0xff octet in it
    ],
)
@pytest.mark.parametrize("chunk", [0, 1])
def test_bad_or_missing_dates_fall_back_to_received_at(
    tmp_path: Path, received_at: datetime, headers: list[str], chunk: int
) -> None:
    # BODY holds a "Date:" line of its own: it must never be taken for the header.
    relpath = archive(tmp_path, message(*headers), received_at, chunk)
    assert relpath.startswith("acct/2024/05/20240517T123045Z-")


def test_a_date_in_the_body_is_not_the_date(tmp_path: Path, received_at: datetime) -> None:
    data = b"\r\nDate: Tue, 01 Mar 2022 10:00:00 +0000\r\n"  # no header fields at all
    assert archive(tmp_path, data, received_at).startswith("acct/2024/05/")


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_date_is_found_whole_byte_by_byte_and_in_odd_chunks(
    tmp_path: Path, received_at: datetime, chunk: int
) -> None:
    data = message("Subject: x", "Date: Tue, 01 Mar 2022 10:00:00 +0000") + b"trailing\r\n" * 50
    assert archive(tmp_path, data, received_at, chunk).startswith("acct/2022/03/")


def test_bare_lf_headers_still_give_the_date(tmp_path: Path, received_at: datetime) -> None:
    data = b"Subject: x\nDate: Tue, 01 Mar 2022 10:00:00 +0000\n\nbody\n"
    relpath = archive(tmp_path, data, received_at, chunk=3)
    assert relpath.startswith("acct/2022/03/")
    assert (tmp_path / relpath).read_bytes() == data  # kept as received, LF and all


def test_a_message_that_is_only_headers_still_gives_the_date(
    tmp_path: Path, received_at: datetime
) -> None:
    data = b"Date: Tue, 01 Mar 2022 10:00:00 +0000\r\nSubject: x"
    assert archive(tmp_path, data, received_at).startswith("acct/2022/03/")


def test_a_date_past_the_header_limit_is_not_read(tmp_path: Path, received_at: datetime) -> None:
    filler = [f"X-Filler-{i}: {'y' * 70}" for i in range(HEADER_LIMIT // 80 + 10)]
    data = message(*filler, "Date: Tue, 01 Mar 2022 10:00:00 +0000")
    assert len(data) > HEADER_LIMIT
    relpath = archive(tmp_path, data, received_at, chunk=4096)
    assert relpath.startswith("acct/2024/05/")
    assert (tmp_path / relpath).read_bytes() == data


def test_a_date_inside_a_huge_header_is_read(tmp_path: Path, received_at: datetime) -> None:
    filler = [f"X-Filler-{i}: {'y' * 70}" for i in range(HEADER_LIMIT // 80 + 10)]
    data = message("Date: Tue, 01 Mar 2022 10:00:00 +0000", *filler)
    assert archive(tmp_path, data, received_at, chunk=4096).startswith("acct/2022/03/")


def test_the_sniffer_holds_at_most_the_limit() -> None:
    sniffer = HeaderSniffer()
    sniffer.feed(b"X: " + b"y" * (10 * HEADER_LIMIT))
    assert sniffer.done
    assert len(sniffer._buffer) <= HEADER_LIMIT
    sniffer.feed(b"more" * 1000)  # ignored once done
    assert len(sniffer._buffer) <= HEADER_LIMIT


def test_folder_date_rejects_a_naive_received_at() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        folder_date(None, datetime(2024, 1, 1))  # naive on purpose


def test_folder_date_converts_received_at_to_utc() -> None:
    local = datetime(2024, 1, 1, 0, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert folder_date(None, local) == datetime(2024, 1, 1, 0, 30, tzinfo=UTC)


def test_nothing_visible_before_commit_and_iter_files_skips_temp(
    tmp_path: Path, received_at: datetime
) -> None:
    store = open_store("eml", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(message("Date: Tue, 01 Mar 2022 10:00:00 +0000"))
    sealed = writer.seal()
    assert not (tmp_path / "acct" / "2022").exists()  # the month folder comes with commit
    assert list(store.iter_files()) == []
    assert store.stat(sealed.relpath) is None
    writer.commit()
    assert list(store.iter_files()) == [sealed.relpath]
    assert list((tmp_path / "acct" / ".tmp").iterdir()) == []
    (tmp_path / "acct" / "2022" / "03" / "notes.txt").write_text("not a message")
    (tmp_path / "acct" / "misc").mkdir()
    (tmp_path / "acct" / "misc" / "x.eml").write_text("not in a YYYY/MM folder")
    assert list(store.iter_files()) == [sealed.relpath]


def test_iter_files_walks_years_and_months_in_order(tmp_path: Path) -> None:
    dates = ["Tue, 01 Mar 2022 10:00:00 +0000", "Sun, 01 Jan 2023 10:00:00 +0000"]
    received = datetime(2024, 1, 1, tzinfo=UTC)
    paths = [archive(tmp_path, message(f"Date: {d}"), received) for d in reversed(dates)]
    assert list(open_store("eml", tmp_path, "acct").iter_files()) == sorted(paths)


@pytest.mark.parametrize("ending", [b"\r\n\r\n", b"\n\n", b"\n\r\n"])
def test_the_sniffer_stops_right_at_the_blank_line_fed_byte_by_byte(ending: bytes) -> None:
    sniffer = HeaderSniffer()
    head = b"Subject: x" + ending
    for i in range(len(head)):
        assert not sniffer.done
        sniffer.feed(head[i : i + 1])
    assert sniffer.done
    assert bytes(sniffer._buffer) == b"Subject: x" + ending[: ending.index(b"\n") + 1]
