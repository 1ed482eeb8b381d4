"""Named server profiles: FakePop3Server set up to behave like a kind of real server.

Each :class:`ServerProfile` is the fake server's public hooks and settings
combined into one real-world style (a Dovecot-like CAPA, a server that hands
a generated notice to clients without UTF8, an mbox server whose UIDLs are a
digest of the content, ...). Every profile serves a normal, well-formed
mailbox correctly to a correct client; it differs only by its quirk. Tests
can run one scenario against every profile::

    for profile in PROFILES.values():
        with profile.server(sample_messages(5)) as srv:
            ...

Like the rest of :mod:`popvault.testing`, this never imports
:mod:`popvault.pop3`.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from types import MappingProxyType
from typing import Any

from popvault.testing import _wire
from popvault.testing.fake_server import (
    DEFAULT_CAPABILITIES,
    DEFAULT_LOCK_REFUSAL,
    DEFAULT_LOGIN_REFUSAL,
    FakePop3Server,
    Served,
    Vanished,
)

__all__ = ["PROFILES", "ServerProfile", "unicode_notice"]

# RFC 2449 section 8 (RESP-CODES) and RFC 3206 (AUTH-RESP-CODE): a server
# that advertises neither sends no bracketed codes.
_RESPONSE_CODES = frozenset({"RESP-CODES", "AUTH-RESP-CODE"})
_PLAIN_LOGIN_REFUSAL = "invalid login"
_PLAIN_LOCK_REFUSAL = "unable to lock maildrop"
# A server reporting estimates rounds up to whole units of this many octets.
_ESTIMATE_UNIT = 1024
# RFC 2045 section 6.8: base64 lines are at most 76 characters.
_BASE64_LINE = 76
# RFC 1939 section 5: a scan listing is "number SP size", then anything.
_SCAN_LISTING = re.compile(rb"([0-9]+) ([0-9]+)")


@dataclass(frozen=True)
class ServerProfile:
    """One real server style: the FakePop3Server arguments that reproduce it.

    ``capabilities`` are the CAPA lines (``None``: the fake server's default
    set); ``capa=False`` answers CAPA with ``-ERR``. The other fields are
    the FakePop3Server arguments of the same names; see its docstring.
    """

    name: str
    description: str
    capabilities: tuple[str, ...] | None = None
    capa: bool = True
    login_refusal: str = DEFAULT_LOGIN_REFUSAL
    lock_refusal: str = DEFAULT_LOCK_REFUSAL
    exclusive_lock: bool = True
    vanished: Vanished = "err"
    serve: Callable[[Served], bytes] | None = None
    list_size: Callable[[bytes], int] | None = None
    uidl_for: Callable[[bytes], str] | None = None
    rewrite_reply: Callable[[str, bytes], bytes] | None = None
    sasl: tuple[str, ...] = ()
    xoauth2_one_line: bool = True

    def options(self) -> dict[str, Any]:
        """The FakePop3Server keyword arguments of this profile."""
        return {
            "capabilities": self.capabilities,
            "capa": self.capa,
            "login_refusal": self.login_refusal,
            "lock_refusal": self.lock_refusal,
            "exclusive_lock": self.exclusive_lock,
            "vanished": self.vanished,
            "serve": self.serve,
            "list_size": self.list_size,
            "uidl_for": self.uidl_for,
            "rewrite_reply": self.rewrite_reply,
            "sasl": self.sasl,
            "xoauth2_one_line": self.xoauth2_one_line,
        }

    def server(self, messages: Sequence[bytes] = (), **kwargs: Any) -> FakePop3Server:
        """A FakePop3Server (not started) of this profile holding ``messages``.

        ``kwargs`` go to FakePop3Server (``username``, ``password``,
        ``tls_context``, ...) and win over the profile's own arguments.
        """
        return FakePop3Server(messages, **{**self.options(), **kwargs})


# -- the hooks the profiles are made of ------------------------------------------------


def _without_response_codes() -> tuple[str, ...]:
    return tuple(line for line in DEFAULT_CAPABILITIES if line not in _RESPONSE_CODES)


def _md5_uidl(raw: bytes) -> str:
    # An mbox has no place to keep an assigned UIDL, so some mbox-based
    # servers derive it from the content: identical messages share it. That
    # breaks RFC 1939 section 7 ("uniquely identifies a message within a
    # maildrop"), and real servers do it anyway.
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def _estimated_size(raw: bytes) -> int:
    return -(-len(raw) // _ESTIMATE_UNIT) * _ESTIMATE_UNIT


def _status_and_rest(reply: bytes) -> tuple[bytes, bytes]:
    """A reply's status line without its line end, and everything after that."""
    end = reply.find(b"\n")
    if end < 0:
        return reply, b""
    if end > 0 and reply[end - 1 : end] == b"\r":
        end -= 1
    return reply[:end], reply[end:]


