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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from popvault.config import Account, Config, read_password
from popvault.errors import (
    ConfigError,
    LedgerError,
    Pop3Error,
    RemoteProtocolError,
    ServerError,
    StoreError,
)
from popvault.ledger import Ledger, RetainedMessage
from popvault.pop3.client import Pop3Client
from popvault.retention import is_due
from popvault.store import Store, Writer, open_store

log = logging.getLogger("popvault.sync")

# Runs in which one message may fail on its own before it is set aside: enough
# to ride out a server that was still storing it, few enough that one broken
# message does not fail every run for long.
MAX_ATTEMPTS = 3

Clock = Callable[[], datetime]


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
    """A message the server has and the ledger does not."""

    number: int
    uidl: str
    size: int


@dataclass
class RunResult:
    """What one account's run did; ``error`` is None when it succeeded."""

    account: str
    started_at: datetime
    ended_at: datetime | None = None
    on_server: int = 0
    planned: list[PlannedMessage] = field(default_factory=list)
    messages: int = 0
    octets: int = 0
    recovered: int = 0
    due_for_deletion: list[RetainedMessage] = field(default_factory=list)
    deleted: int = 0
    set_aside: list[str] = field(default_factory=list)
    error: str | None = None
    message_errors: list[str] = field(default_factory=list)
    listed: bool = False
    # The exception that failed the run (for the daemon's choice of backoff).
    exception: BaseException | None = None
    # The server's capabilities after login (RFC 2449: LOGIN-DELAY, EXPIRE, ...).
    capabilities: dict[str, list[str]] = field(default_factory=dict)
    # True when ``stop`` ended the run early; what was fetched is durable.
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """True when the run archived everything it set out to."""
        return self.error is None


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
) -> RunResult:
    """Archive one account's new messages; never raises for a failure of the account.

    Every failure is caught, logged and returned in :attr:`RunResult.error`
    (and recorded in the ledger's run row), so that one account's trouble never
    stops the others. ``dry_run`` lists what would be fetched and deleted and
    changes nothing: no file, no ledger row, no ``DELE``. ``retry_failed``
    tries the messages that were set aside again. ``stop`` is asked before each
    message: once it answers True the run fetches nothing more, deletes nothing,
    and ends the session cleanly with QUIT (a daemon shutting down).
    """
    result = RunResult(account=account.name, started_at=clock())
    try:
        # The lock comes first: a run refused because another process is
        # archiving this account leaves no run row to hide that one's outcome.
        with nullcontext() if dry_run else ledger.account_lock(account.name):
            run = _AccountRun(
                config, account, ledger, result, clock=clock, progress=progress, stop=stop
            )
            run.recorded(dry_run=dry_run, retry_failed=retry_failed)
    except (Pop3Error, StoreError, LedgerError, ConfigError) as exc:
        _fail(result, account, exc, str(exc))
    result.ended_at = result.ended_at or clock()
    return result


