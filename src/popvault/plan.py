"""What one session will do: the server's listing matched to the ledger, and the RETRs to make.

:func:`plan_session` reads UIDL and LIST (plain lines parsed in bulk, a bad
line skipped and reported), matches the listing to the ledger's rows
(:mod:`popvault.identity`) and returns a :class:`Session`: the frozen view of
the server, plus the few facts the run learns as it goes (which messages it
saw to be their rows, which are retrieved but not durable yet).
:func:`may_offer_more` says, once a session is over, whether the server may
list more to a new one (a server that hands out a window of the mailbox).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from operator import itemgetter
from typing import TypeVar

from popvault.config import Account
from popvault.errors import RemoteProtocolError, ServerError
from popvault.gcpause import cyclic_gc_paused
from popvault.identity import Listed, ServerView, identify
from popvault.ledger import ImportedMessage, KnownRow, Ledger, MessageKey
from popvault.pop3.client import Pop3Client
from popvault.pop3.listing import BATCH_LINES, list_entries, uidl_entries
from popvault.pop3.parsing import parse_list_line, parse_uidl_entry
from popvault.redaction import redact

log = logging.getLogger("popvault.sync")

# Runs in which one message may fail on its own before it is set aside: enough
# to ride out a server that was still storing it, few enough that one broken
# message does not fail every run for long.
MAX_ATTEMPTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class PlannedMessage:
    """A message to RETR: one the ledger does not have, or one whose content to check.

    ``key`` is the ledger key it is archived under; ``candidates`` are
    archived rows it may turn out to be by content (then it is not stored
    again); ``verify`` marks a RETR made only to check, before a DELE, that
    the server's message is the archived one.
    """

    number: int
    uidl: str
    size: int
    key: MessageKey | None = None
    candidates: tuple[KnownRow, ...] = ()
    verify: bool = False
    # False when LIST did not name the message (its size is then unknown).
    size_listed: bool = True

    @property
    def ledger_key(self) -> MessageKey:
        """The key this message is recorded under."""
        return self.key if self.key is not None else MessageKey(self.uidl)


@dataclass
class Session:
    """One session's view of the server, and what the run learnt of it so far.

    ``view``, ``numbers`` (ledger key -> message number) and ``sizes``
    (number -> LIST size) describe the server as listed. ``verified`` holds
    the numbers whose content this session saw to be their key's row;
    ``undurable`` those whose RETR succeeded but which are not durably
    archived yet (while any is there the session must not end with QUIT);
    ``spare`` the next free occurrence per shared UIDL, for a message found
    new late.
    """

    view: ServerView = field(default_factory=lambda: ServerView(messages=()))
    numbers: dict[MessageKey, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    spare: dict[str, int] = field(default_factory=dict)
    verified: set[int] = field(default_factory=set)
    undurable: set[int] = field(default_factory=set)
    # Problems of the run found while listing: "a line ... was skipped: ...".
    problems: list[str] = field(default_factory=list)
    # Keys that failed in earlier runs (as the session began): fetched last.
    failing: frozenset[MessageKey] = frozenset()
    on_server: int = 0
    # Listed messages another tool retrieved before popvault (``popvault
    # import``), by UIDL: never fetched, deleted only where the import allowed it.
    imported: dict[str, ImportedMessage] = field(default_factory=dict)


def plan_session(
    client: Pop3Client,
    ledger: Ledger,
    account: Account,
    *,
    reconcile_at: datetime | None,
    retry_failed: bool,
) -> tuple[Session, list[PlannedMessage]]:
    """UIDL + LIST, matched to the ledger's rows: the session and the messages to fetch.

    ``reconcile_at`` (a datetime, or None for a dry run) is when rows of
    messages no longer listed are marked gone.
    """
    with cyclic_gc_paused():  # a few objects per listed message: popvault.gcpause
        return _plan_session(
            client, ledger, account, reconcile_at=reconcile_at, retry_failed=retry_failed
        )


def _plan_session(
    client: Pop3Client,
    ledger: Ledger,
    account: Account,
    *,
    reconcile_at: datetime | None,
    retry_failed: bool,
) -> tuple[Session, list[PlannedMessage]]:
    name = account.name
    session = Session()
    client.prefetch_listings()
    listing = _uidl_listing(client, account, session)
    session.sizes = sizes = dict(
        _listing(
            client.list_lines(),
            bulk=list_entries,
            parse=parse_list_line,
            verb="LIST",
            account=account,
            session=session,
        )
    )
    _check_listings_agree(listing, sizes, account, session)
    session.on_server = len(listing)
    uidls = list(dict.fromkeys(uidl for _, uidl in listing))
    rows = ledger.known_rows(name, uidls)
    session.view = identify(listing, sizes, rows, trust_sizes=account.trust_list_sizes)
    session.numbers = {message.key: message.number for message in session.view.messages}
    session.spare = _spare_occurrences(session.view, rows)
    if reconcile_at is not None:
        # What vanished since the last session: deleted by us (a lost QUIT
        # reply) or taken by another client.
        ledger.reconcile(name, session.view.keys_on_server, now=reconcile_at)
    # A message paired with no row is one the ledger has never recorded (identify
    # gives every other one its row, pending or archived): fetch it, unless
    # another tool retrieved it before popvault (imported: archived elsewhere)
    # or it failed MAX_ATTEMPTS times and is set aside.
    new = [message for message in session.view.messages if message.row is None]
    session.imported = imported = ledger.imported_among(name, [message.uidl for message in new])
    failures = ledger.failures(name)
    session.failing = frozenset(failure.key for failure in failures)
    set_aside = set() if retry_failed else {f.key for f in failures if f.attempts >= MAX_ATTEMPTS}
    # RETR in message order (the listing's): servers read their mailbox front to back.
    planned = [
        _planned(message, sizes)
        for message in new
        if message.key not in set_aside and message.uidl not in imported
    ]
    return session, planned


@dataclass(frozen=True)
class SessionEnd:
    """What one session of a run did, as far as another session could find more.

    ``quit``: it ended with ``QUIT`` (so the server counts what it retrieved
    as downloaded); ``troubled``: a problem of the run came up in it (a
    listing line, a message, a ``DELE``) or it was stopped early; ``planned``:
    the new messages it set out to fetch; ``sizes``: its listing's LIST sizes
    in order; ``capabilities``: the server's CAPA after login; ``first``: the
    key of the first message it planned (None: none).
    """

    quit: bool
    troubled: bool
    planned: int
    sizes: tuple[int, ...]
    capabilities: Mapping[str, Sequence[str]]
    first: MessageKey | None = None


def may_offer_more(end: SessionEnd) -> bool:
    """Whether the server may list new messages to a new session after ``end``.

    Gmail's POP3 lists only about 250 of the oldest messages not yet
    downloaded, a message counting as downloaded once it was retrieved in a
    session ended by ``QUIT``. A session after which a server may have more
    to offer is one that

    * ended with ``QUIT`` and had no trouble, so every message it planned was
      archived (a problem, a stop, a lost lease or a session dropped without
      ``QUIT`` ends the run's sessions: the next run goes on);
    * planned at least one message: a session with nothing new to fetch ends
      them too (the window has moved on as far as it goes); and
    * on a server that says ``EXPIRE 0`` (RFC 2449 section 6.7): retrieved
      messages are not kept on offer, so the messages this session retrieved
      have made room for others. Gmail says so. A server that says nothing,
      ``EXPIRE NEVER`` or ``EXPIRE n`` lists the retrieved messages again (a
      second session would only repeat the first one's listing: one more
      login on every run with new mail, for nothing), and one that hides
      them anyway without saying so is drained one window a run, as before.

    Messages of the listing that the ledger has already do not count against
    it: on such a server they are ones an earlier session retrieved and could
    not end with ``QUIT`` (a crash, a lost lease), which stay in the window.
    Gmail also says ``LOGIN-DELAY 300``, which it does not enforce: a server
    that refuses the next login with ``[LOGIN-DELAY]`` ends the run's
    sessions quietly (sync.py).
    """
    if not end.quit or end.troubled or end.planned == 0:
        return False
    return _count(end.capabilities, "EXPIRE") == 0


def look_alike(before: SessionEnd, session: Session) -> MessageKey | None:
    """``before``'s first message when a later session's listing looks like ``before``'s.

    As many messages of exactly the same sizes, and again none of them known:
    either the next window of a mailbox of look-alike messages (notices that
    differ only in a fixed-width number), or a server that renames its
    messages in every session (RFC 1939 section 7 forbids it), which would
    have the run store every message again, once per session. The caller
    tells the two apart by content: the first message of each (see sync.py).
    None when the listings differ (or ``before`` planned nothing).
    """
    if before.sizes != listed_sizes(session) or not _all_new(session):
        return None
    return before.first


def session_end(
    session: Session,
    planned: Sequence[PlannedMessage],
    *,
    quit: bool,
    troubled: bool,
    capabilities: Mapping[str, Sequence[str]],
) -> SessionEnd:
    """The :class:`SessionEnd` of a session whose listing is ``session``."""
    return SessionEnd(
        quit=quit,
        troubled=troubled,
        planned=len(planned),
        sizes=listed_sizes(session),
        capabilities=capabilities,
        first=planned[0].ledger_key if planned else None,
    )


def listed_sizes(session: Session) -> tuple[int, ...]:
    """The session's LIST sizes in listing order (-1 for a message LIST did not name)."""
    return tuple(session.sizes.get(message.number, -1) for message in session.view.messages)


def _all_new(session: Session) -> bool:
    """Whether no message the session listed had a ledger row (pending or archived)."""
    return all(message.row is None for message in session.view.messages)


def _count(capabilities: Mapping[str, Sequence[str]], name: str) -> int | None:
    """A capability's first argument as a count (days, seconds); None when it is not one."""
    arguments = capabilities.get(name)
    first = arguments[0] if arguments else ""
    return int(first) if first.isascii() and first.isdigit() else None


def verifications(session: Session, due: Iterable[MessageKey]) -> list[PlannedMessage]:
    """RETRs that check, before a DELE, the content of due messages under shared UIDLs."""
    checks = []
    for key in due:
        number = session.numbers[key]
        listed = session.view.by_number.get(number)
        if listed is None or listed.certain or number in session.verified:
            continue
        checks.append(_verification(listed, session.view, session.sizes))
    return checks


def _check_listings_agree(
    listing: Sequence[tuple[int, str]], sizes: dict[int, int], account: Account, session: Session
) -> None:
    """UIDL and LIST must name the same message numbers (RFC 1939 sections 5 and 7).

    A message LIST names and UIDL does not cannot be archived (nothing
    would recognise it next time): it is a problem of the run, never a
    silent skip. A message UIDL names and LIST does not is archived, but
    its size cannot be checked, so its server copy is held.
    """
    numbered = {number for number, _ in listing}
    for number in sorted(set(sizes) - numbered):
        problem = (
            f"message {number}: in the server's LIST but not in its UIDL listing; "
            "not archived (the server's listings disagree)"
        )
        log.warning("account %r: %s", account.name, problem)
        session.problems.append(problem)


def _uidl_listing(client: Pop3Client, account: Account, session: Session) -> list[tuple[int, str]]:
    """The UIDL listing, each line parsed on its own (see :func:`_listing`)."""
    try:
        return _listing(
            client.uidl_lines(),
            bulk=uidl_entries,
            parse=parse_uidl_entry,
            verb="UIDL",
            account=account,
            session=session,
        )
    except ServerError as exc:
        raise RemoteProtocolError(
            f"the server refused UIDL ({exc.text!r}); popvault needs unique ids "
            "(RFC 1939 section 7) to archive incrementally",
            account=account.name,
        ) from exc


def _listing(
    lines: Iterable[bytes],
    *,
    bulk: Callable[[Sequence[bytes]], list[tuple[int, T]] | None],
    parse: Callable[[bytes], tuple[int, T]],
    verb: str,
    account: Account,
    session: Session,
) -> list[tuple[int, T]]:
    """A listing whose bad lines are skipped, each with a warning and a run problem.

    One malformed line (a negative size, a line without a number, a number
    listed twice) must not fail the whole account on every run: that one
    message is left out — which the check that UIDL and LIST agree then
    names — and the rest of the mailbox is archived. Lines come in batches
    of BATCH_LINES; a batch whose every line ``bulk`` reads (see
    :mod:`popvault.pop3.listing`) and whose numbers are all new is taken at
    once, any other one line by line with ``parse``: the same entries and
    problems either way, and only a batch of lines held at a time.
    """
    entries: list[tuple[int, T]] = []
    seen: set[int] = set()
    remaining = iter(lines)
    while batch := list(islice(remaining, BATCH_LINES)):
        parsed = bulk(batch)
        if parsed is not None:
            numbers = set(map(itemgetter(0), parsed))
            if len(numbers) == len(parsed) and seen.isdisjoint(numbers):
                seen |= numbers
                entries += parsed
                continue
        _add_lines(entries, seen, batch, parse=parse, verb=verb, account=account, session=session)
    return entries


def _add_lines(
    entries: list[tuple[int, T]],
    seen: set[int],
    lines: Iterable[bytes],
    *,
    parse: Callable[[bytes], tuple[int, T]],
    verb: str,
    account: Account,
    session: Session,
) -> None:
    """Parse ``lines`` one by one into ``entries``, skipping (and reporting) bad ones."""
    for line in lines:
        try:
            number, value = parse(line)
        except RemoteProtocolError as exc:
            _bad_listing_line(verb, exc.message, account, session)
            continue
        if number in seen:
            _bad_listing_line(verb, f"message number {number} listed twice", account, session)
            continue
        seen.add(number)
        entries.append((number, value))


def _bad_listing_line(verb: str, problem: str, account: Account, session: Session) -> None:
    text = f"a line of the server's {verb} listing was skipped: {redact(problem)}"
    log.warning("account %r: %s", account.name, text)
    session.problems.append(text)


def _planned(message: Listed, sizes: dict[int, int]) -> PlannedMessage:
    return PlannedMessage(
        message.number,
        message.uidl,
        sizes.get(message.number, 0),
        key=message.key,
        candidates=message.candidates,
        size_listed=message.number in sizes,
    )


def _verification(listed: Listed, view: ServerView, sizes: dict[int, int]) -> PlannedMessage:
    """A content check of a message paired with its row by size and order only.

    The paired row comes first among the candidates; the other archived rows
    of its UIDL follow, so that a message that is another of them is known.
    """
    assert listed.row is not None  # noqa: S101 - only paired messages are uncertain
    others = [
        message.row
        for message in view.messages
        if message.uidl == listed.uidl and message.row is not None and message is not listed
    ]
    rows = tuple(row for row in (listed.row, *others) if row.state == "archived")
    return PlannedMessage(
        listed.number,
        listed.uidl,
        sizes.get(listed.number, 0),
        key=listed.key,
        candidates=rows,
        verify=True,
    )


def _spare_occurrences(view: ServerView, rows: Mapping[str, Sequence[KnownRow]]) -> dict[str, int]:
    """Per listed UIDL, the first occurrence that no row and no listed key uses."""
    taken: dict[str, int] = {}
    for message in view.messages:
        known = (row.occurrence for row in rows.get(message.uidl, ()))
        taken[message.uidl] = max(taken.get(message.uidl, 0), message.key.occurrence, *known)
    return {uidl: highest + 1 for uidl, highest in taken.items()}
