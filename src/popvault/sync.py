"""One account's archive run: connect, list, diff against the ledger, fetch, record.

Plain orchestration over the POP3 client, the store and the ledger facade; the
interesting rules live here as comments next to the code that keeps them:

* A message is recorded in the ledger only after its file is sealed (fsynced in
  the store's temp area) — first as *pending* with its final path, then as
  *archived* once the file is published under that path and its folder
  fsynced. A crash anywhere leaves either nothing, a temp file (cleaned up
  later), or a pending row whose file is or is not at its final path; the next
  run settles pending rows before it lists the server, so a file that was
  written but not recorded never becomes a second copy.
* The session ends with ``QUIT`` only when every message whose ``RETR``
  succeeded is durably archived. Some providers (Gmail's POP3) hide every
  message that was retrieved once the session ends with ``QUIT``, deleted or
  not; dropping the connection instead keeps them on offer for the next run.
* A server copy is deleted (``DELE``) only when the ledger says the message was
  archived, that ledger commit has completed, and its file is in the archive
  with the recorded size — and only in a session in which every retrieved
  message is durable. Deletions take effect at ``QUIT`` (RFC 1939 section 6):
  the ledger notes the request before ``QUIT`` and the deletion after its
  ``+OK``; when the reply is lost, the next session's UIDL list tells.
* A message that fails on its own (the server refuses it, or hands out a
  truncated body) is counted; after :data:`MAX_ATTEMPTS` runs it is set aside
  so the rest of the mailbox keeps being archived, until ``--retry-failed``.
* A message whose octets exceed its LIST size by more than the final CRLF a
  server may add is archived as received and *held*: its server copy is never
  deleted until the user releases it, since the server may have handed out a
  stand-in (a server offering RFC 6856 UTF8 does that to clients that did not
  enable it). ``trust_list_sizes = false`` turns the size checks off.
* Messages are matched to ledger rows by :mod:`popvault.identity`: two
  messages under one UIDL are two rows, and a server copy under a shared UIDL
  is deleted only once its content was seen to be the archived one.
* A server that hands out a window of the mailbox (Gmail's POP3 lists about
  250 of the oldest messages not yet downloaded) gets another session while
  the last one may have left it more to offer (:func:`~popvault.plan.may_offer_more`
  says when), up to the account's ``max_sessions_per_run``. Each session
  keeps every rule above on its own: it ends with ``QUIT`` only once its
  messages are durable, and looks at the lease before its ``DELE`` and its
  ``QUIT``. The run has one run record, with the totals of all its sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from popvault.archive_check import refuse_unknown_archive
from popvault.config import Account, Config, Retention
from popvault.errors import AuthError, InUseError, LeaseLost, LoginDelayError, PopvaultError
from popvault.fetch import (
    OVERRUN_FLOOR,
    Fetcher,
    IncompleteMessage,
    OversizedMessage,
    Progress,
    Tally,
    TooLargeToFetch,
    settle_pending,
)
from popvault.ledger import AccountHold, LeaseTerms, Ledger, MessageKey, RetainedMessage
from popvault.plan import (
    MAX_ATTEMPTS,
    PlannedMessage,
    Session,
    SessionEnd,
    look_alike,
    may_offer_more,
    plan_session,
    session_end,
    verifications,
)
from popvault.pop3.client import Pop3Client
from popvault.pop3.pace import Limits
from popvault.redaction import install_log_redaction, redact
from popvault.retention import is_due
from popvault.signin import Credentials, credentials
from popvault.store import Store, open_store

__all__ = [
    "MAX_ATTEMPTS",
    "OVERRUN_FLOOR",
    "IncompleteMessage",
    "OversizedMessage",
    "PlannedMessage",
    "Progress",
    "RunOptions",
    "RunResult",
    "TooLargeToFetch",
    "choose_deletions",
    "settle_pending",
    "sync_account",
    "sync_accounts",
    "utc_now",
]

log = logging.getLogger("popvault.sync")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock as an aware UTC datetime (the default clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunOptions:
    """How a run goes, the same for every account of it (see :func:`sync_account`)."""

    dry_run: bool = False
    retry_failed: bool = False
    archive_again: bool = False
    clock: Clock = utc_now
    progress: Progress | None = None
    stop: Callable[[], bool] | None = None
    # The account's hold, already claimed by a daemon from the shared schedule
    # (ledger/dispatch.py): the run uses it and leaves its release to the daemon.
    claimed: AccountHold | None = None


@dataclass
class RunResult:
    """What one account's run did; ``error`` is None when it succeeded."""

    account: str
    started_at: datetime
    ended_at: datetime | None = None
    # How many messages the server listed (in the run's last session with a
    # listing); None until it did (unknown, not 0).
    on_server: int | None = None
    # The messages to fetch, of every session (a dry run has one session).
    planned: list[PlannedMessage] = field(default_factory=list)
    messages: int = 0
    octets: int = 0
    recovered: int = 0
    due_for_deletion: list[RetainedMessage] = field(default_factory=list)
    # UIDLs archived elsewhere (``popvault import --allow-delete``) due for deletion.
    imported_due: list[str] = field(default_factory=list)
    # Deleted in every session of the run; of them, deleted_earlier by the
    # sessions before the one on_server counts (its listing no longer had them).
    deleted: int = 0
    deleted_earlier: int = 0
    # Sessions the run logged in to (0: none; more than 1 with a server that
    # hands out a window of the mailbox, see may_offer_more).
    sessions: int = 0
    set_aside: list[str] = field(default_factory=list)
    # Messages archived in this run whose server copies are held: "message N: why".
    held: list[str] = field(default_factory=list)
    error: str | None = None
    message_errors: list[str] = field(default_factory=list)
    # The exception that failed the run (for the daemon's choice of backoff).
    exception: BaseException | None = None
    # The server's capabilities after login (RFC 2449: LOGIN-DELAY, EXPIRE, ...).
    capabilities: dict[str, list[str]] = field(default_factory=dict)
    # True when ``stop`` ended the run early; what was fetched is durable.
    interrupted: bool = False

    @property
    def listed(self) -> bool:
        """Whether the run got as far as the server's listing."""
        return self.on_server is not None

    @property
    def ok(self) -> bool:
        """True when the run archived everything it set out to."""
        return self.error is None

    @property
    def left_on_server(self) -> int | None:
        """Messages on the server once the run's deletions took effect (None: unknown).

        What the ledger records and ``status`` shows: a run that deleted all 200
        leaves 0, not the 200 it listed. Of a run of several sessions, what
        its last listing showed less what that session deleted.
        """
        if self.on_server is None:
            return None
        return max(0, self.on_server - (self.deleted - self.deleted_earlier))


