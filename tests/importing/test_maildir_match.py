"""Matching server messages to a Maildir another tool wrote (popvault.importing.maildir).

A generated mailbox is written as a Maildir the way getmail6 writes one (LF
line ends, its own Return-Path, Delivered-To, Received and
X-getmail-retrieved-from-mailbox at the top, long fields refolded); the
server side is what TOP n 0 and LIST give for the same messages (CRLF).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popvault.errors import ImportFileError
from popvault.importing.maildir import (
    MAX_HEADER_SECTION,
    AdoptPlan,
    BodyShape,
    MaildirFile,
    ServerMessage,
    adopt_plan,
    body_fits,
    delivery_time,
    header_facts,
    header_section_length,
    measure_body,
    plan_maildir_adoption,
    read_header_section,
    scan_maildir,
)

CRLF = b"\r\n"
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- a mailbox, and the Maildir getmail6 would make of it ----------------------------


def header_of(raw: bytes) -> bytes:
    """The header section (empty line included), as TOP n 0 sends it; found line by line."""
    out = b""
    for line in raw.splitlines(keepends=True):
        out += line
        if line == CRLF:
            return out
    return out


def refold(line: bytes) -> bytes:
    """Fold a long field at its last space before column 40, as Python's email package may."""
    at = line.rfind(b" ", 0, 40)
    return line if len(line) <= 40 or at <= line.find(b":") + 1 else line[:at] + CRLF + line[at:]


def as_getmail_writes(raw: bytes, number: int) -> bytes:
    """``raw`` as getmail6 delivers it to a Maildir (getmailcore/message.py flatten)."""
    header = header_of(raw)
    body = raw[len(header) :]
    kept = [line for line in header.split(CRLF)[:-2] if not line.startswith(b"Return-Path:")]
    added = [
        b"Return-Path: <bounce@example.org>",
        b"Delivered-To: alice@example.org",
        b"Received: from pop.example.org by getmail6 with POP3 msgid:"
        + str(number).encode()
        + b"; 01 Dec 2026 10:00:00 -0000",
        b"X-getmail-retrieved-from-mailbox: INBOX",
    ]
    lines = [*added, *(refold(line) for line in kept)]
    return (CRLF.join(lines) + CRLF + CRLF + body).replace(CRLF, b"\n")


_WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=8)
_BODY_LINE = st.sampled_from(
    [b"", b".", b"..", b".starts with a dot", b"plain text line", b"x" * 1200, b"\tindented"]
)


@st.composite
def mailboxes(draw: st.DrawFn, min_size: int = 1) -> list[bytes]:
    """Messages (CRLF) with distinct Message-IDs and Dates in any offset."""
    count = draw(st.integers(min_size, 8))
    start = datetime(2020, 1, 1, tzinfo=UTC)
    out = []
    for index in range(count):
        offset = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
        date = (start + timedelta(hours=index)).astimezone(offset)
        subject = " ".join(draw(st.lists(_WORD, min_size=1, max_size=12)))
        fields = [
            b"Return-Path: <sender@example.org>",
            f"From: Sender {draw(_WORD)} <s@example.org>".encode(),
            b"To: alice@example.org, "
            + b", ".join(w.encode() + b"@example.org" for w in [draw(_WORD)] * 5),
            f"Subject: {subject}".encode(),
            f"Date: {format_datetime(date)}".encode(),
            f"Message-ID: <{index}.{draw(_WORD)}@example.org>".encode(),
        ]
        body = draw(st.lists(_BODY_LINE, max_size=6))
        raw = CRLF.join([*fields, b"", *body])
        out.append(raw if draw(st.booleans()) and body else raw + CRLF)
    return out


def write_maildir(root: Path, files: Sequence[bytes]) -> list[Path]:
    """Deliver ``files`` into ``root`` (new/ for odd numbers, cur/ for even); their paths."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    paths = []
    for number, data in enumerate(files):
        folder = "new" if number % 2 else "cur"
        name = f"{1700000000 + number}.M{number}P1.host" + ("" if folder == "new" else ":2,S")
        path = root / folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def on_server(mailbox: Sequence[bytes]) -> list[ServerMessage]:
    """The server's view: number, UIDL, LIST size (CRLF octets), TOP n 0."""
    return [
        ServerMessage(number, f"uid{number}", len(raw), header_of(raw))
        for number, raw in enumerate(mailbox, 1)
    ]


