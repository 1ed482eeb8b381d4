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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

from popvault.archive_check import refuse_unknown_archive
from popvault.config import Account, Config, read_password
from popvault.errors import (
    ConfigError,
    LedgerError,
    Pop3Error,
    RemoteProtocolError,
    ServerError,
    StoreError,
)
from popvault.identity import Listed, ServerView, StatusBlindDigest, identify
from popvault.ledger import KnownRow, Ledger, MessageKey, RetainedMessage
from popvault.pop3.client import Pop3Client
from popvault.pop3.pace import Limits
from popvault.pop3.parsing import parse_list_line, parse_uidl_entry
from popvault.redaction import install_log_redaction, redact
from popvault.retention import is_due
from popvault.store import SealedMessage, Store, Writer, open_store

log = logging.getLogger("popvault.sync")

# Runs in which one message may fail on its own before it is set aside: enough
# to ride out a server that was still storing it, few enough that one broken
# message does not fail every run for long.
MAX_ATTEMPTS = 3
# RFC 1939 section 11 counts LIST sizes with CRLF line ends; a server that adds
# the final CRLF a message lacks (Dovecot does) sends exactly 2 octets more.
FINAL_CRLF_OCTETS = 2
# Held messages warned about one by one in a run; past this, one summary line
# (a server whose every size is off would otherwise fill the log).
MAX_HOLD_WARNINGS = 10
# Reads of an archived file when comparing it: large enough for speed, small
# enough for flat memory.
_READ_BLOCK = 1 << 20

Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    """The wall clock as an aware UTC datetime (the default clock)."""
    return datetime.now(UTC)


class Progress(Protocol):
    """What a run reports as it goes (the CLI draws a bar from it)."""

    def planned(self, account: str, messages: int, octets: int) -> None:
        """The run will fetch ``messages`` messages of ``octets`` octets in all."""

    def fetched(self, account: str, octets: int) -> None:
        """One more message of ``octets`` octets is archived."""


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
class RunResult:
    """What one account's run did; ``error`` is None when it succeeded."""

    account: str
    started_at: datetime
    ended_at: datetime | None = None
    # How many messages the server listed; None until it did (unknown, not 0).
    on_server: int | None = None
    planned: list[PlannedMessage] = field(default_factory=list)
    messages: int = 0
    octets: int = 0
    recovered: int = 0
    due_for_deletion: list[RetainedMessage] = field(default_factory=list)
    deleted: int = 0
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
        leaves 0, not the 200 it listed.
        """
        return None if self.on_server is None else max(0, self.on_server - self.deleted)


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
    """
    install_log_redaction()
    result = RunResult(account=account.name, started_at=clock())
    try:
        # The lock comes first: a run refused because another process is
        # archiving this account leaves no run row to hide that one's outcome.
        with nullcontext() if dry_run else ledger.account_lock(account.name):
            run = _AccountRun(
                config, account, ledger, result, clock=clock, progress=progress, stop=stop
            )
            run.archive_again = archive_again
            run.recorded(dry_run=dry_run, retry_failed=retry_failed)
    except (Pop3Error, StoreError, LedgerError, ConfigError) as exc:
        _fail(result, account, exc, str(exc))
    result.ended_at = result.ended_at or clock()
    return result


def _fail(result: RunResult, account: Account, exc: BaseException, text: str) -> None:
    """Record what failed the run; the error text names the account exactly once."""
    result.exception = exc
    # Pop3Error and ConfigError usually name the account already. The text may
    # quote a server or a secret source: it passes the redaction point before it
    # reaches the ledger, a log or any output.
    text = redact(text)
    named = repr(account.name) in text
    result.error = text if named else f"account {account.name!r}: {text}"


def _finish_run(ledger: Ledger, run_id: int, result: RunResult, ended_at: datetime) -> None:
    try:
        ledger.finish_run(
            run_id,
            ended_at=ended_at,
            outcome="ok" if result.ok else "failed",
            messages=result.messages,
            bytes=result.octets,
            error=None if result.error is None else redact(result.error),
            on_server=result.left_on_server,
        )
    except LedgerError as exc:
        log.error("account %r: could not record the run's outcome: %s", result.account, exc)
        if result.error is None:
            result.error = f"account {result.account!r}: could not record the run: {exc}"