def _trailing_spaces(verb: str, reply: bytes) -> bytes:
    """Every ``+OK`` status line gets trailing spaces, a bare ``+OK`` too."""
    status, rest = _status_and_rest(reply)
    if not status.startswith(b"+OK"):
        return reply
    return status + b"   " + rest


def _bare_err(verb: str, reply: bytes) -> bytes:
    """Every ``-ERR`` status line loses its text (RFC 1939 section 3 makes it optional)."""
    status, rest = _status_and_rest(reply)
    if not status.startswith(b"-ERR"):
        return reply
    return b"-ERR" + rest


def _with_extra_words(line: bytes) -> bytes:
    """A scan listing with more after the size, as RFC 1939 section 5 allows."""
    match = _SCAN_LISTING.fullmatch(line)
    if match is None:
        return line
    return line + b" (message " + match.group(1) + b")"


def _list_extra_words(verb: str, reply: bytes) -> bytes:
    """LIST and LIST n scan listings carry extra words after the size."""
    status, rest = _status_and_rest(reply)
    if verb != "LIST" or not status.startswith(b"+OK"):
        return reply
    if rest == _wire.CRLF:  # LIST n: the scan listing is on the status line
        return b"+OK " + _with_extra_words(status[len(b"+OK ") :]) + rest
    lines = rest[len(_wire.CRLF) :].split(_wire.CRLF)
    return status + _wire.CRLF + _wire.CRLF.join(_with_extra_words(line) for line in lines)


def _has_raw_utf8_header(raw: bytes) -> bool:
    header, _ = _wire.split_header(raw)
    return not header.isascii()


def _base64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode("ascii")
    return [text[i : i + _BASE64_LINE] for i in range(0, len(text), _BASE64_LINE)]


_NOTICE_TEXT = (
    "This message could not be delivered to your mail program as it was",
    "received. Its header contains Unicode (UTF-8) text that only a mail",
    "program which enables UTF-8 mode (the UTF8 command, RFC 6856) may",
    "receive unencoded. Your mail program did not enable it, so the server",
    "sends this notice instead, with the original message attached.",
    "",
    "To read the original message, open the attachment, or use a mail",
    "program that supports internationalized email (RFC 6530, RFC 6532,",
    "RFC 6856). The message stays on the server until it is deleted.",
    "",
    "This notice is generated anew each time the message is retrieved.",
)


