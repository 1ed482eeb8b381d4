"""Parsers for listings, CAPA, STAT, the APOP digest, and redaction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popvault.errors import RemoteProtocolError
from popvault.pop3 import (
    apop_digest,
    apop_timestamp,
    code_matches,
    parse_capa,
    parse_list_line,
    parse_response_code,
    parse_stat,
    parse_uidl_line,
    redact,
)
from popvault.pop3.parsing import parse_uidl_entry, stored_uid


def test_apop_digest_matches_rfc_1939_example() -> None:
    # RFC 1939 section 7 gives this timestamp, secret and digest.
    digest = apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf")
    assert digest == "c4c9334bac560ecc979e58001b3e22fb"


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [
        (
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
            "<1896.697170952@dbc.mtview.ca.us>",
        ),
        ("Dovecot ready.", None),
        ("ready <no-at-sign>", None),
        ("<a@b> first wins <c@d>", "<a@b>"),
    ],
)
def test_apop_timestamp(greeting: str, expected: str | None) -> None:
    assert apop_timestamp(greeting) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"1 whqtswO00WBw418f9t5JxYwZ", (1, "whqtswO00WBw418f9t5JxYwZ")),
        (b"2 QhdPYR:00WBw1Ph7x7\r\n", (2, "QhdPYR:00WBw1Ph7x7")),
        (b"3 abc\n", (3, "abc")),
        (b"4 ABC", (4, "ABC")),  # case matters: not the same uid as "abc"
        (b"5 " + b"~" * 70, (5, "~" * 70)),
    ],
)
def test_parse_uidl_line(line: bytes, expected: tuple[int, str]) -> None:
    assert parse_uidl_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [b"", b"1", b"x abc", b"1 abc def", b"-1 abc", b"1 ab\x7fc", b"1 \xc3\xa9", b"1 " + b"a" * 256],
)
def test_parse_uidl_line_rejects(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_uidl_line(line)


def test_parse_list_line() -> None:
    assert parse_list_line(b"1 120\r\n") == (1, 120)
    for bad in (b"1", b"1 -3", b"a 1", b"x 2 3", b"1 99999999999999999999"):
        with pytest.raises(RemoteProtocolError):
            parse_list_line(bad)


@pytest.mark.parametrize("extra", [b" 3", b" (seen)", b" flags: new unread", b"  \t x "])
def test_parse_list_line_ignores_words_after_the_size(extra: bytes) -> None:
    # RFC 1939 section 5: a scan listing may carry more information after the size.
    assert parse_list_line(b"7 1205" + extra + b"\r\n") == (7, 1205)


def test_parse_uidl_line_still_refuses_a_third_word() -> None:
    # The unique-id is the ledger's key: a UIDL line with more words is ambiguous.
    with pytest.raises(RemoteProtocolError):
        parse_uidl_line(b"1 abc def")


def test_parse_stat() -> None:
    assert parse_stat("2 320") == (2, 320)
    assert parse_stat("2 320 extra words") == (2, 320)
    for bad in ("", "2", "two 3"):
        with pytest.raises(RemoteProtocolError):
            parse_stat(bad)


def test_parse_capa() -> None:
    lines = [b"TOP\r\n", b"uidl", "SASL PLAIN LOGIN", b"IMPLEMENTATION Dovecot", b"", b"SASL X"]
    assert parse_capa(lines) == {
        "TOP": [],
        "UIDL": [],
        "SASL": ["PLAIN", "LOGIN", "X"],
        "IMPLEMENTATION": ["Dovecot"],
    }


def test_response_codes_and_hierarchy() -> None:
    assert parse_response_code("[SYS/PERM] disk gone") == ("SYS/PERM", "disk gone")
    assert parse_response_code("no code") == (None, "no code")
    assert code_matches("SYS/TEMP", "SYS/TEMP")
    assert code_matches("SYS/TEMP/QUOTA", "SYS/TEMP")
    assert not code_matches("SYS/TEMPORARY", "SYS/TEMP")
    assert not code_matches("SYS", "SYS/TEMP")
    assert not code_matches(None, "AUTH")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PASS hunter2\r\n", "PASS ***"),
        ("pass hunter2 with spaces", "pass ***"),
        ("APOP bob c4c9334bac560ecc979e58001b3e22fb", "APOP ***"),
        ("AUTH PLAIN AGJvYgBodW50ZXIy", "AUTH PLAIN ***"),
        ("AUTH XOAUTH2", "AUTH XOAUTH2"),
        ("USER bob", "USER bob"),
        ("RETR 1\r\n", "RETR 1"),
        ("PASS", "PASS"),
        ("USER bob\r\nPASS hunter2\r\n", "USER bob \\n PASS ***"),
    ],
)
def test_redact(line: bytes | str, expected: str) -> None:
    assert redact(line) == expected


def test_redact_auth_continuation() -> None:
    assert redact(b"AGJvYgBodW50ZXIy\r\n", auth_continuation=True) == "***"


# -- lenient UIDL lines and stored unique-ids ---------------------------------------------


def test_a_valid_uid_is_stored_as_sent() -> None:
    assert parse_uidl_entry(b"3 QhdPYR:00WBw1Ph7x7\r\n") == (3, "QhdPYR:00WBw1Ph7x7")
    assert stored_uid(b"%41") == "%41"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"1 a b", " a%20b"),
        (b"1 nul\x00x", " nul%00x"),
        (b"1 caf\xe9", " caf%E9"),
        (b"1 50%\xff", " 50%25%FF"),
        (b"1  padded  ", "padded"),
    ],
)
def test_an_odd_uid_is_stored_escaped(line: bytes, expected: str) -> None:
    assert parse_uidl_entry(line) == (1, expected)


@pytest.mark.parametrize("line", [b"x abc", b"1", b"-1 abc", b""])
def test_a_line_without_number_or_uid_is_refused(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_uidl_entry(line)


@given(st.binary(min_size=1, max_size=40), st.binary(min_size=1, max_size=40))
def test_stored_uids_never_collide(first: bytes, second: bytes) -> None:
    if first != second:
        assert stored_uid(first) != stored_uid(second)