def plan_for(root: Path, server: Sequence[ServerMessage]) -> AdoptPlan:
    return plan_maildir_adoption(root, server)


def fresh(tmp_path: Path) -> Path:
    """A new folder under ``tmp_path`` for one hypothesis example."""
    folder = tmp_path / f"maildir{next(_COUNTER)}"
    folder.mkdir()
    return folder


_COUNTER = itertools.count()


# -- the properties -------------------------------------------------------------------


@PROPERTY
@given(mailbox=mailboxes())
def test_every_message_matches_its_own_file_exactly_once(
    tmp_path: Path, mailbox: list[bytes]
) -> None:
    root = fresh(tmp_path)
    paths = write_maildir(root, [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)])
    plan = plan_for(root, on_server(mailbox))
    assert [(m.uidl, m.path) for m in plan.matched] == [
        (f"uid{n}", path) for n, path in enumerate(paths, 1)
    ]
    assert (plan.ambiguous, plan.unmatched, plan.files_unmatched) == ((), (), 0)
    assert [m.relpath for m in plan.matched] == [p.relative_to(root).as_posix() for p in paths]
    # write_maildir names the n-th file with the time 1700000000 + n.
    assert [m.delivered_at for m in plan.matched] == [
        datetime.fromtimestamp(1700000000 + n, UTC) for n in range(len(paths))
    ]


@PROPERTY
@given(mailbox=mailboxes(), data=st.data())
def test_facts_taken_as_replies_arrive_plan_as_the_header_sections_do(
    tmp_path: Path, mailbox: list[bytes], data: st.DataObject
) -> None:
    root = fresh(tmp_path)
    kept = data.draw(st.lists(st.booleans(), min_size=len(mailbox), max_size=len(mailbox)))
    write_maildir(root, [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox) if kept[n]])
    server = on_server(mailbox)
    reduced = [
        ServerMessage(m.number, m.uidl, m.size, None, None, header_facts(m.headers or b""))
        for m in server
    ]
    assert plan_for(root, reduced) == plan_for(root, server)


@PROPERTY
@given(mailbox=mailboxes(), data=st.data())
def test_two_files_with_one_key_are_ambiguous_never_matched(
    tmp_path: Path, mailbox: list[bytes], data: st.DataObject
) -> None:
    twice = data.draw(st.integers(0, len(mailbox) - 1))
    files = [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)]
    root = fresh(tmp_path)
    paths = write_maildir(root, [*files, files[twice]])
    plan = plan_for(root, on_server(mailbox))
    assert [a.uidl for a in plan.ambiguous] == [f"uid{twice + 1}"]
    assert set(plan.ambiguous[0].candidates) == {paths[twice], paths[-1]}
    assert "2 files have this Message-ID and Date" in plan.ambiguous[0].reason
    assert f"uid{twice + 1}" not in {m.uidl for m in plan.matched}
    assert len(plan.matched) == len(mailbox) - 1


@PROPERTY
@given(mailbox=mailboxes(), data=st.data())
def test_two_server_messages_with_one_key_are_both_ambiguous(
    tmp_path: Path, mailbox: list[bytes], data: st.DataObject
) -> None:
    twice = data.draw(st.integers(0, len(mailbox) - 1))
    root = fresh(tmp_path)
    write_maildir(root, [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)])
    server = on_server([*mailbox, mailbox[twice]])  # delivered twice to the server
    plan = plan_for(root, server)
    assert {a.uidl for a in plan.ambiguous} == {f"uid{twice + 1}", f"uid{len(server)}"}
    assert all("2 server messages" in a.reason for a in plan.ambiguous)
    assert len(plan.matched) == len(mailbox) - 1