def sync_account(
    config: Config,
    account: Account,
    ledger: Ledger,
    *,
    dry_run: bool = False,
    retry_failed: bool = False,
    clock: Clock = utc_now,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    archive_again: bool = False,
    claimed: AccountHold | None = None,
) -> RunResult:
    """Archive one account's new messages; never raises for a failure of the account.

    Every failure is caught, logged and returned in :attr:`RunResult.error`
    (and recorded in the ledger's run row), so that one account's trouble never
    stops the others. ``dry_run`` lists what would be fetched and deleted and
    changes nothing: no file, no ledger row, no ``DELE``. ``retry_failed``
    tries the messages that were set aside again. ``stop`` is asked before each
    message: once it answers True the run fetches nothing more, deletes nothing,
    and ends the session cleanly with QUIT (a daemon shutting down).
    ``archive_again`` archives even into an account folder whose files the
    ledger does not know (:mod:`popvault.archive_check`), accepting duplicates.
    ``claimed``: the account's hold as a daemon claimed it (the run neither
    claims nor releases it).
    """
    options = RunOptions(
        dry_run=dry_run,
        retry_failed=retry_failed,
        archive_again=archive_again,
        clock=clock,
        progress=progress,
        stop=stop,
        claimed=claimed,
    )
    return run_account(config, account, ledger, options)


