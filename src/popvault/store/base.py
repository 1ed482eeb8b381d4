"""What every archive store shares: the sealed result, the store protocol, the writer.

A :class:`Writer` streams one message into a private temp file, hashing the
bytes as they are stored, and publishes it in two steps:

``seal()``
    flush and fsync the temp file and fix the final name; nothing is visible
    yet. The caller records ``(relpath, size, sha256)`` as *pending*.
``commit()``
    link the temp file to its final name (never over another file), fsync the
    folder, then drop the temp name.

After a crash a pending row therefore names either a complete file of exactly
the recorded size and digest, or nothing.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Protocol

from popvault.errors import StoreError
from popvault.store import durable

# Bytes gathered before one write(2): POP3 chunks are often a single line, and
# a system call per line would dominate the cost of a large message. The
# buffer is the only per-message memory the writer holds, so it stays flat.
_BUFFER_SIZE = 64 * 1024
# Octets written between two requests to start their writeback
# (durable.start_writeback): a message larger than this goes to disk as it
# arrives, so the batch's sync at its end waits for little (a 100 MB message:
# 41 ms less, for 12 requests of ~0.4 ms each). Smaller messages, nearly all
# of them, never ask: their batch's one sync is cheaper than a request each.
WRITEBACK_STEP = 8 << 20


@dataclass(frozen=True)
class SealedMessage:
    """A message whose bytes are durable in a temp file and whose final name is fixed."""

    relpath: str
    """Where the message will be published, relative to the archive root, ``/``-separated."""
    size: int
    """Octets of the stored bytes (after any line-ending conversion)."""
    sha256: str
    """Hex SHA-256 of the stored bytes."""


class Store(Protocol):
    """One account's folder in the archive, in one format (Maildir or EML)."""

    root: Path
    folder: str

    def begin(self, *, received_at: datetime) -> Writer:
        """Start writing one message archived at ``received_at`` (aware UTC)."""
        ...

    def stat(self, relpath: str) -> int | None:
        """Size of the published message file at ``relpath``; None if there is none."""
        ...

    def fingerprint(self) -> Fingerprint:
        """A sink that hashes a message as this store would store it, writing nothing."""
        ...

    def open(self, relpath: str) -> BinaryIO:
        """Open the published message file at ``relpath`` for streaming reads."""
        ...

    def sync_published(self, relpath: str) -> None:
        """Make the name of the published file at ``relpath`` durable (fsync its folder)."""
        ...

    def canonical(self, relpath: str) -> str:
        """The relpath a file was published under, for a file a mail reader may have moved."""
        ...

    def iter_files(self) -> Iterator[str]:
        """The relpaths of every published message file of this store (never temp files)."""
        ...

    def filesystem_sync(self) -> durable.FileSystemSync | None:
        """One sync for every file this store writes from now on, or None: fsync each file.

        Opened before a batch's first file is written (see
        :class:`~popvault.store.durable.FileSystemSync`); the caller closes it.
        """
        ...

    def cleanup_tmp(self, *, older_than: timedelta = timedelta(hours=36)) -> int:
        """Remove temp files older than ``older_than``; return how many were removed."""
        ...


