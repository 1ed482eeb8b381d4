"""One connection to the fake POP3 server: RFC 1939 states and commands."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from popvault.testing import _sasl, _wire

if TYPE_CHECKING:
    from popvault.testing.fake_server import FakePop3Server

# RFC 2449 section 4: a command line is at most 255 octets, CRLF included.
MAX_COMMAND_OCTETS = 255
_RECV_OCTETS = 4096
# Unended input held before it is answered as one (too long) line.
_MAX_PENDING_OCTETS = 64 * 1024
# After our FIN, wait this long for the client's: closing with its data
# unread would send a RST, which can destroy what we sent last.
_LINGER_SECONDS = 1.0
# What RETR, TOP and LIST n answer for a message another client removed
# (FakePop3Server vanished="err"); no response code exists for it.
VANISHED_REFUSAL = "message was deleted by another client"
# RFC 1939 section 3: message numbers and counts are decimal.
_NUMBER = re.compile(r"[0-9]{1,10}")

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"


@dataclass(eq=False)
class Message:
    """One message on the fake server; identity, not value, tells two apart."""

    uidl: str
    raw: bytes
    # Set, under the server's lock, once it leaves the mailbox (a QUIT's
    # expunge or FakePop3Server.remove_message): sessions whose snapshot
    # still holds it then answer by the server's ``vanished`` setting.
    removed: bool = False
    # Set, under the server's lock, once a session that RETRed it ended with
    # QUIT: a server with a ``window`` (Gmail's POP3) offers it no more.
    downloaded: bool = False


@dataclass(frozen=True)
class Stream:
    """A reply produced lazily: ``chunks()`` yields its octets, each sent after ``delay`` s."""

    chunks: Callable[[], Iterable[bytes]]
    delay: float


@dataclass(frozen=True)
class Scripted:
    """A scripted answer to one command (FakePop3Server.fail_command and friends).

    ``reply`` is a line (CRLF added unless it ends one) or a :class:`Stream`;
    with ``carry_out`` the command is carried out first and only its reply
    is replaced.
    """

    reply: str | Stream
    carry_out: bool = False


class _Refused(Exception):
    """The command is answered with ``-ERR`` and this text."""


class _EndSession(Exception):
    """The session is over: QUIT, a cut connection, or the end of a hang."""


def _ok(text: str = "") -> bytes:
    return _wire.status_line(True, text)


class Session:
    """One client connection, run by its own thread."""

    def __init__(self, server: FakePop3Server, conn: socket.socket, number: int) -> None:
        self._server = server
        self.number = number  # 1-based, in the order connections were accepted
        self._sock = conn
        # A second handle on the same connection that stop() may shut down
        # from another thread; it is never wrapped in TLS, so it stays valid.
        self._ctl = conn.dup()
        self._buf = b""
        self._sent = 0
        self._state = AUTHORIZATION
        self._user: str | None = None
        self._tls = False
        self._utf8 = False  # RFC 6856 UTF-8 mode: UTF8 was sent and got +OK
        self._snapshot: list[Message] = []
        self._marked: list[int] = []  # message numbers, in the order of their DELE
        self._retrieved: set[int] = set()  # numbers RETR was carried out for (not TOP)
        self._then: Callable[[], None] | None = None
        self._verb_counts: dict[str, int] = {}  # commands received so far, by verb
        # Session octet count at which the reply being sent is cut (FakePop3Server.cut_reply).
        self._reply_cut_at: int | None = None
        self._auth_lines: list[str] = []  # the client's lines of the AUTH exchange under way

    # -- life of the connection --------------------------------------------

    def run(self) -> None:
        """Greet, then answer commands until QUIT, a fault, or the client leaves."""
        try:
            if self._server.tls_context is not None:
                self._start_tls(self._server.tls_context)
            self._greet()
            while (line := self._read_line()) is not None:
                self._handle(line)
        except (_EndSession, OSError):
            # OSError (ssl.SSLError included): the client left or failed TLS.
            # That is the client's business, not a fault of the server.
            return

    def abort(self) -> None:
        """Wake the session's thread from any blocking call (from stop())."""
        with contextlib.suppress(OSError):  # already closed by the client
            self._ctl.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Send FIN, let the client read what it was sent, then close."""
        try:
            self._ctl.shutdown(socket.SHUT_WR)
            self._drain()
        except OSError:
            pass
        finally:
            self._sock.close()
            self._ctl.close()

    def _drain(self) -> None:
        deadline = time.monotonic() + _LINGER_SECONDS
        while not self._server._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._ctl.settimeout(remaining)
            if not self._ctl.recv(_RECV_OCTETS):
                return

    def _start_tls(self, context: ssl.SSLContext) -> None:
        # RFC 2595 section 4 and the STARTTLS injection attacks: nothing the
        # client sent before the handshake may count after it.
        self._buf = b""
        self._user = None
        self._utf8 = False
        self._sock = context.wrap_socket(self._sock, server_side=True)
        self._tls = True

    def _greet(self) -> None:
        self._server._before_command(self.number, "GREETING", "")
        # A scripted greeting replaces this one (there is nothing to carry out).
        scripted = self._server._take_fault("GREETING", "")
        if scripted is None:
            stamp = self._server.apop_timestamp
            text = "popvault fake POP3 server ready"
            self._respond("GREETING", _ok(f"{text} {stamp}" if stamp else text))
            return
        self._answer("GREETING", scripted.reply)
        if isinstance(scripted.reply, str) and scripted.reply.startswith("-"):
            raise _EndSession  # a server that refuses in its greeting hangs up

    # -- input ---------------------------------------------------------------

    def _read_line(self) -> bytes | None:
        """The next command line, LF included, or None once the client closed."""
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0:
                line, self._buf = self._buf[: newline + 1], self._buf[newline + 1 :]
                return line
            if len(self._buf) > _MAX_PENDING_OCTETS:
                line, self._buf = self._buf, b""
                return line
            data = self._sock.recv(_RECV_OCTETS)
            if not data:
                return None
            self._buf += data

    def _handle(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n").decode("latin-1")
        self._server._record(text)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        self._observe_in_flight(verb)
        count = self._verb_counts[verb] = self._verb_counts.get(verb, 0) + 1
        cut = self._server._reply_cut_point(verb, count)
        self._reply_cut_at = None if cut is None else self._sent + cut
        if verb == "UTF8":
            self._server._note_utf8(self.number, accepted=False)
        self._server._before_command(self.number, verb, arg)
        scripted = self._server._take_fault(verb, arg)
        if scripted is not None and not scripted.carry_out:
            self._answer(verb, scripted.reply)
            return
        self._then = None
        try:
            reply = self._execute(verb, arg, len(text) + 2)
        except _Refused as refusal:
            reply = _wire.status_line(False, str(refusal))
        if scripted is None:
            self._respond(verb, reply)
        else:  # carried out; only the reply is the script's
            self._answer(verb, scripted.reply)
        if self._then is not None:
            self._then()

    def _observe_in_flight(self, verb: str) -> None:
        """Tell the server which commands are received and unanswered as ``verb`` is answered.

        That is this command and every complete line after it, whether this
        session has read it already or it waits in the socket's receive
        buffer (peeked at, not read; on a TLS connection only what was read
        counts). A client that waits for each answer has just this one.
        """
        waiting = (self._buf + self._peek()).split(b"\n")[:-1]  # complete lines only
        verbs = [verb] + [w.split(b" ", 1)[0].strip().decode("latin-1").upper() for w in waiting]
        self._server._note_in_flight(verbs)

    def _peek(self) -> bytes:
        """What the socket has received and the session not yet read (without reading it)."""
        if self._tls:
            return b""  # SSL sockets cannot peek; their records are not lines anyway
        try:
            return self._sock.recv(_MAX_PENDING_OCTETS, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""

    def _execute(self, verb: str, arg: str, octets: int) -> bytes:
        if octets > MAX_COMMAND_OCTETS:
            raise _Refused("command line too long")
        entry = _COMMANDS.get(verb)
        if entry is None:
            raise _Refused("unknown command")
        handler, states = entry
        if self._state not in states:
            raise _Refused(f"{verb} not allowed in the {self._state} state")
        return handler(self, arg)

    # -- output --------------------------------------------------------------

    def _respond(self, verb: str, data: bytes) -> None:
        server = self._server
        data = server._rewrite(verb, data)
        if server.bare_lf:
            data = _wire.to_bare_lf(data)
        if server.delay > 0:
            server._stopping.wait(server.delay)
        hang = server._hang_point(verb)
        if hang is None:
            self._send(data)
            return
        self._send(data[:hang])
        while self._sock.recv(_RECV_OCTETS):
            pass  # hanging: ignore the client until it closes or stop() wakes us
        raise _EndSession

    def _answer(self, verb: str, reply: str | Stream) -> None:
        """Send a scripted reply: a line as :meth:`_respond` does, or a stream."""
        if isinstance(reply, Stream):
            self._stream(reply)
        else:
            self._respond(verb, _wire.raw_line(reply))

    def _stream(self, stream: Stream) -> None:
        """Send each chunk as it is produced, ``delay`` seconds apart; stop with the server.

        Only :meth:`FakePop3Server.cut_after` applies: the chunks are sent as
        they are. A client that left makes a send fail (OSError ends the session).
        """
        chunks = iter(stream.chunks())
        try:
            for chunk in chunks:
                # wait() returns at once, True, when stop() is under way.
                if self._server._stopping.wait(stream.delay):
                    raise _EndSession
                self._send(bytes(chunk))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # run an endless generator's own clean-up

    def _send(self, data: bytes) -> None:
        limit = self._server._cut_point()
        if self._reply_cut_at is not None:
            limit = self._reply_cut_at if limit is None else min(limit, self._reply_cut_at)
        if limit is not None and self._sent + len(data) >= limit:
            part = data[: max(0, limit - self._sent)]
            self._sock.sendall(part)
            self._sent += len(part)
            raise _EndSession
        self._sock.sendall(data)
        self._sent += len(data)

    # -- the maildrop ----------------------------------------------------------

    def _live(self) -> list[tuple[int, Message]]:
        """(number, message) of every message not marked deleted."""
        pairs = enumerate(self._snapshot, start=1)
        return [(n, m) for n, m in pairs if n not in self._marked]

    def _octets(self, messages: list[tuple[int, Message]]) -> int:
        return sum(self._server._listed_size(m) for _, m in messages)

    def _message(self, arg: str) -> tuple[int, Message]:
        if not _NUMBER.fullmatch(arg):
            raise _Refused("a message number is needed")
        number = int(arg)
        if not 1 <= number <= len(self._snapshot):
            raise _Refused(f"no such message, only {len(self._snapshot)} in maildrop")
        if number in self._marked:
            raise _Refused("message deleted")
        return number, self._snapshot[number - 1]

    def _present(self, arg: str) -> tuple[int, Message, bool]:
        """Like _message, and whether the message vanished (see FakePop3Server ``vanished``).

        Another client removed it after this session's snapshot: with "err"
        that is refused here; with "drop" the caller sends part of it and
        closes the connection.
        """
        number, message = self._message(arg)
        if not self._server._is_removed(message):
            return number, message, False
        if self._server.vanished == "err":
            raise _Refused(VANISHED_REFUSAL)
        return number, message, True

    def _body(self, status: bytes, body: bytes, *, vanished: bool) -> bytes:
        """A multi-line reply; for a vanished message only half of it, then the end."""
        data = _wire.multiline(body)
        if not vanished:
            return status + data
        # Half the dot-stuffed body, never its terminator: the client sees a
        # message cut short by a server that lost it mid-way.
        self._then = self._end
        return status + data[: (len(data) - len(_wire.TERMINATOR)) // 2]

    def _content(self, number: int, message: Message) -> bytes:
        return self._server._content(message, number, self.number, utf8=self._utf8)

    def _login(self, method: str) -> bytes:
        snapshot = self._server._lock_maildrop(self)
        if snapshot is None:
            raise _Refused(self._server.lock_refusal)
        self._server._note_login(self.number, method)
        self._snapshot, self._state = snapshot, TRANSACTION
        live = self._live()
        return _ok(f"maildrop locked and ready, {len(live)} messages ({self._octets(live)} octets)")

    # -- AUTHORIZATION state (RFC 1939 section 7, RFC 2595 section 4) ---------

    def _cmd_user(self, arg: str) -> bytes:
        if not arg:
            raise _Refused("USER needs a name")
        self._user = arg
        return _ok("send PASS")

    def _cmd_pass(self, arg: str) -> bytes:
        user, self._user = self._user, None
        if user is None:
            raise _Refused("give USER first")
        if user != self._server.username or arg != self._server.password:
            raise _Refused(self._server.login_refusal)
        return self._login("USER")

    def _cmd_apop(self, arg: str) -> bytes:
        stamp = self._server.apop_timestamp
        if stamp is None:
            raise _Refused("APOP not supported")
        name, _, digest = arg.partition(" ")
        secret = (stamp + self._server.password).encode("utf-8")
        # RFC 1939 section 7 fixes MD5 for APOP; it is not our choice of hash.
        expected = hashlib.md5(secret, usedforsecurity=False).hexdigest()
        given = digest.strip().lower().encode("latin-1")
        if name != self._server.username or not hmac.compare_digest(given, expected.encode()):
            raise _Refused(self._server.login_refusal)
        return self._login("APOP")

    def _cmd_auth(self, arg: str) -> bytes:
        """RFC 5034 AUTH: the mechanism and an optional initial response, then challenges."""
        server = self._server
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in server._sasl_offer(tls=self._tls):
            raise _Refused("unsupported authentication mechanism")
        if mechanism == "XOAUTH2" and initial and not server.xoauth2_one_line:
            raise _Refused("Protocol error")  # Microsoft's answer to the one-line form
        self._auth_lines = [initial] if initial else []
        try:
            _sasl.run(mechanism, server._sasl_exchange(self._auth_challenge), initial or None)
        except _sasl.Refused as refusal:
            # The longest line the client sent in the exchange: its credentials.
            echoed = max(self._auth_lines, key=len, default="")
            text = str(refusal).replace("{response}", echoed)
            raise _Refused(text.replace("{decoded}", _decoded(echoed))) from None
        return self._login(mechanism)

    def _auth_challenge(self, data: bytes) -> bytes:
        """Send ``+ base64(data)``; the client's response line, decoded."""
        self._respond("AUTH", _wire.challenge_line(data))
        line = self._read_line()
        if line is None:
            raise _EndSession
        text = line.rstrip(b"\r\n").decode("latin-1")
        self._server._record(text)
        self._auth_lines.append(text)
        return _sasl.decode_response(text)

    def _cmd_utf8(self, arg: str) -> bytes:
        # RFC 6856 section 3.1: UTF8 is valid only in the AUTHORIZATION state
        # and only from a server whose CAPA names the UTF8 capability; a
        # server without it does not know the command at all.
        if not self._server._offers_utf8():
            raise _Refused("unknown command")
        if self._state != AUTHORIZATION:
            raise _Refused(f"UTF8 not allowed in the {self._state} state")
        self._utf8 = True
        self._server._note_utf8(self.number, accepted=True)
        return _ok("UTF8 enabled")

    def _cmd_stls(self, arg: str) -> bytes:
        context = self._server.stls_context
        if context is None or self._tls:
            raise _Refused("STLS not available")
        self._then = lambda: self._start_tls(context)
        return _ok("begin TLS negotiation now")

    # -- both states ---------------------------------------------------------

    def _cmd_capa(self, arg: str) -> bytes:
        if not self._server._offers_capa():
            raise _Refused("unknown command")
        offer = self._server.stls_context is not None and not self._tls
        lines = self._server._capability_lines(
            offer_stls=offer and self._state == AUTHORIZATION, tls=self._tls
        )
        return _ok("capability list follows") + _wire.listing(lines)

    def _cmd_quit(self, arg: str) -> bytes:
        if self._state == TRANSACTION:
            # RFC 1939 section 6, the UPDATE state: only now do DELEs count, and
            # (on a server with a window) only now do RETRs count as downloads.
            doomed = [self._snapshot[n - 1] for n in self._marked]
            fetched = [self._snapshot[n - 1] for n in sorted(self._retrieved)]
            self._server._release_maildrop(self, doomed, downloaded=fetched)
        self._then = self._end
        return _ok("popvault fake POP3 server signing off")

    def _end(self) -> None:
        raise _EndSession

    # -- TRANSACTION state (RFC 1939 section 5, RFC 2449 TOP) -----------------

    def _cmd_stat(self, arg: str) -> bytes:
        live = self._live()
        return _ok(f"{len(live)} {self._octets(live)}")

    def _cmd_list(self, arg: str) -> bytes:
        size = self._server._listed_size
        if arg.strip():
            # With vanished="drop" the answer still comes from the snapshot:
            # such servers keep the session's index, only the content is gone.
            number, message, _ = self._present(arg.strip())
            return _ok(f"{number} {size(message)}")
        live = self._live()
        body = _wire.listing(f"{n} {size(m)}" for n, m in live)
        return _ok(f"{len(live)} messages ({self._octets(live)} octets)") + body

    def _cmd_uidl(self, arg: str) -> bytes:
        if self._server.no_uidl:
            raise _Refused("unknown command")
        if arg.strip():
            number, message = self._message(arg.strip())
            return _ok(f"{number} {message.uidl}")
        body = _wire.listing(f"{n} {m.uidl}" for n, m in self._live())
        return _ok("unique-id listing follows") + body

    def _cmd_retr(self, arg: str) -> bytes:
        number, message, vanished = self._present(arg.strip())
        status = _ok(f"{self._server._listed_size(message)} octets")
        if not vanished:
            # Counted as downloaded only if this session ends with QUIT (Gmail's rule).
            self._retrieved.add(number)
        return self._body(status, self._content(number, message), vanished=vanished)

    def _cmd_top(self, arg: str) -> bytes:
        words = arg.split()
        if len(words) != 2 or not _NUMBER.fullmatch(words[1]):
            raise _Refused("usage: TOP message lines")
        number, message, vanished = self._present(words[0])
        body = _wire.top(self._content(number, message), int(words[1]))
        return self._body(_ok("top of message follows"), body, vanished=vanished)

    def _cmd_dele(self, arg: str) -> bytes:
        number, _ = self._message(arg.strip())
        self._marked.append(number)
        return _ok(f"message {number} deleted")

    def _cmd_noop(self, arg: str) -> bytes:
        return _ok()

    def _cmd_rset(self, arg: str) -> bytes:
        self._marked.clear()
        live = self._live()
        return _ok(f"maildrop has {len(live)} messages ({self._octets(live)} octets)")