@PROPERTY
@given(mailbox=mailboxes(min_size=2), data=st.data())
def test_a_message_absent_from_the_maildir_is_unmatched(
    tmp_path: Path, mailbox: list[bytes], data: st.DataObject
) -> None:
    absent = set(data.draw(st.lists(st.integers(0, len(mailbox) - 1), min_size=1, unique=True)))
    extra = data.draw(st.integers(0, 3))
    files = [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox) if n not in absent]
    elsewhere = [as_getmail_writes(_other(n), n) for n in range(extra)]  # not on the server
    root = fresh(tmp_path)
    write_maildir(root, [*files, *elsewhere])
    plan = plan_for(root, on_server(mailbox))
    assert sorted(u.number for u in plan.unmatched) == sorted(n + 1 for n in absent)
    assert all(u.reason == "no file has its Message-ID and Date" for u in plan.unmatched)
    assert len(plan.matched) == len(mailbox) - len(absent)
    assert plan.files_unmatched == extra


def _other(n: int) -> bytes:
    return (
        f"From: x@example.org\r\nDate: Mon, 1 Jan 2001 00:00:0{n} +0000\r\n"
        f"Message-ID: <elsewhere{n}@example.org>\r\n\r\nbody\r\n"
    ).encode()


@PROPERTY
# Only growth past the slack (2 octets) is sure not to fit: a body smaller by its
# number of LFs is the file's as stored (a server that counts LF line ends).
@given(mailbox=mailboxes(), data=st.data(), change=st.sampled_from([3, 4, 5, 41]))
def test_a_body_that_does_not_fit_the_list_size_is_ambiguous(
    tmp_path: Path, mailbox: list[bytes], data: st.DataObject, change: int
) -> None:
    which = data.draw(st.integers(0, len(mailbox) - 1))
    root = fresh(tmp_path)
    write_maildir(root, [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)])
    server = on_server(mailbox)
    wrong = server[which]
    server[which] = ServerMessage(wrong.number, wrong.uidl, wrong.size + change, wrong.headers)
    plan = plan_for(root, server)
    assert [a.uidl for a in plan.ambiguous] == [wrong.uidl]
    assert plan.ambiguous[0].reason.startswith("sizes do not fit")
    assert len(plan.ambiguous[0].candidates) == 1
    # Without size checks (servers that estimate LIST sizes) it matches.
    assert len(plan_maildir_adoption(root, server, check_sizes=False).matched) == len(mailbox)


@PROPERTY
@given(mailbox=mailboxes(), data=st.data())
def test_a_stable_field_that_differs_is_ambiguous(
    tmp_path: Path, mailbox: list[bytes], data: st.DataObject
) -> None:
    which = data.draw(st.integers(0, len(mailbox) - 1))
    files = [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)]
    files[which] = files[which].replace(b"\nTo: alice@", b"\nTo: mallory@", 1)
    root = fresh(tmp_path)
    write_maildir(root, files)
    plan = plan_maildir_adoption(root, on_server(mailbox), check_sizes=False)
    assert [a.number for a in plan.ambiguous] == [which + 1]
    assert "other fields differ" in plan.ambiguous[0].reason


def test_no_message_id_or_no_date_is_unmatched_whatever_the_maildir_holds(tmp_path: Path) -> None:
    no_id = b"From: a@example.org\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nhi\r\n"
    no_date = b"From: a@example.org\r\nMessage-ID: <a@b>\r\n\r\nhi\r\n"
    two_ids = (
        b"Message-ID: <a@b>\r\nMessage-ID: <c@d>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
    )
    mailbox = [no_id, no_date, two_ids]
    write_maildir(tmp_path, [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)])
    plan = plan_for(tmp_path, on_server(mailbox))
    assert [u.reason for u in plan.unmatched] == [
        "its headers have no Message-ID",
        "its headers have no Date",
        "its headers have 2 different Message-ID fields",
    ]
    assert plan.matched == ()
    assert plan.files_unmatched == 3


def test_a_refused_top_is_unmatched_with_the_servers_words(tmp_path: Path) -> None:
    write_maildir(tmp_path, [])
    server = [ServerMessage(1, "u1", 10, None, "-ERR no such message")]
    plan = plan_for(tmp_path, server)
    assert [u.reason for u in plan.unmatched] == ["TOP refused: -ERR no such message"]