class Fingerprint:
    """The size and SHA-256 a message would have in the store, without storing it.

    Fed the chunks the POP3 client delivers, it applies the format's
    conversion (Maildir's CRLF to LF) and hashes the result, so that its
    digest can be compared with the one the ledger recorded for a stored file.
    """

    def __init__(self, convert: Callable[[bytes], bytes], finish: Callable[[], bytes]) -> None:
        self._convert = convert
        self._finish = finish
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Take the next chunk of the message as the POP3 client delivered it."""
        self._add(self._convert(chunk))

    def sha256(self) -> str:
        """Hex SHA-256 of the stored form; call once, after the last chunk."""
        self._add(self._finish())
        return self._hash.hexdigest()

    def _add(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)


def _unchanged(chunk: bytes) -> bytes:
    return chunk


def _nothing() -> bytes:
    return b""


class _State(enum.Enum):
    OPEN = "open"
    FINISHED = "finished"  # every byte written and the name fixed; not yet fsynced
    SEALED = "sealed"
    LINKED = "linked"  # published, its folder not yet fsynced (group commit)
    COMMITTED = "committed"
    ABORTED = "aborted"


class Writer:
    """Streams one message into the store; see the module docstring for the protocol.

    Subclasses decide how bytes are stored (:meth:`_consume`, :meth:`_finish`)
    and where the message goes (:meth:`_choose_relpath`, :meth:`_prepare_publish`).
    A writer is meant for one thread. Used as a context manager, it aborts when
    the block raises; it does not commit on its own.
    """

    def __init__(self, *, root: Path, tmp_path: Path) -> None:
        self._root = root
        self._tmp_path = tmp_path
        self._fd: int | None = durable.create_private_file(tmp_path)
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        # Octets written to the temp file, and where the writeback not yet asked for begins.
        self._written = 0
        self._writeback_from = 0
        self._state = _State.OPEN
        self._sealed: SealedMessage | None = None

    def write(self, chunk: bytes) -> None:
        """Store the next ``chunk`` of the message as the POP3 client delivered it."""
        self._expect(_State.OPEN, "write")
        with self._aborting():
            self._consume(chunk)

    def seal(self) -> SealedMessage:
        """Flush and fsync the temp file and fix the final relpath; nothing is visible yet."""
        self._expect(_State.OPEN, "seal")
        sealed = self.finish()
        self.sync()
        return sealed

    def finish(self) -> SealedMessage:
        """Write out every byte and fix the final relpath; durable only after :meth:`sync`.

        The first half of :meth:`seal`, for group commit: the fsyncs of a
        batch's files (:meth:`sync`, on a worker thread) overlap with reading
        the next messages from the network.
        """
        self._expect(_State.OPEN, "finish")
        with self._aborting():
            self._finish()
            self._flush()
            relpath = self._choose_relpath(self._size)
        self._sealed = SealedMessage(relpath, self._size, self._hash.hexdigest())
        self._state = _State.FINISHED
        return self._sealed

    def sync(self) -> None:
        """Fsync and close the finished temp file: the second half of :meth:`seal`.

        May run on another thread than the writing one, once :meth:`finish`
        returned there and until the writer is used again.
        """
        self._expect(_State.FINISHED, "sync")
        with self._aborting():
            fd, self._fd = self._fd, None
            assert fd is not None  # noqa: S101 - per-file syncs never close_file
            durable.sync_and_close(fd, self._tmp_path)
        self._state = _State.SEALED

    def seal_synced(self) -> None:
        """Close the finished temp file whose content a file-system sync made durable.

        The other second half of :meth:`seal`, for a batch made durable by one
        :meth:`~popvault.store.durable.FileSystemSync.sync`: the caller calls
        it after that sync returned, which came after every file of the batch
        was finished.
        """
        self._expect(_State.FINISHED, "seal")
        self.close_file()
        self._state = _State.SEALED

    def close_file(self) -> None:
        """Close the finished temp file's descriptor, leaving it unsynced (finished still).

        For a batch that a file-system sync makes durable: its files need no
        descriptor until then, and a batch of hundreds must not hold hundreds.
        """
        self._expect(_State.FINISHED, "close")
        fd, self._fd = self._fd, None
        if fd is not None:
            durable.close_quietly(fd)

    def holds_line_starting(self, *prefixes: bytes) -> bool:
        """Whether a line of the finished message (as stored) starts with one of ``prefixes``.

        Reads the temp file back; for the rare message whose content must be
        looked at after the fact (a body of the wrong size).
        """
        if self._state not in (_State.FINISHED, _State.SEALED):
            raise RuntimeError(f"cannot scan: the message writer is {self._state.value}")
        needles = [b"\n" + prefix for prefix in prefixes]
        longest = max(map(len, needles), default=1)
        with durable.open_for_reading(self._tmp_path) as stream:
            tail = b"\n"  # the file's start is a line start
            while block := stream.read(1 << 20):
                window = tail + block
                if any(needle in window for needle in needles):
                    return True
                tail = window[-(longest - 1) :]
        return False

    def commit(self) -> None:
        """Publish the sealed message under its relpath and make that durable.

        Raises :class:`StoreError` (and leaves nothing visible) if the name is
        taken or the file system fails; the caller may then only :meth:`abort`.
        """
        self._expect(_State.SEALED, "commit")
        assert self._sealed is not None  # noqa: S101 - SEALED always holds the result
        with self._aborting():
            self._prepare_publish()
            durable.publish(self._tmp_path, self._root / self._sealed.relpath)
        self._state = _State.COMMITTED
        durable.retire(self._tmp_path)

    def link(self) -> Path:
        """Publish the sealed message without syncing its folder; return that folder.

        For :func:`publish_together`, which syncs each folder once for a
        whole batch. The name is not durable until then; the caller must not
        vouch for the message before.
        """
        self._expect(_State.SEALED, "link")
        assert self._sealed is not None  # noqa: S101 - SEALED always holds the result
        target = self._root / self._sealed.relpath
        with self._aborting():
            self._prepare_publish()
            durable.link(self._tmp_path, target)
        self._state = _State.LINKED
        return target.parent

    def take_back(self) -> None:
        """Undo :meth:`link` (its folder could not be synced), then :meth:`abort`."""
        self._expect(_State.LINKED, "take back")
        assert self._sealed is not None  # noqa: S101 - LINKED always holds the result
        durable.unlink_quietly(self._root / self._sealed.relpath)
        self._state = _State.SEALED
        self.abort()

    def retire(self) -> None:
        """After the linked name's folder was synced: drop the temp name; committed."""
        self._expect(_State.LINKED, "retire")
        self._state = _State.COMMITTED
        durable.retire(self._tmp_path, sync_folder=False)

    def abort(self) -> None:
        """Drop the message: close and remove the temp file. Idempotent; never raises.

        After :meth:`commit` it does nothing: the message is published and stays.
        """
        if self._state in (_State.COMMITTED, _State.ABORTED):
            return
        self._state = _State.ABORTED
        if self._fd is not None:
            durable.close_quietly(self._fd)
            self._fd = None
        try:
            durable.discard(self._tmp_path)
        except StoreError as exc:
            # A temp file is invisible to readers; cleanup_tmp removes it later.
            durable.log.warning("abort left a temp file behind: %s", exc)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()

    def _emit(self, data: bytes) -> None:
        """Append stored bytes: hash them, count them, buffer them."""
        if not data:
            return
        self._hash.update(data)
        self._size += len(data)
        if not self._buffer and len(data) >= _BUFFER_SIZE:
            self._write_out(data)  # a large chunk: no copy
            return
        self._buffer += data
        if len(self._buffer) >= _BUFFER_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._write_out(self._buffer)
            self._buffer.clear()

    def _write_out(self, data: bytes | bytearray) -> None:
        assert self._fd is not None  # noqa: S101 - only called while OPEN
        durable.write_all(self._fd, data, self._tmp_path)
        self._written += len(data)
        if self._written - self._writeback_from >= WRITEBACK_STEP:
            durable.start_writeback(
                self._fd, self._writeback_from, self._written - self._writeback_from
            )
            self._writeback_from = self._written

    def _expect(self, state: _State, action: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"cannot {action}: the message writer is {self._state.value}")

    @contextmanager
    def _aborting(self) -> Iterator[None]:
        """Abort on any failure, so that a failed message leaves no file behind."""
        try:
            yield
        except BaseException:
            self.abort()
            raise

    # Hooks for the formats.

    def _consume(self, chunk: bytes) -> None:
        """Turn one received chunk into stored bytes and pass them to :meth:`_emit`."""
        self._emit(chunk)

    def _finish(self) -> None:
        """Emit whatever :meth:`_consume` held back at the end of the message."""

    def _choose_relpath(self, size: int) -> str:
        """The final relpath of the message, once all ``size`` stored octets are known."""
        raise NotImplementedError

    def _prepare_publish(self) -> None:
        """Create the destination folder if it does not exist yet (durably)."""


