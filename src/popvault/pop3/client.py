"""The blocking POP3 client: a socket (and TLS) wrapped around the sans-IO core.

Foreign errors are mapped once per operation into the popvault tree, specific
before general: a timeout becomes :class:`~popvault.errors.Pop3Timeout`, a
certificate failure :class:`~popvault.errors.TLSError`, other ``OSError``
:class:`~popvault.errors.ConnectError`, :class:`~popvault.errors.ReadError` or
:class:`~popvault.errors.WriteError` by what was being done. A ``-ERR`` becomes
a :class:`~popvault.errors.ServerError` subclass chosen by its response code.
After any error other than ``-ERR`` the connection is dropped without QUIT, so
the server deletes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, TypeVar

from popvault.errors import (
    AuthError,
    ConnectError,
    DeadlineExceeded,
    InUseError,
    LocalProtocolError,
    LoginDelayError,
    LoginRefused,
    Pop3Error,
    Pop3Timeout,
    ReadError,
    RemoteProtocolError,
    SecurityPolicyError,
    ServerError,
    TemporaryError,
    TLSError,
    WriteError,
)
from popvault.pop3.body import ListingBounds
from popvault.pop3.commands import Command
from popvault.pop3.core import Pop3Connection
from popvault.pop3.events import (
    NEED_DATA,
    ConnectionClosed,
    Continuation,
    Data,
    Err,
    Event,
    Greeting,
    ListingLine,
    MultilineBegin,
    MultilineEnd,
    Ok,
)
from popvault.pop3.pace import Deadline, Limits, RateWatch, SlowTransfer
from popvault.pop3.parsing import (
    apop_digest,
    code_matches,
    parse_capa,
    parse_list_line,
    parse_stat,
    parse_uidl_line,
)
from popvault.pop3.sasl import (
    OAUTH_PLANS,
    AuthMethod,
    LoginPlan,
    SaslExchange,
    XOAuth2Form,
    choose_mechanism,
    make_mechanism,
)
from popvault.pop3.tls import make_client_context
from popvault.redaction import redact, register, temporary_secrets

log = logging.getLogger("popvault.pop3")

#: Octets asked of the socket per read: large enough for throughput, small enough
#: that memory stays flat whatever the message size.
READ_BLOCK = 256 * 1024
# TCP_QUICKACK (Linux only): see Pop3Client._read.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
# Reads shorter than this are small segments, the ones a delayed ACK holds up.
_SMALL_READ = 16 * 1024

_LOGIN_VERBS = frozenset({"USER", "PASS", "APOP", "AUTH"})
# Most specific first: a code picks the first class whose code it matches.
_CODE_CLASSES: tuple[tuple[str, type[ServerError]], ...] = (
    ("AUTH", AuthError),  # RFC 3206 section 5
    ("IN-USE", InUseError),  # RFC 2449 section 8.1.1
    ("LOGIN-DELAY", LoginDelayError),  # RFC 2449 section 8.1.2
    ("SYS/TEMP", TemporaryError),  # RFC 3206 section 4
)

#: The largest reply to ``TOP n 0`` that :meth:`Pop3Client.top_headers` holds. RFC 5322
#: section 2.1.1 keeps a line under 998 octets and real header sections are a few KB
#: (a long Received chain, DKIM and ARC seals: 20 to 50 KB); 1 MiB is 20 times that
#: and still little to hold. A longer reply is a server that ignored the ``0`` and
#: sends the body, or never ends: it must not be collected in memory.
MAX_HEADER_SECTION = 1024 * 1024
#: TOPs in flight at once with PIPELINING (RFC 2449 section 6.6): 256 command lines
#: are about 3 KB, one write that never waits on the server; the replies in flight
#: (a few KB each) are the server's to hold, and they are read one at a time.
DEFAULT_TOP_DEPTH = 256

Security = Literal["tls", "starttls", "plain"]
#: Gives the OAuth 2.0 access token for one login (called once per login).
TokenProvider = Callable[[], str]
# Per command of a pipelined batch: the server's refusal, or None for +OK.
Refusals = list[ServerError | None]
T_contra = TypeVar("T_contra", contravariant=True)


class SupportsWrite(Protocol[T_contra]):
    """Anything with ``write(data)``: a file, a store writer, a hash adapter."""

    def write(self, data: T_contra, /) -> object:
        """Take ``data``; the return value is ignored."""
        ...


def error_for(err: Err, *, announces_codes: bool = False) -> ServerError:
    """The :class:`ServerError` subclass for a ``-ERR`` event.

    A refused USER, PASS or APOP is about the credentials when the server
    says ``[AUTH]`` (RFC 3206 section 5). Without a code, it depends on
    ``announces_codes`` — whether the server's CAPA listed ``RESP-CODES``
    (RFC 2449 section 6.4) or ``AUTH-RESP-CODE`` (RFC 3206 section 6): such a
    server would have said ``[AUTH]``, so the refusal is a
    :class:`LoginRefused`; from any other server it may be the password, an
    :class:`AuthError` that says it cannot tell. The server's text passes
    :func:`~popvault.redaction.redact`: a server may echo what it was sent
    (the password), or send escape sequences.
    """
    text = redact(err.text)
    verb = err.command.verb if err.command is not None else None
    command = err.command.redacted() if err.command is not None else "greeting"
    cls = next((c for code, c in _CODE_CLASSES if code_matches(err.code, code)), ServerError)
    if cls is not ServerError or verb not in _LOGIN_VERBS:
        return cls(text, code=err.code, command=command)
    if err.code is None and not announces_codes:
        return AuthError(text, command=command, certain=False, note=_NO_CODES_NOTE)
    return LoginRefused(text, code=err.code, command=command)


# What each login method would expose without TLS (Pop3Client._check_login_policy).
_EXPOSED: Mapping[str, str] = {
    "user": "the password unencrypted",
    "PLAIN": "the password unencrypted (SASL PLAIN)",
    "apop": "an MD5 digest of the password (APOP), which allows offline guessing",
    # SCRAM never sends the password, but a recorded exchange (salt, nonces,
    # proof) lets an eavesdropper test guesses offline, as APOP's digest does.
    "SCRAM-SHA-256": "a SCRAM-SHA-256 exchange, which allows offline guessing of the password",
    "SCRAM-SHA-1": "a SCRAM-SHA-1 exchange, which allows offline guessing of the password",
    "XOAUTH2": "the OAuth access token unencrypted (XOAUTH2)",
    "OAUTHBEARER": "the OAuth access token unencrypted (OAUTHBEARER)",
}

_NO_CODES_NOTE = (
    "the server announces no response codes (RFC 3206), so popvault cannot tell "
    "a wrong password from a problem on the server"
)


class Pop3Client:
    """A blocking POP3 session with one server, for one account.

    ``security`` is ``"tls"`` (implicit TLS, port 995), ``"starttls"`` (STLS
    after the greeting, never falling back to clear text) or ``"plain"``.
    ``timeout`` applies to connecting and to every read and write. Every
    :class:`~popvault.errors.Pop3Error` raised carries ``account``.
    ``listing_bounds`` replaces the core's bounds on CAPA, UIDL and LIST
    listings (:data:`~popvault.pop3.core.DEFAULT_LISTING_BOUNDS`) per command.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Security,
        timeout: float,
        ca_file: str | Path | None = None,
        account: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        listing_bounds: Mapping[str, ListingBounds] | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        pipeline: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.security: Security = security
        self.timeout = timeout
        self.ca_file = ca_file
        self.account = account
        self._ssl_context = ssl_context
        self.greeting = ""
        self.capabilities: dict[str, list[str]] = {}
        # Whether the server accepted UTF8 (RFC 6856 section 3) in this session.
        self.utf8 = False
        self._apop_timestamp: str | None = None
        # The capabilities read in clear text before STLS (for a downgrade's error).
        self._capabilities_before_tls: dict[str, list[str]] | None = None
        #: How the last login logged in: "user", "apop" or a SASL mechanism's name.
        self.login_method: LoginPlan | None = None
        self._sock: socket.socket | None = None
        # Verbs sent ahead (pipelined) whose replies are still to be read, in order.
        self._ahead: deque[str] = deque()
        # False: never pipeline, whatever the server offers (pipeline_depth = 1).
        self._pipeline = pipeline
        self._listing_bounds = dict(listing_bounds or {})
        self._core = Pop3Connection(listing_bounds=self._listing_bounds)
        # Deadlines (pace.py): of the session, of the phase under way (greeting
        # and login), and the rate watch of the multi-line reply being read.
        self.limits = limits or Limits()
        self._clock = clock
        self._session: Deadline | None = None
        self._phase: Deadline | None = None
        self._rate: RateWatch | None = None

    @property
    def is_secure(self) -> bool:
        """Whether the connection is up and runs over TLS."""
        return isinstance(self._sock, ssl.SSLSocket)

    @property
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    # -- context manager --------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Never QUIT here: QUIT commits deletions, and only the caller knows
        # whether everything it deleted is safely archived.
        self.close()

    # -- session ---------------------------------------------------------------

    def connect(self) -> None:
        """Connect, read the greeting and CAPA; with ``starttls``, upgrade to TLS."""
        if self._sock is not None:
            raise LocalProtocolError("already connected", account=self.account)
        self.greeting, self.capabilities, self._apop_timestamp = "", {}, None
        self._capabilities_before_tls, self.login_method = None, None
        self._ahead.clear()
        self.utf8 = False
        now = self._clock()
        self._session = Deadline.after("the session", self.limits.session, now)
        self._phase = Deadline.after("the greeting and login", self.limits.login, now)
        self._rate = None
        with self._operation(drop_on_refusal=True):
            self._sock = self._open_tcp()
            if self.security == "tls":
                self._sock = self._handshake(self._sock)
            self._core = Pop3Connection(tls=self.is_secure, listing_bounds=self._listing_bounds)
            self._read_greeting()
            self._refresh_capabilities()
            if self.security == "starttls":
                self._starttls()

    def login(
        self,
        username: str,
        password: str | None = None,
        *,
        method: AuthMethod = "user",
        allow_plaintext: bool = False,
        token: TokenProvider | None = None,
        xoauth2_form: XOAuth2Form = "one-line",
        prefetch_listings: bool = False,
    ) -> None:
        """Log in as ``username``; then refresh :attr:`capabilities`.

        ``method`` is an account's ``auth``: ``"user"`` (USER/PASS), ``"apop"``,
        a SASL mechanism (``"plain"``, ``"scram-sha-256"``, ``"scram-sha-1"``,
        ``"xoauth2"``, ``"oauthbearer"``; RFC 5034), or ``"auto"``: the
        strongest mechanism the server offers (its CAPA ``SASL`` line, read
        after STLS) for the credentials given — with ``token``, OAUTHBEARER,
        then XOAUTH2; with ``password``, SCRAM-SHA-256, SCRAM-SHA-1, PLAIN,
        then USER/PASS. A named mechanism the server does not offer raises
        :class:`~popvault.errors.SecurityPolicyError` naming what it offers:
        there is no fall back to a weaker one.

        ``token`` is called once per login for the OAuth 2.0 access token
        (XOAUTH2, OAUTHBEARER); what it raises goes to the caller unchanged,
        after the connection is dropped. ``xoauth2_form`` is ``"one-line"``
        (the token on the AUTH line when it fits 255 octets) or
        ``"two-step"`` (always after the server's ``+``, as Microsoft's POP3
        server requires). The chosen mechanism is :attr:`login_method`.

        Over a stream that is not TLS this raises
        :class:`~popvault.errors.SecurityPolicyError` unless
        ``allow_plaintext`` is true, for every method: USER/PASS, PLAIN and
        the OAuth mechanisms send the secret as it is; APOP's digest and a
        recorded SCRAM exchange let an eavesdropper guess the password
        offline. A refusal raises :class:`~popvault.errors.AuthError` (or the
        class its code names); a SCRAM server whose signature is wrong, a
        :class:`~popvault.errors.SecurityPolicyError`. Every secret is
        registered with :mod:`popvault.redaction` before it is sent.

        ``prefetch_listings``: with PIPELINING, UIDL and LIST go out with the
        login's last write (USER/PASS and CAPA, or CAPA after an AUTH), as
        :meth:`prefetch_listings` would send them after it: one round trip
        less. A refused login reads and drops their replies.
        """
        plan = self._login_plan(method, allow_plaintext, password is not None, token is not None)
        listings = [Command("UIDL"), Command("LIST")] if prefetch_listings else []
        with self._operation():
            if plan in ("user", "apop"):
                if password is None:  # unreachable: choose_mechanism checked it
                    raise LocalProtocolError(f"{plan} needs a password")
                self._password_login(username, password, plan, listings)
            else:
                self._sasl_login(plan, username, password, token, xoauth2_form)
                # Not with the AUTH: a continuation could take a pipelined line as
                # the SASL response. After its +OK the session is authenticated.
                self._send_ahead([Command("CAPA"), *listings])
            self.login_method = plan
            self._refresh_capabilities()
        self._phase = None  # logged in: from here the session's deadline and the rates count

    def _login_plan(
        self, method: AuthMethod, allow_plaintext: bool, has_password: bool, has_token: bool
    ) -> LoginPlan:
        """The login method to use, or the refusal; nothing is sent, the session stays usable."""
        if self._sock is None:
            raise LocalProtocolError("login before connect", account=self.account)
        try:
            plan = choose_mechanism(
                method,
                self.capabilities,
                has_password=has_password,
                has_token=has_token,
                before_tls=self._capabilities_before_tls,
            )
            self._check_login_policy(plan, allow_plaintext)
        except Pop3Error as exc:
            self._own(exc)
            raise
        return plan

    def _password_login(
        self, username: str, password: str, method: str, listings: Sequence[Command] = ()
    ) -> None:
        """USER/PASS or APOP, pipelined with UTF8 and CAPA when the server allows it."""
        # Whatever the server sends back from here on may quote it.
        register(password)
        if method == "apop":
            digest = apop_digest(self._apop_timestamp or "", password)
            steps = [Command("APOP", username, register(digest))]
        else:
            steps = [Command("USER", username), Command("PASS", password)]
        utf8 = [Command("UTF8")] if "UTF8" in self.capabilities else []
        # One round trip for the whole login when the server pipelines (RFC
        # 2449 section 6.6); a refusal of one step still fails the login.
        self._send_ahead([*utf8, *steps, Command("CAPA"), *listings])
        self._enable_utf8()
        try:
            for step in steps:
                self._command(step)
        except ServerError:
            self._drain_ahead()  # the session stays in step, as without pipelining
            raise

    def _sasl_login(
        self,
        plan: LoginPlan,
        username: str,
        password: str | None,
        token: TokenProvider | None,
        xoauth2_form: XOAuth2Form,
    ) -> None:
        """One AUTH exchange (RFC 5034 section 4): the command, a response per challenge."""
        if password is not None:
            register(password)
        access = register(token()) if plan in OAUTH_PLANS and token is not None else None
        mechanism = make_mechanism(plan, username, password=password, token=access)
        two_step = plan == "XOAUTH2" and xoauth2_form == "two-step"
        # What this exchange sends (its base64, SCRAM's nonces and proof) is a
        # secret only while the exchange runs: only its replies could echo it.
        # The password and the token themselves are registered for good above.
        with temporary_secrets() as passing:
            exchange = SaslExchange(mechanism, initial_response=not two_step, on_secret=passing)
            self._sasl_exchange(exchange, plan)

    def _sasl_exchange(self, exchange: SaslExchange, plan: LoginPlan) -> None:
        self._enable_utf8()  # RFC 6856 section 3: in AUTHORIZATION, before the login
        command = exchange.command()
        self._write(command)
        while True:
            event = self._next_event()
            if isinstance(event, Continuation):
                log.debug("%s S: + (%d octets)", self._where, len(event.challenge))
                self._answer_challenge(exchange, event.challenge)
            elif isinstance(event, Err):
                raise self._auth_refusal(event, exchange, on_command_line=len(command.args) > 1)
            elif isinstance(event, Ok):
                log.debug("%s S: +OK %s", self._where, redact(event.text))
                exchange.succeeded()
                return
            else:
                raise RemoteProtocolError(f"unexpected {event!r} in reply to AUTH {plan}")

    def _answer_challenge(self, exchange: SaslExchange, challenge: bytes) -> None:
        try:
            response = exchange.answer(challenge)
        except Pop3Error:
            # RFC 5034 section 4: "*" cancels; the connection is dropped anyway.
            with contextlib.suppress(Pop3Error):
                self._send_line(self._core.send(exchange.cancel()), "AUTH", "*")
            raise
        shown = "*" if response.cancels else ("(empty)" if not response.data else "***")
        self._send_line(self._core.send(response), "AUTH", shown)

    def _auth_refusal(
        self, event: Err, exchange: SaslExchange, *, on_command_line: bool
    ) -> ServerError:
        code = f"[{event.code}] " if event.code else ""
        log.debug("%s S: -ERR %s%s", self._where, redact(code), redact(event.text))
        error = error_for(event, announces_codes=self._announces_codes)
        notes = []
        if exchange.mechanism.server_error:
            notes.append(f"its {exchange.name} error: {exchange.mechanism.server_error}")
        if exchange.name == "XOAUTH2" and on_command_line and event.code is None:
            notes.append(
                "the token went on the AUTH line; a server that wants it after a '+' "
                "(Microsoft's) refuses that: use the two-step XOAUTH2 form"
            )
        if notes:
            error.message = f"{error.message} ({'; '.join(notes)})"
            error.args = (error.message,)
        return error

    @property
    def _announces_codes(self) -> bool:
        """Whether the server said it sends response codes (RFC 2449 6.4, RFC 3206 6)."""
        return "RESP-CODES" in self.capabilities or "AUTH-RESP-CODE" in self.capabilities

    def _enable_utf8(self) -> None:
        """Send UTF8 when the server offers it (RFC 6856 section 3, AUTHORIZATION only).

        Such a server may hand a client that did not enable UTF-8 a generated
        stand-in for a message with raw UTF-8 headers instead of the message
        itself. A refusal is not fatal: the session goes on, and the size
        check on every RETR catches a substituted message.
        """
        if "UTF8" not in self.capabilities:
            return
        try:
            self._ok(Command("UTF8"))
        except ServerError as exc:
            # info, not warning: it would repeat in every run; a message it alters
            # is held, and that is said once, when it is archived.
            log.info(
                "%s: the server offers UTF8 but refused it (%s); messages with UTF-8 "
                "headers may be served altered, and are then kept on the server",
                self._where,
                exc.message,
            )
            return
        self.utf8 = True

    def _check_login_policy(self, plan: LoginPlan, allow_plaintext: bool) -> None:
        if not self.is_secure and not allow_plaintext:
            raise SecurityPolicyError(
                f"refusing to send {_EXPOSED.get(plan, _EXPOSED['user'])} to {self._where} "
                "over a connection without TLS (allow_plaintext is off)",
                account=self.account,
            )
        if plan == "apop" and self._apop_timestamp is None:
            raise SecurityPolicyError(
                f"APOP: the greeting of {self._where} has no timestamp, so the server "
                "does not support APOP",
                account=self.account,
            )

    def stat(self) -> tuple[int, int]:
        """Number of messages and their total size in octets (STAT)."""
        with self._operation():
            return parse_stat(self._ok(Command("STAT")).text)

    def uidl(self) -> list[tuple[int, str]]:
        """``(message number, unique-id)`` for every message, in server order (UIDL).

        Each line is parsed as it arrives (:meth:`uidl_lines`); a malformed
        line raises :class:`~popvault.errors.RemoteProtocolError`.
        """
        with self._operation():
            entries = [parse_uidl_line(line) for line in self.uidl_lines()]
            # A repeated message number breaks the protocol; a repeated unique-id is
            # a server bug the caller must see (and handle) rather than lose.
            _check_unique_numbers([number for number, _ in entries], "UIDL")
            return entries

    def list(self) -> list[tuple[int, int]]:
        """``(message number, size in octets)`` for every message, in server order (LIST).

        Each line is parsed as it arrives (:meth:`list_lines`).
        """
        with self._operation():
            entries = [parse_list_line(line) for line in self.list_lines()]
            _check_unique_numbers([number for number, _ in entries], "LIST")
            return entries

    def uidl_lines(self) -> Generator[bytes, None, None]:
        """The raw lines of the UIDL listing as they arrive, unparsed.

        Dot-unstuffed, without line endings, within the core's UIDL bounds; for
        a caller that parses line by line (e.g. to skip one malformed line).
        Leaving the iteration before its end (``close()``, or dropping the
        generator) drops the connection: the rest of the listing would be read
        as the next reply.
        """
        with self._operation():
            yield from self._listing(Command("UIDL"))

    def list_lines(self) -> Generator[bytes, None, None]:
        """The raw lines of the LIST listing as they arrive; see :meth:`uidl_lines`."""
        with self._operation():
            yield from self._listing(Command("LIST"))

    def retr_into(self, number: int, sink: SupportsWrite[bytes]) -> int:
        """Stream message ``number`` into ``sink``, dot-unstuffed; return the octets written.

        Memory stays flat whatever the message size. If ``sink`` raises, the
        connection is dropped (without QUIT) and the exception goes on unchanged.
        """
        with self._operation():
            self._multiline(Command("RETR", number))
            return self._read_body_into(sink)

    @property
    def pipelining(self) -> bool:
        """Whether commands are pipelined: the server announced PIPELINING (RFC 2449
        section 6.6) and the client was not made with ``pipeline=False``."""
        return self._pipeline and "PIPELINING" in self.capabilities

    def retrieve(
        self, wanted: Iterable[tuple[int, int]], *, depth: int, octets: int
    ) -> Iterator[Retrieval]:
        """RETR many messages, up to ``depth`` of them in flight; one :class:`Retrieval` each.

        ``wanted`` gives ``(number, LIST size)`` pairs and is read lazily, one
        pair each time the window has room: a caller stops the retrieval by
        ending it (the replies to RETRs already sent are still read, so the
        session stays in step). The window holds at most ``depth`` RETRs, and
        only while the LIST sizes of those in flight stay under ``octets`` —
        always at least one. Without PIPELINING (RFC 2449 section 6.6) the
        depth is 1: one RETR, its whole reply, then the next. Each
        :class:`Retrieval` comes in message order; its body must be read with
        :meth:`Retrieval.read_into` before the next one is asked for. A
        ``-ERR`` for one RETR is that retrieval's :attr:`~Retrieval.error`,
        and the session goes on.
        """
        if depth < 1 or octets < 1:
            raise ValueError(f"depth and octets must be positive, got {depth} and {octets}")
        if not self.pipelining:
            depth = 1
        self._nothing_ahead("RETR")
        source = iter(wanted)
        in_flight: deque[tuple[int, int]] = deque()
        flight_octets = 0
        exhausted = False
        while True:
            batch: list[Command] = []
            # Top the window up once half of it has drained (or it is empty): one
            # write for many RETRs, and still never fewer than depth/2 in flight.
            room = not in_flight or len(in_flight) <= depth // 2
            while room and not exhausted and len(in_flight) < depth:
                if in_flight and flight_octets >= octets:
                    break
                following = next(source, None)
                if following is None:
                    exhausted = True
                    break
                in_flight.append(following)
                flight_octets += following[1]
                batch.append(Command("RETR", following[0]))
            if batch:
                with self._operation():
                    self._write_all(batch)
            if not in_flight:
                return
            number, size = in_flight.popleft()
            flight_octets -= size
            with self._operation():
                retrieval = self._retrieval(number, pipelined=bool(in_flight))
            yield retrieval
            if not retrieval.finished:
                self.close()
                raise LocalProtocolError(
                    f"the body of RETR {number} was not read before the next reply",
                    account=self.account,
                )

    def _nothing_ahead(self, verb: str) -> None:
        if self._ahead:
            raise LocalProtocolError(
                f"{verb} while the replies to {list(self._ahead)} are due", account=self.account
            )

    def _retrieval(self, number: int, *, pipelined: bool) -> Retrieval:
        """The reply to the oldest RETR in flight, up to its status line."""
        try:
            self._multiline_reply(f"RETR {number}")
        except ServerError as exc:
            self._own(exc)
            return Retrieval(self, number, error=exc, pipelined=pipelined)
        return Retrieval(self, number, pipelined=pipelined)

    def _read_body_into(self, sink: SupportsWrite[bytes]) -> int:
        """Stream the multi-line reply under way into ``sink``; return the octets."""
        with self._operation():
            written = 0
            for chunk in self._body():
                sink.write(chunk)
                written += len(chunk)
            return written

    def top_headers(self, number: int, *, limit: int = MAX_HEADER_SECTION) -> bytes:
        """The header section of message ``number``, without its body (``TOP n 0``).

        RFC 1939 section 7: the reply is the header, the empty line after it,
        and no body line. Returned as received, dot-unstuffed, line ends as
        sent (CRLF; a server that sends more than it was asked for is not
        corrected here). A reply over ``limit`` octets
        (:data:`MAX_HEADER_SECTION`) raises
        :class:`~popvault.errors.RemoteProtocolError` and drops the
        connection instead of being held. A ``-ERR`` raises its
        :class:`~popvault.errors.ServerError` (the session stays usable); from a
        server whose CAPA does not list TOP, the error says it lacks TOP.
        """
        with self._operation():
            try:
                self._multiline(Command("TOP", number, 0))
            except ServerError as exc:
                raise self._top_refusal(exc) from None
            return self._read_header_section(number, limit)

    def top_headers_many(
        self,
        numbers: Iterable[int],
        *,
        depth: int = DEFAULT_TOP_DEPTH,
        limit: int = MAX_HEADER_SECTION,
    ) -> Generator[TopHeaders, None, None]:
        """``TOP n 0`` for each of ``numbers``; one :class:`TopHeaders` each, in order.

        With PIPELINING (RFC 2449 section 6.6) up to ``depth`` TOPs are in
        flight, sent in one write whenever half of the window has drained, so
        a mailbox costs a few round trips instead of one per message; without
        it (or ``pipeline=False``), one at a time. ``numbers`` is read lazily.
        A ``-ERR`` to one TOP is that message's :attr:`TopHeaders.error` and
        the others go on; but when the first reply is a ``-ERR`` and CAPA does
        not list TOP, the server does not support it: the replies in flight
        are read and dropped (the session stays in step) and the refusal
        raised. Each header section is bounded as in :meth:`top_headers`.
        Leaving the iteration early reads and drops the replies still due.
        """
        if depth < 1 or limit < 1:
            raise ValueError(f"depth and limit must be positive, got {depth} and {limit}")
        if not self.pipelining:
            depth = 1
        self._nothing_ahead("TOP")
        source = iter(numbers)
        in_flight: deque[int] = deque()
        answered = False
        try:
            while True:
                self._send_tops(source, in_flight, depth)
                if not in_flight:
                    return
                reply = self._top_reply(in_flight.popleft(), limit)
                if reply.error is not None and not answered and "TOP" not in self.capabilities:
                    self._drop_top_replies(in_flight, limit)
                    raise self._top_refusal(reply.error)
                answered = answered or reply.error is None
                yield reply
        finally:
            if in_flight and self._sock is not None:
                self._drop_top_replies(in_flight, limit)  # left early: keep the session in step

    def _send_tops(self, source: Iterator[int], in_flight: deque[int], depth: int) -> None:
        """Top the window up once half of it has drained (or it is empty), in one write."""
        if in_flight and len(in_flight) > depth // 2:
            return
        batch = [number for _, number in zip(range(depth - len(in_flight)), source, strict=False)]
        if batch:
            in_flight.extend(batch)
            with self._operation():
                self._write_all([Command("TOP", number, 0) for number in batch])

    def _top_reply(self, number: int, limit: int) -> TopHeaders:
        """The reply to the oldest TOP in flight: its header section, or its refusal."""
        with self._operation():
            try:
                self._multiline_reply(f"TOP {number} 0")
            except ServerError as exc:
                self._own(exc)
                return TopHeaders(number, None, exc)
            return TopHeaders(number, self._read_header_section(number, limit), None)

    def _drop_top_replies(self, in_flight: deque[int], limit: int) -> None:
        """Read and drop the replies to the TOPs still in flight."""
        while in_flight:
            self._top_reply(in_flight.popleft(), limit)

    def _read_header_section(self, number: int, limit: int) -> bytes:
        """The multi-line reply under way, collected up to ``limit`` octets."""
        with self._operation():
            collected = bytearray()
            for chunk in self._body():
                collected += chunk
                if len(collected) > limit:
                    raise RemoteProtocolError(
                        f"TOP {number} 0: the header section passes {limit} octets "
                        "(a server sending the body, or a reply that never ends); not held"
                    )
            return bytes(collected)

    def _top_refusal(self, error: ServerError) -> ServerError:
        """``error`` (a -ERR to TOP), saying so when the server does not offer TOP at all."""
        if "TOP" in self.capabilities:
            return error
        note = (
            "its CAPA does not list TOP: this server does not support TOP (optional in "
            "RFC 1939 section 7), which reading headers without the bodies needs"
        )
        error.message = f"{error.message} ({note})"
        error.args = (error.message,)
        return error

    def dele_many(self, numbers: Sequence[int], *, depth: int) -> Refusals:
        """DELE each of ``numbers``, up to ``depth`` in flight; per number, its refusal or None.

        Without PIPELINING the depth is 1. A ``-ERR`` for one DELE leaves the
        others standing (RFC 1939 section 5: each DELE stands on its own).
        """
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        if not self.pipelining:
            depth = 1
        self._nothing_ahead("DELE")
        outcomes: Refusals = []
        with self._operation():
            for start in range(0, len(numbers), depth):
                window = numbers[start : start + depth]
                self._write_all([Command("DELE", number) for number in window])
                for number in window:
                    try:
                        self._one_line_reply(f"DELE {number}")
                    except ServerError as exc:
                        self._own(exc)
                        outcomes.append(exc)
                        continue
                    outcomes.append(None)
        return outcomes

    def dele(self, number: int) -> None:
        """Mark message ``number`` deleted; the server removes it only at QUIT."""
        with self._operation():
            self._ok(Command("DELE", number))

    def noop(self) -> None:
        """NOOP: keep the session alive."""
        with self._operation():
            self._ok(Command("NOOP"))

    def rset(self) -> None:
        """RSET: unmark every message marked deleted in this session."""
        with self._operation():
            self._ok(Command("RSET"))

    def quit(self) -> None:
        """QUIT and close: the server enters UPDATE and commits the deletions."""
        try:
            with self._operation():
                self._ok(Command("QUIT"))
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without QUIT, so nothing is deleted. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is not None:
            # The connection is being abandoned; a failure to close it loses nothing.
            with contextlib.suppress(OSError):
                sock.close()

    # -- steps of connect ------------------------------------------------------

    def _open_tcp(self) -> socket.socket:
        deadline, wait = self._wait()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=wait)
        except TimeoutError as exc:
            if deadline is not None:
                raise DeadlineExceeded(f"{deadline.describe()} ({self._where})") from exc
            raise Pop3Timeout(
                f"connecting to {self._where} timed out after {self.timeout}s"
            ) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self._where}: {_reason(exc)}") from exc
        # Commands are small and each is waited for, or sent as one pipelined
        # write: Nagle's algorithm would only hold them back behind delayed ACKs.
        with contextlib.suppress(OSError):  # not TCP after all: nothing to tune
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        context = self._ssl_context or make_client_context(self.ca_file)
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as exc:
            raise TLSError(
                f"the TLS certificate of {self._where} failed verification: "
                f"{exc.verify_message or _reason(exc)}"
            ) from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake with {self._where} failed: {_reason(exc)}") from exc
        except TimeoutError as exc:
            raise Pop3Timeout(f"TLS handshake with {self._where} timed out") from exc
        except OSError as exc:
            raise TLSError(f"TLS handshake with {self._where} failed: {_reason(exc)}") from exc

    def _read_greeting(self) -> None:
        event = self._next_event()
        if isinstance(event, Err):
            raise error_for(event)
        if not isinstance(event, Greeting):  # unreachable: the core greets first
            raise RemoteProtocolError(f"expected a greeting, got {event!r}")
        self.greeting = event.text
        self._apop_timestamp = event.apop_timestamp

    def _refresh_capabilities(self) -> None:
        """CAPA (RFC 2449 section 5); a server without it keeps what we knew."""
        try:
            self.capabilities = parse_capa(self._listing(Command("CAPA")))
        except ServerError:
            log.debug("%s: CAPA refused; keeping the capabilities known so far", self._where)

    def _starttls(self) -> None:
        if "STLS" not in self.capabilities:
            raise SecurityPolicyError(
                f"{self._where} does not offer STLS; refusing to continue in clear text"
            )
        self._ok(Command("STLS"))
        if self._core.next_event() is not NEED_DATA:  # the core raises on injected data
            raise RemoteProtocolError("the server sent data after accepting STLS")
        if self._sock is None:  # unreachable: set by connect()
            raise LocalProtocolError("not connected")
        self._sock = self._handshake(self._sock)
        # RFC 2595 section 4: a new session over the new stream, and capabilities
        # learnt in clear text are forgotten.
        self._core = Pop3Connection(after_stls=True, listing_bounds=self._listing_bounds)
        self._capabilities_before_tls, self.capabilities = self.capabilities, {}
        self._refresh_capabilities()

    # -- commands and replies ----------------------------------------------------

    def _ok(self, command: Command) -> Ok:
        self._issue(command)
        return self._one_line_reply(command.redacted())

    def _multiline(self, command: Command) -> MultilineBegin:
        self._issue(command)
        return self._multiline_reply(command.redacted())

    def _command(self, command: Command) -> Event:
        """Send ``command`` and return its reply; ``-ERR`` raises its ServerError."""
        self._issue(command)
        return self._reply(command.redacted())

    def _issue(self, command: Command) -> None:
        """Send ``command``, unless :meth:`_send_ahead` did: then its reply is the next one."""
        if self._ahead and self._ahead[0] == command.verb:
            self._ahead.popleft()
            return
        self._nothing_ahead(command.verb)
        self._write(command)

    def _send_ahead(self, commands: Sequence[Command]) -> None:
        """With PIPELINING, send ``commands`` now in one write; their replies are read
        as each is issued through :meth:`_command`, in the same order. Without
        PIPELINING, nothing: each is sent when issued."""
        if not self.pipelining or not commands:
            return
        self._write_all(commands)
        self._ahead.extend(command.verb for command in commands)

    def _drain_ahead(self) -> None:
        """Read and drop the replies to commands sent ahead that will not be issued."""
        while self._ahead:
            verb = self._ahead.popleft()
            try:
                event = self._reply(verb)
            except ServerError:
                continue
            if isinstance(event, MultilineBegin):
                for _ in self._lines():
                    pass

    def prefetch_listings(self) -> None:
        """Send UIDL and LIST together (with PIPELINING): one round trip for both.

        Their lines are then read with :meth:`uidl_lines` and :meth:`list_lines`,
        in that order.
        """
        if list(self._ahead) == ["UIDL", "LIST"]:
            return  # the login sent them (login(prefetch_listings=True))
        with self._operation():
            self._send_ahead([Command("UIDL"), Command("LIST")])

    def _reply(self, what: str) -> Ok | MultilineBegin:
        """The next reply's status; ``-ERR`` raises its ServerError. ``what``: the command."""
        event = self._next_event()
        if isinstance(event, Err):
            code = f"[{event.code}] " if event.code else ""
            log.debug("%s S: -ERR %s%s", self._where, redact(code), redact(event.text))
            raise error_for(event, announces_codes=self._announces_codes)
        if isinstance(event, Ok | MultilineBegin):
            log.debug("%s S: +OK %s", self._where, redact(event.text))
            return event
        raise RemoteProtocolError(f"unexpected {event!r} in reply to {what}")

    def _one_line_reply(self, what: str) -> Ok:
        event = self._reply(what)
        if not isinstance(event, Ok):
            raise RemoteProtocolError(f"expected a one-line reply to {what}")
        return event

    def _multiline_reply(self, what: str) -> MultilineBegin:
        event = self._reply(what)
        if not isinstance(event, MultilineBegin):
            raise RemoteProtocolError(f"expected a multi-line reply to {what}")
        return event

    def _listing(self, command: Command) -> Iterator[bytes]:
        """The lines of a listing as the core frames them, one at a time.

        Nothing is collected here: the core bounds the listing
        (:class:`~popvault.pop3.body.ListingBounds`) and raises
        :class:`~popvault.errors.RemoteProtocolError` past a bound.
        """
        self._multiline(command)
        yield from self._lines()

    def _lines(self) -> Iterator[bytes]:
        """The lines of the listing whose status line was just read.

        Whole batches of lines as the core frames them from what arrived
        (:meth:`Pop3Connection.next_listing_lines`); one event at a time only
        to wait for more octets, and for the end.
        """
        while True:
            batch = self._core.next_listing_lines()
            if batch:
                yield from batch
                continue
            event = self._next_event()
            if isinstance(event, MultilineEnd):
                return
            if not isinstance(event, ListingLine):  # unreachable: the core frames listings
                raise RemoteProtocolError(f"unexpected {event!r} inside a listing")
            yield event.line

    def _body(self) -> Iterator[bytes]:
        while True:
            event = self._next_event()
            if isinstance(event, MultilineEnd):
                return
            if not isinstance(event, Data):  # unreachable: the core sends Data or the end
                raise RemoteProtocolError(f"unexpected {event!r} inside a multi-line reply")
            yield event.chunk

    # -- bytes on the wire -----------------------------------------------------

    def _write(self, command: Command) -> None:
        self._write_all([command])

    def _write_all(self, commands: Sequence[Command]) -> None:
        """Send ``commands`` in one write (pipelined when there are several)."""
        data = b"".join(self._core.send(command) for command in commands)
        for command in commands:
            log.debug("%s C: %s", self._where, command.redacted())
        self._sendall(data, commands[0].verb)

    def _send_line(self, data: bytes, verb: str, shown: str) -> None:
        """Send one line that is not a command (an AUTH response), logged as ``shown``."""
        log.debug("%s C: %s", self._where, shown)
        self._sendall(data, verb)

    def _sendall(self, data: bytes, verb: str) -> None:
        try:
            self._connected().sendall(data)
        except TimeoutError as exc:
            raise Pop3Timeout(f"sending {verb} to {self._where} timed out") from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS error sending {verb}: {_reason(exc)}") from exc
        except OSError as exc:
            raise WriteError(f"sending {verb} to {self._where}: {_reason(exc)}") from exc

    def _next_event(self) -> Event:
        while True:
            event = self._core.next_event()
            if event is NEED_DATA:
                self._core.receive_data(self._read())
                continue
            if isinstance(event, ConnectionClosed):
                raise ReadError(f"the server closed the connection {self._waiting_for()}")
            if isinstance(event, MultilineBegin):
                # Every multi-line reply (a message, a listing) keeps a minimum rate.
                what = f"the reply to {event.command.redacted()}"
                limits = self.limits
                self._rate = RateWatch(what, limits.min_rate, limits.rate_window, self._clock())
            elif isinstance(event, MultilineEnd):
                self._rate = None
            return event

    def _waiting_for(self) -> str:
        outstanding = self._core.outstanding
        if outstanding:
            return f"during the reply to {outstanding[0].redacted()}"
        return "before it greeted" if not self.greeting else "unexpectedly"

    def _read(self) -> bytes:
        sock = self._connected()
        deadline, wait = self._wait()
        try:
            sock.settimeout(wait)
            data = sock.recv(READ_BLOCK)
            if _QUICKACK is not None and len(data) < _SMALL_READ:
                # Pipelined, the client has nothing to send back while replies
                # stream in, so each ACK would wait out the delayed-ACK timer (40
                # ms on Linux) — and a server whose small writes wait for that
                # ACK (Nagle) stalls with it. Linux resets quick-ACK mode by
                # itself, hence once per read; only after small reads, since
                # bulk data is ACKed every second segment anyway.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except TimeoutError as exc:
            if deadline is not None:
                raise DeadlineExceeded(f"{deadline.describe()} ({self._where})") from exc
            raise Pop3Timeout(
                f"no answer from {self._where} within {self.timeout}s {self._waiting_for()}"
            ) from exc
        except ssl.SSLError as exc:
            raise TLSError(f"TLS error reading from {self._where}: {_reason(exc)}") from exc
        except OSError as exc:
            raise ReadError(f"reading from {self._where}: {_reason(exc)}") from exc
        if self._rate is not None and data:
            try:
                self._rate.add(len(data), self._clock())
            except SlowTransfer as exc:
                raise DeadlineExceeded(f"{exc} ({self._where})") from None
        return data

    def _wait(self) -> tuple[Deadline | None, float]:
        """How long the next read may wait, and the deadline that set it (None: the timeout).

        Raises :class:`DeadlineExceeded` if a deadline has already passed.
        """
        now = self._clock()
        chosen: Deadline | None = None
        wait = self.timeout
        for deadline in (self._phase, self._session):
            if deadline is None:
                continue
            left = deadline.left(now)
            if left <= 0:
                raise DeadlineExceeded(f"{deadline.describe()} ({self._where})")
            if left < wait:
                chosen, wait = deadline, left
        return chosen, wait

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise LocalProtocolError("not connected (or the connection was dropped)")
        return self._sock

    def _own(self, exc: Pop3Error) -> None:
        """Tag ``exc`` with the account; its text passes the redaction point once."""
        exc.account = exc.account or self.account
        _redact_error(exc)

    @contextlib.contextmanager
    def _operation(self, *, drop_on_refusal: bool = False) -> Iterator[None]:
        """Tag errors with the account; drop the connection unless the error was -ERR.

        After ``-ERR`` the stream is still in step and the session usable, except
        during connect (a refused greeting or STLS leaves nothing to go on with).
        """
        try:
            yield
        except ServerError as exc:
            self._own(exc)
            if drop_on_refusal:
                self.close()
            raise
        except Pop3Error as exc:
            self._own(exc)  # a protocol error may quote a server line
            self.close()
            raise
        except BaseException:
            self.close()  # a failing sink mid-RETR leaves the stream out of step
            raise


