"""Deterministic sample mail for tests and ``popvault demo``.

Every message is a raw RFC 5322 message with CRLF line endings, as a POP3
server stores it. The set is meant to trip up careless code: 8-bit bodies in
two charsets, lines that start with "." (dot-stuffing, RFC 1939 section 3),
lines far past RFC 5322's 998-octet limit and poplib's 2048, a last line
without a line end, and Date headers that are missing or malformed.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

CRLF = b"\r\n"
# poplib refuses lines over 2048 octets (its _MAXLINE); RFC 5322 section 2.1.1
# caps lines at 998. Both are exceeded on purpose.
LONG_LINE_OCTETS = 3000
HUGE_LINE_OCTETS = 100_000
# RFC 2045 section 6.8: base64 lines are at most 76 characters.
_B64_LINE = 76

_WORDS = (
    "archive",
    "mailbox",
    "server",
    "message",
    "ledger",
    "retention",
    "quarterly",
    "invoice",
    "meeting",
    "agenda",
    "draft",
    "report",
    "budget",
    "travel",
    "schedule",
    "backup",
    "restore",
    "network",
    "update",
    "release",
    "notes",
    "review",
    "feedback",
    "project",
    "deadline",
    "summary",
    "minutes",
    "contract",
    "garden",
    "recipe",
    "holiday",
    "photos",
    "weekend",
    "concert",
    "tickets",
    "library",
    "museum",
)
_PEOPLE = (
    ("Alice Martin", "alice@example.org"),
    ("Bob Nguyen", "bob@example.net"),
    ("Carla Rossi", "carla@example.com"),
    ("Dmitri Volkov", "dmitri@example.org"),
    ("Eve Okafor", "eve@example.net"),
)


def sample_messages(count: int = 36, *, seed: int = 0) -> list[bytes]:
    """``count`` varied, realistic messages; the same ``count`` and ``seed`` give the same bytes.

    The kinds come in a fixed cycle, so any ``count`` of at least
    ``len(KINDS)`` (14) holds every kind at least once.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    rng = random.Random(seed)  # noqa: S311 - sample text, not keys
    return [KINDS[i % len(KINDS)](_Context(rng, seed, i)) for i in range(count)]


