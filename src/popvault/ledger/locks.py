"""Per-account locks: never two sessions archiving one account at once.

Three kinds, picked by the facade from the ledger's URL:

* a SQLite file: an exclusive ``flock`` on ``<db file>.lock.d/<account>.lock``;
* an in-memory SQLite ledger: a ``threading.Lock`` of that Ledger object;
* PostgreSQL: a session-level advisory lock on a dedicated connection.

Each dies with its holder: the kernel drops a flock when the process's file
descriptors close, and PostgreSQL drops a session's advisory locks when its
connection ends, so a holder killed with SIGKILL never leaves one behind.
A lock that is taken raises :class:`LockHeld`, which the facade turns into
``AccountBusy``; it never leaves the ledger package.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Connection, Engine, text

from popvault.errors import LedgerError
from popvault.ledger.engine import translate_errors

# How often a waiting holder tries again. Sync runs last seconds to minutes;
# 50 ms keeps a waiter responsive without busy-looping.
POLL_INTERVAL_S = 0.05

# File names stay well below NAME_MAX (255 octets on Linux filesystems).
_MAX_NAME = 200

# PostgreSQL: the holder's client pid, announced in its application_name
# (63 octets at most) so that a refused process can name it.
_PG_HOLDER_PREFIX = "popvault lock pid="
_PG_HOLDER = re.compile(re.escape(_PG_HOLDER_PREFIX) + r"(\d+)")


class LockHeld(Exception):
    """Another holder has the lock; ``pid`` is its process id if known."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"lock held (pid {pid})")


def _poll(try_once: Callable[[], bool], wait: float) -> bool:
    """Call ``try_once`` until it succeeds or ``wait`` seconds have passed."""
    deadline = time.monotonic() + max(wait, 0.0)
    while not try_once():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(POLL_INTERVAL_S, remaining))
    return True


# -- SQLite file: flock -------------------------------------------------------


def lock_file_path(database: Path, account: str) -> Path:
    """``<db file>.lock.d/<account>.lock``, the account name made file-safe.

    Percent-encoding keeps names distinct and readable ("/" cannot escape the
    folder); an over-long name is replaced by its SHA-256.
    """
    name = quote(account, safe="")
    if len(name) > _MAX_NAME:
        name = "sha256-" + hashlib.sha256(account.encode()).hexdigest()
    return database.absolute().with_name(database.name + ".lock.d") / f"{name}.lock"


@contextmanager
def file_lock(path: Path, *, wait: float) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600 in a 0700 folder)."""
    descriptor = _open_lock_file(path)
    try:
        if not _poll(lambda: _try_flock(descriptor), wait):
            raise LockHeld(_read_pid(descriptor))
        _write_pid(descriptor)
        try:
            yield
        finally:
            # Emptied, not unlinked: unlinking a flocked file lets a third
            # process lock a new file of the same name while a second waits
            # on the old one.
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the flock


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot open the account lock file {path}: {exc.strerror}") from exc


def _try_flock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_pid(descriptor: int) -> None:
    # Only informative (for the refused process's message): no fsync.
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)


def _read_pid(descriptor: int) -> int | None:
    try:
        content = os.pread(descriptor, 32, 0)
    except OSError:
        return None
    digits = content.strip()
    return int(digits) if digits.isdigit() else None


def daemon_lock_path(database: Path) -> Path:
    """``<db file>.lock.d/@daemon.lock``: the lock of the one daemon per SQLite ledger.

    No account's lock file can have this name: :func:`lock_file_path`
    percent-encodes every ``@`` of an account name.
    """
    return database.absolute().with_name(database.name + ".lock.d") / "@daemon.lock"


# -- in-memory SQLite: a lock of this process ----------------------------------


class LocalLocks:
    """One ``threading.Lock`` per account, for ledgers no other process can see."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, account: str, *, wait: float) -> Iterator[None]:
        """Hold the account's lock; raise :class:`LockHeld` after ``wait`` seconds."""
        with self._guard:
            lock = self._locks.setdefault(account, threading.Lock())
        if not lock.acquire(timeout=max(wait, 0.0)):
            raise LockHeld(os.getpid())
        try:
            yield
        finally:
            lock.release()


# -- PostgreSQL: a session-level advisory lock ---------------------------------


def advisory_key(account: str) -> int:
    """A stable signed 64-bit key for the account: the first 8 bytes of a SHA-256.

    The hashed text is prefixed, so that an application hashing bare names
    the same way does not land on our keys.
    """
    digest = hashlib.sha256(b"popvault account\0" + account.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def advisory_lock(engine: Engine, key: int, *, wait: float) -> Iterator[None]:
    """Hold ``pg_advisory_lock(key)`` on a connection of its own for the block."""
    with translate_errors(engine.url):
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        with translate_errors(engine.url):
            if not _poll(lambda: _try_advisory(connection, key), wait):
                raise LockHeld(_advisory_holder(connection, key))
            _announce_pid(connection)
        try:
            yield
        finally:
            _advisory_unlock(connection, key)
    finally:
        connection.close()


def _try_advisory(connection: Connection, key: int) -> bool:
    # AUTOCOMMIT: the connection does not sit "idle in transaction" for the
    # whole run, holding back VACUUM or tripping idle-transaction timeouts.
    query = text("SELECT pg_try_advisory_lock(:key)")
    return bool(connection.execute(query, {"key": key}).scalar_one())


def _announce_pid(connection: Connection) -> None:
    query = text("SELECT set_config('application_name', :name, false)")
    connection.execute(query, {"name": f"{_PG_HOLDER_PREFIX}{os.getpid()}"})


def _advisory_holder(connection: Connection, key: int) -> int | None:
    """The holder's client pid, from its application_name, if it announced it."""
    # A bigint advisory key shows in pg_locks as classid (high 32 bits),
    # objid (low 32 bits) and objsubid 1 (PostgreSQL docs, "pg_locks").
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    query = text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND l.classid::bigint = :high AND l.objid::bigint = :low "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    params = {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}
    name = connection.execute(query, params).scalar()
    match = _PG_HOLDER.fullmatch(name or "")
    return int(match.group(1)) if match else None


def _advisory_unlock(connection: Connection, key: int) -> None:
    try:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        connection.execute(text("RESET application_name"))
    except Exception:
        # The lock cannot outlive its session: ending the session releases
        # it, and no pooled connection is left holding it. Nothing to report.
        connection.invalidate()


__all__ = [
    "POLL_INTERVAL_S",
    "LocalLocks",
    "LockHeld",
    "advisory_key",
    "advisory_lock",
    "daemon_lock_path",
    "file_lock",
    "lock_file_path",
]
