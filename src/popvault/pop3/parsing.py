"""Parsers for POP3 reply lines and listings, and the APOP digest.

Every parser takes the server's bytes and either returns a value or raises
:class:`~popvault.errors.RemoteProtocolError`; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from typing import Literal

from popvault.errors import RemoteProtocolError

StatusKind = Literal["+OK", "-ERR", "+"]

# RFC 1939 section 7: a unique-id is 1 to 70 octets in 0x21-0x7E. We accept up to
# 255 (RFC 2449 section 4 raised the line length) so a slightly wordy server is
# still archived; the characters stay strict because the uid is our ledger key.
MAX_UID_OCTETS = 255
_UID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_UID_OCTETS)
_NUMBER = re.compile(rb"[0-9]{1,19}")
# RFC 1939 section 7 (APOP): the timestamp is a msg-id, "<process-ID.clock@hostname>".
_TIMESTAMP = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+>")
# RFC 2449 section 8: resp-code = "[" resp-level *("/" resp-level) "]",
# resp-level = 1*rchar, rchar = %x21-2E / %x30-5C / %x5E-7F (no "/" and no "]").
# RFC 5034 section 4: a challenge is "+" SP base64 (RFC 4648 section 4, padded).
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_RESP_CODE = re.compile(r"\[([\x21-\x2e\x30-\x5c\x5e-\x7f]+(?:/[\x21-\x2e\x30-\x5c\x5e-\x7f]+)*)\]")


def _text(raw: bytes) -> str:
    # RFC 1939 text is ASCII, but a server may send anything; never fail on it.
    return raw.decode("utf-8", "replace")


def strip_eol(line: bytes) -> bytes:
    """Drop one trailing LF and the CR before it, if any."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def parse_status(line: bytes) -> tuple[StatusKind, str]:
    """Split a status line (without its line ending) into indicator and text.

    Indicators are matched case-insensitively; ``+`` alone is an AUTH
    continuation (RFC 5034 section 4).
    """
    head, _, rest = line.partition(b" ")
    upper = head.upper()
    if upper == b"+OK":
        return "+OK", _text(rest)
    if upper == b"-ERR":
        return "-ERR", _text(rest)
    if head == b"+":
        return "+", _text(rest)
    raise RemoteProtocolError(f"expected +OK or -ERR, got {_text(line[:80])!r}")


def parse_challenge(text: str) -> bytes:
    """The octets of an AUTH challenge's text (``"+ "`` already taken off), RFC 5034 section 4.

    Empty text is an empty challenge. White space at the end is forgiven;
    anything else that is not padded base64 raises
    :class:`~popvault.errors.RemoteProtocolError`.
    """
    data = text.rstrip(" \t")
    if not _BASE64.fullmatch(data):
        raise RemoteProtocolError(
            f"the server's AUTH challenge is not base64 (RFC 5034 section 4): {data[:80]!r}"
        )
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:  # unreachable after the match; kept for totality
        raise RemoteProtocolError(f"the server's AUTH challenge is not base64: {exc}") from None


def parse_response_code(text: str) -> tuple[str | None, str]:
    """Split ``"[SYS/TEMP] try later"`` into ``("SYS/TEMP", "try later")``.

    Codes are upper-cased (RFC 2449 section 8 treats them case-insensitively);
    text without a well-formed code comes back whole with ``None``.
    """
    match = _RESP_CODE.match(text)
    if match is None:
        return None, text
    return match.group(1).upper(), text[match.end() :].lstrip(" ")


def code_matches(code: str | None, wanted: str) -> bool:
    """Whether the hierarchical ``code`` is ``wanted`` or one of its sub-codes.

    ``code_matches("SYS/TEMP/DISK", "SYS/TEMP")`` is true (RFC 2449 section 8:
    clients that know only the upper levels act on those).
    """
    if code is None:
        return False
    return code == wanted or code.startswith(wanted + "/")


def apop_timestamp(greeting_text: str) -> str | None:
    """The ``<...@...>`` timestamp in a greeting, or ``None`` (RFC 1939 section 7)."""
    match = _TIMESTAMP.search(greeting_text)
    return match.group(0) if match else None


def apop_digest(timestamp: str, password: str) -> str:
    """The APOP digest: lower-case hex MD5 of timestamp followed by password."""
    # RFC 1939 section 7 fixes MD5; it is the protocol's choice, not ours.
    data = (timestamp + password).encode("utf-8")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _number(raw: bytes, what: str, line: bytes) -> int:
    if not _NUMBER.fullmatch(raw):
        raise RemoteProtocolError(f"bad {what} in {_text(line[:80])!r}")
    return int(raw)