def test_a_uidl_listed_twice_is_never_matched(tmp_path: Path) -> None:
    mailbox = [_other(1), _other(2)]
    write_maildir(tmp_path, mailbox)
    server = [
        ServerMessage(n, "same", len(raw), header_of(raw)) for n, raw in enumerate(mailbox, 1)
    ]
    plan = plan_for(tmp_path, server)
    assert plan.matched == ()
    assert all("2 messages with this UIDL" in a.reason for a in plan.ambiguous)


def test_bodies_are_measured_only_for_a_single_candidate(tmp_path: Path) -> None:
    mailbox = [_other(1), _other(2), _other(3)]
    files = [as_getmail_writes(raw, n) for n, raw in enumerate(mailbox)]
    write_maildir(tmp_path, [files[0], files[1], files[1]])  # 3 absent, 2 twice
    scan = scan_maildir(tmp_path)
    measured: list[Path] = []

    def measure(file: MaildirFile) -> BodyShape:
        measured.append(file.path)
        return measure_body(file)

    plan = adopt_plan(on_server(mailbox), scan.files, measure=measure)
    assert measured == [plan.matched[0].path]
    assert [m.number for m in plan.matched] == [1]
    measured.clear()
    adopt_plan(on_server(mailbox), scan.files, measure=measure, check_sizes=False)
    assert measured == []


# -- header sections and their facts --------------------------------------------------


_HEADERISH = st.lists(
    st.sampled_from([b"A: b", b" folded", b"", b"\r", b"X-Y:z", b"From x 10:00"]), max_size=8
)


@given(lines=_HEADERISH, ending=st.sampled_from([b"\n", b"\r\n"]), rest=st.binary(max_size=20))
def test_the_header_section_ends_at_the_first_empty_line(
    lines: list[bytes], ending: bytes, rest: bytes
) -> None:
    data = b"".join(line + ending for line in lines) + rest
    expected, at = None, 0
    for line in data.split(b"\n")[:-1]:  # each line that an LF ends
        at += len(line) + 1
        if line in (b"", b"\r"):
            expected = at
            break
    assert header_section_length(data) == expected


