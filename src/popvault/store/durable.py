"""The store's one door to the file system: durability, private modes, error mapping.

Everything in :mod:`popvault.store` that creates, writes, fsyncs, links or
removes a file goes through this module, so that the rules live in one place:

* files are created ``0600`` and folders ``0700`` whatever the umask is, because
  the archive holds private mail;
* ``os.fsync`` is called here and nowhere else in popvault: on a file before it
  is published, and on a folder after an entry in it was added or removed
  (POSIX makes a new name durable only once its folder is synced);
* an :class:`OSError` is turned into a :class:`~popvault.errors.StoreError`
  exactly once, with the path and a plain cause ("disk full", ...);
* where a file system is known to do it right, a batch's files are made
  durable by one ``syncfs(2)`` instead of one ``fsync`` each
  (:class:`FileSystemSync`).

Being the one door also makes it the place to watch: :func:`observe` reports
every change made here, in order, to a recorder (a power-loss test replays
them to work out what a power cut would have left: only what was fsynced).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Literal

from popvault.errors import StoreError

log = logging.getLogger("popvault.store")

FILE_MODE = 0o600
DIR_MODE = 0o700

# Plain words for the failures a user can act on; anything else keeps the
# operating system's own wording.
_CAUSES: dict[int, str] = {
    errno.ENOSPC: "disk full",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EDQUOT: "quota exceeded",
}


OperationKind = Literal[
    "create",
    "write",
    "file_fsync",
    "filesystem_sync",
    "mkdir",
    "link",
    "rename",
    "unlink",
    "folder_fsync",
]


@dataclass(frozen=True, slots=True)
class Operation:
    """One change made at the durability boundary, reported after it succeeded.

    ``kind`` is one of: ``create`` (a new empty file at ``path``), ``write``
    (``data`` appended to the file at ``path``; files here are written once,
    front to back), ``file_fsync`` (the file at ``path`` flushed to stable
    storage), ``mkdir``, ``link`` (a second name ``target`` for the file at
    ``path``), ``rename`` (``path`` moved to ``target``; nothing renames
    today, the kind is there so that a recorder is ready for it), ``unlink``
    (the name ``path`` removed; also reported when there was nothing to
    remove), ``folder_fsync`` (the entries of folder ``path`` flushed) and
    ``filesystem_sync`` (the contents of every file written so far on the
    file system that holds ``path`` flushed; folder entries are not counted
    as flushed by it, see :class:`FileSystemSync`).
    """

    kind: OperationKind
    path: Path
    target: Path | None = None
    data: bytes = b""


Recorder = Callable[[Operation], None]

# None unless a test observes this module: each reporting point costs one
# comparison with None when nobody records.
_recorder: Recorder | None = None


@contextmanager
def observe(recorder: Recorder) -> Iterator[Recorder]:
    """Report every :class:`Operation` of this module to ``recorder`` while the block runs.

    For tests. The recorder is called right after each operation succeeded,
    in the thread that made it (a batch's file fsyncs may run on a worker
    thread: a recorder must then be thread-safe), so that an operation is
    reported before anything that depends on it can happen. Nested blocks
    replace the outer recorder until they end.
    """
    global _recorder  # noqa: PLW0603 - one recorder per process, checked at each change
    previous, _recorder = _recorder, recorder
    try:
        yield recorder
    finally:
        _recorder = previous


def describe(exc: OSError) -> str:
    """The cause of ``exc`` in plain words, e.g. ``"disk full"``."""
    if exc.errno in _CAUSES:
        return _CAUSES[exc.errno]
    return exc.strerror or type(exc).__name__


def store_error(action: str, path: Path, exc: OSError) -> StoreError:
    """A :class:`StoreError` naming what was attempted, where, and why it failed."""
    return StoreError(f"cannot {action} {path}: {describe(exc)}")


@contextmanager
def os_errors(action: str, path: Path) -> Iterator[None]:
    """Map any :class:`OSError` raised inside the block into a :class:`StoreError`."""
    try:
        yield
    except OSError as exc:
        raise store_error(action, path, exc) from exc


def create_private_file(path: Path) -> int:
    """Create ``path`` (which must not exist) as a ``0600`` file; return its descriptor.

    ``O_EXCL`` makes the creation fail rather than reuse or follow anything
    already at that name.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    with os_errors("create", path):
        fd = os.open(path, flags, FILE_MODE)
        if _recorder is not None:
            _recorder(Operation("create", path))
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
        except BaseException:
            os.close(fd)
            unlink_quietly(path)
            raise
    return fd