def run_account(config: Config, account: Account, ledger: Ledger, options: RunOptions) -> RunResult:
    """:func:`sync_account` with its options in one frozen object."""
    install_log_redaction()
    result = RunResult(account=account.name, started_at=options.clock())
    try:
        # The lock comes first: a run refused because another process is
        # archiving this account leaves no run row to hide that one's outcome.
        with _hold(config, account, ledger, options) as hold:
            # On PostgreSQL every write of the run goes through the view fenced
            # by its lease (ledger/leases.py says why that keeps exactly-once).
            ledger = hold.ledger  # type: ignore[assignment]
            run_id = None
            if not options.dry_run:
                run_id = ledger.start_run(account.name, started_at=result.started_at)
            try:
                _AccountRun(config, account, ledger, result, options, hold=hold).run()
            except Exception as exc:  # a bug of ours must not stop the other accounts either
                _fail(result, account, exc)
            if isinstance(result.exception, LeaseLost):
                # Another holder has the account: this run records nothing more.
                log.warning("%s; the run stopped", result.exception)  # it names the account
            else:
                _close_run(ledger, run_id, result, options.clock)
                _prune_runs(ledger, run_id, result, config.keep_runs)
    except PopvaultError as exc:  # the lock or the run row: the run did not start
        _fail(result, account, exc)
    result.ended_at = result.ended_at or options.clock()
    return result


def _hold(
    config: Config, account: Account, ledger: Ledger, options: RunOptions
) -> AbstractContextManager[AccountHold]:
    """The account's lock (a lease on PostgreSQL) for a run; a dry run takes none."""
    if options.dry_run:
        return nullcontext(AccountHold(ledger))
    terms = LeaseTerms(
        ttl=timedelta(seconds=config.lease_ttl), heartbeat=timedelta(seconds=config.lease_heartbeat)
    )
    return ledger.account_lock(
        account.name, terms=terms, server_host=account.host, claimed=options.claimed
    )


def _fail(result: RunResult, account: Account, exc: Exception) -> None:
    """Record what failed the run; the error text names the account exactly once."""
    if isinstance(exc, PopvaultError):
        text = str(exc)
    else:
        log.exception("account %r: unexpected error", account.name)
        text = f"internal error: {type(exc).__name__}: {exc}"
    result.exception = exc
    # Pop3Error and ConfigError usually name the account already. The text may
    # quote a server or a secret source: it passes the redaction point before it
    # reaches the ledger, a log or any output.
    text = redact(text)
    named = repr(account.name) in text
    result.error = text if named else f"account {account.name!r}: {text}"


def _prune_runs(ledger: Ledger, run_id: int | None, result: RunResult, keep: float | None) -> None:
    """Forget the account's runs older than ``[ledger] keep_runs`` (after a recorded run)."""
    if run_id is None or keep is None or result.ended_at is None:
        return
    try:
        ledger.prune_runs_now(result.account, keep=timedelta(seconds=keep), now=result.ended_at)
    except PopvaultError as exc:  # the history is only pruned later: nothing is lost
        log.warning("account %r: could not prune its old runs: %s", result.account, exc)


def _close_run(ledger: Ledger, run_id: int | None, result: RunResult, clock: Clock) -> None:
    """Sum up the message problems into the error, and record the run's outcome."""
    name = result.account
    if result.error is None and result.message_errors:
        shown = "; ".join(result.message_errors[:3])
        count = len(result.message_errors)
        result.error = f"account {name!r}: {count} message problem(s): {shown}"
    result.ended_at = clock()
    if run_id is None:
        return
    try:
        ledger.finish_run(
            run_id,
            ended_at=result.ended_at,
            outcome="ok" if result.ok else "failed",
            messages=result.messages,
            bytes=result.octets,
            error=None if result.error is None else redact(result.error),
            on_server=result.left_on_server,
            sessions=max(result.sessions, 1),
        )
    except PopvaultError as exc:
        log.error("account %r: could not record the run's outcome: %s", name, exc)
        if result.error is None:
            result.error = f"account {name!r}: could not record the run: {exc}"