class _AccountRun:
    """One session with one account's server; the steps of :func:`sync_account`."""

    def __init__(
        self,
        config: Config,
        account: Account,
        ledger: Ledger,
        result: RunResult,
        *,
        clock: Clock,
        progress: Progress | None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.account = account
        self.ledger = ledger
        self.result = result
        self.clock = clock
        self.progress = progress
        # The archive root is created on an account's first run only: once the
        # ledger vouches for archived files, a missing root more likely means an
        # unmounted disk, and writing into the bare mount point would hide mail.
        self.store = open_store(
            account.format,
            config.archive_root,
            account.path,
            create_root=not _has_archived(ledger, account.name),
        )
        # Message numbers whose RETR succeeded but which are not (yet) durable:
        # while any is here, the session must not end with QUIT.
        self.undurable: set[int] = set()
        # Keys whose DELE the server accepted; they go at QUIT.
        self.deletions: list[MessageKey] = []
        # This session's view of the server: the listing matched to the ledger
        # (popvault.identity), ledger key -> message number, number -> LIST size.
        self.view = ServerView(messages=())
        self.numbers: dict[MessageKey, int] = {}
        self.sizes: dict[int, int] = {}
        # Messages whose content this session saw to be their key's row.
        self.verified: set[int] = set()
        # The next free occurrence per shared UIDL, for a message found new late.
        self.spare: dict[str, int] = {}
        self.stop = stop or _never
        # --archive-again: archive even into a folder the ledger does not know.
        self.archive_again = False

    def recorded(self, *, dry_run: bool, retry_failed: bool) -> None:
        """:meth:`run` between ``start_run`` and ``finish_run`` (no run row for a dry run)."""
        result, name = self.result, self.account.name
        run_id = None if dry_run else self.ledger.start_run(name, started_at=result.started_at)
        try:
            self.run(dry_run=dry_run, retry_failed=retry_failed)
        except (Pop3Error, StoreError, LedgerError, ConfigError) as exc:
            _fail(result, self.account, exc, str(exc))
        except Exception as exc:  # a bug of ours must not stop the other accounts
            log.exception("account %r: unexpected error", name)
            _fail(result, self.account, exc, f"internal error: {type(exc).__name__}: {exc}")
        if result.error is None and result.message_errors:
            shown = "; ".join(result.message_errors[:3])
            count = len(result.message_errors)
            result.error = f"account {name!r}: {count} message problem(s): {shown}"
        result.ended_at = self.clock()
        if run_id is not None:
            _finish_run(self.ledger, run_id, result, result.ended_at)

    def run(self, *, dry_run: bool, retry_failed: bool) -> None:
        name = self.account.name
        if not dry_run:
            self.result.recovered = settle_pending(self.store, self.ledger, name, clock=self.clock)
            self.store.cleanup_tmp()
        self._refuse_unknown_archive()
        password = read_password(self.config, self.account)
        with self._client() as client:
            client.connect()
            client.login(
                self.account.username,
                password,
                method="apop" if self.account.auth == "apop" else "user",
                allow_plaintext=self.account.allow_plaintext,
            )
            del password
            self.result.capabilities = client.capabilities
            self.result.planned = self._plan(client, dry_run=dry_run, retry_failed=retry_failed)
            if self.progress is not None:
                octets = sum(message.size for message in self.result.planned)
                self.progress.planned(name, len(self.result.planned), octets)
            if not dry_run:
                self._fetch_all(client, self.result.planned)
            self._plan_deletions()
            if not dry_run and not self.result.interrupted:
                self._fetch_all(client, self._verifications())
            if not dry_run and not self.result.interrupted:
                self._delete(client)
            self._end_session(client)

    def _refuse_unknown_archive(self) -> None:
        """Before any fetch: a ledger that knows none of the folder's files fails the run
        (a lost ledger would archive everything again), unless ``--archive-again``."""
        if not self.archive_again:
            refuse_unknown_archive(self.config, self.account, self.ledger, self.store)

    def _client(self) -> Pop3Client:
        account = self.account
        return Pop3Client(
            account.host,
            account.port,
            security=account.security,
            timeout=account.timeout,
            ca_file=account.ca_file,
            account=account.name,
            limits=Limits(
                login=account.login_timeout,
                session=account.session_timeout,
                min_rate=account.min_rate,
                rate_window=account.rate_window,
            ),
        )

    def _end_session(self, client: Pop3Client) -> None:
        """QUIT only if every retrieved message is durable; otherwise drop the line.

        A session that ends without QUIT never reaches the UPDATE state (RFC
        1939 section 6), so the server deletes nothing and — for providers that
        hide retrieved messages after QUIT — keeps offering what we failed to
        store.
        """
        if self.undurable:
            log.warning(
                "account %r: closing without QUIT: %d retrieved message(s) not durably archived",
                self.account.name,
                len(self.undurable),
            )
            client.close()
            return
        client.quit()
        if self.deletions:
            # QUIT's +OK means the UPDATE state removed them (RFC 1939 section 6).
            self.ledger.mark_deleted(self.account.name, self.deletions, at=self.clock())
            self.result.deleted = len(self.deletions)

    def _plan(
        self, client: Pop3Client, *, dry_run: bool, retry_failed: bool
    ) -> list[PlannedMessage]:
        """UIDL + LIST, matched to the ledger's rows; the messages to fetch."""
        name = self.account.name
        listing = self._uidl_listing(client)
        self.sizes = sizes = dict(self._listing(client.list_lines(), parse_list_line, "LIST"))
        self._check_listings_agree(listing, sizes)
        self.result.on_server = len(listing)
        uidls = list(dict.fromkeys(uidl for _, uidl in listing))
        rows = self.ledger.known_rows(name, uidls)
        self.view = identify(listing, sizes, rows, trust_sizes=self.account.trust_list_sizes)
        self.numbers = {message.key: message.number for message in self.view.messages}
        self.spare = _spare_occurrences(self.view, rows)
        if not dry_run:
            # What vanished since the last session: deleted by us (a lost QUIT
            # reply) or taken by another client.
            self.ledger.reconcile(name, self.view.keys_on_server, now=self.result.started_at)
        keys = [message.key for message in self.view.messages]
        new = set(
            self.ledger.unarchived(name, keys, max_attempts=MAX_ATTEMPTS, retry_failed=retry_failed)
        )
        # RETR in message order (the listing's): servers read their mailbox front to back.
        return [_planned(message, sizes) for message in self.view.messages if message.key in new]

    def _check_listings_agree(
        self, listing: Sequence[tuple[int, str]], sizes: dict[int, int]
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
            log.warning("account %r: %s", self.account.name, problem)
            self.result.message_errors.append(problem)

    def _uidl_listing(self, client: Pop3Client) -> list[tuple[int, str]]:
        """The UIDL listing, each line parsed on its own (see :meth:`_listing`)."""
        try:
            return self._listing(client.uidl_lines(), parse_uidl_entry, "UIDL")
        except ServerError as exc:
            raise RemoteProtocolError(
                f"the server refused UIDL ({exc.text!r}); popvault needs unique ids "
                "(RFC 1939 section 7) to archive incrementally",
                account=self.account.name,
            ) from exc

    def _listing(
        self, lines: Iterable[bytes], parse: Callable[[bytes], tuple[int, T]], verb: str
    ) -> list[tuple[int, T]]:
        """A listing whose bad lines are skipped, each with a warning and a run problem.

        One malformed line (a negative size, a line without a number, a number
        listed twice) must not fail the whole account on every run: that one
        message is left out — which the check that UIDL and LIST agree then
        names — and the rest of the mailbox is archived.
        """
        entries: list[tuple[int, T]] = []
        seen: set[int] = set()
        for line in lines:
            try:
                number, value = parse(line)
            except RemoteProtocolError as exc:
                self._bad_listing_line(verb, exc.message)
                continue
            if number in seen:
                self._bad_listing_line(verb, f"message number {number} listed twice")
                continue
            seen.add(number)
            entries.append((number, value))
        return entries

    def _bad_listing_line(self, verb: str, problem: str) -> None:
        text = f"a line of the server's {verb} listing was skipped: {redact(problem)}"
        log.warning("account %r: %s", self.account.name, text)
        self.result.message_errors.append(text)

    def _fetch_all(self, client: Pop3Client, planned: Sequence[PlannedMessage]) -> None:
        failing = {failure.key for failure in self.ledger.failures(self.account.name)}
        # Messages that failed before go last, so that one that kills the session
        # (a body that never ends) cannot keep the ones after it from being archived.
        ordered = sorted(planned, key=lambda message: message.ledger_key in failing)
        succeeded = attempted = 0
        for message in ordered:
            if self.stop():
                log.info("account %r: stopping early on request", self.account.name)
                self.result.interrupted = True
                return
            attempted += 1
            try:
                octets = self._fetch_one(client, message)
            except (ServerError, IncompleteMessage, TooLargeToFetch) as exc:
                # The server refused or botched this one message (it may have
                # vanished since UIDL); the session is still usable, so go on.
                self._count_failure(message, exc.message)
                continue
            except OversizedMessage as exc:
                self._count_failure(message, exc.message)  # its own fault, whatever came before
                raise
            except Pop3Error as exc:
                # The session died during this message. It is charged when the
                # session worked until then (an earlier message of it archived, or
                # it was the first): a message that always kills the session is set
                # aside after MAX_ATTEMPTS runs; a line that drops at random
                # places charges different messages, none of them for long.
                if succeeded or attempted == 1:
                    self._count_failure(message, f"the session failed during it: {exc.message}")
                raise
            except (StoreError, LedgerError):
                raise  # the disk or the ledger: not this message's fault
            except Exception as exc:
                self._count_failure(message, f"internal error: {type(exc).__name__}: {exc}")
                raise
            succeeded += 1
            if message.ledger_key in failing:
                self.ledger.clear_failure(self.account.name, message.ledger_key)
            if octets is not None:
                self.result.messages += 1
                self.result.octets += octets
            if self.progress is not None and not message.verify:
                self.progress.fetched(self.account.name, octets or 0)
        self._summarise_holds()

    def _count_failure(self, message: PlannedMessage, error: str) -> None:
        name = self.account.name
        error = redact(error)  # it may quote the server; it goes to the ledger
        log.warning("account %r: message %d: %s", name, message.number, error)
        self.result.message_errors.append(f"message {message.number}: {error}")
        if message.verify:
            return  # the archived copy is safe; only its DELE waits for another run
        attempts = self.ledger.record_failure(
            name, message.ledger_key, error=error, at=self.clock()
        )
        if attempts >= MAX_ATTEMPTS:
            log.error(
                "account %r: message %d failed %d times; set aside until "
                "`popvault run --retry-failed`",
                name,
                message.number,
                attempts,
            )
            self.result.set_aside.append(message.uidl)

    def _fetch_one(self, client: Pop3Client, message: PlannedMessage) -> int | None:
        """RETR one message into the store and record it.

        Returns its octets on the wire, or None when its content turned out
        to be a message already archived (nothing new is stored then).
        """
        name = self.account.name
        _check_allowed_size(name, message, self.account.max_message_size)
        writer = self.store.begin(received_at=self.clock())
        # A check before a DELE also hashes the message blind to status fields,
        # in case the server rewrote them (identity.StatusBlindDigest).
        blind = StatusBlindDigest() if message.verify else None
        try:
            sink = _CountingSink(
                writer if blind is None else _Tee(writer, blind),
                limit=_octets_allowed(message.size, self.account.max_message_size),
                account=name,
                number=message.number,
            )
            client.retr_into(message.number, sink)
            # From here the server counts the message as retrieved.
            self.undurable.add(message.number)
            hold = _check_sizes(name, message, sink, trust=self.account.trust_list_sizes)
            sealed = writer.seal()
            if self._known_content(message, sealed) or self._same_but_status(message, blind):
                writer.abort()
                self.undurable.discard(message.number)
                return None
            key = self._key_for_new(message)
            self.ledger.record_pending(
                name,
                key,
                path=sealed.relpath,
                size=sealed.size,
                sha256=sealed.sha256,
                server_size=message.size,
                first_seen_at=self.result.started_at,
                received_size=sink.as_crlf,
                hold_reason=hold,
                held_at=self.clock() if hold else None,
            )
            self._publish(writer, key)
        except BaseException:
            writer.abort()
            raise
        self.ledger.mark_archived(name, key, archived_at=self.clock())
        self.undurable.discard(message.number)
        self._archived(message, key, hold)
        return sink.octets

    def _known_content(self, message: PlannedMessage, sealed: SealedMessage) -> bool:
        """Whether the message is one of its candidate rows, by content (identity.py)."""
        same = next((row for row in message.candidates if row.sha256 == sealed.sha256), None)
        if same is None:
            return False
        key = MessageKey(same.uidl, same.occurrence)
        if message.verify and key != message.key:
            log.info(
                "account %r: message %d is the archived copy %s, not %s; not deleting it "
                "in this session",
                self.account.name,
                message.number,
                same.path,
                message.candidates[0].path,
            )
            return True
        if not message.verify and same.server_size != message.size:
            # The same content under a new LIST size: the server recounted it.
            self.ledger.set_server_size(self.account.name, key, message.size)
        self.numbers[key] = message.number
        self.verified.add(message.number)
        return True

    def _same_but_status(self, message: PlannedMessage, blind: StatusBlindDigest | None) -> bool:
        """Whether a checked message is its archived row but for rewritten status fields.

        Mailbox servers rewrite "Status", "X-UID" and the like in a stored
        message (GNU pop3d at every QUIT): the size changes, the message does
        not. The archived file is hashed the same way and compared.
        """
        if blind is None or not message.candidates:
            return False
        row = message.candidates[0]
        archived = StatusBlindDigest()
        with self.store.open(row.path) as stream:
            while block := stream.read(_READ_BLOCK):
                archived.write(block)
        if archived.hexdigest() != blind.hexdigest():
            return False
        key = MessageKey(row.uidl, row.occurrence)
        self.ledger.set_server_size(self.account.name, key, message.size)
        self.verified.add(message.number)
        log.info(
            "account %r: message %d is the archived %s with its status fields rewritten "
            "by the server",
            self.account.name,
            message.number,
            row.path,
        )
        return True

    def _key_for_new(self, message: PlannedMessage) -> MessageKey:
        """The key a message is recorded under; a checked one found new gets a fresh one."""
        if not message.verify:
            return message.ledger_key
        occurrence = self.spare.get(message.uidl, 1)
        self.spare[message.uidl] = occurrence + 1
        return MessageKey(message.uidl, occurrence)

    def _archived(self, message: PlannedMessage, key: MessageKey, hold: str | None) -> None:
        """Note what is worth saying about a message just archived (once: it is archived once)."""
        name = self.account.name
        if not message.verify:
            self.numbers[key] = message.number
            self.verified.add(message.number)
        if message.verify or message.candidates:
            log.warning(
                "account %r: message %d under UIDL %r is not the message archived under it "
                "(the server changed it or reused the UIDL, which RFC 1939 section 7 forbids); "
                "archived it too, as message #%d of that UIDL",
                name,
                message.number,
                message.uidl,
                key.occurrence,
            )
        elif message.uidl in self.view.shared or key.occurrence > 1:
            log.warning(
                "account %r: the server lists UIDL %r for more than one message (RFC 1939 "
                "section 7 wants unique ids); archived message %d as its message #%d",
                name,
                message.uidl,
                message.number,
                key.occurrence,
            )
        if hold is not None:
            self.result.held.append(f"message {message.number}: {hold}")
            if len(self.result.held) <= MAX_HOLD_WARNINGS:
                log.warning(
                    "account %r: message %d (UIDL %r): %s; archived as received and kept on "
                    "the server (see `popvault held`)",
                    name,
                    message.number,
                    message.uidl,
                    hold,
                )

    def _summarise_holds(self) -> None:
        extra = len(self.result.held) - MAX_HOLD_WARNINGS
        if extra > 0:
            log.warning(
                "account %r: %d more message(s) held on the server because their sizes differ "
                "from LIST; if this server reports estimated sizes, set trust_list_sizes = false",
                self.account.name,
                extra,
            )

    def _publish(self, writer: Writer, key: MessageKey) -> None:
        """Move the sealed file into place; a failed publish takes its pending row back."""
        try:
            writer.commit()
        except StoreError:
            self.ledger.drop_pending(self.account.name, key)
            raise

    def _same_message_on_server(self, message: RetainedMessage) -> bool:
        """Guard against servers that reuse or repeat UIDLs (RFC 1939 section 7 forbids both).

        Under a shared UIDL, only a message whose content this session saw to
        be the archived one may go. A message whose size on the server is not
        the size it had when archived may be a message never stored: it is
        held (said once, shown by status, never due again) until released.
        """
        number = self.numbers[message.key]
        if number in self.verified:
            return True  # this session saw its content to be the archived one
        listed = self.view.by_number.get(number)
        if listed is not None and not listed.certain:
            log.warning(
                "account %r: not deleting message %d from the server: its content could not "
                "be checked against the archived copy in this session",
                self.account.name,
                number,
            )
            return False
        size = self.sizes.get(number)
        if message.server_size is None or size == message.server_size:
            return True
        reason = (
            f"its size on the server ({size}) differs from its size when it was archived "
            f"({message.server_size})"
        )
        self.ledger.hold(self.account.name, message.key, reason=reason, at=self.clock())
        log.warning(
            "account %r: not deleting message %d from the server: %s; held until "
            "`popvault held --release`",
            self.account.name,
            number,
            reason,
        )
        return False

    def _plan_deletions(self) -> None:
        """Which archived messages on the server the retention policy lets go now.

        A held message never goes (its hold is shown by status and
        ``popvault held``, not warned about in every run).
        """
        policy = self.account.retention
        if policy.mode == "keep":
            return
        retained = self.ledger.retained(self.account.name, list(self.numbers))
        self.result.due_for_deletion = [
            message
            for message in retained
            if message.hold_reason is None
            and is_due(policy, message.archived_at, self.result.started_at)
        ]

    def _verifications(self) -> list[PlannedMessage]:
        """RETRs that check, before a DELE, the content of due messages under shared UIDLs."""
        checks = []
        for message in self.result.due_for_deletion:
            number = self.numbers[message.key]
            listed = self.view.by_number.get(number)
            if listed is None or listed.certain or number in self.verified:
                continue
            checks.append(_verification(listed, self.view, self.sizes))
        return checks

    def _delete(self, client: Pop3Client) -> None:
        """DELE each due message whose archived copy is in place; note them before QUIT."""
        if self.undurable:
            # This session will end without QUIT, which would discard the DELEs anyway.
            return
        for message in self.result.due_for_deletion:
            if not self._copy_in_place(message):
                continue
            number = self.numbers[message.key]
            try:
                client.dele(number)
            except ServerError as exc:
                log.warning("account %r: DELE refused: %s", self.account.name, exc)
                self.result.message_errors.append(f"DELE {number}: {redact(exc.text)}")
                continue
            self.deletions.append(message.key)
        if self.deletions:
            self.ledger.mark_delete_requested(self.account.name, self.deletions, at=self.clock())

    def _copy_in_place(self, message: RetainedMessage) -> bool:
        """The last look before a DELE: is this the message we archived, and is its file there?"""
        if not self._same_message_on_server(message):
            return False
        size = self.store.stat(message.path)
        if size == message.size:
            return True
        number = self.numbers[message.key]
        problem = "missing" if size is None else f"{size} octets, the ledger says {message.size}"
        log.error(
            "account %r: keeping message %d on the server: its archived copy %s is %s "
            "(run `popvault verify`)",
            self.account.name,
            number,
            message.path,
            problem,
        )
        self.result.message_errors.append(
            f"message {number} kept on the server: archived copy {problem}"
        )
        return False


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


def _never() -> bool:
    return False


def _has_archived(ledger: Ledger, account: str) -> bool:
    messages, _ = ledger.archived_totals(account)
    return messages > 0


class IncompleteMessage(RemoteProtocolError):
    """RETR gave fewer octets than LIST announced: a truncated or empty body."""


class TooLargeToFetch(Pop3Error):
    """A message whose LIST size is over the account's ``max_message_size``: not fetched.

    Nothing was sent for it, so the session goes on with the next message.
    """


class OversizedMessage(RemoteProtocolError):
    """RETR sent far more octets than LIST announced, or more than max_message_size.

    The RETR is abandoned and the session dropped: a body that never ends
    must not fill the disk (on a shared disk, the ledger's too).
    """


# How far a body may run past its LIST size before the RETR is abandoned. Servers
# that count LF line ends send up to twice the octets they list (a message of
# empty lines: 1 octet listed, 2 sent per line), and estimates can be off by
# much more for small messages: twice the listed size plus 16 MiB covers both,
# and still bounds what one message can write per attempt.
OVERRUN_FACTOR: Final = 2
OVERRUN_FLOOR: Final = 16 << 20


def _octets_allowed(listed: int, max_message_size: int | None) -> int:
    allowed = OVERRUN_FACTOR * listed + OVERRUN_FLOOR
    return allowed if max_message_size is None else min(allowed, max_message_size)


def _check_allowed_size(
    account: str, message: PlannedMessage, max_message_size: int | None
) -> None:
    if max_message_size is not None and message.size > max_message_size:
        raise TooLargeToFetch(
            f"message {message.number} is {message.size} octets, over max_message_size "
            f"({max_message_size}): not archived, kept on the server",
            account=account,
        )


class _CountingSink:
    """Passes RETR chunks on, counting octets and line feeds without a CR before them.

    More than ``limit`` octets abandon the RETR (:class:`OversizedMessage`).
    """

    def __init__(
        self, writer: _Writable, *, limit: int | None = None, account: str = "", number: int = 0
    ) -> None:
        self._writer = writer
        self._limit = limit
        self._account = account
        self._number = number
        self.octets = 0
        self.bare_lf = 0
        self._last = b""

    def write(self, chunk: bytes) -> int:
        if chunk:
            if self._limit is not None and self.octets + len(chunk) > self._limit:
                raise OversizedMessage(
                    f"RETR {self._number} went past {self._limit} octets (far more than its "
                    "LIST size, or over max_message_size): abandoned, nothing of it kept",
                    account=self._account,
                )
            self._writer.write(chunk)
            self.octets += len(chunk)
            self.bare_lf += chunk.count(b"\n") - (self._last + chunk).count(b"\r\n")
            self._last = chunk[-1:]
        return len(chunk)

    @property
    def as_crlf(self) -> int:
        """The octets received, counting each line end as CRLF (as LIST does)."""
        return self.octets + self.bare_lf


class _Writable(Protocol):
    def write(self, chunk: bytes) -> None: ...


class _Tee:
    """Writes each chunk to two sinks."""

    def __init__(self, first: _Writable, second: _Writable) -> None:
        self._first, self._second = first, second

    def write(self, chunk: bytes) -> None:
        self._first.write(chunk)
        self._second.write(chunk)


def _check_sizes(
    account: str, message: PlannedMessage, sink: _CountingSink, *, trust: bool
) -> str | None:
    """Refuse an empty or short RETR; return why to hold a long one, or None.

    Servers have been seen to hand out empty bodies for messages they had not
    finished storing: an empty body is never archived. LIST counts octets
    with CRLF line endings (RFC 1939 section 11); a server that sends bare LF
    line endings sends one octet less per line, so those are counted back in
    before calling a body short. A body longer than LIST by more than a final
    CRLF is archived but held: the server may have sent a stand-in (a server
    offering UTF8, RFC 6856, serves clients that did not enable it a notice
    instead of a message with UTF-8 headers). ``trust`` False: the sizes are
    estimates, only emptiness counts.
    """
    if not message.size_listed:
        if sink.octets == 0:
            raise IncompleteMessage(
                f"RETR {message.number} returned an empty message: refusing to archive it",
                account=account,
            )
        return "the server's LIST did not name it, so its size could not be checked"
    if sink.octets == 0:
        raise IncompleteMessage(
            f"RETR {message.number} returned an empty message (LIST announced "
            f"{message.size} octets): refusing to archive a truncated message",
            account=account,
        )
    if not trust:
        return None
    if sink.as_crlf < message.size:
        raise IncompleteMessage(
            f"RETR {message.number} returned {sink.octets} octets but LIST announced "
            f"{message.size}: refusing to archive a truncated message",
            account=account,
        )
    if sink.octets > message.size + FINAL_CRLF_OCTETS:
        return f"received {sink.octets} octets but the server's LIST said {message.size}"
    return None


def settle_pending(store: Store, ledger: Ledger, account: str, *, clock: Clock = utc_now) -> int:
    """Finish or undo what a crashed run left pending; returns how many became archived.

    A pending row names the final path its sealed file was about to be
    published under. If the file is there with the recorded size, the publish
    happened (publishing is a single link or rename of a file already fsynced)
    and only the ledger update was lost; otherwise the publish never happened,
    the temp file is garbage, and the message is simply fetched again.
    """
    archived = 0
    for pending in ledger.pending(account):
        if store.stat(pending.path) == pending.size:
            # The crash may have come between the link and the folder's fsync:
            # sync it before the ledger vouches for the file, since a DELE may
            # follow at once (found by tests/invariant, "linked" crash point).
            store.sync_published(pending.path)
            ledger.mark_archived(account, pending.key, archived_at=clock())
            archived += 1
            log.info("account %r: recovered %s from an interrupted run", account, pending.path)
        else:
            ledger.drop_pending(account, pending.key)
    return archived


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
    return [
        sync_account(
            config,
            account,
            ledger,
            dry_run=dry_run,
            retry_failed=retry_failed,
            clock=clock,
            progress=progress,
            stop=stop,
            archive_again=archive_again,
        )
        for account in accounts
    ]