def write_all(fd: int, data: bytes | bytearray | memoryview, path: Path) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write only part)."""
    view = memoryview(data)
    with os_errors("write", path):
        while view:
            written = os.write(fd, view)
            if _recorder is not None:
                _recorder(Operation("write", path, data=bytes(view[:written])))
            view = view[written:]


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` octets at ``offset`` of ``fd`` back now.

    A hint, never a durability step: it waits for nothing and promises
    nothing (the file is durable only after its fsync or the batch's
    syncfs), so a failure is ignored. Linux's ``POSIX_FADV_DONTNEED`` starts
    the writeback of the range's dirty pages without waiting for it, so a
    large message goes to disk while the rest of it arrives and the final sync
    has less to wait for.
    """
    if hasattr(os, "posix_fadvise"):  # not on macOS: there the final sync does it all
        with suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def sync_and_close(fd: int, path: Path) -> None:
    """Flush ``fd`` to stable storage, then close it; the descriptor is closed either way."""
    try:
        with os_errors("sync", path):
            os.fsync(fd)
        if _recorder is not None:
            _recorder(Operation("file_fsync", path))
    finally:
        close_quietly(fd)


def close_quietly(fd: int) -> None:
    """Close ``fd``; a failure to close is of no use to the caller any more."""
    try:
        os.close(fd)
    except OSError as exc:
        log.debug("closing descriptor %d failed: %s", fd, describe(exc))