def publish_together(writers: Sequence[Writer]) -> list[StoreError | None]:
    """Publish sealed messages with one folder fsync per folder (group commit).

    Returns, per writer, None when its message is published durably, or the
    :class:`StoreError` that kept it from being (its name taken, its folder
    not syncable); a writer that failed is aborted and leaves nothing visible.
    The names become durable with their folder's fsync, which is why each is
    linked first and every folder synced after: a power cut before that sync
    may take the names back, never leave a name without its (fsynced) content.
    """
    errors: list[StoreError | None] = [None] * len(writers)
    folders: dict[Path, list[int]] = {}
    for index, writer in enumerate(writers):
        try:
            folders.setdefault(writer.link(), []).append(index)
        except StoreError as exc:
            errors[index] = exc
    for folder, members in folders.items():
        try:
            durable.sync_dir(folder)
        except StoreError as exc:
            for index in members:
                writers[index].take_back()
                errors[index] = exc
    for writer, error in zip(writers, errors, strict=True):
        if error is None:
            writer.retire()
    return errors


def check_folder(folder: str) -> str:
    """Validate an account folder: relative, ``/``-separated, no ``.`` or ``..`` parts."""
    parts = folder.split("/")
    if not folder or folder.startswith("/") or "\0" in folder:
        raise ValueError(f"invalid archive folder {folder!r}: must be a relative path")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid archive folder {folder!r}: empty, '.' or '..' part")
    return folder


def resolve(root: Path, relpath: str) -> Path:
    """The absolute path of ``relpath``; it must stay under ``root`` (it comes from the ledger)."""
    pure = PurePosixPath(relpath)
    if not relpath or "\0" in relpath or pure.is_absolute() or ".." in pure.parts:
        raise StoreError(f"invalid archive path {relpath!r}: must be relative, without '..'")
    return root.joinpath(*pure.parts)