def _decoded(line: str) -> str:
    """What a response line decodes to, for an echoing refusal ("" if it is not base64)."""
    try:
        return _sasl.decode_response(line).decode("latin-1")
    except _sasl.Refused:
        return ""


_Handler = Callable[[Session, str], bytes]
_AUTH = frozenset({AUTHORIZATION})
_TRANS = frozenset({TRANSACTION})
_BOTH = _AUTH | _TRANS
_COMMANDS: dict[str, tuple[_Handler, frozenset[str]]] = {
    "USER": (Session._cmd_user, _AUTH),
    "PASS": (Session._cmd_pass, _AUTH),
    "APOP": (Session._cmd_apop, _AUTH),
    "AUTH": (Session._cmd_auth, _AUTH),
    "STLS": (Session._cmd_stls, _AUTH),
    # Both states, so that _cmd_utf8 can answer an unknown command on a
    # server without the capability before the state is considered.
    "UTF8": (Session._cmd_utf8, _BOTH),
    "CAPA": (Session._cmd_capa, _BOTH),
    "QUIT": (Session._cmd_quit, _BOTH),
    "STAT": (Session._cmd_stat, _TRANS),
    "LIST": (Session._cmd_list, _TRANS),
    "UIDL": (Session._cmd_uidl, _TRANS),
    "RETR": (Session._cmd_retr, _TRANS),
    "TOP": (Session._cmd_top, _TRANS),
    "DELE": (Session._cmd_dele, _TRANS),
    "NOOP": (Session._cmd_noop, _TRANS),
    "RSET": (Session._cmd_rset, _TRANS),
}
