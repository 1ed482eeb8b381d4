"""The fake server's side of SASL (RFC 5034 AUTH): PLAIN, SCRAM, XOAUTH2, OAUTHBEARER.

Written apart from :mod:`popvault.pop3.sasl` on purpose, like the rest of
this package: the SCRAM side is scramp's server (``ScramMechanism``), an
independent implementation, and the other formats are parsed here from
their specifications (RFC 4616, RFC 7628, Google's XOAUTH2 page).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# RFC 5802 section 5.1 and scramp's minimum: 4096 iterations.
SCRAM_ITERATIONS = 4096
#: The SASL mechanisms the fake server can serve.
MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "XOAUTH2", "OAUTHBEARER"})
#: What an XOAUTH2 server sends, base64, as the challenge after a refused token
#: (Google's documented form; Microsoft's is alike).
DEFAULT_XOAUTH2_ERROR = {"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"}
#: RFC 7628 section 3.2.2: the error OAUTHBEARER servers send.
DEFAULT_OAUTHBEARER_ERROR = {"status": "invalid_token", "scope": "pop", "schemes": "bearer"}
_XOAUTH2 = re.compile(r"user=([^\x01]*)\x01auth=Bearer ([^\x01]*)\x01\x01")
_OAUTHBEARER_GS2 = re.compile(r"n,(?:a=([^,]*))?,")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class Refused(Exception):
    """The exchange ends in ``-ERR`` with this text."""


@dataclass
class Exchange:
    """What a handler needs from the session: send a challenge, read the answer.

    ``challenge(data)`` sends ``+ base64(data)`` and returns the decoded
    response (raising :class:`Refused` for ``*`` or bad base64);
    ``last_response`` is the last response line as received.
    """

    challenge: Callable[[bytes], bytes]
    username: str
    password: str
    check_token: Callable[[str, str], bool]
    wrong_scram_signature: bool
    xoauth2_error: dict[str, Any]
    oauthbearer_error: dict[str, Any]
    refusal: str


def decode_response(line: str) -> bytes:
    """A client's response line (or initial response) as octets; ``*`` cancels."""
    if line == "*":
        raise Refused("AUTH cancelled")
    if line == "=":
        return b""
    if not _BASE64.fullmatch(line):
        raise Refused("invalid base64 data in the AUTH exchange")
    try:
        return base64.b64decode(line, validate=True)
    except binascii.Error:  # unreachable after the match
        raise Refused("invalid base64 data in the AUTH exchange") from None


def first_message(exchange: Exchange, initial: str | None) -> bytes:
    """The client's first message: on the AUTH line, else after an empty challenge."""
    if initial is not None:
        return decode_response(initial)
    return exchange.challenge(b"")


def plain(exchange: Exchange, initial: str | None) -> None:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``."""
    parts = first_message(exchange, initial).split(b"\0")
    if len(parts) != 3:
        raise Refused("malformed PLAIN message")
    authzid, user, password = (p.decode("utf-8", "replace") for p in parts)
    if authzid not in ("", user) or (user, password) != (exchange.username, exchange.password):
        raise Refused(exchange.refusal)


def scram(mechanism: str, exchange: Exchange, initial: str | None) -> None:
    """SCRAM by scramp's server; with ``wrong_scram_signature`` the final signature lies."""
    # Lazily: only a SCRAM test loads scramp.
    import scramp  # type: ignore[import-untyped]  # noqa: PLC0415 - untyped; lazily

    m: Any = scramp.ScramMechanism(mechanism)
    known: Any = m.make_auth_info(exchange.password, iteration_count=SCRAM_ITERATIONS)

    def keys(user: str) -> Any:
        if user == exchange.username:
            return known
        # An unknown user gets keys of another password: the proof then fails alike.
        return m.make_auth_info(base64.b64encode(known[0]).decode(), SCRAM_ITERATIONS)

    server = m.make_server(keys)
    try:
        server.set_client_first(first_message(exchange, initial).decode("utf-8"))
        response = exchange.challenge(server.get_server_first().encode())
        failed = False
        try:
            server.set_client_final(response.decode("utf-8"))
        except scramp.ScramException:
            failed = True  # scramp keeps the error for the server-final "e=" message
        final = server.get_server_final()
    except (scramp.ScramException, UnicodeDecodeError) as exc:
        raise Refused(f"malformed SCRAM message ({exc})") from None
    if exchange.wrong_scram_signature and not failed:
        final = "v=" + base64.b64encode(b"\0" * 32).decode()
    exchange.challenge(final.encode())  # RFC 5034 section 4: answered by an empty line
    if failed:
        raise Refused(exchange.refusal)


def xoauth2(exchange: Exchange, initial: str | None) -> None:
    """``user=U ^A auth=Bearer T ^A ^A``; a refused token gets a JSON error challenge."""
    match = _XOAUTH2.fullmatch(first_message(exchange, initial).decode("utf-8", "replace"))
    if match is None:
        raise Refused("Protocol error")
    if not exchange.check_token(match.group(1), match.group(2)):
        exchange.challenge(json.dumps(exchange.xoauth2_error).encode())
        raise Refused(exchange.refusal)


def oauthbearer(exchange: Exchange, initial: str | None) -> None:
    """RFC 7628: ``n,a=U,`` ^A key=value ... ^A ^A; errors as a JSON challenge answered ^A."""
    text = first_message(exchange, initial).decode("utf-8", "replace")
    gs2, _, rest = text.partition("\x01")
    header = _OAUTHBEARER_GS2.fullmatch(gs2)
    if header is None or not rest.endswith("\x01\x01"):
        raise Refused("malformed OAUTHBEARER message")
    fields = dict(kv.partition("=")[::2] for kv in rest[:-2].split("\x01"))
    user = (header.group(1) or "").replace("=2C", ",").replace("=3D", "=")
    token = fields.get("auth", "")
    if not token.startswith("Bearer ") or not exchange.check_token(user, token[7:]):
        answer = exchange.challenge(json.dumps(exchange.oauthbearer_error).encode())
        if answer != b"\x01":
            raise Refused("RFC 7628 section 3.2.3: the error challenge is answered with ^A")
        raise Refused(exchange.refusal)


def run(mechanism: str, exchange: Exchange, initial: str | None) -> None:
    """Carry out one exchange; returns if the client logged in, else raises Refused."""
    if mechanism == "PLAIN":
        plain(exchange, initial)
    elif mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        scram(mechanism, exchange, initial)
    elif mechanism == "XOAUTH2":
        xoauth2(exchange, initial)
    elif mechanism == "OAUTHBEARER":
        oauthbearer(exchange, initial)
    else:
        raise Refused("unsupported authentication mechanism")