def _fail(result: RunResult, account: Account, exc: BaseException, text: str) -> None:
    """Record what failed the run; the error text names the account exactly once."""
    result.exception = exc
    # Pop3Error and ConfigError usually name the account already.
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
            error=result.error,
            on_server=result.on_server if result.listed else None,
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
        # UIDLs whose DELE the server accepted; they go at QUIT.
        self.deletions: list[str] = []
        # This session's view of the server: UIDL -> first message number,
        # message number -> LIST size, and UIDLs listed more than once.
        self.numbers: dict[str, int] = {}
        self.sizes: dict[int, int] = {}
        self.repeated: set[str] = set()
        self.stop = stop or _never

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
                self._fetch_all(client)
            self._plan_deletions()
            if not dry_run and not self.result.interrupted:
                self._delete(client)
            self._end_session(client)

    def _client(self) -> Pop3Client:
        return Pop3Client(
            self.account.host,
            self.account.port,
            security=self.account.security,
            timeout=self.account.timeout,
            ca_file=self.account.ca_file,
            account=self.account.name,
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
        """UIDL + LIST, then bulk ledger queries for the UIDLs never archived."""
        name = self.account.name
        listing = self._uidl_listing(client)
        self.sizes = sizes = dict(client.list())
        self.result.on_server = len(listing)
        self.result.listed = True
        self.numbers, self.repeated = _index_listing(listing, name)
        uidls = list(self.numbers)
        if not dry_run:
            # What vanished since the last session: deleted by us (a lost QUIT
            # reply) or taken by another client.
            self.ledger.reconcile(name, uidls, now=self.result.started_at)
        new_uidls = self.ledger.unarchived(
            name, uidls, max_attempts=MAX_ATTEMPTS, retry_failed=retry_failed
        )
        planned = [
            PlannedMessage(self.numbers[u], u, sizes.get(self.numbers[u], 0)) for u in new_uidls
        ]
        # RETR in message order: servers read their mailbox front to back.
        planned.sort(key=lambda message: message.number)
        return planned

    def _uidl_listing(self, client: Pop3Client) -> list[tuple[int, str]]:
        try:
            return client.uidl()
        except ServerError as exc:
            raise RemoteProtocolError(
                f"the server refused UIDL ({exc.text!r}); popvault needs unique ids "
                "(RFC 1939 section 7) to archive incrementally",
                account=self.account.name,
            ) from exc

    def _fetch_all(self, client: Pop3Client) -> None:
        failing = {failure.uidl for failure in self.ledger.failures(self.account.name)}
        for message in self.result.planned:
            if self.stop():
                log.info("account %r: stopping early on request", self.account.name)
                self.result.interrupted = True
                return
            try:
                octets = self._fetch_one(client, message)
            except (ServerError, IncompleteMessage) as exc:
                # The server refused or botched this one message (it may have
                # vanished since UIDL); the session is still usable, so go on.
                self._count_failure(message, exc.message)
                continue
            except (Pop3Error, StoreError, LedgerError):
                raise  # the connection, the disk or the ledger: not this message's fault
            except Exception as exc:
                self._count_failure(message, f"internal error: {type(exc).__name__}: {exc}")
                raise
            if message.uidl in failing:
                self.ledger.clear_failure(self.account.name, message.uidl)
            self.result.messages += 1
            self.result.octets += octets
            if self.progress is not None:
                self.progress.fetched(self.account.name, octets)

    def _count_failure(self, message: PlannedMessage, error: str) -> None:
        name = self.account.name
        log.warning("account %r: message %d: %s", name, message.number, error)
        self.result.message_errors.append(f"message {message.number}: {error}")
        attempts = self.ledger.record_failure(name, message.uidl, error=error, at=self.clock())
        if attempts >= MAX_ATTEMPTS:
            log.error(
                "account %r: message %d failed %d times; set aside until "
                "`popvault run --retry-failed`",
                name,
                message.number,
                attempts,
            )
            self.result.set_aside.append(message.uidl)

    def _fetch_one(self, client: Pop3Client, message: PlannedMessage) -> int:
        """RETR one message into the store and record it; returns its octets on the wire."""
        name = self.account.name
        writer = self.store.begin(received_at=self.clock())
        try:
            sink = _CountingSink(writer)
            client.retr_into(message.number, sink)
            # From here the server counts the message as retrieved.
            self.undurable.add(message.number)
            wire_octets = _check_complete(name, message, sink)
            sealed = writer.seal()
            self.ledger.record_pending(
                name,
                message.uidl,
                path=sealed.relpath,
                size=sealed.size,
                sha256=sealed.sha256,
                server_size=message.size,
                first_seen_at=self.result.started_at,
            )
            self._publish(writer, message)
        except BaseException:
            writer.abort()
            raise
        self.ledger.mark_archived(name, message.uidl, archived_at=self.clock())
        self.undurable.discard(message.number)
        return wire_octets

    def _publish(self, writer: Writer, message: PlannedMessage) -> None:
        """Move the sealed file into place; a failed publish takes its pending row back."""
        try:
            writer.commit()
        except StoreError:
            self.ledger.drop_pending(self.account.name, message.uidl)
            raise

    def _same_message_on_server(self, message: RetainedMessage) -> bool:
        """Guard against servers that reuse or repeat UIDLs (RFC 1939 section 7 forbids both).

        If two messages share a UIDL, or the message under this UIDL now has
        another size than the one we archived, the server copy may be a
        message we never stored: keep it.
        """
        number = self.numbers[message.uidl]
        if message.uidl in self.repeated:
            reason = "its UIDL is listed more than once"
        elif message.server_size is not None and self.sizes.get(number) != message.server_size:
            reason = (
                f"its size on the server ({self.sizes.get(number)}) differs from the size "
                f"when it was archived ({message.server_size})"
            )
        else:
            return True
        log.warning(
            "account %r: not deleting message %d from the server: %s",
            self.account.name,
            number,
            reason,
        )
        return False

    def _plan_deletions(self) -> None:
        """Which archived messages on the server the retention policy lets go now."""
        policy = self.account.retention
        if policy.mode == "keep":
            return
        retained = self.ledger.retained(self.account.name, list(self.numbers))
        self.result.due_for_deletion = [
            message
            for message in retained
            if is_due(policy, message.archived_at, self.result.started_at)
        ]

    def _delete(self, client: Pop3Client) -> None:
        """DELE each due message whose archived copy is in place; note them before QUIT."""
        if self.undurable:
            # This session will end without QUIT, which would discard the DELEs anyway.
            return
        for message in self.result.due_for_deletion:
            if not self._copy_in_place(message):
                continue
            try:
                client.dele(self.numbers[message.uidl])
            except ServerError as exc:
                log.warning("account %r: DELE refused: %s", self.account.name, exc)
                self.result.message_errors.append(f"DELE {self.numbers[message.uidl]}: {exc.text}")
                continue
            self.deletions.append(message.uidl)
        if self.deletions:
            self.ledger.mark_delete_requested(self.account.name, self.deletions, at=self.clock())

    def _copy_in_place(self, message: RetainedMessage) -> bool:
        """The last look before a DELE: is this the message we archived, and is its file there?"""
        if not self._same_message_on_server(message):
            return False
        size = self.store.stat(message.path)
        if size == message.size:
            return True
        problem = "missing" if size is None else f"{size} octets, the ledger says {message.size}"
        log.error(
            "account %r: keeping message %d on the server: its archived copy %s is %s "
            "(run `popvault verify`)",
            self.account.name,
            self.numbers[message.uidl],
            message.path,
            problem,
        )
        self.result.message_errors.append(
            f"message {self.numbers[message.uidl]} kept on the server: archived copy {problem}"
        )
        return False


def _never() -> bool:
    return False


def _has_archived(ledger: Ledger, account: str) -> bool:
    messages, _ = ledger.archived_totals(account)
    return messages > 0


def _index_listing(
    listing: Sequence[tuple[int, str]], account: str
) -> tuple[dict[str, int], set[str]]:
    """Each UIDL's first message number, and the UIDLs listed more than once.

    A UIDL listed twice is fetched once (the first message) and never deleted.
    """
    numbers: dict[str, int] = {}
    repeated: set[str] = set()
    for number, uidl in listing:
        if uidl in numbers:
            log.warning(
                "account %r: the server lists UIDL %r twice (messages %d and %d); "
                "archiving the first only and deleting neither",
                account,
                uidl,
                numbers[uidl],
                number,
            )
            repeated.add(uidl)
            continue
        numbers[uidl] = number
    return numbers, repeated


class IncompleteMessage(RemoteProtocolError):
    """RETR gave fewer octets than LIST announced: a truncated or empty body."""


class _CountingSink:
    """Passes RETR chunks on, counting octets and line feeds without a CR before them."""

    def __init__(self, writer: _Writable) -> None:
        self._writer = writer
        self.octets = 0
        self.bare_lf = 0
        self._last = b""

    def write(self, chunk: bytes) -> int:
        if chunk:
            self._writer.write(chunk)
            self.octets += len(chunk)
            self.bare_lf += chunk.count(b"\n") - (self._last + chunk).count(b"\r\n")
            self._last = chunk[-1:]
        return len(chunk)


class _Writable(Protocol):
    def write(self, chunk: bytes) -> None: ...


def _check_complete(account: str, message: PlannedMessage, sink: _CountingSink) -> int:
    """An empty or short RETR is a failure, never an archived message; returns the octets.

    Servers have been seen to hand out empty bodies for messages they had not
    finished storing. LIST counts octets with CRLF line endings (RFC 1939
    section 11); a server that sends bare LF line endings sends one octet less
    per line, so those are counted back in. A server may add a final CRLF, so
    only *fewer* octets than announced mean truncation.
    """
    as_crlf = sink.octets + sink.bare_lf
    if sink.octets == 0 or as_crlf < message.size:
        raise IncompleteMessage(
            f"RETR {message.number} returned {sink.octets} octets but LIST announced "
            f"{message.size}: refusing to archive a truncated message",
            account=account,
        )
    return sink.octets


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
            ledger.mark_archived(account, pending.uidl, archived_at=clock())
            archived += 1
            log.info("account %r: recovered %s from an interrupted run", account, pending.path)
        else:
            ledger.drop_pending(account, pending.uidl)
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
        )
        for account in accounts
    ]