def sync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` durable (new or removed names)."""
    with os_errors("sync folder", path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if _recorder is not None:
        _recorder(Operation("folder_fsync", path))


# Folder chains this process has fsynced end to end. A crash between a mkdir
# and the fsync of its parent leaves a folder whose entry may not survive a
# power cut; the next process starts with an empty set, so it syncs the whole
# chain once before publishing anything into it, instead of trusting a folder
# merely because it exists.
_synced_chains: set[Path] = set()


def ensure_dirs(base: Path, relative: str) -> None:
    """Create the folders of ``relative`` under ``base`` that are missing, durably.

    ``base`` must exist. Each created folder gets mode ``0700``. The first time
    in this process (and whenever a folder had to be created), every folder of
    the chain is synced deepest first, then ``base`` and its parent, so the
    whole chain survives a crash even if an earlier process died half-way.
    """
    created = False
    current = base
    chain: list[Path] = []
    for part in relative.split("/"):
        current = current / part
        chain.append(current)
        created = _make_dir(current) or created
    if current in _synced_chains and not created:
        return
    for folder in [*reversed(chain), base, base.parent]:
        sync_dir(folder)
    _synced_chains.add(current)


def ensure_root(root: Path) -> None:
    """Create the absolute folder ``root`` and its missing parents, durably, mode ``0700``."""
    existing = root
    with os_errors("inspect", root):
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    missing = root.relative_to(existing)
    if missing.parts:
        ensure_dirs(existing, "/".join(missing.parts))


def _make_dir(path: Path) -> bool:
    """Create ``path`` as a ``0700`` folder; False if a folder is already there."""
    with os_errors("create folder", path):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if not path.is_dir():
                raise StoreError(f"cannot create folder {path}: a file is in the way") from None
            return False
        if _recorder is not None:
            _recorder(Operation("mkdir", path))
        os.chmod(path, DIR_MODE)  # the umask may have taken bits away
    return True


def publish(source: Path, target: Path) -> None:
    """Give the file at ``source`` its final name ``target``, durably; never overwrite.

    A hard link fails with ``EEXIST`` when anything holds ``target`` already,
    which makes a name collision an error instead of a silent overwrite (a
    rename would replace the other file). If the folder cannot be synced the
    new name is taken back, so that a failed publish leaves nothing visible.
    """
    link(source, target)
    try:
        sync_dir(target.parent)
    except BaseException:
        unlink_quietly(target)
        raise


def link(source: Path, target: Path) -> None:
    """Give the file at ``source`` the second name ``target``; never overwrite.

    Not durable until ``target``'s folder is synced (:func:`sync_dir`): for a
    batch of publishes into one folder (group commit) that is one fsync for
    all of them. :func:`unlink_quietly` takes a name back.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise StoreError(f"cannot publish {target}: the name is taken; not overwriting") from None
    except OSError as exc:
        raise store_error("publish", target, exc) from exc
    if _recorder is not None:
        _recorder(Operation("link", source, target))


def create_once(path: Path, data: bytes) -> bool:
    """Create the small file ``path`` holding ``data``, whole and durably, unless it exists.

    ``data`` goes to a temp name beside ``path`` (``0600``), is fsynced, then
    the temp file is linked to ``path`` and the folder fsynced; the temp name
    goes last. A reader finds all of ``data`` at ``path`` or nothing, as with
    a rename, but a link never replaces a file another process put there in
    the meantime (a rename would, silently): then nothing is written and the
    result is False. True: ``path`` is new and durable.

    Not :func:`link`: tests count that function's calls as message publishes.
    """
    temp = path.with_name(f".{path.name.lstrip('.')}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = create_private_file(temp)
    try:
        write_all(fd, data, temp)
    except BaseException:
        close_quietly(fd)
        unlink_quietly(temp)
        raise
    try:
        sync_and_close(fd, temp)
        created = _link_new(temp, path)
        if created:
            _sync_or_take_back(path)
    finally:
        unlink_quietly(temp)  # garbage either way; its removal need not be durable
    return created


def _link_new(source: Path, target: Path) -> bool:
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        raise store_error("create", target, exc) from exc
    if _recorder is not None:
        _recorder(Operation("link", source, target))
    return True


def _sync_or_take_back(path: Path) -> None:
    """Fsync ``path``'s folder; if that fails, remove ``path`` again (as :func:`publish`)."""
    try:
        sync_dir(path.parent)
    except BaseException:
        unlink_quietly(path)
        raise


def retire(path: Path, *, sync_folder: bool = True) -> None:
    """Remove a temp file after its publish; failures are logged, not raised.

    By now the message is durable under its final name; a temp name that comes
    back after a crash is only garbage for :func:`remove_if_stale`, which is
    why a batch retires its temp files without syncing their folder
    (``sync_folder=False``): nothing depends on the removal surviving.
    """
    try:
        os.unlink(path)
        if _recorder is not None:
            _recorder(Operation("unlink", path))
        if sync_folder:
            sync_dir(path.parent)
    except (OSError, StoreError) as exc:
        cause = describe(exc) if isinstance(exc, OSError) else str(exc)
        log.warning("could not remove temp file %s after publishing: %s", path, cause)


def discard(path: Path) -> None:
    """Remove ``path`` if it exists (an aborted temp file)."""
    with os_errors("remove", path):
        path.unlink(missing_ok=True)
    if _recorder is not None:
        _recorder(Operation("unlink", path))


def unlink_quietly(path: Path) -> None:
    """Best-effort removal while another error is already on its way up."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, describe(exc))
        return
    if _recorder is not None:
        _recorder(Operation("unlink", path))


def remove_if_stale(path: Path, older_than: float) -> bool:
    """Remove the regular file ``path`` if it was last modified before ``older_than``.

    ``older_than`` is a POSIX timestamp. The modification time, not the access
    time, decides: many systems mount with ``noatime``, and a writer that is
    still streaming a large message keeps touching the modification time.
    """
    with os_errors("remove stale temp file", path):
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= older_than:
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False  # another run cleaned it up first
    if _recorder is not None:
        _recorder(Operation("unlink", path))
    return True


def file_size(path: Path) -> int | None:
    """Size of the regular file at ``path``; None if nothing is there."""
    with os_errors("inspect", path):
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"cannot inspect {path}: not a regular file")
    return info.st_size


def open_for_reading(path: Path) -> BinaryIO:
    """Open the regular file at ``path`` for streaming reads (never through a symlink)."""
    with os_errors("open", path):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def require_dir(path: Path, what: str) -> None:
    """Fail unless ``path`` is an existing folder (an unmounted disk must not look empty)."""
    with os_errors(f"use {what}", path):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise StoreError(f"{what} {path} does not exist (is its disk mounted?)") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(f"cannot use {what} {path}: not a folder")


# -- one sync for a whole batch ------------------------------------------------------------

# Whether FileSystemSync may be used at all. False makes every batch fsync its
# files one by one; the tests run both ways (and so could an operator's patch).
WHOLE_FILE_SYSTEM_SYNC = True

# File systems whose syncfs(2) writes back every dirty file of the file system
# and then flushes the device cache (ext4 and XFS through their journal commit
# or an explicit flush; btrfs through its transaction commit). Anything else —
# NFS, FUSE (whose syncfs may return 0 having synced nothing), overlayfs, tmpfs,
# a file system we have not read — gets one fsync per file.
_SYNCFS_FILE_SYSTEMS: Final = frozenset({"ext4", "xfs", "btrfs"})

# Before Linux 5.8 syncfs(2) did not report writeback errors: a failed write
# could go unnoticed. Since 5.8 it reports every error on the file system since
# the descriptor it is called on was opened (errseq_t in the superblock).
_SYNCFS_REPORTS_ERRORS_SINCE: Final = (5, 8)


class FileSystemSync:
    """One ``syncfs(2)`` makes the contents of a whole batch's files durable.

    Group commit with per-file fsyncs pays a device flush (and, on ext4
    without a journal, a write of the temp folder) for every message; one
    syncfs writes the batch back together and flushes once, which on a VM's
    disk is several times cheaper for small messages.

    Why this is as safe as an fsync per file, in the order :mod:`popvault.fetch`
    uses it (files written, :meth:`sync`, pending rows, links, folder fsync,
    archived rows):

    * the descriptor is opened before the batch's first file is written, and
      syncfs reports every writeback error of the file system since then
      (Linux >= 5.8), so a file that failed to reach the disk fails the batch
      — with errors of unrelated files too, which only makes us retry;
    * the names that make a message visible are still made durable by the
      folder fsync of :func:`publish_together`, never by the syncfs: on ext4
      without a journal syncfs may write directory and inode-table blocks
      after its cache flush, and it is that later folder fsync's flush that
      covers them — before any row says "archived". The power-loss model
      therefore counts a ``filesystem_sync`` as flushing file contents only.

    :meth:`open_for` returns None where either point is not known to hold;
    the caller then fsyncs each file.
    """

    def __init__(self, fd: int, path: Path, syncfs: Callable[[int], int]) -> None:
        self._fd: int | None = fd
        self.path = path
        self._syncfs = syncfs

    @classmethod
    def open_for(cls, folder: Path) -> FileSystemSync | None:
        """A syncer for the file system holding ``folder``, or None to fsync each file.

        ``folder`` need not exist yet: a folder is made on the file system of
        its nearest existing ancestor, which is the one opened. A folder that
        exists but cannot be opened is a :class:`StoreError`: the store could
        not write there either.
        """
        if not WHOLE_FILE_SYSTEM_SYNC or not sys.platform.startswith("linux"):
            return None
        if _kernel_version() < _SYNCFS_REPORTS_ERRORS_SINCE:
            return None
        fd = _open_nearest_folder(folder)
        if fd is None:
            return None  # nothing exists: the caller's own checks say so
        try:
            if _file_system_type(os.fstat(fd).st_dev) not in _SYNCFS_FILE_SYSTEMS:
                os.close(fd)
                return None
            syncfs = _libc_syncfs()
        except BaseException:
            os.close(fd)
            raise
        if syncfs is None:
            os.close(fd)
            return None
        return cls(fd, folder, syncfs)

    def sync(self) -> None:
        """Flush every file written on this file system since :meth:`open_for`."""
        if self._fd is None:
            raise RuntimeError("the file system sync is closed")
        if self._syncfs(self._fd) != 0:
            import ctypes  # noqa: PLC0415 - loaded with the function, see _libc_syncfs

            code = ctypes.get_errno()
            failure = OSError(code, os.strerror(code))
            raise store_error("sync the file system of", self.path, failure)
        if _recorder is not None:
            _recorder(Operation("filesystem_sync", self.path))

    def close(self) -> None:
        if self._fd is not None:
            close_quietly(self._fd)
            self._fd = None

    def __enter__(self) -> FileSystemSync:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_nearest_folder(folder: Path) -> int | None:
    """A descriptor of ``folder`` or of its nearest existing ancestor; None if none exists."""
    current = folder
    while True:
        try:
            return os.open(current, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if current == current.parent:
                return None
            current = current.parent
        except OSError as exc:
            raise store_error("open", current, exc) from exc


def _kernel_version() -> tuple[int, int]:
    """(major, minor) of the running kernel; (0, 0) when the release does not say."""
    release = os.uname().release
    parts = release.split(".", 2)
    try:
        return int(parts[0]), int("".join(c for c in parts[1][:3] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def _file_system_type(device: int) -> str | None:
    """The type of the mounted file system with device number ``device`` (mountinfo)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                # "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw" (proc(5))
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and " - " in line:
                    return line.split(" - ", 1)[1].split()[0]
    except OSError:
        return None
    return None


def _libc_syncfs() -> Callable[[int], int] | None:
    """The C library's ``syncfs``, or None where it has none (ctypes is loaded only here)."""
    try:
        import ctypes  # noqa: PLC0415 - only runs that can use syncfs pay for ctypes

        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    result: Callable[[int], int] = function
    return result