@dataclass(frozen=True)
class DeletionChoice:
    """What to do with one due message's server copy; see :func:`choose_deletions`.

    ``keep`` None: DELE it. Otherwise why it stays; ``hold`` is a reason to
    hold its ledger row (said once, shown by status) and ``problem`` a
    problem of the run (its archived copy is missing or wrong).
    """

    message: RetainedMessage
    number: int
    keep: str | None = None
    hold: str | None = None
    problem: str | None = None


def choose_deletions(
    due: Sequence[RetainedMessage],
    session: Session,
    archived_sizes: Mapping[str, int | None],
) -> list[DeletionChoice]:
    """Which due server copies may go: the last look before a DELE, with no I/O.

    A copy goes only if it is the message archived and its archived file is
    in place with the recorded size (``archived_sizes``: path -> size on
    disk, None when missing). Guarding against servers that reuse or repeat
    UIDLs (RFC 1939 section 7 forbids both): under a shared UIDL only a
    message whose content this session saw to be the archived one may go; a
    message whose size on the server is not its size when archived may be a
    message never stored, and is held until released.
    """
    choices = []
    for message in due:
        number = session.numbers[message.key]
        choices.append(_choose(message, number, session, archived_sizes.get(message.path)))
    return choices


def _choose(
    message: RetainedMessage, number: int, session: Session, on_disk: int | None
) -> DeletionChoice:
    if number not in session.verified:
        listed = session.view.by_number.get(number)
        if listed is not None and not listed.certain:
            return DeletionChoice(
                message,
                number,
                keep="its content could not be checked against the archived copy in this session",
            )
        size = session.sizes.get(number)
        if message.server_size is not None and size != message.server_size:
            reason = (
                f"its size on the server ({size}) differs from its size when it was archived "
                f"({message.server_size})"
            )
            return DeletionChoice(message, number, keep=reason, hold=reason)
    if on_disk == message.size:
        return DeletionChoice(message, number)
    problem = "missing" if on_disk is None else f"{on_disk} octets, the ledger says {message.size}"
    return DeletionChoice(
        message, number, keep=f"its archived copy {message.path} is {problem}", problem=problem
    )


def due_imported(policy: Retention, session: Session, started: datetime) -> list[tuple[int, str]]:
    """Messages archived elsewhere whose server copies retention lets go now: (number, UIDL).

    Only those whose import said ``--allow-delete``, listed once under their
    UIDL (a UIDL the server lists twice names two messages, and the other
    tool kept at most one of them: RFC 1939 section 7 wants it unique, so
    which one is unknowable), not deleted already, and due by the policy as
    if archived when the other tool saw them. A message popvault has a row
    of is its own archived copy, never one of these.
    """
    if policy.mode == "keep" or not session.imported:
        return []
    due = []
    for message in session.view.messages:
        imported = session.imported.get(message.uidl)
        if (
            imported is None
            or message.row is not None
            or not imported.allow_delete
            or imported.deleted_at is not None
            or message.uidl in session.view.shared
            or not is_due(policy, imported.archived_at, started)
        ):
            continue
        due.append((message.number, message.uidl))
    return due


def account_client(account: Account) -> Pop3Client:
    """A client (not connected yet) for the account's server, with its security and limits."""
    return Pop3Client(
        account.host,
        account.port,
        security=account.security,
        timeout=account.timeout,
        ca_file=account.ca_file,
        account=account.name,
        pipeline=account.pipeline_depth > 1,
        limits=Limits(
            login=account.login_timeout,
            session=account.session_timeout,
            min_rate=account.min_rate,
            rate_window=account.rate_window,
        ),
    )


