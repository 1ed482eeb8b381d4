"""The fetch pipeline: pipelined RETRs into the store, made durable in batches.

Reading and durability overlap. RETRs go out in a bounded window
(:meth:`Pop3Client.retrieve`, RFC 2449 PIPELINING); each body streams into a
temp file that is *finished* (every byte written, its name fixed) when the
body ends, and handed to a worker thread that fsyncs it while the socket
keeps reading. A *batch* — bounded by :data:`BATCH_MESSAGES`,
:data:`BATCH_OCTETS` and :data:`BATCH_SECONDS` — is then made durable
together, in the order that keeps every crash safe:

1. every file of the batch durable: one ``syncfs`` for the whole batch where
   the file system is known to do that right
   (:class:`~popvault.store.durable.FileSystemSync`; it runs on the worker
   while the next batch arrives, and steps 2-4 follow once it is done), else
   each file's fsync (run on the worker as it arrived) waited for;
2. the batch's pending rows recorded in one ledger transaction;
3. every file linked to its final name, each folder fsynced once
   (:func:`~popvault.store.base.publish_together`);
4. the batch marked archived in one transaction.

A crash before 2 leaves temp files only (garbage); between 2 and 4 pending
rows whose files are or are not at their final names, which
:func:`settle_pending` finishes or undoes before the next run lists the
server. A power cut keeps only what was fsynced, which is why a row is
pending before its name is made durable, and archived only after.

While any message of a batch is not durable the session may not end with
QUIT (``Session.undurable``); a batch whose session died is still made
durable before the error goes on, since the disk work does not need the
connection.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from popvault.config import Account
from popvault.errors import (
    LedgerError,
    Pop3Error,
    RemoteProtocolError,
    ServerError,
    StoreError,
)
from popvault.identity import StatusBlindDigest
from popvault.ledger import Ledger, MessageKey, NewMessage
from popvault.plan import MAX_ATTEMPTS, PlannedMessage, Session
from popvault.pop3.client import Pop3Client, Retrieval
from popvault.redaction import redact
from popvault.store import SealedMessage, Store, Writer
from popvault.store.base import publish_together
from popvault.store.durable import FileSystemSync
from popvault.store.lineends import crlf_only

log = logging.getLogger("popvault.sync")

Clock = Callable[[], datetime]

# A batch is made durable once it holds this many messages, octets or seconds
# of work. Each batch costs two ledger commits (an fdatasync each with
# synchronous=FULL) and a folder fsync on the main thread, ~8 ms on this
# kind of disk: 256 messages a batch (2,000 messages: 0.94 s against 1.0-1.1 s
# with 64) with no descriptor held per message (Writer.close_file); 16 MiB
# bounds what a failure leaves to fetch again, and 250 ms how long a message
# waits on a slow server.
BATCH_MESSAGES: Final = 256
BATCH_OCTETS: Final = 16 << 20
BATCH_SECONDS: Final = 0.25

# RFC 1939 section 11 counts LIST sizes with CRLF line ends; a server that adds
# the final CRLF a message lacks (Dovecot does) sends exactly 2 octets more.
FINAL_CRLF_OCTETS: Final = 2
# Held messages warned about one by one in a run; past this, one summary line
# (a server whose every size is off would otherwise fill the log).
MAX_HOLD_WARNINGS: Final = 10
# Reads of an archived file when comparing it: large enough for speed, small
# enough for flat memory.
_READ_BLOCK: Final = 1 << 20

# How far a body may run past its LIST size before the RETR is abandoned. Servers
# that count LF line ends send up to twice the octets they list (a message of
# empty lines: 1 octet listed, 2 sent per line), and estimates can be off by
# much more for small messages: twice the listed size plus 16 MiB covers both,
# and still bounds what one message can write per attempt.
OVERRUN_FACTOR: Final = 2
OVERRUN_FLOOR: Final = 16 << 20


class Progress(Protocol):
    """What a run reports as it goes (the CLI draws a bar from it)."""

    def planned(self, account: str, messages: int, octets: int) -> None:
        """The run will fetch ``messages`` messages of ``octets`` octets in all."""

    def fetched(self, account: str, octets: int) -> None:
        """One more message of ``octets`` octets is archived."""


@dataclass
class Tally:
    """What the fetches of a run did, for :class:`~popvault.sync.RunResult`."""

    messages: int = 0
    octets: int = 0
    set_aside: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False


class IncompleteMessage(RemoteProtocolError):
    """RETR gave fewer octets than LIST announced: a truncated or empty body."""


class TooLargeToFetch(Pop3Error):
    """A message whose LIST size is over the account's ``max_message_size``: not fetched.

    Nothing was sent for it, so the session goes on with the next message.
    """


class OutOfStep(RemoteProtocolError):
    """A pipelined RETR's body was not the size LIST announced: the replies after it
    may be misframed (a lost terminator glues the next reply onto this body), so
    the session is dropped rather than read on. Without pipelining the same body
    is only that message's failure.
    """


class OversizedMessage(RemoteProtocolError):
    """RETR sent far more octets than LIST announced, or more than max_message_size.

    The RETR is abandoned and the session dropped: a body that never ends
    must not fill the disk (on a shared disk, the ledger's too).
    """


@dataclass
class _Stored:
    """A message of the batch under way: finished in its temp file, its fsync queued."""

    message: PlannedMessage
    writer: Writer
    record: NewMessage
    octets: int
    hold: str | None
    synced: Future[None] | None  # its fsync on the worker; None: synced with the batch


@dataclass
class _Counts:
    """RETR replies of one fetch_all: taken up, and those that went well."""

    attempted: int = 0
    succeeded: int = 0


@dataclass
class _Batch:
    members: list[_Stored] = field(default_factory=list)
    octets: int = 0
    started: float = 0.0

    def add(self, stored: _Stored, now: float) -> None:
        if not self.members:
            self.started = now
        self.members.append(stored)
        self.octets += stored.record.size

    def full(self, now: float) -> bool:
        return bool(self.members) and (
            len(self.members) >= BATCH_MESSAGES
            or self.octets >= BATCH_OCTETS
            or now - self.started >= BATCH_SECONDS
        )

    def take(self) -> list[_Stored]:
        members, self.members, self.octets = self.members, [], 0
        return members


class Fetcher:
    """Fetches planned messages of one session into the store, durably, in batches."""

    def __init__(
        self,
        account: Account,
        store: Store,
        ledger: Ledger,
        session: Session,
        tally: Tally,
        *,
        first_seen_at: datetime,
        clock: Clock,
        progress: Progress | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.account = account
        self.store = store
        self.ledger = ledger
        self.session = session
        self.tally = tally
        self.first_seen_at = first_seen_at
        self.clock = clock
        self.progress = progress
        self.stop = stop or _never
        # The batch's one sync while fetch_all runs where the file system allows it,
        # and the batch whose sync is running on the worker (see _batch_full).
        self._filesystem: FileSystemSync | None = None
        self._behind: tuple[list[_Stored], Future[None]] | None = None

    def fetch_all(self, client: Pop3Client, planned: Sequence[PlannedMessage]) -> None:
        """RETR every planned message (failing ones last), archive each durably."""
        if not planned:
            return
        # Messages that failed before go last, so that one that kills the session
        # (a body that never ends) cannot keep the ones after it from being archived.
        ordered = sorted(planned, key=lambda message: message.ledger_key in self.session.failing)
        sent: deque[PlannedMessage] = deque()
        batch = _Batch()
        # Opened before the first file is written: it reports every write error since.
        self._filesystem = self.store.filesystem_sync()
        try:
            # One worker: each file's fsync, or each batch's syncfs while the next
            # batch arrives. Syncs of one file system serialise in it anyway; what
            # matters is that they overlap with the network, not with each other.
            with ThreadPoolExecutor(1, thread_name_prefix="popvault-fsync") as syncer:
                self._fetch_batches(client, self._requests(ordered, sent), sent, batch, syncer)
        finally:
            if self._filesystem is not None:
                self._filesystem.close()
            self._filesystem = None
        self._summarise_holds()

    def _fetch_batches(
        self,
        client: Pop3Client,
        requests: Iterator[tuple[int, int]],
        sent: deque[PlannedMessage],
        batch: _Batch,
        syncer: ThreadPoolExecutor,
    ) -> None:
        try:
            self._pipeline(client, requests, sent, batch, syncer)
        except Pop3Error:
            # The session died: what was fetched whole is still made durable.
            self._commit_behind()
            self._commit(batch)
            raise
        except BaseException:
            self._discard_behind()
            self._discard(batch)
            raise
        self._commit_behind()
        self._commit(batch)

    def _batch_full(self, batch: _Batch, syncer: ThreadPoolExecutor) -> None:
        """Make a full batch durable: at once, or (one syncfs) while the next one arrives.

        With one syncfs per batch the sync of batch N runs on the worker while
        batch N+1 is read; N's rows, links and archived marks follow when N+1
        is full (or the fetch ends), its sync done by then. Files written after
        the sync began are not counted on it: their own batch has its own.
        """
        if self._filesystem is None:
            self._commit(batch)
            return
        members = batch.take()
        self._commit_behind()
        self._behind = (members, syncer.submit(self._filesystem.sync))

    def _commit_behind(self) -> None:
        behind, self._behind = self._behind, None
        if behind is not None:
            self._commit_members(*behind)

    def _discard_behind(self) -> None:
        behind, self._behind = self._behind, None
        if behind is not None:
            members, sync = behind
            sync.exception()  # the sync finished: nothing of the batch is in use any more
            self._discard_members(members)

    def _requests(
        self, ordered: Sequence[PlannedMessage], sent: deque[PlannedMessage]
    ) -> Iterator[tuple[int, int]]:
        """The (number, LIST size) pairs to RETR, read by the client as its window opens."""
        for message in ordered:
            if self.stop():
                log.info("account %r: stopping early on request", self.account.name)
                self.tally.interrupted = True
                return
            try:
                _check_allowed_size(self.account.name, message, self.account.max_message_size)
            except TooLargeToFetch as exc:
                self._count_failure(message, exc.message)
                continue
            sent.append(message)
            yield message.number, message.size

    def _pipeline(
        self,
        client: Pop3Client,
        requests: Iterator[tuple[int, int]],
        sent: deque[PlannedMessage],
        batch: _Batch,
        syncer: ThreadPoolExecutor,
    ) -> None:
        # Pipelining needs sizes to trust: a body that is not its LIST size is how
        # a lost terminator shows (OutOfStep). Without them, one RETR at a time.
        depth = self.account.pipeline_depth if self.account.trust_list_sizes else 1
        retrievals = client.retrieve(requests, depth=depth, octets=self.account.pipeline_octets)
        counts = _Counts()
        while True:
            try:
                retrieval = next(retrievals, None)
            except Pop3Error as exc:
                # The session died waiting for the reply to the oldest RETR in flight.
                if sent and (counts.succeeded or counts.attempted == 0):
                    self._count_failure(sent[0], f"the session failed during it: {exc.message}")
                raise
            if retrieval is None:
                return
            message = sent.popleft()
            counts.attempted += 1
            if not self._take(retrieval, message, batch=batch, syncer=syncer, counts=counts):
                continue
            counts.succeeded += 1
            if batch.full(time.monotonic()):
                self._batch_full(batch, syncer)

    def _take(
        self,
        retrieval: Retrieval,
        message: PlannedMessage,
        *,
        batch: _Batch,
        syncer: ThreadPoolExecutor,
        counts: _Counts,
    ) -> bool:
        """:meth:`_receive` one message; False when it failed on its own (counted).

        Errors that end the session go on, the message charged when it is to
        blame.
        """
        try:
            self._receive(retrieval, message, batch, syncer)
        except (ServerError, IncompleteMessage) as exc:
            # The server refused or botched this one message (it may have
            # vanished since UIDL); the session is still usable, so go on.
            self._count_failure(message, exc.message)
            return False
        except OversizedMessage as exc:
            self._count_failure(message, exc.message)  # its own fault, whatever came before
            raise
        except Pop3Error as exc:
            # The session died during this message. It is charged when the
            # session worked until then (an earlier message of it archived, or
            # it was the first): a message that always kills the session is set
            # aside after MAX_ATTEMPTS runs; a line that drops at random
            # places charges different messages, none of them for long.
            if counts.succeeded or counts.attempted == 1:
                self._count_failure(message, f"the session failed during it: {exc.message}")
            raise
        except (StoreError, LedgerError):
            raise  # the disk or the ledger: not this message's fault
        except Exception as exc:
            self._count_failure(message, f"internal error: {type(exc).__name__}: {exc}")
            raise
        return True

    def _out_of_step(self, message: PlannedMessage) -> OutOfStep:
        """The error that drops a pipelined session whose replies no longer match their RETRs."""
        return OutOfStep(
            f"the body of RETR {message.number} was not the size LIST announced and held "
            "a POP3 status line while more RETRs were in flight: the server lost the end "
            "of a reply, so the replies after it are not their messages; the session is "
            "dropped and nothing of it is kept (the next run goes on)",
            account=self.account.name,
        )

    def _receive(
        self,
        retrieval: Retrieval,
        message: PlannedMessage,
        batch: _Batch,
        syncer: ThreadPoolExecutor,
    ) -> None:
        """Stream one RETR reply into a temp file; queue it for the batch (or drop it).

        A message whose content is an archived row's (identity.py) is dropped:
        nothing new is stored. Otherwise its fsync is queued on the worker
        (``syncer``), or left to the batch's file-system sync.
        """
        if retrieval.error is not None:
            raise retrieval.error
        name = self.account.name
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
            retrieval.read_into(sink)
            # From here the server counts the message as retrieved.
            self.session.undurable.add(message.number)
            sealed = writer.finish()
            hold = self._check_sizes(retrieval, message, sink, writer)
            if self._known_content(message, sealed) or self._same_but_status(message, blind):
                writer.abort()
                self.session.undurable.discard(message.number)
                self._succeeded(message)
                if self.progress is not None and not message.verify:
                    self.progress.fetched(name, 0)
                return
            record = NewMessage(
                self._key_for_new(message),
                path=sealed.relpath,
                size=sealed.size,
                sha256=sealed.sha256,
                server_size=message.size,
                first_seen_at=self.first_seen_at,
                received_size=sink.as_crlf,
                hold_reason=hold,
                held_at=self.clock() if hold else None,
            )
            if self._filesystem is None:
                synced: Future[None] | None = syncer.submit(writer.sync)
            else:
                synced = None
                writer.close_file()  # the batch's syncfs needs no descriptor
        except BaseException:
            writer.abort()
            raise
        batch.add(_Stored(message, writer, record, sink.octets, hold, synced), time.monotonic())

    def _check_sizes(
        self, retrieval: Retrieval, message: PlannedMessage, sink: _CountingSink, writer: Writer
    ) -> str | None:
        """:func:`_check_sizes`, and whether a pipelined session is still in step.

        A server that loses the terminator of one reply glues the next
        replies onto its body: the body is then the wrong size *and* holds a
        line that starts like a status line. With more RETRs in flight that
        means every reply after it belongs to another message, so none is
        kept (a size that matched by chance would file one message under
        another's UIDL). Either alone is only this message's trouble.
        """
        # Pipelined only with trust_list_sizes (see _pipeline): the sizes count.
        try:
            hold = _check_sizes(
                self.account.name, message, sink, trust=self.account.trust_list_sizes
            )
        except IncompleteMessage:
            if retrieval.pipelined and writer.holds_line_starting(*_STATUS_STARTS):
                raise self._out_of_step(message) from None
            raise
        if (
            retrieval.pipelined
            and hold is not None
            and message.size_listed
            and writer.holds_line_starting(*_STATUS_STARTS)
        ):
            raise self._out_of_step(message)
        return hold

    def _commit(self, batch: _Batch) -> None:
        """Make the batch durable now: syncs, pending rows, publish, archived rows (module doc)."""
        members = batch.take()
        if members:
            self._commit_members(members, None)

    def _commit_members(self, members: list[_Stored], sync: Future[None] | None) -> None:
        """:meth:`_commit` of ``members``, whose syncfs is ``sync`` if it was begun already."""
        name = self.account.name
        synced, failure = self._synced(members, sync)
        try:
            self.ledger.record_pending_many(name, [stored.record for stored in synced])
        except BaseException:
            self._discard_members(synced)
            raise
        errors = publish_together([stored.writer for stored in synced])
        published: list[_Stored] = []
        for stored, error in zip(synced, errors, strict=True):
            if error is None:
                published.append(stored)
            else:
                # Nothing visible: take its pending row back, so nothing vouches for it.
                self.ledger.drop_pending(name, stored.record.key)
                failure = failure or error
        self.ledger.mark_archived_many(
            name, [stored.record.key for stored in published], archived_at=self.clock()
        )
        for stored in published:
            self.session.undurable.discard(stored.message.number)
            self._archived(stored)
        if failure is not None:
            raise failure

    def _synced(
        self, members: list[_Stored], sync: Future[None] | None = None
    ) -> tuple[list[_Stored], StoreError | None]:
        """Step 1: the members whose files are durable, and the first failure of the others.

        ``sync``: the batch's syncfs, begun on the worker after its last file
        was finished (:meth:`_batch_full`); None: sync now.
        """
        if self._filesystem is not None:
            try:
                if sync is None:
                    self._filesystem.sync()
                else:
                    sync.result()
            except BaseException:
                self._discard_members(members)  # which file failed is unknown: none is kept
                raise
            for stored in members:
                stored.writer.seal_synced()
            return members, None
        failure: StoreError | None = None
        synced: list[_Stored] = []
        for stored in members:
            assert stored.synced is not None  # noqa: S101 - queued on the worker (_receive)
            error = stored.synced.exception()
            if error is None:
                synced.append(stored)
            elif isinstance(error, StoreError):
                failure = failure or error  # the writer aborted itself
            else:
                self._discard_members(members)
                raise error
        return synced, failure

    def _discard(self, batch: _Batch) -> None:
        self._discard_members(batch.take())

    @staticmethod
    def _discard_members(members: Sequence[_Stored]) -> None:
        """Drop messages that will not be recorded: their temp files go."""
        for stored in members:
            # Never race the worker: an abort while its fsync runs would close its fd.
            if stored.synced is not None:
                stored.synced.exception()
            stored.writer.abort()

    def _succeeded(self, message: PlannedMessage) -> None:
        """A message fetched and archived (or found archived already): forget its failures."""
        if message.ledger_key in self.session.failing:
            self.ledger.clear_failure(self.account.name, message.ledger_key)

    def _archived(self, stored: _Stored) -> None:
        """Count a message just made durable and say what is worth saying (once)."""
        message, key = stored.message, stored.record.key
        self._succeeded(message)
        self.tally.messages += 1
        self.tally.octets += stored.octets
        if self.progress is not None and not message.verify:
            self.progress.fetched(self.account.name, stored.octets)
        name = self.account.name
        if not message.verify:
            self.session.numbers[key] = message.number
            self.session.verified.add(message.number)
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
        elif message.uidl in self.session.view.shared or key.occurrence > 1:
            log.warning(
                "account %r: the server lists UIDL %r for more than one message (RFC 1939 "
                "section 7 wants unique ids); archived message %d as its message #%d",
                name,
                message.uidl,
                message.number,
                key.occurrence,
            )
        hold = stored.hold
        if hold is not None:
            self.tally.held.append(f"message {message.number}: {hold}")
            if len(self.tally.held) <= MAX_HOLD_WARNINGS:
                log.warning(
                    "account %r: message %d (UIDL %r): %s; archived as received and kept on "
                    "the server (see `popvault held`)",
                    name,
                    message.number,
                    message.uidl,
                    hold,
                )

    def _summarise_holds(self) -> None:
        extra = len(self.tally.held) - MAX_HOLD_WARNINGS
        if extra > 0:
            log.warning(
                "account %r: %d more message(s) held on the server because their sizes differ "
                "from LIST; if this server reports estimated sizes, set trust_list_sizes = false",
                self.account.name,
                extra,
            )

    def _count_failure(self, message: PlannedMessage, error: str) -> None:
        name = self.account.name
        error = redact(error)  # it may quote the server; it goes to the ledger
        log.warning("account %r: message %d: %s", name, message.number, error)
        self.tally.problems.append(f"message {message.number}: {error}")
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
            self.tally.set_aside.append(message.uidl)

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
        self.session.numbers[key] = message.number
        self.session.verified.add(message.number)
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
        self.session.verified.add(message.number)
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
        occurrence = self.session.spare.get(message.uidl, 1)
        self.session.spare[message.uidl] = occurrence + 1
        return MessageKey(message.uidl, occurrence)


def settle_pending(store: Store, ledger: Ledger, account: str, *, clock: Clock) -> int:
    """Finish or undo what a crashed run left pending; returns how many became archived.

    A pending row names the final path its sealed file was about to be
    published under. If the file is there with the recorded size, the publish
    happened (publishing is a single link of a file already fsynced) and only
    the ledger update was lost; otherwise the publish never happened, the
    temp file is garbage, and the message is simply fetched again.
    """
    recovered: list[MessageKey] = []
    for pending in ledger.pending(account):
        if store.stat(pending.path) == pending.size:
            # The crash may have come between the link and the folder's fsync:
            # sync it before the ledger vouches for the file, since a DELE may
            # follow at once (found by tests/invariant, "linked" crash point).
            store.sync_published(pending.path)
            recovered.append(pending.key)
            log.info("account %r: recovered %s from an interrupted run", account, pending.path)
        else:
            ledger.drop_pending(account, pending.key)
    if recovered:
        ledger.mark_archived_many(account, recovered, archived_at=clock())
    return len(recovered)


def _never() -> bool:
    return False


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


class _Writable(Protocol):
    def write(self, chunk: bytes) -> None: ...


class _CountingSink:
    """Passes RETR chunks on, counting octets and line feeds without a CR before them.

    More than ``limit`` octets abandon the RETR (:class:`OversizedMessage`).
    Counting works on whole chunks (``bytes.count``), never per line.
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
        self._cr_last = False

    def write(self, chunk: bytes) -> int:
        if chunk:
            if self._limit is not None and self.octets + len(chunk) > self._limit:
                raise OversizedMessage(
                    f"RETR {self._number} went past {self._limit} octets (far more than its "
                    "LIST size, or over max_message_size): abandoned, nothing of it kept",
                    account=self._account,
                )
            # Counted before the write: the Maildir writer reuses the line-end test.
            self.bare_lf += bare_line_feeds(chunk, after_cr=self._cr_last)
            self._writer.write(chunk)
            self.octets += len(chunk)
            self._cr_last = chunk[-1] == 0x0D
        return len(chunk)

    @property
    def as_crlf(self) -> int:
        """The octets received, counting each line end as CRLF (as LIST does)."""
        return self.octets + self.bare_lf


def bare_line_feeds(chunk: bytes, *, after_cr: bool) -> int:
    """How many LFs of ``chunk`` no CR comes right before; ``after_cr``: one ended the last chunk.

    POP3 servers send CRLF line ends (RFC 1939 section 3), so the usual chunk
    has every LF after a CR: :func:`~popvault.store.lineends.crlf_only` tells
    (~70 ms for 100 MB, and the Maildir writer reuses its answer), where two
    counts, one of them a two-octet search, take ~120 ms. Any other chunk is
    counted that way.
    """
    split_crlf = after_cr and chunk[:1] == b"\n"  # the CR of this LF ended the last chunk
    if b"\r" not in chunk:
        return chunk.count(b"\n") - split_crlf  # a bare-LF server (or no line end at all)
    if crlf_only(chunk):
        # Every LF after the first octet follows a CR: only a first-octet LF may be bare.
        return int(chunk[:1] == b"\n" and not split_crlf)
    return chunk.count(b"\n") - chunk.count(b"\r\n") - split_crlf


# How a POP3 status line starts (RFC 1939 section 3): see Fetcher._check_sizes.
_STATUS_STARTS = (b"+OK", b"-ERR")


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
