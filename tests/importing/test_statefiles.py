"""The state-file readers: on files the real tools wrote, and on files written by their rules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_tools import (
    FetchmailPoll,
    run_fetchmail,
    run_getmail6,
    run_mpop,
    server_uidls,
    work_folder,
)

from dovecot import HOST, DovecotMailbox, DovecotServer
from popvault.errors import ImportFileError
from popvault.importing import SeenUidl
from popvault.importing.statefiles import (
    MAX_LINE_OCTETS,
    getmail6_file_name,
    getmail6_uidl_form,
    read_fetchmail,
    read_getmail6,
    read_mpop,
)
from popvault.redaction import register
from popvault.testing import sample_messages

# -- the real tools against the test Dovecot ------------------------------------------


def deliver(mailbox: DovecotMailbox, count: int, seed: int) -> None:
    for raw in sample_messages(count, seed=seed):
        mailbox.deliver(raw)


def uidls(seen: Sequence[SeenUidl]) -> list[str]:
    return [entry.uidl for entry in seen]


def test_getmail6_file_holds_what_getmail6_retrieved_and_when(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox
) -> None:
    key = f"{dovecot_mailbox.username}@{HOST}"
    deliver(dovecot_mailbox, 4, seed=1)
    retrieved = server_uidls(dovecot, dovecot_mailbox)
    with work_folder() as work:
        started = int(time.time())
        first = run_getmail6(dovecot, dovecot_mailbox, work)
        ended = time.time()
        deliver(dovecot_mailbox, 3, seed=2)
        seen = read_getmail6(first.state_file)

        assert first.delivered[key] == len(retrieved) == 4
        assert sorted(uidls(seen)) == sorted(getmail6_uidl_form(u) for u in retrieved)
        assert set(uidls(seen)) < set(server_uidls(dovecot, dovecot_mailbox))
        assert all(started <= e.seen_at.timestamp() <= ended for e in seen if e.seen_at)
        assert all(e.seen_at is not None and e.seen_at.tzinfo is UTC for e in seen)
        name = getmail6_file_name(HOST, dovecot.port, dovecot_mailbox.username)
        assert first.state_file.name == name

        # A later run adds the new messages and keeps the first times of the old.
        time.sleep(1.05)  # getmail6 records whole seconds
        second = run_getmail6(dovecot, dovecot_mailbox, work)
        again = {e.uidl: e.seen_at for e in read_getmail6(second.state_file)}
        assert second.delivered[key] == 7
        assert set(again) == set(server_uidls(dovecot, dovecot_mailbox))
        assert all(again[e.uidl] == e.seen_at for e in seen)
        first_times = {e.seen_at for e in seen}
        new_times = {again[u] for u in set(again) - set(uidls(seen))}
        assert len(first_times) == len(new_times) == 1
        assert first_times != new_times


def test_mpop_file_holds_what_mpop_retrieved_for_each_account(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox
) -> None:
    other = dovecot.add_user()
    deliver(dovecot_mailbox, 5, seed=3)
    deliver(other, 2, seed=4)
    retrieved = {m.username: server_uidls(dovecot, m) for m in (dovecot_mailbox, other)}
    with work_folder() as work:
        run = run_mpop(dovecot, [dovecot_mailbox, other], work)
        deliver(dovecot_mailbox, 3, seed=5)
        for mailbox in (dovecot_mailbox, other):
            seen = read_mpop(run.state_file, user=mailbox.username, host=HOST)
            assert sorted(uidls(seen)) == sorted(retrieved[mailbox.username])
            assert run.delivered[f"{mailbox.username}@{HOST}"] == len(seen)
            assert all(entry.seen_at is None for entry in seen)
        mine = read_mpop(run.state_file, user=dovecot_mailbox.username, host=HOST)
        assert len(set(server_uidls(dovecot, dovecot_mailbox)) - set(uidls(mine))) == 3

        with pytest.raises(ImportFileError) as caught:
            read_mpop(run.state_file, user="nobody", host=HOST)
        for mailbox, count in ((dovecot_mailbox, 5), (other, 2)):
            assert f"{mailbox.username}@{HOST} ({count})" in str(caught.value)
        assert caught.value.path == str(run.state_file)


def test_fetchmail_file_holds_each_polls_user_at_its_poll_or_via_name(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox
) -> None:
    second, third = dovecot.add_user(), dovecot.add_user()
    deliver(dovecot_mailbox, 3, seed=6)
    deliver(second, 2, seed=7)
    deliver(third, 1, seed=8)
    polls = [
        FetchmailPoll([dovecot_mailbox, second]),  # by address
        FetchmailPoll([dovecot_mailbox], name="localhost"),  # by name
        FetchmailPoll([third], name="popvault-label", via=HOST),  # a label: the key is via's
    ]
    retrieved = {m.username: server_uidls(dovecot, m) for m in (dovecot_mailbox, second, third)}
    with work_folder() as work:
        run = run_fetchmail(dovecot, polls, work)
        for mailbox in (dovecot_mailbox, second, third):
            deliver(mailbox, 2, seed=9)
        for poll in polls:
            for mailbox in poll.mailboxes:
                # fetchmail ignores case in both halves of its key; so do we
                user, host = mailbox.username.upper(), poll.recorded_host.upper()
                seen = read_fetchmail(run.state_file, user=user, host=host, port=dovecot.port)
                assert sorted(uidls(seen)) == sorted(retrieved[mailbox.username])
                assert run.delivered[f"{mailbox.username}@{poll.recorded_host}"] == len(seen)
                assert set(uidls(seen)) < set(server_uidls(dovecot, mailbox))

        with pytest.raises(ImportFileError) as caught:
            read_fetchmail(run.state_file, user=third.username, host="popvault-label")
        message = str(caught.value)
        assert f"no fetchmail entry for {third.username}@popvault-label" in message
        for key, count in run.delivered.items():
            assert f"{key} ({count})" in message


# -- the formats, written here as the tools write them -------------------------------

UIDL = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)
GETMAIL6_UIDL = UIDL.map(getmail6_uidl_form)
NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
HOST_NAME = st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True)
SECONDS = st.integers(min_value=0, max_value=2**33)
FILE_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def write(path: Path, lines: Sequence[str | bytes], *, newline: bytes = b"\n") -> Path:
    encoded = [line.encode() if isinstance(line, str) else line for line in lines]
    path.write_bytes(b"".join(line + newline for line in encoded))
    return path


def getmail6_lines(entries: Sequence[tuple[str, int]]) -> list[str]:
    return [f"{uidl}\0{seconds}" for uidl, seconds in entries]


def fetchmail_lines(entries: Sequence[tuple[str, str, str]]) -> list[str]:
    return [f"{user}@{host} {uidl}" for user, host, uidl in entries]


MPOP_HEADER = [
    "# This file was generated by mpop version {version}.",
    "#",
    "# Lines starting with a space begin a new UID list and have",
    '# the following format: " number-of-uids hostname user".',
    "# The list of UIDs follows in ascending order, with one UID per line.",
    "#",
]


def mpop_lines(
    lists: Sequence[tuple[str, str, Sequence[str]]], version: str = "1.4.18"
) -> list[str]:
    lines = [line.format(version=version) for line in MPOP_HEADER]
    for host, user, ids in lists:
        lines.append(f" {len(ids)} {host} {user}")
        lines.extend(ids)
    return lines


def first_of_each(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


@FILE_SETTINGS
@given(entries=st.lists(st.tuples(GETMAIL6_UIDL, SECONDS), max_size=40), crlf=st.booleans())
def test_getmail6_reads_back_every_uidl_with_its_first_time(
    tmp_path: Path, entries: list[tuple[str, int]], crlf: bool
) -> None:
    path = write(tmp_path / "oldmail", getmail6_lines(entries), newline=b"\r\n" if crlf else b"\n")
    seen = read_getmail6(path)
    firsts: dict[str, int] = {}
    for uidl, seconds in entries:
        firsts.setdefault(uidl, seconds)
    assert [(e.uidl, e.seen_at) for e in seen] == [
        (uidl, datetime.fromtimestamp(seconds, UTC)) for uidl, seconds in firsts.items()
    ]


ACCOUNT = st.tuples(NAME, HOST_NAME)


@FILE_SETTINGS
@given(
    accounts=st.lists(ACCOUNT, min_size=1, max_size=4, unique=True),
    picks=st.lists(st.tuples(st.integers(0, 3), UIDL), min_size=1, max_size=40),
    wanted=st.integers(0, 3),
)
def test_fetchmail_reads_back_the_uidls_of_one_of_several_accounts(
    tmp_path: Path,
    accounts: list[tuple[str, str]],
    picks: list[tuple[int, str]],
    wanted: int,
) -> None:
    entries = [(*accounts[i % len(accounts)], uidl) for i, uidl in picks]
    user, host = accounts[wanted % len(accounts)]
    path = write(tmp_path / "fetchids", fetchmail_lines(entries))
    same = [uidl for u, h, uidl in entries if (u.casefold(), h) == (user.casefold(), host)]
    if not same:
        with pytest.raises(ImportFileError, match="no fetchmail entry"):
            read_fetchmail(path, user=user, host=host)
        return
    assert uidls(read_fetchmail(path, user=user, host=host)) == first_of_each(same)


def test_fetchmail_splits_a_key_as_fetchmail_does(tmp_path: Path) -> None:
    # an "@" in the user (the account is an address), a space in it (Lotus Notes),
    # an "@" in the UIDL (InterMail), an address as the host
    path = write(
        tmp_path / "fetchids",
        [
            "me@example.org@pop.example.org <1@mail>",
            "John Doe@10.0.0.1 2",
            "  John Doe@10.0.0.1 3",
            "someone@[::1] 4",
        ],
    )
    assert uidls(read_fetchmail(path, user="me@example.org", host="pop.example.org")) == [
        "<1@mail>"
    ]
    assert uidls(read_fetchmail(path, user="john doe", host="10.0.0.1")) == ["2", "3"]
    assert uidls(read_fetchmail(path, user="someone", host="[::1]")) == ["4"]


@FILE_SETTINGS
@given(
    lists=st.lists(st.tuples(HOST_NAME, NAME, st.lists(UIDL, min_size=1, max_size=10)), max_size=4),
    wanted=st.integers(0, 3),
    version=st.sampled_from(["0.8.5", "1.0.29", "1.4.18", "1.4.22"]),
)
def test_mpop_reads_back_the_uidls_of_one_of_several_accounts(
    tmp_path: Path,
    lists: list[tuple[str, str, list[str]]],
    wanted: int,
    version: str,
) -> None:
    path = write(tmp_path / "uidls", mpop_lines(lists, version))
    if not lists:
        assert read_mpop(path, user="anyone", host="anywhere") == []
        return
    host, user, _ = lists[wanted % len(lists)]
    same = [u for h, who, ids in lists if who == user and h == host for u in ids]
    seen = read_mpop(path, user=user, host=host.upper())
    assert uidls(seen) == first_of_each(same)
    assert all(entry.seen_at is None for entry in seen)


def test_mpop_compares_the_user_as_mpop_does_and_the_host_ignoring_case(tmp_path: Path) -> None:
    lists = [("Pop.Example.org", "me", ["a"]), ("pop.example.org", "Me", ["b"])]
    path = write(tmp_path / "uidls", mpop_lines(lists))
    assert uidls(read_mpop(path, user="me", host="POP.example.ORG")) == ["a"]
    assert uidls(read_mpop(path, user="Me", host="pop.example.org")) == ["b"]
    with pytest.raises(ImportFileError) as caught:
        read_mpop(path, user="ME", host="pop.example.org")
    assert "it has me@Pop.Example.org (1), Me@pop.example.org (1)" in str(caught.value)


def test_mpop_hash_lines_are_comments_only_before_the_first_list(tmp_path: Path) -> None:
    path = write(tmp_path / "uidls", [*mpop_lines([]), " 2 pop.example.org me", "#1", "#2"])
    assert uidls(read_mpop(path, user="me", host="pop.example.org")) == ["#1", "#2"]


def test_mpop_with_per_uid_times_gives_each_uidl_its_time(tmp_path: Path) -> None:
    # A UIDL has no space (RFC 1939 section 7): "UIDL SP seconds", either way round.
    at = 1_767_225_600
    for version in ("1.4.23", "1.5.0", "2.0"):
        ids = [f"a {at}", f"{at + 60} b", "c", f"{at} 1234"]
        path = write(tmp_path / "uidls", mpop_lines([("h", "u", ids)], version))
        seen = read_mpop(path, user="u", host="h")
        assert [(e.uidl, e.seen_at) for e in seen] == [
            ("a", datetime.fromtimestamp(at, UTC)),
            ("b", datetime.fromtimestamp(at + 60, UTC)),
            ("c", None),
            # 1234 is no time of this century: the UIDL.
            ("1234", datetime.fromtimestamp(at, UTC)),
        ]


def test_mpop_per_uid_times_refuse_what_cannot_be_told_apart(tmp_path: Path) -> None:
    at = 1_767_225_600
    for bad in (f"{at} {at + 1}", "a b", f"a {at} x"):
        path = write(tmp_path / "uidls", mpop_lines([("h", "u", ["ok", bad])], "1.4.23"))
        with pytest.raises(ImportFileError) as caught:
            read_mpop(path, user="u", host="h")
        assert caught.value.line == len(MPOP_HEADER) + 3


def test_mpop_before_per_uid_times_refuses_a_line_with_a_space(tmp_path: Path) -> None:
    path = write(tmp_path / "uidls", mpop_lines([("h", "u", ["a 1767225600"])], "1.4.18"))
    with pytest.raises(ImportFileError) as caught:
        read_mpop(path, user="u", host="h")
    assert caught.value.line == len(MPOP_HEADER) + 2


def test_empty_files_as_each_tool_leaves_them(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty", [])
    assert read_getmail6(empty) == []  # getmail6 writes one when it keeps nothing
    assert read_mpop(empty, user="u", host="h") == []  # mpop creates one before its first run
    header_only = write(tmp_path / "uidls", mpop_lines([]))
    assert read_mpop(header_only, user="u", host="h") == []
    # fetchmail deletes its file rather than leave it empty: nothing for the account
    with pytest.raises(ImportFileError, match="no fetchmail entry for u@h; it has none"):
        read_fetchmail(empty, user="u", host="h")


# -- malformed lines -------------------------------------------------------------------

BAD_UIDLS = ["has space", "tab\there", "é", "x" * 71, "ctl\x01"]


def assert_refused_at(read: Callable[[], object], path: Path, line: int) -> ImportFileError:
    with pytest.raises(ImportFileError) as caught:
        read()
    assert caught.value.line == line
    assert caught.value.path == str(path)
    assert f"{path}, line {line}:" in str(caught.value)
    return caught.value


# Every kind of bad line, each at positions hypothesis picks.
GETMAIL6_BAD = [
    "no-nul-here",
    "uidl\x00",
    "uidl\x00-5",
    "uidl\x00 5",
    "uidl\x001.5",
    "uidl\x00" + "9" * 30,
    "with/slash\x00100",
    "",
    *(f"{bad}\x00100" for bad in [*BAD_UIDLS, ""]),
]
POSITION_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("bad", GETMAIL6_BAD)
@POSITION_SETTINGS
@given(entries=st.lists(st.tuples(GETMAIL6_UIDL, SECONDS), max_size=20), where=st.integers(0))
def test_getmail6_names_the_malformed_line_wherever_it_is(
    tmp_path: Path, bad: str, entries: list[tuple[str, int]], where: int
) -> None:
    lines = getmail6_lines(entries)
    at = where % (len(lines) + 1)
    lines.insert(at, bad)
    path = write(tmp_path / "oldmail", lines)
    assert_refused_at(lambda: read_getmail6(path), path, at + 1)


FETCHMAIL_BAD = ["no at sign", "user@host", "user@host ", "@host uidl", "user@ uidl", "u@h a b", ""]


@pytest.mark.parametrize("bad", FETCHMAIL_BAD)
@POSITION_SETTINGS
@given(entries=st.lists(st.tuples(NAME, HOST_NAME, UIDL), max_size=20), where=st.integers(0))
def test_fetchmail_names_the_malformed_line_wherever_it_is(
    tmp_path: Path, bad: str, entries: list[tuple[str, str, str]], where: int
) -> None:
    lines = fetchmail_lines([*entries, ("me", "h", "mine")])
    at = where % (len(lines) + 1)
    lines.insert(at, bad)
    path = write(tmp_path / "fetchids", lines)
    assert_refused_at(lambda: read_fetchmail(path, user="me", host="h"), path, at + 1)


@pytest.mark.parametrize("bad", BAD_UIDLS[2:])  # those without blanks: a key and a UIDL
def test_fetchmail_checks_the_uidls_of_the_account_it_reads(tmp_path: Path, bad: str) -> None:
    lines = fetchmail_lines([("me", "h", "ok"), ("other", "h", bad), ("me", "h", bad)])
    path = write(tmp_path / "fetchids", lines)
    assert_refused_at(lambda: read_fetchmail(path, user="me", host="h"), path, 3)
    assert_refused_at(lambda: read_fetchmail(path, user="other", host="h"), path, 2)
    # another account's UIDLs are that account's business
    clean = write(tmp_path / "fetchids", lines[:2])
    assert uidls(read_fetchmail(clean, user="me", host="h")) == ["ok"]


@pytest.mark.parametrize("bad", BAD_UIDLS[2:])
@POSITION_SETTINGS
@given(
    lists=st.lists(st.lists(UIDL, min_size=1, max_size=6), min_size=1, max_size=4),
    mine=st.integers(min_value=0),
    slot=st.integers(min_value=0),
)
def test_mpop_names_a_bad_uidl_of_the_account_wherever_it_is(
    tmp_path: Path, bad: str, lists: list[list[str]], mine: int, slot: int
) -> None:
    owners = [(f"h{i}", f"u{i}") for i in range(len(lists))]
    which = mine % len(lists)
    spoilt = [list(ids) for ids in lists]
    spoilt[which][slot % len(spoilt[which])] = bad
    lines = mpop_lines([(h, u, ids) for (h, u), ids in zip(owners, spoilt, strict=True)])
    path = write(tmp_path / "uidls", lines)
    at = lines.index(bad) + 1
    host, user = owners[which]
    assert_refused_at(lambda: read_mpop(path, user=user, host=host), path, at)


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ([" 3 h u", "a", "b"], 7),  # the list promises more than follow: its header's line
        ([" 3 h u", "a", " 1 h v", "c"], 7),
        ([" 1 h u", "a", "b"], 9),  # one more than promised: not a list header
        ([" 0 h u"], 7),
        ([" x h u", "a"], 7),
        ([" 1 h", "a"], 7),
        ([" 1 h u extra", "a"], 7),
        (["a"], 7),  # a UIDL outside a list
        ([" 2 h u", "a", ""], 9),
        ([" 2 h u", "", "a"], 8),
    ],
)
def test_mpop_names_the_line_of_a_broken_list(tmp_path: Path, body: list[str], line: int) -> None:
    path = write(tmp_path / "uidls", [*mpop_lines([]), *body])
    assert_refused_at(lambda: read_mpop(path, user="u", host="h"), path, line)


# -- what an error shows ----------------------------------------------------------------


def test_a_quoted_line_shows_control_characters_and_odd_octets_visibly(tmp_path: Path) -> None:
    path = write(tmp_path / "oldmail", [b"evil\x1b[2J\xff\x00x"])
    error = assert_refused_at(lambda: read_getmail6(path), path, 1)
    assert "\x1b" not in str(error)
    assert "\\x1b[2J" in str(error)
    assert "\\xff" in str(error)


def test_a_line_that_may_hold_a_password_is_not_quoted(tmp_path: Path) -> None:
    # an rc file given instead of the state file
    path = write(tmp_path / ".fetchmailrc", ['poll h user "me" password "hunter2-secret"'])
    error = assert_refused_at(lambda: read_fetchmail(path, user="me", host="h"), path, 1)
    assert "hunter2" not in str(error)
    register("s3cr3t-value")
    path = write(tmp_path / "oldmail", ["s3cr3t-value"])
    assert "s3cr3t-value" not in str(assert_refused_at(lambda: read_getmail6(path), path, 1))


def test_an_overlong_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = write(tmp_path / "oldmail", ["a\x00100", "b" * (MAX_LINE_OCTETS + 1)])
    error = assert_refused_at(lambda: read_getmail6(path), path, 2)
    assert len(str(error)) < 400


def test_an_unreadable_file_is_an_import_error_naming_it(tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(ImportFileError) as caught:
            read_getmail6(path)
        assert caught.value.path == str(path)
        assert caught.value.line is None
        assert str(path) in str(caught.value)


@given(server=st.text(max_size=20), port=st.integers(1, 65535), user=st.text(max_size=20))
def test_getmail6_file_name_has_none_of_the_characters_getmail6_strips(
    server: str, port: int, user: str
) -> None:
    name = getmail6_file_name(server, port, user)
    assert not set(name) & set("/\\:;<>|")
    if not set(server + user) & set("/\\:;<>|"):
        assert name == f"oldmail-{server}-{port}-{user}"


@given(uidl=UIDL)
def test_getmail6_uidl_form_is_the_uidl_with_each_slash_a_dash(uidl: str) -> None:
    form = getmail6_uidl_form(uidl)
    assert "/" not in form
    assert len(form) == len(uidl)
    assert all(a == b or (a, b) == ("/", "-") for a, b in zip(uidl, form, strict=True))