def log_in(
    client: Pop3Client, account: Account, signin: Credentials, *, prefetch_listings: bool = True
) -> None:
    """Log in with the account's password or OAuth token (see :mod:`popvault.signin`).

    A refused OAuth token is renewed once at once, on a new connection
    (the server may have revoked it before its expiry): a revoked grant
    then fails as the refresh it is (`popvault auth login`), not as a
    refused password, and a token that was only stale costs no backoff.
    """
    try:
        _log_in_once(client, account, signin, prefetch_listings=prefetch_listings)
    except AuthError:
        renew = getattr(signin.token, "invalidate", None)
        if renew is None:
            raise
        renew()
        assert signin.token is not None  # noqa: S101 - a token source has invalidate
        signin.token()  # a refresh now: a revoked grant raises ReauthorizationRequired
        log.info("account %r: the server refused the access token; renewed it", account.name)
        client.close()
        client.connect()
        _log_in_once(client, account, signin, prefetch_listings=prefetch_listings)


def _log_in_once(
    client: Pop3Client, account: Account, signin: Credentials, *, prefetch_listings: bool
) -> None:
    client.login(
        account.username,
        signin.password,
        method=account.auth,
        allow_plaintext=account.allow_plaintext,
        token=signin.token,
        xoauth2_form="two-step" if signin.two_step else "one-line",
        prefetch_listings=prefetch_listings,  # a run's plan reads UIDL and LIST next
    )


