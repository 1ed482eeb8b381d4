"""POP3 commands: validation, encoding and redaction.

Arguments are checked before anything is encoded: a CR, LF or NUL inside an
argument (a hostile UIDL, a pasted password) would otherwise end the command
line early and inject a second command of the attacker's choosing.
"""

from __future__ import annotations

import base64
import re

from popvault.errors import LocalProtocolError

#: Replies that are multi-line whenever they are positive (RFC 1939 sections 5 and 7,
#: RFC 2449 section 5 for CAPA).
MULTILINE_ALWAYS = frozenset({"RETR", "TOP", "CAPA"})
#: Multi-line only without an argument: ``LIST 3`` / ``UIDL 3`` answer in one line
#: (RFC 1939 sections 5 and 7).
MULTILINE_WITHOUT_ARGUMENT = frozenset({"LIST", "UIDL"})
#: Commands whose arguments are credentials and never reach a log line.
SECRET_VERBS = frozenset({"PASS", "APOP", "AUTH"})

_FORBIDDEN_OCTETS = ("\r", "\n", "\0")
_REDACTED = "***"

# RFC 2449 section 4: a command line is at most 255 octets, CRLF included. Only
# AUTH is held to it here (RFC 5034 section 4: an initial response that would
# make AUTH longer is sent as a continuation instead); the lines answering a
# challenge are not commands and have no such limit (an OAuth token is often
# 2-4 KB, Microsoft's can pass 4 KB), and other commands keep what servers take.
MAX_COMMAND_LINE = 255
# RFC 4648 section 4 base64, as RFC 5034 section 4 sends SASL data.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _check_argument(verb: str, argument: str, *, last: bool) -> None:
    """Refuse arguments that could end the command line or change its meaning."""
    if any(octet in argument for octet in _FORBIDDEN_OCTETS):
        shown = verb if verb in SECRET_VERBS else f"{verb} {argument!r}"
        raise LocalProtocolError(f"{shown}: an argument must not contain CR, LF or NUL")
    if not argument:
        raise LocalProtocolError(f"{verb}: an argument must not be empty")
    # RFC 1939 section 7: a server may take spaces in the PASS argument as part of
    # the password; anywhere else a space would split one argument into two.
    if " " in argument and not (verb == "PASS" and last):
        shown = verb if verb in SECRET_VERBS else f"{verb} {argument!r}"
        raise LocalProtocolError(f"{shown}: an argument must not contain a space")


class Command:
    """One POP3 command: an upper-case keyword and its arguments.

    ``Command("RETR", 3)``; integers become decimal strings. The repr never
    shows the arguments of PASS, APOP or AUTH.
    """

    __slots__ = ("args", "verb")

    verb: str
    args: tuple[str, ...]

    def __init__(self, verb: str, *args: str | int) -> None:
        # RFC 1939 section 3 / RFC 2449 section 3: keywords are 3-4 printable
        # characters; all are letters except RFC 6856's "UTF8".
        if not (3 <= len(verb) <= 4 and verb.isascii() and verb.isalnum() and verb[0].isalpha()):
            raise LocalProtocolError(f"not a POP3 keyword: {verb[:8]!r}")
        self.verb = verb.upper()
        texts = tuple(str(arg) for arg in args)
        for index, text in enumerate(texts):
            _check_argument(self.verb, text, last=index == len(texts) - 1)
        self.args = texts
        if self.verb == "AUTH" and len(self.encode()) > MAX_COMMAND_LINE:
            raise LocalProtocolError(
                f"AUTH {texts[0] if texts else ''}: the command line would pass "
                f"{MAX_COMMAND_LINE} octets (RFC 2449 section 4); send the initial "
                "response after the server's challenge (RFC 5034 section 4)"
            )

    @property
    def multiline(self) -> bool:
        """Whether a positive reply to this command is multi-line."""
        if self.verb in MULTILINE_ALWAYS:
            return True
        return self.verb in MULTILINE_WITHOUT_ARGUMENT and not self.args

    def encode(self) -> bytes:
        """The command line as sent, CRLF included (UTF-8 for non-ASCII passwords)."""
        return " ".join((self.verb, *self.args)).encode("utf-8") + b"\r\n"

    def redacted(self) -> str:
        """The command line without secrets, for logs and error messages."""
        return redact(" ".join((self.verb, *self.args)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Command):
            return NotImplemented
        return (self.verb, self.args) == (other.verb, other.args)

    def __hash__(self) -> int:
        return hash((self.verb, self.args))

    def __repr__(self) -> str:
        return f"Command({self.redacted()!r})"


def fits_command_line(verb: str, *args: str) -> bool:
    """Whether ``verb`` with ``args`` fits the 255-octet command line (RFC 2449 section 4)."""
    return len(" ".join((verb, *args))) + 2 <= MAX_COMMAND_LINE


def initial_response_argument(data: bytes) -> str:
    """AUTH's initial-response argument for ``data``: base64, ``=`` when empty (RFC 5034 s. 4)."""
    return base64.b64encode(data).decode("ascii") if data else "="


class AuthResponse:
    """A client line answering an AUTH challenge (RFC 5034 section 4).

    ``data`` is base64 (empty for an empty response) or ``*``, which cancels
    the exchange. :meth:`of` encodes raw bytes; :meth:`cancel` makes ``*``.
    There is no length limit: a response is not a command line.
    """

    __slots__ = ("data",)

    def __init__(self, data: str) -> None:
        if any(octet in data for octet in _FORBIDDEN_OCTETS):
            raise LocalProtocolError("AUTH response: must not contain CR, LF or NUL")
        if data != "*" and not _BASE64.fullmatch(data):
            raise LocalProtocolError("AUTH response: must be base64 or '*' (RFC 5034 section 4)")
        self.data = data

    @classmethod
    def of(cls, raw: bytes) -> AuthResponse:
        """The response carrying ``raw`` (an empty line for ``b""``)."""
        return cls(base64.b64encode(raw).decode("ascii"))

    @classmethod
    def cancel(cls) -> AuthResponse:
        """``*``: the client cancels the exchange; the server answers ``-ERR``."""
        return cls("*")

    @property
    def cancels(self) -> bool:
        """Whether this response cancels the exchange."""
        return self.data == "*"

    def encode(self) -> bytes:
        """The line as sent, CRLF included."""
        return self.data.encode("ascii", "replace") + b"\r\n"

    def __repr__(self) -> str:
        return "AuthResponse(***)"


def redact(line: bytes | str, *, auth_continuation: bool = False) -> str:
    """Return ``line`` fit for a log: PASS, APOP and AUTH lose their arguments.

    ``auth_continuation=True`` marks a client line answering an AUTH challenge,
    which is all secret. Line endings are dropped.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if auth_continuation:
        return _REDACTED
    # Several lines at once (a pipelined batch) are redacted one by one, so a PASS
    # in the middle cannot slip through behind a harmless first line.
    return " \\n ".join(_redact_one(part) for part in text.splitlines() or [""])


def _redact_one(text: str) -> str:
    verb, _, rest = text.strip().partition(" ")
    if verb.upper() == "AUTH":
        # The mechanism name is no secret and tells what was tried; the
        # initial response after it is all secret.
        mechanism, _, initial = rest.partition(" ")
        return f"{verb} {mechanism} {_REDACTED}" if initial else text.strip()
    if verb.upper() in SECRET_VERBS and rest:
        return f"{verb} {_REDACTED}"
    return text
