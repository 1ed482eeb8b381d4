"""FakePop3Server: a scriptable POP3 server on 127.0.0.1 for tests and the demo.

It speaks RFC 1939 (with CAPA from RFC 2449 and STLS from RFC 2595) over a
real socket, one thread per connection, and can be told to misbehave:
scripted ``-ERR`` answers, a connection cut after N octets, a hang, a slow
server, no UIDL, no CAPA, bare LF line endings.

It has its own small encoder (:mod:`popvault.testing._wire`) and never imports
:mod:`popvault.pop3`, so that a bug shared by client and server cannot hide.

Example::

    with FakePop3Server([msg1, msg2]) as srv:
        client = poplib.POP3(srv.host, srv.port)
        ...
    assert srv.deleted == [...]
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from popvault.testing._session import Message, Session

HOST = "127.0.0.1"
DEFAULT_APOP_TIMESTAMP = "<1896.697170952@fake.popvault.test>"
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "TOP",
    "UIDL",
    "USER",
    "PIPELINING",
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "EXPIRE NEVER",
    "IMPLEMENTATION popvault-fake",
)
# How often the accept loop looks at the stop flag; also bounds stop()'s wait for it.
_ACCEPT_POLL_SECONDS = 0.05
# A thread that does not end this long after its socket was shut down is a bug.
_JOIN_SECONDS = 10.0


@dataclass
class _FailRule:
    verb: str
    response: str
    times: int | None
    arg: str | None

    def matches(self, verb: str, arg: str) -> bool:
        return self.verb == verb and (self.arg is None or self.arg == arg)


class FakePop3Server:
    """A threaded POP3 server on 127.0.0.1, port 0, for tests.

    ``messages`` are raw RFC 5322 messages as a server stores them (CRLF line
    endings); their sizes in STAT/LIST are their lengths in octets. ``uidls``
    default to unique generated strings; given ones are used as they are (not
    checked), so a test can script a server that breaks the RFC.

    ``tls_context`` (a server-side context) makes every connection implicit
    TLS, like port 995; ``stls_context`` offers STLS in CAPA (RFC 2595).
    ``apop_timestamp`` goes into the greeting (``None``: no APOP).
    ``capabilities`` replaces the default CAPA lines; STLS is added to them
    while it is on offer.

    Faults and quirks apply from the next command on, in every session, until
    :meth:`clear_faults`. The pseudo-verb ``"GREETING"`` names the greeting in
    :meth:`fail_command` and :meth:`hang_on`.
    """

    def __init__(
        self,
        messages: Sequence[bytes] = (),
        *,
        username: str = "user",
        password: str = "secret",  # noqa: S107 - the fake server's documented test login
        uidls: Sequence[str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        stls_context: ssl.SSLContext | None = None,
        apop_timestamp: str | None = DEFAULT_APOP_TIMESTAMP,
        capabilities: Sequence[str] | None = None,
    ) -> None:
        if uidls is not None and len(uidls) != len(messages):
            raise ValueError(f"{len(messages)} messages but {len(uidls)} uidls")
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.stls_context = stls_context
        self.apop_timestamp = apop_timestamp
        self.capabilities = None if capabilities is None else tuple(capabilities)
        self.host = HOST
        self.port = 0
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._deleted: list[str] = []
        self._commands: list[str] = []
        self._sessions = 0
        self._holder: Session | None = None
        self._live: set[Session] = set()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._counter = 0
        self._fail_rules: list[_FailRule] = []
        self._cut: int | None = None
        self._hangs: dict[str, int] = {}
        self.delay = 0.0
        self.no_uidl = False
        self.bare_lf = False
        self.no_capa = False
        for index, raw in enumerate(messages):
            self.add_message(raw, None if uidls is None else uidls[index])

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> FakePop3Server:
        """Bind 127.0.0.1 port 0 and accept connections; returns once listening."""
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("a FakePop3Server starts only once")
        listener = socket.create_server((HOST, 0))
        listener.settimeout(_ACCEPT_POLL_SECONDS)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._acceptor = self._spawn("fake-pop3-accept", lambda: self._accept_loop(listener))
        return self

    def stop(self) -> None:
        """Close everything and re-raise the first exception a server thread hit.

        A client that dropped its connection is not an error. Idempotent.
        """
        if self._listener is None:
            return  # never started
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_SECONDS)  # no new sessions after this
        with self._lock:
            for session in self._live:
                session.abort()
            threads = list(self._threads)
        for thread in threads:
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                self._errors.append(RuntimeError(f"{thread.name} did not stop"))
        if self._listener is not None:
            self._listener.close()
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error

    def __enter__(self) -> FakePop3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the mailbox -------------------------------------------------------

    def add_message(self, raw: bytes, uidl: str | None = None) -> str:
        """Append a message (seen by sessions that log in later); returns its uidl."""
        with self._lock:
            self._counter += 1
            if uidl is None:
                digest = hashlib.sha256(raw).hexdigest()[:16]
                uidl = f"fake{self._counter:06d}-{digest}"
            self._messages.append(Message(uidl, bytes(raw)))
        return uidl

    @property
    def mailbox(self) -> list[tuple[str, bytes]]:
        """What is on the server now: (uidl, raw) in order."""
        with self._lock:
            return [(m.uidl, m.raw) for m in self._messages]

    @property
    def deleted(self) -> list[str]:
        """Uidls removed by DELE and a following QUIT, in the order of the DELEs."""
        with self._lock:
            return list(self._deleted)

    @property
    def commands(self) -> list[str]:
        """Every command line received, all sessions, without its line end."""
        with self._lock:
            return list(self._commands)

    @property
    def sessions(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return self._sessions

    # -- faults and quirks -------------------------------------------------

    def fail_command(
        self,
        verb: str,
        response: str = "-ERR failed",
        *,
        times: int | None = None,
        arg: str | None = None,
    ) -> None:
        """Answer ``verb`` (only with argument ``arg`` if given) with ``response``.

        The command is not carried out. ``times`` limits how often (default:
        until cleared). ``response`` is sent as it is, CRLF added.
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        wanted = None if arg is None else " ".join(arg.split())
        rule = _FailRule(verb.upper(), response, times, wanted)
        with self._lock:
            self._fail_rules.append(rule)

    def cut_after(self, octets: int) -> None:
        """Close each later session's connection once it has sent ``octets`` octets.

        Commands are carried out before their answer is cut: a QUIT whose
        ``+OK`` is lost has still deleted.
        """
        if octets < 0:
            raise ValueError("octets must not be negative")
        with self._lock:
            self._cut = octets

    def hang_on(self, verb: str, after_octets: int = 0) -> None:
        """Stop responding (socket left open) after ``after_octets`` of ``verb``'s answer.

        The command is carried out first. The hang lasts until the client
        closes or the server stops.
        """
        if after_octets < 0:
            raise ValueError("after_octets must not be negative")
        with self._lock:
            self._hangs[verb.upper()] = after_octets

    def clear_faults(self) -> None:
        """Forget every fault and quirk: a well-behaved server again."""
        with self._lock:
            self._fail_rules = []
            self._cut = None
            self._hangs = {}
        self.delay = 0.0
        self.no_uidl = False
        self.bare_lf = False
        self.no_capa = False

    # -- for the sessions (private to this package) -------------------------

    def _take_fault(self, verb: str, arg: str) -> str | None:
        """The scripted response for this command, if one applies (counts it)."""
        with self._lock:
            for rule in self._fail_rules:
                if rule.matches(verb, " ".join(arg.split())):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times == 0:
                            self._fail_rules.remove(rule)
                    return rule.response
        return None

    def _hang_point(self, verb: str) -> int | None:
        """Octets of ``verb``'s answer to send before hanging, or None."""
        with self._lock:
            return self._hangs.get(verb)

    def _cut_point(self) -> int | None:
        """Octets a session may send before the connection is cut, or None."""
        with self._lock:
            return self._cut

    def _record(self, line: str) -> None:
        """Keep a received command line for :attr:`commands`."""
        with self._lock:
            self._commands.append(line)

    def _lock_maildrop(self, session: Session) -> list[Message] | None:
        """Give ``session`` the exclusive lock (RFC 1939 section 4) and a snapshot."""
        with self._lock:
            if self._holder is not None:
                return None
            self._holder = session
            return list(self._messages)

    def _release_maildrop(self, session: Session, expunge: Sequence[Message] = ()) -> None:
        """Release the lock; remove ``expunge`` (the UPDATE state after QUIT)."""
        with self._lock:
            if self._holder is not session:
                return
            self._holder = None
            for message in expunge:
                if any(m is message for m in self._messages):
                    self._messages = [m for m in self._messages if m is not message]
                    self._deleted.append(message.uidl)

    def _capability_lines(self, *, offer_stls: bool) -> list[str]:
        """The CAPA listing (RFC 2449 section 5) for a session in this state."""
        if self.capabilities is not None:
            lines = list(self.capabilities)
        else:
            lines = [c for c in DEFAULT_CAPABILITIES if not (self.no_uidl and c == "UIDL")]
        if offer_stls and "STLS" not in lines:
            lines.append("STLS")
        return lines

    # -- threads -----------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._guard, args=(target,), name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def _guard(self, target: Callable[[], None]) -> None:
        """Run a thread body; keep what it raises for stop() to re-raise."""
        try:
            target()
        except BaseException as error:  # any failure of a server thread must reach stop()
            with self._lock:
                self._errors.append(error)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            self._open_session(conn)

    def _open_session(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        session = Session(self, conn)
        with self._lock:
            self._sessions += 1
            self._live.add(session)
            name = f"fake-pop3-session-{self._sessions}"
        self._spawn(name, lambda: self._run_session(session))

    def _run_session(self, session: Session) -> None:
        try:
            session.run()
        finally:
            with self._lock:
                self._live.discard(session)
            self._release_maildrop(session)
            session.close()