class _AccountRun:
    """One account's run, in one session or several; the steps of :func:`sync_account`."""

    def __init__(
        self,
        config: Config,
        account: Account,
        ledger: Ledger,
        result: RunResult,
        options: RunOptions,
        *,
        hold: AccountHold | None = None,
    ) -> None:
        self.config = config
        self.hold = hold or AccountHold(ledger)
        self.account = account
        self.ledger = ledger
        self.result = result
        self.options = options
        self.clock = options.clock
        self.session = Session()
        # Keys whose DELE the server accepted; they go at QUIT.
        self.deletions: list[MessageKey] = []
        # UIDLs archived elsewhere whose DELE the server accepted; they go at QUIT.
        self.imported_deletions: list[str] = []
        # What the fetches did: the lists are the result's own.
        self.tally = Tally(
            set_aside=result.set_aside, held=result.held, problems=result.message_errors
        )

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.result.messages = self.tally.messages
            self.result.octets = self.tally.octets
            self.result.interrupted = self.tally.interrupted

    def _run(self) -> None:
        store = self._prepare_store()
        # Read once for the run: its later sessions log in with the same.
        signin = credentials(self.config, self.account)
        before: SessionEnd | None = None
        while True:
            end = self._session(store, signin, before)
            if end is None or not may_offer_more(end) or not self._another_session():
                return
            before = end

    def _prepare_store(self) -> Store:
        """Open the store and settle what an earlier run left, before any session."""
        name, options, result = self.account.name, self.options, self.result
        store = self._open_store()
        if not options.dry_run:
            if self.hold.lease is not None:
                # Every temporary file is a dead or fenced-out run's: remove them all
                # *before* settling pending rows. A fenced-out run publishes only by
                # link()ing its temp file's name, so once the name is gone it cannot
                # publish; a file it linked before is at its final path, which the
                # settling below finds. Its late publish can never make a second copy.
                store.cleanup_tmp(older_than=timedelta(0))
            result.recovered = settle_pending(store, self.ledger, name, clock=self.clock)
            store.cleanup_tmp()
        if not options.archive_again:
            # A ledger that knows none of the folder's files fails the run before
            # any fetch (a lost ledger would archive everything again).
            refuse_unknown_archive(self.config, self.account, self.ledger, store)
        return store

    def _another_session(self) -> bool:
        """Whether the run opens one more session, the last one having left more on offer.

        Never in a dry run (it retrieved nothing, so the server offers the
        same again), nor past ``max_sessions_per_run`` (1 for Gmail's
        ``recent:`` mode, whose listing never moves on), nor once ``stop``
        asks; and only while the lease is still this run's.
        """
        name, count = self.account.name, self.result.sessions
        bound = 1 if self.account.recent_mode else self.account.max_sessions_per_run
        if self.options.dry_run:
            return False
        if count >= bound:
            if bound > 1:
                log.info(
                    "account %r: the server may have more to offer, but the run has had its "
                    "%d sessions (max_sessions_per_run); the next run goes on",
                    name,
                    count,
                )
            return False
        if self.options.stop is not None and self.options.stop():
            log.info("account %r: stopping before session %d on request", name, count + 1)
            self.tally.interrupted = True
            return False
        self.hold.check()  # a run whose lease passed to another holder opens no session
        log.info(
            "account %r: session %d archived every new message it listed, and the server "
            "(EXPIRE 0) may offer more now: opening session %d",
            name,
            count,
            count + 1,
        )
        return True

    def _session(
        self, store: Store, signin: Credentials, before: SessionEnd | None
    ) -> SessionEnd | None:
        """One session: log in, plan, fetch, delete, end; what it did (None: no listing).

        ``before`` is the run's previous session, for a later one: a later
        session's login refused with [LOGIN-DELAY] or [IN-USE] ends the run's
        sessions quietly (what earlier ones archived is durable, and the next
        run goes on), and one that lists the previous one's messages again
        under new UIDLs ends them too (see :meth:`_renamed`).
        """
        options, result = self.options, self.result
        self.session, self.deletions, self.imported_deletions = Session(), [], []
        problems = len(result.message_errors)
        with account_client(self.account) as client:
            client.connect()
            if not self._log_in(client, signin, later=before is not None):
                return None
            result.sessions += 1
            result.capabilities = client.capabilities
            # A later session's own start: when unlisted rows are marked gone, when its
            # new messages were first seen, and what its retention counts from.
            started = result.started_at if before is None else self.clock()
            self.session, planned = plan_session(
                client,
                self.ledger,
                self.account,
                reconcile_at=None if options.dry_run else started,
                retry_failed=options.retry_failed,
            )
            result.deleted_earlier = result.deleted
            result.on_server = self.session.on_server
            result.message_errors.extend(self.session.problems)
            result.planned.extend(planned)
            if not self._fetch_and_delete(client, store, planned, started, before):
                self._end_session(client)
                return None
            quit = self._end_session(client)
        return session_end(
            self.session,
            planned,
            quit=quit,
            troubled=self.tally.interrupted or len(result.message_errors) > problems,
            capabilities=result.capabilities,
        )

    def _log_in(self, client: Pop3Client, signin: Credentials, *, later: bool) -> bool:
        """Log in; False when the server refuses a later session for now (see _session)."""
        try:
            log_in(client, self.account, signin)
        except (LoginDelayError, InUseError) as exc:
            if not later:
                raise
            log.info(
                "account %r: the server refused another session for now (%s); the next run goes on",
                self.account.name,
                redact(str(exc)),
            )
            client.close()
            return False
        return True

    def _renamed(self, before: MessageKey, now: MessageKey) -> bool:
        """Whether a later session's first message is the previous session's first, renamed.

        Asked only when the session listed as many new messages of exactly
        the sizes the one before listed (:func:`~popvault.plan.look_alike`),
        once its first message is archived: the same content under a new UIDL
        is a server that renames its messages in every session (RFC 1939
        section 7 forbids it). The run then stops rather than store the
        mailbox again in every session: one message stored twice instead of
        a window's worth each time. Different content is the next window of
        a mailbox of look-alike messages, and the session goes on.
        """
        rows = self.ledger.known_rows(self.account.name, [before.uidl, now.uidl])
        digests = {
            MessageKey(row.uidl, row.occurrence): row.sha256
            for group in rows.values()
            for row in group
            if row.state == "archived"
        }
        if before not in digests or digests.get(before) != digests.get(now):
            return False
        log.warning(
            "account %r: session %d listed %d new messages of the sizes the session before "
            "listed, and its first message (UIDL %r) has the content of that session's first "
            "(UIDL %r): most likely the server gives its messages new UIDLs in every session "
            "(RFC 1939 section 7 forbids it), else the mailbox holds copies of one message; "
            "this run fetches no more, the next one goes on (that message may be archived twice)",
            self.account.name,
            self.result.sessions,
            self.session.on_server,
            now.uidl,
            before.uidl,
        )
        return True

    def _fetch_and_delete(
        self,
        client: Pop3Client,
        store: Store,
        planned: list[PlannedMessage],
        started: datetime,
        before: SessionEnd | None,
    ) -> bool:
        """Fetch the session's new messages, then delete what retention lets go.

        False when the session lists the previous one's messages under new
        UIDLs (:meth:`_renamed`): then it fetched its first message only.
        """
        name, options, result = self.account.name, self.options, self.result
        if options.progress is not None:
            octets = sum(message.size for message in planned)
            # Each session's plan is a new bar; a later one says which session it is.
            label = name if result.sessions == 1 else f"{name} (session {result.sessions})"
            options.progress.planned(label, len(planned), octets)
        fetcher = Fetcher(
            self.account,
            store,
            self.ledger,
            self.session,
            self.tally,
            first_seen_at=started,
            clock=self.clock,
            progress=options.progress,
            stop=options.stop,
        )
        if not options.dry_run:
            earlier = None if before is None else look_alike(before, self.session)
            if earlier is not None and planned:
                first, planned = planned[:1], planned[1:]
                fetcher.fetch_all(client, first)
                if self._renamed(earlier, first[0].ledger_key):
                    return False
            fetcher.fetch_all(client, planned)
        due = self._due(started)
        result.due_for_deletion.extend(due)
        imported_due = due_imported(self.account.retention, self.session, started)
        result.imported_due.extend(uidl for _, uidl in imported_due)
        if not options.dry_run and not self.tally.interrupted:
            fetcher.fetch_all(client, verifications(self.session, [m.key for m in due]))
            if not self.tally.interrupted:
                self._delete(client, store, due, imported_due)
        return True

    def _open_store(self) -> Store:
        # The archive root is created on an account's first run only: once the
        # ledger vouches for archived files, a missing root more likely means an
        # unmounted disk, and writing into the bare mount point would hide mail.
        messages, _ = self.ledger.archived_totals(self.account.name)
        return open_store(
            self.account.format,
            self.config.archive_root,
            self.account.path,
            create_root=messages == 0,
        )

    def _due(self, started: datetime) -> list[RetainedMessage]:
        """Which archived messages on the server the retention policy lets go now.

        A held message never goes (its hold is shown by status and
        ``popvault held``, not warned about in every run).
        """
        policy = self.account.retention
        if policy.mode == "keep":
            return []
        retained = self.ledger.retained(self.account.name, list(self.session.numbers))
        return [
            message
            for message in retained
            if message.hold_reason is None and is_due(policy, message.archived_at, started)
        ]

    def _delete(
        self,
        client: Pop3Client,
        store: Store,
        due: Sequence[RetainedMessage],
        imported: Sequence[tuple[int, str]],
    ) -> None:
        """DELE each due message whose archived copy is in place, and each due
        message archived elsewhere whose import allowed it; note them before QUIT."""
        if self.session.undurable:
            # This session will end without QUIT, which would discard the DELEs anyway.
            return
        on_disk = {message.path: store.stat(message.path) for message in due}
        going = []
        for choice in choose_deletions(due, self.session, on_disk):
            if choice.keep is None:
                going.append(choice)
            else:
                self._kept(choice)
        # The last look before DELE: a run whose lease passed to another holder
        # deletes nothing (it drops the session; RFC 1939 section 6).
        self.hold.check()
        numbers = [choice.number for choice in going] + [number for number, _ in imported]
        refusals = client.dele_many(numbers, depth=self.account.pipeline_depth)
        for number, refusal in zip(numbers, refusals, strict=True):
            if refusal is not None:
                log.warning("account %r: DELE refused: %s", self.account.name, refusal)
                self.result.message_errors.append(f"DELE {number}: {redact(refusal.text)}")
        accepted = [refusal is None for refusal in refusals]
        self.deletions.extend(
            choice.message.key
            for choice, ok in zip(going, accepted[: len(going)], strict=True)
            if ok
        )
        self.imported_deletions.extend(
            uidl for (_, uidl), ok in zip(imported, accepted[len(going) :], strict=True) if ok
        )
        if self.deletions:
            self.ledger.mark_delete_requested(self.account.name, self.deletions, at=self.clock())

    def _kept(self, choice: DeletionChoice) -> None:
        """Say why a due message stays on the server (and hold it, if that is why)."""
        name, number = self.account.name, choice.number
        if choice.problem is not None:
            log.error(
                "account %r: keeping message %d on the server: %s (run `popvault verify`)",
                name,
                number,
                choice.keep,
            )
            self.result.message_errors.append(
                f"message {number} kept on the server: archived copy {choice.problem}"
            )
        elif choice.hold is not None:
            self.ledger.hold(name, choice.message.key, reason=choice.hold, at=self.clock())
            log.warning(
                "account %r: not deleting message %d from the server: %s; held until "
                "`popvault held --release`",
                name,
                number,
                choice.hold,
            )
        else:
            log.warning(
                "account %r: not deleting message %d from the server: %s",
                name,
                number,
                choice.keep,
            )

    def _end_session(self, client: Pop3Client) -> bool:
        """QUIT only if every retrieved message is durable (True), else drop the line.

        A session that ends without QUIT never reaches the UPDATE state (RFC
        1939 section 6), so the server deletes nothing and — for providers that
        hide retrieved messages after QUIT — keeps offering what we failed to
        store.
        """
        if self.session.undurable:
            log.warning(
                "account %r: closing without QUIT: %d retrieved message(s) not durably archived",
                self.account.name,
                len(self.session.undurable),
            )
            client.close()
            return False
        # QUIT commits this session's DELEs: only while the lease is ours. A lease
        # lost after this look can only let through DELEs of messages the ledger
        # says are archived (their rows were written through the fence).
        self.hold.check()
        client.quit()
        if self.deletions:
            # QUIT's +OK means the UPDATE state removed them (RFC 1939 section 6).
            self.ledger.mark_deleted(self.account.name, self.deletions, at=self.clock())
            self.result.deleted += len(self.deletions)
        if self.imported_deletions:
            # Nothing to settle if the reply is lost: a message still listed next
            # time is still due, and one no longer listed is gone either way.
            self.ledger.mark_imported_deleted(
                self.account.name, self.imported_deletions, at=self.clock()
            )
            self.result.deleted += len(self.imported_deletions)
        return True


def sync_accounts(
    config: Config,
    accounts: Iterable[Account],
    ledger: Ledger,
    *,
    dry_run: bool = False,
    retry_failed: bool = False,
    clock: Clock = utc_now,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    archive_again: bool = False,
) -> list[RunResult]:
    """Run each account in turn; one account's failure never stops the others."""
    options = RunOptions(
        dry_run=dry_run,
        retry_failed=retry_failed,
        archive_again=archive_again,
        clock=clock,
        progress=progress,
        stop=stop,
    )
    return [run_account(config, account, ledger, options) for account in accounts]