class _Trickle(io.RawIOBase):
    """A stream that gives at most ``step`` octets per read: block boundaries anywhere."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step, self._at = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        wanted = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._at : self._at + wanted]
        self._at += len(chunk)
        return chunk


@given(
    lines=_HEADERISH,
    ending=st.sampled_from([b"\n", b"\r\n"]),
    body=st.binary(max_size=40),
    step=st.integers(1, 7),
    block=st.integers(1, 9),
)
def test_reading_block_by_block_finds_the_same_section(
    lines: list[bytes], ending: bytes, body: bytes, step: int, block: int
) -> None:
    data = b"".join(line + ending for line in lines) + ending + body
    stream = _Trickle(data, step)
    section = read_header_section(stream, Path("f"), block_size=block)  # type: ignore[arg-type]
    assert section == data[: header_section_length(data)]


def test_a_header_section_past_the_bound_is_refused(tmp_path: Path) -> None:
    root = tmp_path
    write_maildir(root, [b"X: " + b"y" * MAX_HEADER_SECTION + b"\n\nbody\n", _other(1)])
    scan = scan_maildir(root)
    assert len(scan.files) == 1
    assert [u.path.parent.name for u in scan.unreadable] == ["cur"]
    assert "no end of the header section" in scan.unreadable[0].reason


def _fold_everywhere(raw: bytes) -> bytes:
    header = header_of(raw)
    folded = b"".join(line.replace(b" ", CRLF + b" ") + CRLF for line in header.split(CRLF)[:-2])
    return folded + CRLF + raw[len(header) :]


@given(mailbox=mailboxes())
def test_folding_and_lf_line_ends_change_neither_key_nor_digest(mailbox: list[bytes]) -> None:
    for raw in mailbox:
        plain = header_facts(raw)
        for variant in (_fold_everywhere(raw), raw.replace(CRLF, b"\n")):
            other = header_facts(variant)
            assert (other.key, other.digest) == (plain.key, plain.digest)
        assert plain.key is not None


@given(
    when=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 1, 1)),
    minutes=st.integers(-23 * 60, 23 * 60),
)
def test_the_date_is_the_instant_in_utc(when: datetime, minutes: int) -> None:
    local = when.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=minutes)))
    facts = header_facts(f"Date: {format_datetime(local)}\r\nMessage-ID: <a@b>\r\n\r\n".encode())
    assert facts.date == local.astimezone(UTC)
    assert facts.date is not None
    assert facts.date.tzinfo is UTC
    utc = header_facts(
        f"Date: {format_datetime(local.astimezone(UTC))}\r\nMessage-ID: <a@b>\r\n\r\n".encode()
    )
    assert utc.key == facts.key  # the same instant written in another offset: the same key


def test_an_unparsable_date_keys_by_its_text() -> None:
    facts = header_facts(b"Date: sometime   soon\r\nMessage-ID:  < a@b >\r\n\r\n")
    assert facts.date is None
    assert facts.key == ("<a@b>", "sometime soon")


@given(
    octets=st.integers(0, 10_000),
    bare=st.integers(0, 500),
    ends=st.booleans(),
    delta=st.integers(-8, 8),
    crlf_based=st.booleans(),
)
def test_body_fits_only_within_one_crlf(
    octets: int, bare: int, ends: bool, delta: int, crlf_based: bool
) -> None:
    shape = BodyShape(octets, min(bare, octets), ends)
    server = (shape.crlf_octets if crlf_based else shape.octets) + delta
    near = {d for base in (shape.octets, shape.crlf_octets) for d in (base - 2, base, base + 2)}
    assert body_fits(server, shape) == (server in near)
    assert body_fits(server, shape) or abs(delta) not in (0, 2)


@given(body=st.binary(max_size=60).map(lambda b: b.replace(b"\x00", b"\n")), step=st.integers(1, 9))
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_measure_body_counts_bare_lf_across_any_block_boundary(
    tmp_path: Path, body: bytes, step: int
) -> None:
    root = fresh(tmp_path)
    write_maildir(root, [b"X: y\n\n" + body])
    (file,) = scan_maildir(root).files
    shape = measure_body(file, block_size=step)
    bare = body.count(b"\n") - body.count(b"\r\n")
    assert shape == BodyShape(len(body), bare, ends_line=not body or body.endswith(b"\n"))


def test_cur_and_new_of_the_maildir_and_its_subfolders_never_tmp(tmp_path: Path) -> None:
    top = write_maildir(tmp_path, [_other(1), _other(2)])
    filed = write_maildir(tmp_path / ".Lists.popvault", [_other(3)])
    (tmp_path / "tmp" / "unfinished").write_bytes(_other(4))
    (tmp_path / "cur" / ".hidden").write_bytes(_other(5))
    (tmp_path / ".notafolder").write_bytes(b"")
    (tmp_path / "dovecot-uidlist").write_bytes(b"3 V1 N2\n")
    (tmp_path / "cur" / "link").symlink_to(top[0])
    assert [f.path for f in scan_maildir(tmp_path).files] == [top[1], top[0], *filed]
    assert [f.relpath for f in scan_maildir(tmp_path).files][2].startswith(".Lists.popvault/cur/")
    assert [f.path for f in scan_maildir(tmp_path, subfolders=False).files] == [top[1], top[0]]


def test_not_a_maildir_is_an_import_file_error(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="not a Maildir") as info:
        scan_maildir(tmp_path)
    assert info.value.path == str(tmp_path)


@given(
    seconds=st.integers(0, 9_999_999_999), rest=st.sampled_from([".M1P2.host", ".x:2,S", "", "x"])
)
def test_the_delivery_time_is_the_names_leading_seconds_when_plausible(
    seconds: int, rest: str
) -> None:
    found = delivery_time(f"{seconds}{rest}")
    plausible = rest.startswith(".") and 820_454_400 <= seconds < 4_102_444_800
    assert found == (datetime.fromtimestamp(seconds, UTC) if plausible else None)