class Retrieval:
    """The reply to one RETR of :meth:`Pop3Client.retrieve`: a refusal, or a body to read."""

    def __init__(
        self,
        client: Pop3Client,
        number: int,
        *,
        error: ServerError | None = None,
        pipelined: bool = False,
    ) -> None:
        self._client = client
        self.number = number
        #: The server's ``-ERR`` for this RETR; None when the body follows.
        self.error = error
        #: Whether more commands were sent before this reply ended: a body whose
        #: size is off may then have run into their replies (its terminator lost).
        self.pipelined = pipelined
        self.finished = error is not None

    def read_into(self, sink: SupportsWrite[bytes]) -> int:
        """Stream the body into ``sink``, dot-unstuffed; return the octets written.

        If ``sink`` raises, the connection is dropped (without QUIT) and the
        exception goes on unchanged, as with :meth:`Pop3Client.retr_into`.
        """
        if self.finished:
            raise LocalProtocolError(f"RETR {self.number}: no body to read")
        written = self._client._read_body_into(sink)
        self.finished = True
        return written


@dataclass(frozen=True, slots=True)
class TopHeaders:
    """The reply to one ``TOP n 0`` of :meth:`Pop3Client.top_headers_many`.

    ``headers`` is the header section as received (see
    :meth:`Pop3Client.top_headers`), or None when the server refused this TOP:
    then ``error`` is its ``-ERR``.
    """

    number: int
    headers: bytes | None
    error: ServerError | None


def _redact_error(exc: Pop3Error) -> None:
    """The one pass of an error's text through the redaction point (see redaction.py)."""
    exc.message = redact(exc.message)
    exc.args = (exc.message,)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _check_unique_numbers(numbers: list[int], command: str) -> None:
    """Refuse a listing that repeats a message number (RFC 1939 section 5)."""
    if len(set(numbers)) != len(numbers):
        raise RemoteProtocolError(f"the server's {command} listing repeats a message number")