def _two_fields(line: bytes, what: str, *, more: bool = False) -> tuple[bytes, bytes]:
    """The two fields of a listing line; ``more`` lets further words follow them."""
    fields = strip_eol(line).split()
    if len(fields) < 2 or (len(fields) > 2 and not more):
        raise RemoteProtocolError(f"bad {what} line {_text(line[:80])!r}")
    return fields[0], fields[1]


def parse_uidl_line(line: bytes) -> tuple[int, str]:
    """Parse ``b"3 QhdPYR:00WBw1Ph7x7"`` (one UIDL listing line, RFC 1939 section 7).

    The uid is opaque and case-sensitive; it is returned exactly as sent.
    """
    number, uid = _two_fields(line, "UIDL")
    if not _UID.fullmatch(uid):
        raise RemoteProtocolError(f"bad unique-id in UIDL line {_text(line[:80])!r}")
    return _number(number, "message number", line), uid.decode("ascii")


def parse_uidl_entry(line: bytes) -> tuple[int, str]:
    """Parse one UIDL listing line leniently: any unique-id a server sends is kept.

    A line whose message number cannot be read raises
    :class:`~popvault.errors.RemoteProtocolError` (nothing identifies the
    message). The unique-id is everything after the number (spaces inside it
    included, trailing white space not); one that RFC 1939 section 7 allows
    (1-70 octets in 0x21-0x7E; up to 255 accepted) comes back as it is, any
    other in the form :func:`stored_uid` gives it.
    """
    text = strip_eol(line).strip(b" \t")
    number, _, uid = text.partition(b" ")
    uid = uid.strip(b" \t")
    if not uid:
        raise RemoteProtocolError(f"no unique-id in UIDL line {_text(line[:80])!r}")
    return _number(number, "message number", line), stored_uid(uid)


def stored_uid(uid: bytes) -> str:
    """A unique-id as the ledger stores it: as sent when RFC 1939 allows it, else escaped.

    UIDs are compared as octets. One with octets outside 0x21-0x7E (NUL, a
    space, non-ASCII), or longer than :data:`MAX_UID_OCTETS`, is stored as a
    space followed by its octets with ``%`` and every octet outside
    0x21-0x7E written ``%XX``: a valid UID never holds a space, so an escaped
    one can equal no valid one, and the escape is one-to-one, so two UIDs
    stay two.
    """
    if _UID.fullmatch(uid):
        return uid.decode("ascii")
    escaped = "".join(
        chr(octet) if 0x21 <= octet <= 0x7E and octet != 0x25 else f"%{octet:02X}" for octet in uid
    )
    return " " + escaped


def parse_list_line(line: bytes) -> tuple[int, int]:
    """Parse ``b"3 1205"`` (one LIST listing line, RFC 1939 section 5).

    RFC 1939 section 5 lets a server add information after the size
    ("3 1205 (seen)"); it is ignored.
    """
    number, octets = _two_fields(line, "LIST", more=True)
    return _number(number, "message number", line), _number(octets, "size", line)


def parse_stat(text: str) -> tuple[int, int]:
    """Parse the text of a STAT reply, ``"2 320"`` (RFC 1939 section 5)."""
    raw = text.encode("utf-8", "replace")
    fields = raw.split()
    if len(fields) < 2:
        raise RemoteProtocolError(f"bad STAT reply {text[:80]!r}")
    # RFC 1939 section 5: servers may add more after the two numbers; ignore it.
    return _number(fields[0], "message count", raw), _number(fields[1], "size", raw)


def parse_capa(lines: Iterable[bytes | str]) -> dict[str, list[str]]:
    """Turn CAPA lines into ``{"SASL": ["PLAIN", "LOGIN"], "TOP": [], ...}``.

    Capability names are upper-cased (RFC 2449 section 6: case-insensitive);
    arguments keep their case. A repeated name adds to the earlier arguments.
    """
    capabilities: dict[str, list[str]] = {}
    for line in lines:
        text = _text(strip_eol(line)) if isinstance(line, bytes) else line.rstrip("\r\n")
        words = text.split()
        if words:
            capabilities.setdefault(words[0].upper(), []).extend(words[1:])
    return capabilities