def utc(received_at: datetime) -> datetime:
    """``received_at`` in UTC; a naive datetime is a caller's bug, not a guess to make."""
    if received_at.utcoffset() is None:
        raise ValueError("received_at must be timezone-aware")
    return received_at.astimezone(UTC)


class BaseStore:
    """The parts of a store that do not depend on the format."""

    tmp_name: str = "tmp"

    def __init__(self, root: Path, folder: str, *, create_root: bool = True) -> None:
        if not root.is_absolute():
            raise ValueError(f"archive root must be absolute, not {str(root)!r}")
        self.root = root
        self.folder = check_folder(folder)
        self.create_root = create_root
        # What ensure_layout and ensure_folder made sure of (see there).
        self._layouts: set[tuple[str, ...]] = set()
        self._folders: set[str] = set()

    @property
    def path(self) -> Path:
        """The account's folder on disk."""
        return self.root.joinpath(*self.folder.split("/"))

    @property
    def tmp_dir(self) -> Path:
        """Where unpublished messages are written."""
        return self.path / self.tmp_name

    def require_root(self) -> None:
        """Fail unless the archive root exists: an unmounted disk must not look empty."""
        durable.require_dir(self.root, "archive root")

    def filesystem_sync(self) -> durable.FileSystemSync | None:
        """A sync of the file system the temp files are on (links cannot leave it)."""
        return durable.FileSystemSync.open_for(self.tmp_dir)

    def fingerprint(self) -> Fingerprint:
        """A sink that hashes a message as stored, writing nothing (bytes kept as sent)."""
        return Fingerprint(_unchanged, _nothing)

    def stat(self, relpath: str) -> int | None:
        """Size of the published message file at ``relpath``; None if there is none.

        Raises :class:`StoreError` if the archive root itself is missing, so
        that an unmounted disk is never mistaken for lost messages (a caller
        only asks about paths it recorded, so the root existed once).
        """
        resolve(self.root, relpath)  # refuse a path escaping the root before any lookup
        self.require_root()
        return durable.file_size(resolve(self.root, self.locate(relpath)))

    def open(self, relpath: str) -> BinaryIO:
        """Open the published message file at ``relpath`` for streaming reads."""
        return durable.open_for_reading(resolve(self.root, self.locate(relpath)))

    def locate(self, relpath: str) -> str:
        """Where the message published at ``relpath`` is now (a format may let readers move it)."""
        return relpath

    def canonical(self, relpath: str) -> str:
        """The relpath a file was published under (the inverse of :meth:`locate`)."""
        return relpath

    def sync_published(self, relpath: str) -> None:
        """Make the name of the published file at ``relpath`` durable (fsync its folder).

        For a publish a crash cut short between the link and the folder's
        fsync: the file is visible, but until its folder is synced a power cut
        may still take the name away (the content was fsynced before the link).
        """
        durable.sync_dir(resolve(self.root, self.locate(relpath)).parent)

    def cleanup_tmp(self, *, older_than: timedelta = timedelta(hours=36)) -> int:
        """Remove temp files not modified for ``older_than``; return how many.

        36 hours is the Maildir convention's limit for a delivery to finish;
        anything older was left by a crash or a failed abort.
        """
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        cutoff = time.time() - older_than.total_seconds()
        names = list_dir(self.tmp_dir, files=True)
        return sum(durable.remove_if_stale(self.tmp_dir / name, cutoff) for name in names)

    def ensure_layout(self, *subfolders: str) -> None:
        """Create the account folder and ``subfolders`` in it if missing (first use).

        Checked once per store object (one run), not per message: a folder
        removed under a running archiver makes its next publish fail loudly.
        """
        if subfolders in self._layouts:
            return
        self._make_layout(subfolders)
        self._layouts.add(subfolders)

    def ensure_folder(self, relative: str) -> None:
        """Create ``relative`` under the account folder, durably, once per store object."""
        if relative not in self._folders:
            durable.ensure_dirs(self.path, relative)
            self._folders.add(relative)

    def _make_layout(self, subfolders: tuple[str, ...]) -> None:
        if self.create_root:
            durable.ensure_root(self.root)
        else:
            self.require_root()
        durable.ensure_dirs(self.root, self.folder)
        for sub in subfolders:
            durable.ensure_dirs(self.path, sub)


def list_dir(path: Path, *, files: bool) -> list[str]:
    """Sorted names of the regular files (or folders) in ``path``; empty if it is missing.

    Names starting with ``.`` are skipped, as the Maildir convention asks.
    """
    with durable.os_errors("list", path):
        try:
            with os.scandir(path) as entries:
                return sorted(
                    entry.name
                    for entry in entries
                    if not entry.name.startswith(".")
                    and (entry.is_file(follow_symlinks=False) if files else entry.is_dir())
                )
        except FileNotFoundError:
            return []