def large_attachment_message(size: int) -> bytes:
    """A multipart message of exactly ``size`` octets, mostly one base64 attachment.

    The attachment is pseudo-random (deterministic for a given ``size``); an
    epilogue line after the closing boundary pads to the exact size.
    """
    head = _large_head(size)
    tail = b"--popvault-large--" + CRLF
    room = size - len(head) - len(tail) - len(CRLF)
    if room < 0:
        raise ValueError(f"size must be at least {size - room} octets")
    # Whole base64 lines only: 57 octets encode to 76 characters plus CRLF.
    payload = _pseudo_random(room // (_B64_LINE + 2) * (_B64_LINE // 4 * 3), size)
    encoded = _base64_lines(payload)
    return head + encoded + tail + b"x" * (room - len(encoded)) + CRLF


class _Context:
    """What one message's builder needs: the shared RNG and its position."""

    def __init__(self, rng: random.Random, seed: int, index: int) -> None:
        self.rng = rng
        self.index = index
        self.message_id = f"<{seed}.{index}.{rng.getrandbits(48):012x}@samples.popvault.test>"
        self.sender = rng.choice(_PEOPLE)
        self.recipient = rng.choice([p for p in _PEOPLE if p != self.sender])

    def sentence(self, words: int = 9) -> str:
        text = " ".join(self.rng.choice(_WORDS) for _ in range(words))
        return text[0].upper() + text[1:] + "."

    def subject(self, what: str) -> str:
        return f"{what} #{self.index}: {self.rng.choice(_WORDS)}"

    def date(self) -> str:
        """A valid RFC 5322 date between 2009 and 2024, in one of several zones."""
        rng = self.rng
        zone = timezone(timedelta(minutes=rng.choice([-480, -300, 0, 60, 120, 330, 540])))
        moment = datetime(
            rng.randint(2009, 2024),
            rng.randint(1, 12),
            rng.randint(1, 28),
            rng.randint(0, 23),
            rng.randint(0, 59),
            rng.randint(0, 59),
            tzinfo=zone,
        )
        return format_datetime(moment)

    def headers(
        self, subject: str, *, date: str | None = "", mime: Sequence[str] = ()
    ) -> list[str]:
        """The usual header fields; ``date=None`` leaves Date out, "" makes one up."""
        sender, recipient = self.sender, self.recipient
        fields = [
            f"Return-Path: <{sender[1]}>",
            f"Received: from mx{self.index % 3}.example.net ([192.0.2.{self.index % 250 + 1}])",
            f"\tby pop.example.org with ESMTPS id {self.rng.getrandbits(32):08X}; {self.date()}",
            f"From: {sender[0]} <{sender[1]}>",
            f"To: {recipient[0]} <{recipient[1]}>",
            f"Subject: {subject}",
        ]
        if date is not None:
            fields.append(f"Date: {date or self.date()}")
        fields.append(f"Message-ID: {self.message_id}")
        if mime:
            fields += ["MIME-Version: 1.0", *mime]
        return fields


def _lines(*lines: str, encoding: str = "ascii") -> bytes:
    """Lines joined and each ended by CRLF."""
    return b"".join(line.encode(encoding) + CRLF for line in lines)


def _compose(fields: list[str], body: bytes) -> bytes:
    return _lines(*fields) + CRLF + body


def _plain(ctx: _Context) -> bytes:
    body = _lines(
        "Hello,", "", *(ctx.sentence() for _ in range(ctx.rng.randint(2, 8))), "", "--", "A."
    )
    return _compose(ctx.headers(ctx.subject("Plain note")), body)


def _attachment(ctx: _Context) -> bytes:
    mime = ('Content-Type: multipart/mixed; boundary="=_mixed_boundary"',)
    blob = ctx.rng.randbytes(ctx.rng.randint(600, 6000))
    body = _lines(
        "This is a multi-part message in MIME format.",
        "",
        "--=_mixed_boundary",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        ctx.sentence(),
        "",
        "--=_mixed_boundary",
        f'Content-Type: application/pdf; name="report-{ctx.index}.pdf"',
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment; filename="report-{ctx.index}.pdf"',
        "",
    )
    body += _base64_lines(b"%PDF-1.4\n" + blob) + _lines("--=_mixed_boundary--")
    return _compose(ctx.headers(ctx.subject("Report attached"), mime=mime), body)


def _utf8(ctx: _Context) -> bytes:
    mime = ("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit")
    subject = "=?utf-8?q?R=C3=A9sum=C3=A9_et_caf=C3=A9?="
    body = _lines(
        "Grüße aus Köln — ça va? Ελληνικά, русский, 日本語, emoji 📬.",
        ctx.sentence(),
        "Prix: 12,50 € · Ångström · naïve façade",
        encoding="utf-8",
    )
    return _compose(ctx.headers(subject, mime=mime), body)


def _latin1(ctx: _Context) -> bytes:
    mime = ("Content-Type: text/plain; charset=iso-8859-1", "Content-Transfer-Encoding: 8bit")
    body = _lines(
        "Voilà le café crème, très bien. Größe: 3 x 4 m², ½ Preis.",
        "Señor Muñoz paga 5 £ por año.",
        ctx.sentence(),
        encoding="latin-1",
    )
    return _compose(ctx.headers("=?iso-8859-1?q?Caf=E9?=", mime=mime), body)


def _dots(ctx: _Context) -> bytes:
    # RFC 1939 section 3: each of these must be dot-stuffed on the wire.
    body = _lines(".hidden line starting with a dot", "..two dots", ".", "...", "text", ". .", ".")
    return _compose(ctx.headers(ctx.subject("Dots")), body)


def _long_line(ctx: _Context) -> bytes:
    line = ("x" * 99 + " ") * (LONG_LINE_OCTETS // 100)
    return _compose(ctx.headers(ctx.subject("Long line")), _lines("Before.", line, "After."))


def _huge_line(ctx: _Context) -> bytes:
    line = "".join(ctx.rng.choice("abcdefghij") for _ in range(HUGE_LINE_OCTETS))
    return _compose(ctx.headers(ctx.subject("A 100 KB line")), _lines(line))


def _no_final_newline(ctx: _Context) -> bytes:
    body = _lines(ctx.sentence()) + b"The last line has no line end."
    return _compose(ctx.headers(ctx.subject("No final newline")), body)


def _alternative(ctx: _Context) -> bytes:
    mime = ('Content-Type: multipart/alternative; boundary="alt-42"',)
    text = ctx.sentence()
    body = _lines(
        "--alt-42",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        f"{text} Caf=C3=A9 =3D coffee, soft line=",
        "break.",
        "--alt-42",
        "Content-Type: text/html; charset=utf-8",
        "",
        f"<html><body><p>{text}</p></body></html>",
        "--alt-42--",
    )
    return _compose(ctx.headers(ctx.subject("Newsletter"), mime=mime), body)


def _missing_date(ctx: _Context) -> bytes:
    return _compose(ctx.headers(ctx.subject("No Date header"), date=None), _lines(ctx.sentence()))


def _malformed_date(ctx: _Context) -> bytes:
    bad = ctx.rng.choice(
        ["yesterday afternoon", "Mon, 32 Foo 2019 25:61:00 +9900", "2021-13-45", ""]
    )
    fields = ctx.headers(ctx.subject("Broken Date"), date=None)
    fields.insert(6, f"Date: {bad}".rstrip())
    return _compose(fields, _lines(ctx.sentence()))


def _forwarded(ctx: _Context) -> bytes:
    mime = ('Content-Type: multipart/mixed; boundary="fwd"',)
    inner = _plain(_Context(ctx.rng, 99, ctx.index))
    body = _lines("--fwd", "Content-Type: text/plain", "", "See below.", "--fwd")
    body += _lines("Content-Type: message/rfc822", "") + inner + _lines("", "--fwd--")
    return _compose(ctx.headers(ctx.subject("Fwd"), mime=mime), body)


def _headers_only(ctx: _Context) -> bytes:
    return _compose(ctx.headers(ctx.subject("Empty body")), b"")


def _folded(ctx: _Context) -> bytes:
    fields = ctx.headers(
        "=?utf-8?b?VHLDqHMgbG9uZyBzdWpldCBxdWkgZXN0IHBsacOpIHN1ciBwbHVzaWV1cnMg?=\r\n"
        " =?utf-8?b?bGlnbmVzIGRlIGVuLXTDqnRl?="
    )
    hops = [
        f"Received: from relay{n}.example.com by relay{n + 1}.example.com;\r\n\t{ctx.date()}"
        for n in range(8)
    ]
    fields[1:1] = [*hops, "X-Mailer: popvault samples", "References: <a@x>\r\n <b@x>\r\n <c@x>"]
    return _compose(fields, _lines(ctx.sentence(), ctx.sentence()))


KINDS: tuple[Callable[[_Context], bytes], ...] = (
    _plain,
    _attachment,
    _utf8,
    _latin1,
    _dots,
    _long_line,
    _huge_line,
    _no_final_newline,
    _alternative,
    _missing_date,
    _malformed_date,
    _forwarded,
    _headers_only,
    _folded,
)


def _base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character lines with CRLF (RFC 2045 section 6.8)."""
    return base64.encodebytes(data).replace(b"\n", CRLF)


def _pseudo_random(length: int, seed: int) -> bytes:
    """``length`` deterministic pseudo-random octets, fast even for 100 MB."""
    block = random.Random(seed).randbytes(1 << 16)  # noqa: S311 - filler, not keys
    # The 64 KiB block comes round again rotated by one octet each time, so
    # the data has no short period.
    rounds = (block[r:] + block[:r] for r in range(length // len(block) + 1))
    return b"".join(rounds)[:length]


def _large_head(size: int) -> bytes:
    fields = [
        "From: Big Sender <big@example.org>",
        "To: Archive <archive@example.net>",
        f"Subject: A {size}-octet message",
        "Date: Tue, 05 Mar 2024 10:00:00 +0000",
        f"Message-ID: <large.{size}@samples.popvault.test>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="popvault-large"',
    ]
    part = _lines(
        "--popvault-large",
        "Content-Type: text/plain",
        "",
        "A large attachment follows.",
        "--popvault-large",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="large.bin"',
        "",
    )
    return _compose(fields, part)
