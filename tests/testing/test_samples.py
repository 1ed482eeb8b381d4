"""The sample messages: deterministic, RFC 5322 shaped, and as awkward as promised."""

from __future__ import annotations

import email
import email.policy
import re
from email.utils import parsedate_to_datetime

import pytest

from popvault.testing import large_attachment_message, sample_messages
from popvault.testing.samples import KINDS

MESSAGES = sample_messages()


def lines_of(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n")


def header(raw: bytes, name: str) -> str | None:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    for line in head.split("\r\n"):
        found = re.fullmatch(rf"{name}:[ \t]*(.*)", line, re.IGNORECASE)
        if found:
            return found.group(1)
    return None


def test_deterministic_and_seeded() -> None:
    assert sample_messages() == MESSAGES
    assert sample_messages(5) == MESSAGES[:5]
    assert sample_messages(seed=1) != MESSAGES
    assert sample_messages(0) == []
    with pytest.raises(ValueError, match="negative"):
        sample_messages(-1)


def test_default_count_covers_every_kind_and_all_differ() -> None:
    assert len(MESSAGES) == 36 >= 2 * len(KINDS)
    assert len(set(MESSAGES)) == 36
    message_ids = [header(raw, "Message-ID") for raw in MESSAGES]
    assert len(set(message_ids)) == 36


def test_only_crlf_line_endings() -> None:
    for raw in MESSAGES:
        without = raw.replace(b"\r\n", b"")
        assert b"\r" not in without
        assert b"\n" not in without


def test_every_message_parses_with_a_header_and_a_body() -> None:
    for raw in MESSAGES:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["From"]
        assert message["Subject"]
        assert b"\r\n\r\n" in raw


def test_dot_lines() -> None:
    all_lines = [line for raw in MESSAGES for line in lines_of(raw)]
    assert b"." in all_lines
    assert any(line.startswith(b"..") for line in all_lines)
    assert any(
        line.startswith(b".") and not line.startswith(b"..") and line != b"." for line in all_lines
    )


def test_long_lines() -> None:
    longest = [max(len(line) for line in lines_of(raw)) for raw in MESSAGES]
    assert any(2048 < n < 10_000 for n in longest)  # past poplib's limit
    assert any(n >= 100_000 for n in longest)


def test_eight_bit_bodies_in_two_charsets() -> None:
    eight_bit = [raw for raw in MESSAGES if any(octet > 127 for octet in raw)]
    charsets = {header(raw, "Content-Type") for raw in eight_bit}
    assert "text/plain; charset=utf-8" in charsets
    assert "text/plain; charset=iso-8859-1" in charsets
    utf8 = next(r for r in eight_bit if "utf-8" in (header(r, "Content-Type") or ""))
    assert "Köln" in utf8.decode("utf-8")
    latin1 = next(r for r in eight_bit if "8859-1" in (header(r, "Content-Type") or ""))
    with pytest.raises(UnicodeDecodeError):
        latin1.decode("utf-8")
    assert "café" in latin1.decode("latin-1")
    assert all(header(raw, "Content-Transfer-Encoding") == "8bit" for raw in eight_bit)


def test_a_base64_attachment() -> None:
    found = []
    for raw in MESSAGES:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        for part in message.walk():
            if part.get_content_disposition() == "attachment":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                found.append(payload)
    assert found
    assert all(payload.startswith(b"%PDF") for payload in found)


def test_a_message_without_a_final_newline() -> None:
    assert sum(not raw.endswith(b"\r\n") for raw in MESSAGES) >= 1


def test_dates_span_years_and_some_are_missing_or_broken() -> None:
    dates = [header(raw, "Date") for raw in MESSAGES]
    assert None in dates
    parsed, broken = [], 0
    for value in filter(None, dates):
        try:
            parsed.append(parsedate_to_datetime(value))
        except (TypeError, ValueError):
            broken += 1
    assert broken >= 1 or "" in dates
    assert len({d.year for d in parsed}) >= 5
    assert len({d.month for d in parsed}) >= 6


@pytest.mark.parametrize("size", [1_000, 4_567, 65_537, 1_000_000])
def test_large_attachment_message_has_exactly_the_size(size: int) -> None:
    raw = large_attachment_message(size)
    assert len(raw) == size
    assert raw == large_attachment_message(size)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    attachments = [p for p in message.walk() if p.get_content_disposition() == "attachment"]
    assert len(attachments) == 1
    payload = attachments[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    # All but the MIME frame (under 700 octets) and one base64 line of padding.
    assert len(payload) * 78 / 57 >= size - 700 - 78
    without = raw.replace(b"\r\n", b"")
    assert b"\n" not in without
    assert b"\r" not in without


def test_large_attachment_message_refuses_a_size_too_small() -> None:
    with pytest.raises(ValueError, match="at least"):
        large_attachment_message(100)