def unicode_notice(raw: bytes) -> bytes:
    """The notice a UTF8-offering server sends a client that did not enable UTF-8.

    RFC 6856 section 3.1: a server must not hand a message with raw UTF-8 in
    its header to a client that is not in UTF-8 mode. Some servers then
    send a generated multipart/mixed message in its place, with a new random
    MIME boundary (and Message-ID and Date) each time, the original attached
    as message/global (RFC 6532 section 3.7) in base64 so the notice stays
    7-bit. It is over 1000 octets even for a tiny original, whatever LIST said.
    """
    boundary = f"=_popvault_fake_{secrets.token_hex(12)}"
    lines = [
        "Return-Path: <>",
        "From: Mail Delivery Subsystem <MAILER-DAEMON@fake.popvault.test>",
        "To: undisclosed-recipients:;",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: <{secrets.token_hex(10)}@fake.popvault.test>",
        "Subject: Cannot display Unicode content",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        "This is a multi-part message in MIME format.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        *_NOTICE_TEXT,
        "",
        f"--{boundary}",
        'Content-Type: message/global; name="original.u8msg"',
        'Content-Disposition: attachment; filename="original.u8msg"',
        "Content-Transfer-Encoding: base64",
        "",
        *_base64_lines(raw),
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def _substitute_unicode(served: Served) -> bytes:
    """The stored message for a UTF-8 session or an all-ASCII header, else a notice."""
    if served.utf8 or not _has_raw_utf8_header(served.raw):
        return served.raw
    return unicode_notice(served.raw)


# -- the profiles ---------------------------------------------------------------------------

_PROFILES: tuple[ServerProfile, ...] = (
    ServerProfile(
        name="default",
        description="The fake server as it is: RFC 1939 with CAPA, UIDL, TOP, PIPELINING, "
        "RESP-CODES and AUTH-RESP-CODE, an exclusive maildrop lock.",
    ),
    ServerProfile(
        name="dovecot-like",
        description="Dovecot's CAPA (RESP-CODES, AUTH-RESP-CODE, UIDL, TOP, PIPELINING, "
        "SASL PLAIN SCRAM-SHA-1 SCRAM-SHA-256) and login refusal; a message without a final "
        "newline gets a CRLF added while LIST reports its stored length.",
        capabilities=("CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "USER"),
        login_refusal="[AUTH] Authentication failed.",
        sasl=("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"),
    ),
    ServerProfile(
        name="outlook",
        description="Microsoft's POP3 (outlook.office365.com): CAPA TOP, UIDL, USER and SASL "
        "PLAIN XOAUTH2, no response codes; XOAUTH2 only in two steps (AUTH XOAUTH2, '+', "
        "then the token): the token on the AUTH line gets '-ERR Protocol error'.",
        capabilities=("TOP", "UIDL", "USER"),
        login_refusal="Authentication failure: unknown user name or bad password.",
        lock_refusal=_PLAIN_LOCK_REFUSAL,
        sasl=("PLAIN", "XOAUTH2"),
        xoauth2_one_line=False,
    ),
    ServerProfile(
        name="gmail-like",
        description="Google's POP3 style: SASL PLAIN XOAUTH2 OAUTHBEARER, the token on the AUTH "
        "line when it fits; a refused token gets a JSON error challenge before -ERR. "
        "server(messages, window=250) also hands out its mailbox 250 messages a session.",
        capabilities=("USER", "RESP-CODES", "EXPIRE 0", "LOGIN-DELAY 300", "TOP", "UIDL"),
        login_refusal="[AUTH] Username and password not accepted.",
        sasl=("PLAIN", "XOAUTH2", "OAUTHBEARER"),
    ),
    ServerProfile(
        name="utf8-substituting",
        description="Advertises UTF8 (RFC 6856); a message with raw non-ASCII in its header "
        "is served as it is only to a session that sent UTF8, any other gets a "
        "generated notice with a new MIME boundary on every RETR, over 1000 "
        "octets, while LIST keeps the real size.",
        capabilities=(*DEFAULT_CAPABILITIES, "UTF8"),
        serve=_substitute_unicode,
    ),
    ServerProfile(
        name="content-uidl",
        description="An mbox-style server: the UIDL is the MD5 hex digest of the message, so "
        "byte-identical messages share one; no response codes.",
        capabilities=_without_response_codes(),
        login_refusal=_PLAIN_LOGIN_REFUSAL,
        lock_refusal=_PLAIN_LOCK_REFUSAL,
        uidl_for=_md5_uidl,
    ),
    ServerProfile(
        name="no-capa",
        description="An RFC 1939-only server: CAPA is answered -ERR, no response codes at all, "
        "plain -ERR login and lock refusals.",
        capa=False,
        login_refusal=_PLAIN_LOGIN_REFUSAL,
        lock_refusal=_PLAIN_LOCK_REFUSAL,
    ),
    ServerProfile(
        name="trailing-spaces",
        description="Every +OK status line ends in spaces ('+OK text   ', a bare '+OK   ').",
        rewrite_reply=_trailing_spaces,
    ),
    ServerProfile(
        name="bare-err",
        description="Every -ERR status line is a bare '-ERR' without text, login refusals "
        "included.",
        login_refusal="",
        rewrite_reply=_bare_err,
    ),
    ServerProfile(
        name="list-extra-words",
        description="LIST scan listings carry more words after the size, '1 342 (message 1)', "
        "in the multi-line LIST and in a single LIST n (RFC 1939 section 5).",
        rewrite_reply=_list_extra_words,
    ),
    ServerProfile(
        name="no-resp-codes",
        description="CAPA without RESP-CODES and AUTH-RESP-CODE; login refusal a plain "
        "'-ERR invalid login'.",
        capabilities=_without_response_codes(),
        login_refusal=_PLAIN_LOGIN_REFUSAL,
        lock_refusal=_PLAIN_LOCK_REFUSAL,
    ),
    ServerProfile(
        name="unlocked-err",
        description="No exclusive maildrop lock: sessions overlap; RETR, TOP or LIST n of a "
        "message another client removed since login is answered -ERR.",
        exclusive_lock=False,
        vanished="err",
    ),
    ServerProfile(
        name="unlocked-drop",
        description="No exclusive maildrop lock: sessions overlap; RETR or TOP of a message "
        "another client removed since login sends +OK and half of it, then closes.",
        exclusive_lock=False,
        vanished="drop",
    ),
    ServerProfile(
        name="estimated-sizes",
        description="LIST and STAT report sizes rounded up to the next multiple of 1 KiB, "
        "estimates rather than exact octet counts.",
        list_size=_estimated_size,
    ),
)

PROFILES: Mapping[str, ServerProfile] = MappingProxyType({p.name: p for p in _PROFILES})
"""Every profile by name, in a fixed order (``"default"`` first)."""
