"""The sans-IO POP3 client protocol: bytes in, events out; commands in, bytes out.

:class:`Pop3Connection` does no I/O and reads no clock, in the manner of h11:
the caller feeds it what the server sent with :meth:`~Pop3Connection.receive_data`,
pulls :mod:`events <popvault.pop3.events>` with :meth:`~Pop3Connection.next_event`
until it gets :data:`NEED_DATA`, and writes the bytes :meth:`~Pop3Connection.send`
returns. Outstanding commands wait in a FIFO, so commands may be pipelined
(RFC 2449 section 6.6) without changing this class.

Multi-line replies come in two kinds. A message (RETR, TOP) arrives as
:class:`~popvault.pop3.events.Data` chunks of any size, never buffered whole.
Every other multi-line reply (CAPA, UIDL, LIST) is a listing: the core frames
it into one :class:`~popvault.pop3.events.ListingLine` per line and bounds it
(:class:`ListingBounds`, per command), so that a server sending an endless
listing costs a bounded amount of memory and ends in an error.

Server input is handled totally: any bytes produce events or
:class:`~popvault.errors.RemoteProtocolError`, never another exception.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping

from popvault.errors import LocalProtocolError, RemoteProtocolError
from popvault.pop3.body import DotDecoder, ListingBounds, ListingDecoder
from popvault.pop3.commands import AuthResponse, Command
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
    Sentinel,
)
from popvault.pop3.parsing import (
    apop_timestamp,
    parse_challenge,
    parse_response_code,
    parse_status,
)

# RFC 2449 section 4 caps a response line at 512 octets; real servers overshoot
# (long greetings, chatty -ERR texts), so we allow 16 times that before calling
# it a protocol violation. The bound is what keeps a hostile server from making
# us buffer without end.
MAX_STATUS_LINE = 8192

# Listings (every multi-line reply but a message). RFC 2449 section 4 bounds only
# the first line of a reply (512 octets); listing lines have no RFC limit but
# UIDL's, and a line's *content* (a 1000-octet uid, a NUL) is for the caller's
# parser to judge line by line, so one bad line need not fail the session. The
# core bounds only size, so that memory stays bounded: a line longer than this
# is framing gone wrong (16 times the 512 of a status line, like MAX_STATUS_LINE).
MAX_LISTING_LINE = 8192

#: Bounds per listing command; ``Pop3Connection(listing_bounds=...)`` overrides them.
DEFAULT_LISTING_BOUNDS: Mapping[str, ListingBounds] = {
    # RFC 2449 section 5: capabilities are a few dozen short lines (Dovecot sends
    # about 10 in under 200 octets; IANA's registry names 17). 1,000 lines and
    # 64 KiB is far beyond any real server and still nothing to hold in memory,
    # which matters because CAPA is read before STLS, from anyone on the path.
    "CAPA": ListingBounds(max_lines=1_000, max_octets=64 * 1024, max_line=MAX_LISTING_LINE),
    # RFC 1939 section 7: a unique-id is at most 70 octets, so a UIDL line is
    # under 84 octets with its number and CRLF, and a 1,000,000-message mailbox
    # lists ~80 MB. That mailbox is the bound: 1,000,000 lines, and 128 MiB lets
    # them average 134 octets (room for the 255-octet uids the parser accepts).
    # The caller holds what it parses (~150 octets of Python objects per entry,
    # ~150 MB at the line bound): an endless listing ends there, with a clear
    # error, and a mailbox of more messages is refused the same way.
    "UIDL": ListingBounds(
        max_lines=1_000_000, max_octets=128 * 1024 * 1024, max_line=MAX_LISTING_LINE
    ),
    # RFC 1939 section 5: a LIST line is two numbers (~20 octets) and optional
    # extra words; one line per message like UIDL, so the same bounds.
    "LIST": ListingBounds(
        max_lines=1_000_000, max_octets=128 * 1024 * 1024, max_line=MAX_LISTING_LINE
    ),
}
#: Bounds for a listing command not in DEFAULT_LISTING_BOUNDS (an extension's):
#: as small as CAPA's, since nothing popvault sends should list more.
OTHER_LISTING_BOUNDS = DEFAULT_LISTING_BOUNDS["CAPA"]
#: Multi-line replies that are messages: streamed as Data, never framed or bounded
#: here (the caller bounds a message by its LIST size).
MESSAGE_VERBS = frozenset({"RETR", "TOP"})


class State(enum.Enum):
    """Where the session is (RFC 1939 sections 3-6)."""

    GREETING = "awaiting greeting"
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"  # QUIT accepted in TRANSACTION: deletions committed
    UPGRADED = "handed over to TLS"  # STLS accepted: a new connection object takes over
    CLOSED = "closed"


#: Which command may be sent in which state. RFC 1939 sections 4-6; CAPA in both
#: states (RFC 2449 section 5); STLS only in AUTHORIZATION (RFC 2595 section 4);
#: AUTH in AUTHORIZATION (RFC 5034 section 4); UTF8 only in AUTHORIZATION (RFC 6856
#: section 3). PASS further needs USER just before it.
LEGAL_COMMANDS: Mapping[State, frozenset[str]] = {
    State.GREETING: frozenset(),
    State.AUTHORIZATION: frozenset(
        {"USER", "PASS", "APOP", "AUTH", "CAPA", "STLS", "UTF8", "QUIT"}
    ),
    State.TRANSACTION: frozenset(
        {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "CAPA", "QUIT"}
    ),
    State.UPDATE: frozenset(),
    State.UPGRADED: frozenset(),
    State.CLOSED: frozenset(),
}

_LOGIN_VERBS = frozenset({"PASS", "APOP", "AUTH"})
# Verbs whose +OK moves the session to another state (state_after_ok).
_STATE_CHANGERS = _LOGIN_VERBS | {"QUIT", "STLS"}


def state_after_ok(state: State, verb: str) -> State:
    """The state after the server accepted ``verb`` in ``state``."""
    if state is State.AUTHORIZATION and verb in _LOGIN_VERBS:
        return State.TRANSACTION
    if verb == "QUIT":
        return State.UPDATE if state is State.TRANSACTION else State.CLOSED
    if verb == "STLS":
        return State.UPGRADED
    return state


def state_after_err(state: State, verb: str) -> State:
    """The state after the server refused ``verb`` in ``state``."""
    # RFC 1939 section 6: QUIT may answer -ERR (some deletions failed) and the
    # session still ends; any other refusal leaves the state as it was.
    return State.CLOSED if verb == "QUIT" else state


class Pop3Connection:
    """One POP3 session as a state machine, client side.

    ``tls=True`` says the stream is already TLS (implicit TLS, or after STLS),
    which makes STLS illegal. ``after_stls=True`` starts in AUTHORIZATION
    without a greeting: RFC 2595 section 4 sends none after the handshake.
    ``listing_bounds`` replaces the :data:`DEFAULT_LISTING_BOUNDS` of the
    commands it names (e.g. smaller ones in a test).
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        after_stls: bool = False,
        listing_bounds: Mapping[str, ListingBounds] | None = None,
    ) -> None:
        self._state = State.AUTHORIZATION if after_stls else State.GREETING
        self._tls = tls or after_stls
        self._buffer = bytearray()
        self._eof = False
        self._outstanding: deque[Command] = deque()
        # How many outstanding commands may change the state (see _projected_state).
        self._state_changers = 0
        self._bounds = {**DEFAULT_LISTING_BOUNDS, **(listing_bounds or {})}
        # The multi-line reply being read, and its decoder; then the command whose
        # MultilineEnd is still to be returned.
        self._body: tuple[Command, DotDecoder | ListingDecoder] | None = None
        self._end_pending: Command | None = None
        self._challenged = False  # the head AUTH got a "+" and awaits our response
        self._last_sent: str | None = None
        self._failure: RemoteProtocolError | None = None

    @property
    def state(self) -> State:
        """The state as of the replies received so far."""
        return self._state

    @property
    def outstanding(self) -> tuple[Command, ...]:
        """Commands sent and not yet fully answered, oldest first.

        A multi-line reply being read counts until its :class:`MultilineEnd`.
        """
        current = self._body[0] if self._body is not None else self._end_pending
        return (*([current] if current is not None else []), *self._outstanding)

    @property
    def tls(self) -> bool:
        """Whether this session runs over TLS."""
        return self._tls

    def listing_bounds(self, verb: str) -> ListingBounds:
        """The bounds a listing in reply to ``verb`` is held to."""
        return self._bounds.get(verb.upper(), OTHER_LISTING_BOUNDS)

    # -- client side ----------------------------------------------------------

    def send(self, command: Command | AuthResponse) -> bytes:
        """Register ``command`` as sent and return the bytes to write.

        Raises :class:`~popvault.errors.LocalProtocolError` if the command is
        not legal in the state the session will be in once every outstanding
        command has succeeded.
        """
        if isinstance(command, AuthResponse):
            return self._send_auth_response(command)
        self._check_legal(command)
        self._outstanding.append(command)
        self._state_changers += command.verb in _STATE_CHANGERS
        self._last_sent = command.verb
        return command.encode()

    def _check_legal(self, command: Command) -> None:
        if self._failure is not None:
            raise LocalProtocolError("the connection failed earlier; start a new one")
        if self._challenged or (self._outstanding and self._outstanding[-1].verb == "AUTH"):
            raise LocalProtocolError(f"{command.verb}: an AUTH exchange is in progress")
        state = self._projected_state()
        if command.verb not in LEGAL_COMMANDS[state]:
            raise LocalProtocolError(f"{command.verb} is not allowed in state {state.value}")
        if command.verb == "STLS" and self._tls:
            raise LocalProtocolError("STLS: the stream is already TLS")
        if command.verb == "PASS" and self._last_sent != "USER":
            raise LocalProtocolError("PASS must follow USER (RFC 1939 section 7)")

    def _projected_state(self) -> State:
        """The state once every outstanding command has been accepted."""
        state = self._state
        if state is State.TRANSACTION and self._state_changers == 0:
            return state  # a pipelined window of RETRs: nothing queued changes the state
        for queued in self._outstanding:
            state = state_after_ok(state, queued.verb)
        return state

    def _send_auth_response(self, response: AuthResponse) -> bytes:
        if self._failure is not None:
            raise LocalProtocolError("the connection failed earlier; start a new one")
        if not self._challenged:
            raise LocalProtocolError("AUTH response without a server challenge")
        self._challenged = False
        return response.encode()

    # -- server side ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the server; ``b""`` means the server closed."""
        if self._eof and data:
            raise LocalProtocolError("data received after the end of the stream")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | Sentinel:
        """The next event, or :data:`NEED_DATA` if more bytes are needed first."""
        if self._failure is not None:
            raise self._failure
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._failure = exc
            self._state = State.CLOSED
            raise

    def _next_event(self) -> Event | Sentinel:
        if self._body is not None or self._end_pending is not None:
            return self._next_body_event()
        if self._state is State.UPGRADED and self._buffer:
            # RFC 2595 section 4 / CVE-2011-0411: octets sent in the clear after
            # "+OK" to STLS could be injected; they must not reach the TLS session.
            raise RemoteProtocolError("the server sent data after accepting STLS")
        line = self._take_status_line()
        if line is None:
            return self._closed() if self._eof else NEED_DATA
        return self._on_status_line(line)

    def _take_status_line(self) -> bytes | None:
        end = self._buffer.find(b"\n", 0, MAX_STATUS_LINE)
        if end < 0:
            if len(self._buffer) >= MAX_STATUS_LINE:
                raise RemoteProtocolError(
                    f"status line longer than {MAX_STATUS_LINE} octets (RFC 2449 section 4)"
                )
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _closed(self) -> ConnectionClosed:
        clean = not self._buffer and not self._outstanding and self._body is None
        self._state = State.CLOSED
        return ConnectionClosed(clean=clean)

    def _on_status_line(self, line: bytes) -> Event:
        kind, text = parse_status(line)
        if self._state is State.GREETING:
            return self._on_greeting(kind, text)
        if not self._outstanding:
            raise RemoteProtocolError(f"unsolicited line from the server: {line[:80]!r}")
        command = self._outstanding[0]
        if kind == "+":
            return self._on_continuation(command, text)
        self._outstanding.popleft()
        self._state_changers -= command.verb in _STATE_CHANGERS
        self._challenged = False
        if kind == "-ERR":
            return self._on_err(command, text)
        return self._on_ok(command, text)

    def _on_greeting(self, kind: str, text: str) -> Event:
        if kind == "+OK":
            self._state = State.AUTHORIZATION
            return Greeting(text=text, apop_timestamp=apop_timestamp(text))
        if kind == "-ERR":
            self._state = State.CLOSED  # the server refused the session outright
            code, rest = parse_response_code(text)
            return Err(command=None, text=rest, code=code)
        raise RemoteProtocolError("the greeting must be +OK or -ERR (RFC 1939 section 4)")

    def _on_continuation(self, command: Command, text: str) -> Event:
        if command.verb != "AUTH":
            raise RemoteProtocolError(f"'+' continuation in reply to {command.verb}")
        if self._challenged:
            # RFC 5034 section 4: one challenge, then the client's response.
            raise RemoteProtocolError(
                "a second AUTH challenge before the client answered the first"
            )
        challenge = parse_challenge(text)
        self._challenged = True
        return Continuation(command=command, text=text, challenge=challenge)

    def _on_err(self, command: Command, text: str) -> Event:
        self._state = state_after_err(self._state, command.verb)
        if command.verb == "USER" and self._last_sent == "USER":
            self._last_sent = None  # a refused USER does not open the way for PASS
        code, rest = parse_response_code(text)
        return Err(command=command, text=rest, code=code)

    def _on_ok(self, command: Command, text: str) -> Event:
        self._state = state_after_ok(self._state, command.verb)
        if command.multiline:
            self._body = (command, self._decoder_for(command))
            return MultilineBegin(command=command, text=text)
        return Ok(command=command, text=text)

    def _decoder_for(self, command: Command) -> DotDecoder | ListingDecoder:
        if command.verb in MESSAGE_VERBS:
            return DotDecoder()
        return ListingDecoder(command.verb, self.listing_bounds(command.verb))

    def _next_body_event(self) -> Event | Sentinel:
        if self._body is None:
            return self._end_of_body()
        command, decoder = self._body
        if isinstance(decoder, ListingDecoder):
            return self._next_listing_event(command, decoder)
        chunk, used = decoder.decode(self._buffer)
        del self._buffer[:used]
        if decoder.done:
            self._body = None
            self._end_pending = command
        if chunk:
            return Data(chunk)
        if decoder.done:
            return self._end_of_body()
        return self._closed() if self._eof else NEED_DATA

    def _next_listing_event(self, command: Command, decoder: ListingDecoder) -> Event | Sentinel:
        line, used = decoder.next_line(self._buffer)
        del self._buffer[:used]
        if line is not None:
            return ListingLine(command=command, line=line)
        if decoder.done:
            self._body = None
            return MultilineEnd(command=command)
        return self._closed() if self._eof else NEED_DATA

    def next_listing_lines(self) -> list[bytes] | None:
        """Every complete line of the listing under way, at once; None if no listing is.

        The bulk form of :meth:`next_event` for a listing (the same lines as
        its :class:`~popvault.pop3.events.ListingLine` events, the same
        bounds and errors): ``[]`` when the next line is not complete yet.
        After the terminator the listing's
        :class:`~popvault.pop3.events.MultilineEnd` is :meth:`next_event`'s.
        """
        if self._failure is not None:
            raise self._failure
        if self._body is None:
            return None
        command, decoder = self._body
        if not isinstance(decoder, ListingDecoder):
            return None
        try:
            lines, used = decoder.take_lines(self._buffer)
        except RemoteProtocolError as exc:
            self._failure = exc
            self._state = State.CLOSED
            raise
        del self._buffer[:used]
        if decoder.done:
            self._body = None
            self._end_pending = command
        return lines

    def _end_of_body(self) -> Event:
        command, self._end_pending = self._end_pending, None
        if command is None:  # unreachable: called only with an end pending
            raise LocalProtocolError("no multi-line reply in progress")
        return MultilineEnd(command=command)
