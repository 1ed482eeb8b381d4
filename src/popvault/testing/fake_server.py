"""FakePop3Server: a scriptable POP3 server on 127.0.0.1 for tests and the demo.

It speaks RFC 1939 (with CAPA from RFC 2449, STLS from RFC 2595 and UTF8 from
RFC 6856) over a real socket, one thread per connection, and can be told to
misbehave: scripted ``-ERR`` answers, a connection cut after N octets (or in
the middle of the reply to a chosen command, :meth:`FakePop3Server.cut_reply`), a hang,
a slow server, no UIDL, no CAPA, bare LF line endings. It also reports how
many commands a pipelining client (RFC 2449 PIPELINING) had in flight at once
(:attr:`FakePop3Server.max_commands_in_flight`). With ``window=N`` it hands
out the mailbox N messages at a time, as Gmail's POP3 does.

Public hooks reproduce what real servers do without patching this package:
``serve`` (what RETR/TOP send), ``list_size`` (what LIST/STAT report),
``uidl_for`` (the UIDL scheme), ``rewrite_reply`` (the exact octets of every
reply), ``login_refusal``/``lock_refusal`` (the ``-ERR`` texts),
``exclusive_lock``/``vanished`` with :meth:`FakePop3Server.remove_message`
(other clients), :meth:`FakePop3Server.on_command` (a callback as a
command arrives), :meth:`FakePop3Server.reply_with` (a scripted reply that
may echo the command's argument) and :meth:`FakePop3Server.stream_reply`
(an endless or dripping reply). :mod:`popvault.testing.profiles` combines
them into named server styles.

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
import itertools
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

from popvault.testing._sasl import (
    DEFAULT_OAUTHBEARER_ERROR,
    DEFAULT_XOAUTH2_ERROR,
    MECHANISMS,
    Exchange,
)
from popvault.testing._session import VANISHED_REFUSAL, Message, Scripted, Session, Stream

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_LOCK_REFUSAL",
    "DEFAULT_LOGIN_REFUSAL",
    "VANISHED_REFUSAL",
    "FakePop3Server",
    "Served",
    "Vanished",
]

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
# RFC 3206 section 5: [AUTH] marks a refusal caused by the credentials.
DEFAULT_LOGIN_REFUSAL = "[AUTH] invalid login"
# RFC 2449 section 8.1.1: [IN-USE] marks a maildrop locked by another session.
DEFAULT_LOCK_REFUSAL = "[IN-USE] mailbox locked"
# RFC 2449 section 6.7: what a server says of keeping retrieved messages. A server
# with a window hides them once retrieved, so its default CAPA says EXPIRE 0, as
# Gmail's does, instead of the default EXPIRE NEVER.
_KEEPS_RETRIEVED = "EXPIRE NEVER"
_HIDES_RETRIEVED = "EXPIRE 0"

Vanished = Literal["err", "drop"]
"""What a session does for a message removed after its snapshot (see FakePop3Server)."""

# How often the accept loop looks at the stop flag; also bounds stop()'s wait for it.
_ACCEPT_POLL_SECONDS = 0.05
# A thread that does not end this long after its socket was shut down is a bug.
_JOIN_SECONDS = 10.0


@dataclass(frozen=True)
class Served:
    """What the ``serve`` hook is asked to send for one RETR or TOP.

    ``raw`` and ``uidl`` are the stored message; ``number`` its message
    number in the session; ``utf8`` whether that session sent UTF8 and got
    ``+OK`` (RFC 6856 UTF-8 mode); ``session`` the 1-based number of the
    connection (the value of :attr:`FakePop3Server.sessions` when it was
    accepted).
    """

    raw: bytes
    uidl: str
    number: int
    utf8: bool
    session: int


@dataclass
class _ReplyCut:
    """FakePop3Server.cut_reply: cut the reply to a session's ``nth`` ``verb``."""

    verb: str
    nth: int
    after_octets: int
    times: int | None


@dataclass
class _CommandHook:
    verb: str
    callback: Callable[[int, str], None]
    times: int | None


@dataclass
class _Rule:
    """One scripted reply: fail_command, reply_with or stream_reply."""

    verb: str
    reply: str | Stream
    times: int | None
    arg: str | None
    template: bool = False  # reply_with: "{arg}" and friends are filled in
    carry_out: bool = False

    def matches(self, verb: str, arg: str) -> bool:
        return self.verb == verb and (self.arg is None or self.arg == arg)


def _times(times: int | None) -> int | None:
    """Check a ``times`` argument: None (until cleared) or at least 1."""
    if times is not None and times < 1:
        raise ValueError("times must be at least 1")
    return times


def _mechanisms(names: Sequence[str]) -> tuple[str, ...]:
    """SASL mechanism names, upper-cased; one the fake server cannot serve is an error."""
    upper = tuple(name.upper() for name in names)
    unknown = sorted(set(upper) - MECHANISMS)
    if unknown:
        raise ValueError(
            f"the fake server cannot serve SASL {unknown}; it has {sorted(MECHANISMS)}"
        )
    return upper


def _offer_before_stls(names: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if names is None else _mechanisms(names)


def _errors(
    xoauth2: Mapping[str, Any] | None, oauthbearer: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON error challenges of XOAUTH2 and OAUTHBEARER, defaults filled in."""
    return dict(xoauth2 or DEFAULT_XOAUTH2_ERROR), dict(oauthbearer or DEFAULT_OAUTHBEARER_ERROR)


def _window(window: int | None) -> int | None:
    """Check a ``window`` argument: None (the whole mailbox) or at least 1."""
    if window is not None and (isinstance(window, bool) or window < 1):
        raise ValueError("window must be at least 1 (or None: no window)")
    return window


def _wanted(arg: str | None) -> str | None:
    """An ``arg`` filter, its whitespace normalised as commands' arguments are."""
    return None if arg is None else " ".join(arg.split())


class FakePop3Server:
    """A threaded POP3 server on 127.0.0.1, port 0, for tests.

    ``messages`` are raw RFC 5322 messages as a server stores them (CRLF line
    endings); their sizes in STAT/LIST are their lengths in octets. ``uidls``
    default to unique generated strings (or to ``uidl_for(raw)``); given ones
    are used as they are (not checked), so a test can script a server that
    breaks the RFC. Repeated UIDLs are allowed.

    ``tls_context`` (a server-side context) makes every connection implicit
    TLS, like port 995; ``stls_context`` offers STLS in CAPA (RFC 2595).
    ``apop_timestamp`` goes into the greeting (``None``: no APOP).
    ``capabilities`` replaces the default CAPA lines; STLS is added to them
    while it is on offer. ``capa=False`` answers CAPA with ``-ERR``, as an
    RFC 1939 server that predates RFC 2449 does.

    Hooks (all optional, also settable as attributes of the same name):

    * ``serve(Served) -> bytes``: the message RETR sends (and TOP cuts to its
      lines) instead of the stored one. LIST and STAT still report the
      stored message's size.
    * ``list_size(raw) -> int``: the size LIST, STAT and the login and RSET
      texts report for a stored message (default ``len(raw)``), for servers
      that report estimates.
    * ``uidl_for(raw) -> str``: the UIDL :meth:`add_message` gives a message
      when none is given, e.g. a digest of its content.
    * ``rewrite_reply(verb, reply) -> bytes``: gets every reply as the server
      would send it (status line and any multi-line body, CRLFs, dot-stuffing;
      the greeting under the verb ``"GREETING"``, scripted :meth:`fail_command`
      answers included) and returns the octets to send. It runs before
      ``bare_lf``, ``delay``, :meth:`hang_on` and :meth:`cut_after` apply.

    SASL (RFC 5034 ``AUTH``), server side: ``sasl`` names the mechanisms
    offered in CAPA's ``SASL`` line and accepted by ``AUTH`` over TLS (or on
    a server without STLS), out of ``PLAIN``, ``SCRAM-SHA-256``,
    ``SCRAM-SHA-1`` (scramp's server), ``XOAUTH2`` and ``OAUTHBEARER``;
    ``sasl_before_stls`` the ones offered in clear text before STLS (default:
    the same), so a test can withdraw one after STLS. ``check_token(user,
    token) -> bool`` judges an OAuth token (default: equal to ``token``; a
    callable lets a test revoke one); a refused token gets the error JSON
    challenge (``xoauth2_error``, ``oauthbearer_error``) before the ``-ERR``.
    ``xoauth2_one_line=False`` answers an ``AUTH XOAUTH2`` that carries the
    token ``-ERR Protocol error``, as Microsoft's server does. The attribute
    ``wrong_scram_signature = True`` makes SCRAM accept the proof and send a
    wrong server signature (a fault: :meth:`clear_faults` resets it).
    :attr:`logins` records how each session logged in.

    ``window`` (default None: the whole mailbox) makes a server like Gmail's
    POP3, which hands out a window of the mailbox: each session lists (in
    STAT, LIST, UIDL) only the ``window`` oldest messages not yet
    *downloaded*, numbered from 1. A message counts as downloaded once a
    session that carried out a ``RETR`` of it ends with ``QUIT`` (``TOP`` does
    not count; a session that ends without ``QUIT`` downloads nothing, so
    what it retrieved stays on offer). Downloaded messages stay in
    :attr:`mailbox` (the server still holds them; ``DELE`` and ``QUIT``
    remove them as usual); :attr:`downloaded` names them and :attr:`offered`
    is what the next session would list. The default CAPA then says
    ``EXPIRE 0`` (RFC 2449 section 6.7: retrieved messages are not kept on
    offer) instead of ``EXPIRE NEVER``.

    ``login_refusal`` is the ``-ERR`` text for a wrong USER/PASS or APOP, and
    ``lock_refusal`` the one for a locked maildrop: a server that does not
    offer RESP-CODES (RFC 2449 section 8) or AUTH-RESP-CODE (RFC 3206) sends
    them without the bracketed codes. A refused ``AUTH`` also sends
    ``login_refusal``, with ``{response}`` replaced by the longest line the
    client sent in the exchange (its credentials, base64, as received) and
    ``{decoded}`` by what that decodes to: a server echoing what it was sent.

    ``exclusive_lock`` (default) gives one session at a time the maildrop
    (RFC 1939 section 4); with False, any number of sessions may be in the
    TRANSACTION state at once, each with its own snapshot taken at login.
    :meth:`remove_message` is another client deleting a message now; a live
    session that still counts it answers RETR, TOP and LIST n of it by
    ``vanished``: ``"err"`` sends ``-ERR`` with :data:`VANISHED_REFUSAL`;
    ``"drop"`` sends ``+OK`` and the first half of the body, then
    closes the connection (RETR and TOP; LIST n still answers from the
    session's snapshot), as some real servers do.

    Scripted replies, for faults a real server will not produce on demand
    (the first rule added that matches a command answers it):

    * :meth:`fail_command` answers a command with a fixed line (``-ERR`` or
      anything else) instead of carrying it out.
    * :meth:`reply_with` answers with a line made from a template, in which
      ``{arg}`` is the command's argument as received (``{username}`` and
      ``{password}`` are this server's): a server that echoes what it was
      sent, e.g. ``reply_with("PASS", "+OK PASSWORD-WAS {arg}")`` or a
      ``-ERR`` to UIDL quoting the password. With ``carry_out=True`` the
      command is carried out (a login happens) and only its reply is replaced.
    * :meth:`stream_reply` answers with octets produced lazily by an iterator,
      each chunk sent after ``delay`` seconds: an endless generator is an
      endless reply (``+OK`` then ``f"{n} uid{n}"`` lines for ever), and
      ``delay=2.0`` with one line per chunk a server dripping a line every
      2 s. It ends when the iterator does, the client closes, or the server
      stops.

    Faults and quirks apply from the next command on, in every session, until
    :meth:`clear_faults`. The pseudo-verb ``"GREETING"`` names the greeting in
    :meth:`fail_command`, :meth:`reply_with`, :meth:`stream_reply` (a greeting
    dripped one octet at a time), :meth:`hang_on` and :meth:`on_command`.
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
        capa: bool = True,
        serve: Callable[[Served], bytes] | None = None,
        list_size: Callable[[bytes], int] | None = None,
        uidl_for: Callable[[bytes], str] | None = None,
        rewrite_reply: Callable[[str, bytes], bytes] | None = None,
        login_refusal: str = DEFAULT_LOGIN_REFUSAL,
        lock_refusal: str = DEFAULT_LOCK_REFUSAL,
        exclusive_lock: bool = True,
        vanished: Vanished = "err",
        sasl: Sequence[str] = (),
        sasl_before_stls: Sequence[str] | None = None,
        token: str | None = None,
        check_token: Callable[[str, str], bool] | None = None,
        xoauth2_one_line: bool = True,
        xoauth2_error: Mapping[str, Any] | None = None,
        oauthbearer_error: Mapping[str, Any] | None = None,
        window: int | None = None,
    ) -> None:
        if uidls is not None and len(uidls) != len(messages):
            raise ValueError(f"{len(messages)} messages but {len(uidls)} uidls")
        if vanished not in get_args(Vanished):
            raise ValueError(f"vanished must be one of {get_args(Vanished)}, not {vanished!r}")
        self.username = username
        self.password = password
        self.tls_context = tls_context
        self.stls_context = stls_context
        self.apop_timestamp = apop_timestamp
        self.capabilities = None if capabilities is None else tuple(capabilities)
        self.capa = capa
        self.serve = serve
        self.list_size = list_size
        self.uidl_for = uidl_for
        self.rewrite_reply = rewrite_reply
        self.login_refusal = login_refusal
        self.lock_refusal = lock_refusal
        self.exclusive_lock, self.window = exclusive_lock, _window(window)
        self.vanished: Vanished = vanished
        # SASL (see the class docstring); wrong_scram_signature is a fault.
        self.sasl, self.sasl_before_stls = _mechanisms(sasl), _offer_before_stls(sasl_before_stls)
        self.token, self.check_token = token, check_token
        self.xoauth2_one_line, self.wrong_scram_signature = xoauth2_one_line, False
        self.xoauth2_error, self.oauthbearer_error = _errors(xoauth2_error, oauthbearer_error)
        self.host = HOST
        self.port = 0
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        # Uidls removed by DELE and QUIT, and those retrieved in a session ended by QUIT.
        self._deleted, self._downloaded = list[str](), list[str]()
        self._commands: list[str] = []
        self._sessions = 0
        self._holder: Session | None = None  # the exclusive lock's holder
        self._transacting: set[Session] = set()  # every session in TRANSACTION
        self._utf8: dict[int, bool] = {}
        self._logins: list[tuple[int, str]] = []
        self._live: set[Session] = set()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._counter = 0
        self._rules: list[_Rule] = []
        self._command_hooks: list[_CommandHook] = []
        self._cut: int | None = None
        self._reply_cuts: list[_ReplyCut] = []
        self._hangs: dict[str, int] = {}
        self._max_in_flight = 0
        self._max_in_flight_by_verb: dict[str, int] = {}
        self.delay, self.no_uidl, self.bare_lf, self.no_capa = 0.0, False, False, False
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
        """Append a message (seen by sessions that log in later); returns its uidl.

        Without ``uidl`` the ``uidl_for`` hook names it, else a unique
        generated one does. A UIDL that is already on the server is allowed.
        """
        raw = bytes(raw)
        if uidl is None and self.uidl_for is not None:
            uidl = self.uidl_for(raw)
        with self._lock:
            self._counter += 1
            if uidl is None:
                digest = hashlib.sha256(raw).hexdigest()[:16]
                uidl = f"fake{self._counter:06d}-{digest}"
            self._messages.append(Message(uidl, raw))
        return uidl

    def remove_message(self, which: str | int) -> tuple[str, bytes]:
        """Remove one message now, as another client's DELE and QUIT would; returns it.

        ``which`` is a UIDL (the first message that has it) or an index into
        :attr:`mailbox` (0-based; the way to pick one of repeated UIDLs). Later
        sessions no longer see it; live sessions keep its number and answer
        by ``vanished``. It is not added to :attr:`deleted`, which holds only
        this server's own DELE and QUIT. Raises KeyError or IndexError.
        """
        with self._lock:
            if isinstance(which, str):
                found = [i for i, m in enumerate(self._messages) if m.uidl == which]
                if not found:
                    raise KeyError(which)
                index = found[0]
            elif 0 <= which < len(self._messages):
                index = which
            else:
                raise IndexError(f"no message at index {which}, {len(self._messages)} on server")
            message = self._messages.pop(index)
            message.removed = True
        return message.uidl, message.raw

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
    def downloaded(self) -> list[str]:
        """Uidls of the messages RETRed in a session that ended with QUIT, in that order.

        Kept whether or not the server has a ``window``; only a server with
        one stops offering them. A message is named once, however often it
        was retrieved.
        """
        with self._lock:
            return list(self._downloaded)

    @property
    def offered(self) -> list[tuple[str, bytes]]:
        """What a session logging in now would list: (uidl, raw) in order.

        The whole :attr:`mailbox` without a ``window``; with one, its oldest
        ``window`` messages not yet :attr:`downloaded`.
        """
        with self._lock:
            return [(m.uidl, m.raw) for m in self._offer()]

    @property
    def commands(self) -> list[str]:
        """Every command line received, all sessions, without its line end."""
        with self._lock:
            return list(self._commands)

    @property
    def max_commands_in_flight(self) -> int:
        """The most commands one session had received and not yet answered, at any moment.

        Looked at each time a session starts on a command: that command and
        every complete command line after it that the server host has
        received (read by the session or waiting in the socket; on TLS
        connections only what was read). 1 for a client that waits for each
        answer before it sends the next command (RFC 1939); more for one that
        pipelines (RFC 2449 section 6.6). Never more than the client had in
        flight itself: a line received before the answer to an earlier
        command was sent is one the client sent before it had that answer.
        The maximum over every session so far; 0 before any command.
        """
        with self._lock:
            return self._max_in_flight

    @property
    def max_in_flight_by_verb(self) -> dict[str, int]:
        """Like :attr:`max_commands_in_flight`, per verb: ``{"RETR": 8, "DELE": 5, ...}``.

        The most commands of that verb (upper case) among those in flight at
        one moment; verbs never received are absent.
        """
        with self._lock:
            return dict(self._max_in_flight_by_verb)

    @property
    def sessions(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return self._sessions

    @property
    def holds_lock(self) -> bool:
        """Whether a session holds the exclusive maildrop lock (RFC 1939 section 4) now.

        Always False with ``exclusive_lock=False``; see :attr:`in_transaction`.
        """
        with self._lock:
            return self._holder is not None

    @property
    def in_transaction(self) -> int:
        """How many sessions are in the TRANSACTION state now (logged in, no QUIT yet)."""
        with self._lock:
            return len(self._transacting)

    @property
    def logins(self) -> list[tuple[int, str]]:
        """``(session, method)`` of each login: ``"USER"``, ``"APOP"`` or a SASL mechanism."""
        with self._lock:
            return list(self._logins)

    @property
    def utf8_sessions(self) -> dict[int, bool]:
        """Sessions that sent UTF8 (RFC 6856): session number -> whether it got ``+OK``."""
        with self._lock:
            return dict(self._utf8)

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
        self._add_rule(_Rule(verb.upper(), response, _times(times), _wanted(arg)))

    def reply_with(
        self,
        verb: str,
        text_template: str,
        *,
        times: int | None = None,
        arg: str | None = None,
        carry_out: bool = False,
    ) -> None:
        """Answer ``verb`` with one line made from ``text_template``.

        Every ``{arg}`` becomes the command's argument exactly as received
        (for PASS, the password), every ``{username}`` and ``{password}`` this
        server's; other braces stay as they are. ``+OK``/``-ERR`` or anything
        else is up to the template; CRLF is added. Without ``carry_out`` the
        command is not carried out (like :meth:`fail_command`); with it, it
        is, and only its reply is replaced (so ``reply_with("PASS", "+OK
        PASSWORD-WAS {arg}", carry_out=True)`` logs in and echoes the
        password). ``times`` and ``arg`` as in :meth:`fail_command`.
        """
        rule = _Rule(verb.upper(), text_template, _times(times), _wanted(arg))
        rule.template, rule.carry_out = True, carry_out
        self._add_rule(rule)

    def stream_reply(
        self,
        verb: str,
        chunks: Callable[[], Iterable[bytes]],
        *,
        delay: float = 0.0,
        times: int | None = None,
        arg: str | None = None,
    ) -> None:
        """Answer ``verb`` with the octets ``chunks()`` yields, sent as they are produced.

        ``chunks`` is called once per reply, so each gets a fresh iterator; an
        endless generator makes an endless reply. The stream holds the whole
        reply, status line included (e.g. ``b"+OK\\r\\n"`` first), sent exactly
        as produced: ``rewrite_reply``, ``bare_lf``, ``delay`` and
        :meth:`hang_on` do not apply to it, :meth:`cut_after` does. Each chunk
        is sent after ``delay`` seconds (``delay=2.0``, one line per chunk: a
        server that drips a line every 2 s). The command is not carried out.
        The reply ends when the iterator does (the session then reads the
        next command), when the client closes (a send fails), or at
        :meth:`stop`, which wakes a waiting or blocked stream at once.
        ``"GREETING"`` streams the greeting. ``times`` and ``arg`` as in
        :meth:`fail_command`.
        """
        if delay < 0:
            raise ValueError("delay must not be negative")
        stream = Stream(chunks, float(delay))
        self._add_rule(_Rule(verb.upper(), stream, _times(times), _wanted(arg)))

    def _add_rule(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def cut_after(self, octets: int) -> None:
        """Close each later session's connection once it has sent ``octets`` octets.

        Commands are carried out before their answer is cut: a QUIT whose
        ``+OK`` is lost has still deleted.
        """
        if octets < 0:
            raise ValueError("octets must not be negative")
        with self._lock:
            self._cut = octets

    def cut_reply(
        self, verb: str, after_octets: int = 0, *, nth: int = 1, times: int | None = 1
    ) -> None:
        """Close the connection after ``after_octets`` octets of the reply to the ``nth`` ``verb``.

        ``nth`` counts that verb's commands in each session (1-based), so
        ``cut_reply("RETR", 100, nth=5)`` drops the line in the middle of the
        fifth RETR's reply, however many octets the session sent before it
        and in whatever order a pipelining client sent its commands. The
        command is carried out first (as with :meth:`cut_after`). ``times``
        is how many sessions are cut (default one; None: every session until
        :meth:`clear_faults`). An ``after_octets`` past the reply's end cuts
        nothing in it.
        """
        if after_octets < 0:
            raise ValueError("after_octets must not be negative")
        if nth < 1:
            raise ValueError("nth must be at least 1")
        with self._lock:
            self._reply_cuts.append(_ReplyCut(verb.upper(), nth, after_octets, _times(times)))

    def hang_on(self, verb: str, after_octets: int = 0) -> None:
        """Stop responding (socket left open) after ``after_octets`` of ``verb``'s answer.

        The command is carried out first. The hang lasts until the client
        closes or the server stops.
        """
        if after_octets < 0:
            raise ValueError("after_octets must not be negative")
        with self._lock:
            self._hangs[verb.upper()] = after_octets

    def on_command(
        self,
        verb: str,
        callback: Callable[[int, str], None],
        *,
        times: int | None = None,
    ) -> None:
        """Call ``callback(session, arg)`` each time ``verb`` is received.

        It runs in the session's thread before the command is carried out (and
        before :meth:`fail_command` applies), so the client waits for its
        answer meanwhile: e.g. ``srv.on_command("RETR", lambda s, a:
        srv.remove_message(0), times=1)`` is another client deleting message 1
        just as the first RETR arrives. ``session`` is the 1-based connection
        number, ``arg`` the rest of the line. ``times`` limits how often
        (default: until :meth:`clear_faults`). What it raises ends the session
        and is re-raised by :meth:`stop`, except OSError, which counts as the
        client leaving.
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._command_hooks.append(_CommandHook(verb.upper(), callback, times))

    def clear_faults(self) -> None:
        """Forget every fault, quirk and :meth:`on_command` callback.

        The constructor's hooks and settings (``serve``, ``rewrite_reply``,
        ``exclusive_lock``, ...) stay: they are what kind of server this is.
        """
        with self._lock:
            self._rules = []
            self._command_hooks = []
            self._cut = None
            self._reply_cuts = []
            self._hangs = {}
        self.delay = 0.0
        self.no_uidl = False
        self.bare_lf = False
        self.no_capa = False
        self.wrong_scram_signature = False

    # -- for the sessions (private to this package) -------------------------

    def _take_fault(self, verb: str, arg: str) -> Scripted | None:
        """The scripted reply for this command, if a rule applies (counts it)."""
        with self._lock:
            rule = next((r for r in self._rules if r.matches(verb, " ".join(arg.split()))), None)
            if rule is None:
                return None
            if rule.times is not None:
                rule.times -= 1
                if rule.times == 0:
                    self._rules.remove(rule)
        reply = rule.reply
        if rule.template and isinstance(reply, str):
            reply = (
                reply.replace("{arg}", arg)
                .replace("{username}", self.username)
                .replace("{password}", self.password)
            )
        return Scripted(reply, carry_out=rule.carry_out)

    def _hang_point(self, verb: str) -> int | None:
        """Octets of ``verb``'s answer to send before hanging, or None."""
        with self._lock:
            return self._hangs.get(verb)

    def _cut_point(self) -> int | None:
        """Octets a session may send before the connection is cut, or None."""
        with self._lock:
            return self._cut

    def _reply_cut_point(self, verb: str, count: int) -> int | None:
        """Octets of the reply to this session's ``count``-th ``verb`` before the cut, or None."""
        with self._lock:
            cut = next((c for c in self._reply_cuts if (c.verb, c.nth) == (verb, count)), None)
            if cut is None:
                return None
            if cut.times is not None:
                cut.times -= 1
                if cut.times == 0:
                    self._reply_cuts.remove(cut)
            return cut.after_octets

    def _note_in_flight(self, verbs: Sequence[str]) -> None:
        """Keep the maxima for :attr:`max_commands_in_flight` and :attr:`max_in_flight_by_verb`."""
        counts: dict[str, int] = {}
        for verb in verbs:
            counts[verb] = counts.get(verb, 0) + 1
        with self._lock:
            self._max_in_flight = max(self._max_in_flight, len(verbs))
            for verb, count in counts.items():
                best = self._max_in_flight_by_verb.get(verb, 0)
                self._max_in_flight_by_verb[verb] = max(best, count)

    def _record(self, line: str) -> None:
        """Keep a received command line for :attr:`commands`."""
        with self._lock:
            self._commands.append(line)

    def _before_command(self, session: int, verb: str, arg: str) -> None:
        """Run the :meth:`on_command` callbacks for this command (outside the lock)."""
        with self._lock:
            due = [hook for hook in self._command_hooks if hook.verb == verb]
            for hook in due:
                if hook.times is not None:
                    hook.times -= 1
                    if hook.times == 0:
                        self._command_hooks.remove(hook)
        for hook in due:
            hook.callback(session, arg)

    def _note_utf8(self, session: int, *, accepted: bool) -> None:
        """Keep for :attr:`utf8_sessions` that ``session`` sent UTF8 (and its outcome)."""
        with self._lock:
            self._utf8[session] = accepted or self._utf8.get(session, False)

    def _rewrite(self, verb: str, reply: bytes) -> bytes:
        """The octets to send for ``reply``: the ``rewrite_reply`` hook's, if any."""
        hook = self.rewrite_reply
        return reply if hook is None else hook(verb, reply)

    def _listed_size(self, message: Message) -> int:
        """The size LIST and STAT report for ``message`` (RFC 1939 section 5)."""
        hook = self.list_size
        return len(message.raw) if hook is None else hook(message.raw)

    def _content(self, message: Message, number: int, session: int, *, utf8: bool) -> bytes:
        """The message RETR sends and TOP cuts: the ``serve`` hook's, else the stored one."""
        hook = self.serve
        if hook is None:
            return message.raw
        return hook(Served(message.raw, message.uidl, number, utf8, session))

    def _is_removed(self, message: Message) -> bool:
        """Whether ``message`` left the mailbox (another client, or a QUIT) since a snapshot."""
        with self._lock:
            return message.removed

    def _lock_maildrop(self, session: Session) -> list[Message] | None:
        """Let ``session`` into TRANSACTION with a snapshot; None if the maildrop is locked.

        RFC 1939 section 4: the server locks the maildrop for one session
        unless ``exclusive_lock`` is off, as on servers that allow several.
        """
        with self._lock:
            if self._holder is not None:
                return None
            if self.exclusive_lock:
                self._holder = session
            self._transacting.add(session)
            return self._offer()

    def _offer(self) -> list[Message]:
        """The messages a session gets as its snapshot (call with the lock held)."""
        if self.window is None:
            return list(self._messages)
        waiting = (message for message in self._messages if not message.downloaded)
        return list(itertools.islice(waiting, self.window))

    def _release_maildrop(
        self,
        session: Session,
        expunge: Sequence[Message] = (),
        *,
        downloaded: Sequence[Message] = (),
    ) -> None:
        """Release the lock; remove ``expunge`` and note ``downloaded`` (UPDATE after QUIT).

        A message another session or client removed meanwhile is skipped: it
        is gone already, and was not deleted by this session.
        """
        with self._lock:
            if session not in self._transacting:
                return
            self._transacting.discard(session)
            if self._holder is session:
                self._holder = None
            for message in downloaded:
                if not message.downloaded:
                    message.downloaded = True
                    self._downloaded.append(message.uidl)
            for message in expunge:
                if not message.removed:
                    message.removed = True
                    self._messages = [m for m in self._messages if m is not message]
                    self._deleted.append(message.uidl)

    def _capability_lines(self, *, offer_stls: bool, tls: bool = False) -> list[str]:
        """The CAPA listing (RFC 2449 section 5) for a session in this state."""
        if self.capabilities is not None:
            lines = list(self.capabilities)
        else:
            lines = [c for c in DEFAULT_CAPABILITIES if not (self.no_uidl and c == "UIDL")]
            if self.window is not None:
                lines = [_HIDES_RETRIEVED if c == _KEEPS_RETRIEVED else c for c in lines]
        if offer_stls and "STLS" not in lines:
            lines.append("STLS")
        offer = self._sasl_offer(tls=tls)
        if offer:
            # RFC 2449 section 6.3: one SASL line naming every mechanism.
            lines = [line for line in lines if line.split()[:1] != ["SASL"]]
            lines.append("SASL " + " ".join(offer))
        return lines

    def _sasl_offer(self, *, tls: bool) -> tuple[str, ...]:
        """The SASL mechanisms on offer to a session (over TLS or not)."""
        clear_text = self.stls_context is not None and not tls
        if clear_text and self.sasl_before_stls is not None:
            return self.sasl_before_stls
        return self.sasl

    def _sasl_exchange(self, challenge: Callable[[bytes], bytes]) -> Exchange:
        """The server side's settings for one AUTH exchange of a session."""
        return Exchange(
            challenge=challenge,
            username=self.username,
            password=self.password,
            check_token=self._token_is_good,
            wrong_scram_signature=self.wrong_scram_signature,
            xoauth2_error=self.xoauth2_error,
            oauthbearer_error=self.oauthbearer_error,
            refusal=self.login_refusal,
        )

    def _token_is_good(self, user: str, token: str) -> bool:
        if self.check_token is not None:
            return self.check_token(user, token)
        return self.token is not None and (user, token) == (self.username, self.token)

    def _note_login(self, session: int, method: str) -> None:
        """Keep for :attr:`logins` that ``session`` logged in by ``method``."""
        with self._lock:
            self._logins.append((session, method))

    def _offers_capa(self) -> bool:
        """Whether CAPA is answered at all (RFC 2449) right now."""
        return self.capa and not self.no_capa

    def _offers_utf8(self) -> bool:
        """Whether the CAPA lines on offer name UTF8 (RFC 6856 section 3)."""
        if not self._offers_capa():
            return False
        lines = self._capability_lines(offer_stls=False)
        return any(line.split()[:1] == ["UTF8"] for line in lines)

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
        with self._lock:
            self._sessions += 1
            session = Session(self, conn, self._sessions)
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
