"""account_lock(): one session per account, across processes, on both backends."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_helpers import T0

from popvault.errors import LedgerError
from popvault.ledger import AccountBusy, Ledger
from popvault.ledger.locks import advisory_key, lock_file_path

# A tiny holder: takes the lock, says so, then holds it until stdin says
# "release" (or for a number of seconds), and says when it let go.
HOLDER = """
import sys, time
from datetime import timedelta
from popvault.ledger import Ledger, LeaseTerms
url, account, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
# PostgreSQL: a 2 s lease, so that a killed holder's lease is free in 2 s.
terms = LeaseTerms(ttl=timedelta(seconds=2), heartbeat=timedelta(seconds=0.5))
with Ledger.open(url) as ledger, ledger.account_lock(account, terms=terms):
    print("locked", flush=True)
    if hold < 0:
        sys.stdin.readline()
    else:
        time.sleep(hold)
print("released", flush=True)
"""

STARTUP_TIMEOUT_S = 30


class Holder:
    """Another process holding an account's lock."""

    def __init__(self, url: str, account: str, hold: float = -1) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, account, str(hold)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until the lock is held
        assert line == "locked\n", f"holder failed to lock: {line!r}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("release\n")
        self.process.stdin.flush()
        assert self.process.wait(STARTUP_TIMEOUT_S) == 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(STARTUP_TIMEOUT_S) == -signal.SIGKILL

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


def hold_in_other_process(
    holders: list[Holder], url: str, account: str, hold: float = -1
) -> Holder:
    holder = Holder(url, account, hold)
    holders.append(holder)
    return holder


# -- across processes, both backends ------------------------------------------------


def test_second_process_gets_account_busy(
    ledger: Ledger, ledger_url: str, holders: list[Holder]
) -> None:
    holder = hold_in_other_process(holders, ledger_url, "alice")
    with pytest.raises(AccountBusy) as caught, ledger.account_lock("alice"):
        pytest.fail("entered a lock another process holds")
    busy = caught.value
    assert isinstance(busy, LedgerError)
    assert (busy.account, busy.pid) == ("alice", holder.pid)
    assert str(busy) == (
        f"account 'alice' is being archived by another popvault process (pid {holder.pid}); "
        "try again later"
    )
    with ledger.account_lock("bob"):  # other accounts are free
        pass
    holder.release()
    with ledger.account_lock("alice"):
        pass


def test_waiting_succeeds_once_the_holder_releases(
    ledger: Ledger, ledger_url: str, holders: list[Holder]
) -> None:
    hold_in_other_process(holders, ledger_url, "alice", hold=1.0)
    started = time.monotonic()
    with ledger.account_lock("alice", wait=STARTUP_TIMEOUT_S):
        waited = time.monotonic() - started
    assert 0.2 < waited < STARTUP_TIMEOUT_S


def test_waiting_too_little_still_gets_account_busy(
    ledger: Ledger, ledger_url: str, holders: list[Holder]
) -> None:
    hold_in_other_process(holders, ledger_url, "alice")
    started = time.monotonic()
    with pytest.raises(AccountBusy), ledger.account_lock("alice", wait=0.3):
        pass
    assert time.monotonic() - started >= 0.3


def test_a_sigkilled_holder_releases_the_lock(
    ledger: Ledger, ledger_url: str, holders: list[Holder]
) -> None:
    holder = hold_in_other_process(holders, ledger_url, "alice")
    with pytest.raises(AccountBusy), ledger.account_lock("alice"):
        pass
    holder.kill()
    # SQLite: the kernel drops the flock at once. PostgreSQL: the killed holder's
    # lease (2 s, HOLDER) expires, with no heartbeat to renew it.
    started = time.monotonic()
    with ledger.account_lock("alice", wait=10):
        pass
    assert time.monotonic() - started < 5


# -- within one process --------------------------------------------------------------


def test_two_ledgers_in_one_process_exclude_each_other(ledger: Ledger, ledger_url: str) -> None:
    with Ledger.open(ledger_url) as other:
        with (
            ledger.account_lock("alice"),
            pytest.raises(AccountBusy) as caught,
            other.account_lock("alice"),
        ):
            pytest.fail("entered a held lock")
        assert caught.value.pid == os.getpid()
        with other.account_lock("alice"):  # released on exit
            pass


def test_the_lock_is_released_when_the_block_raises(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError, match="boom"), ledger.account_lock("alice"):
        raise RuntimeError("boom")
    with ledger.account_lock("alice"):
        pass


def test_the_ledger_works_while_the_lock_is_held(ledger: Ledger) -> None:
    with ledger.account_lock("alice"):
        assert ledger.unarchived("alice", ["m1"]) == ["m1"]
        ledger.record_failure("alice", "m1", error="x", at=T0)
    assert len(ledger.failures("alice")) == 1


def test_closed_ledger_refuses_to_lock(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"), ledger.account_lock("alice"):
        pass


# -- SQLite lock files -----------------------------------------------------------------


def test_lock_file_is_private_and_names_its_holder(tmp_path: Path) -> None:
    database = tmp_path / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{database}") as ledger:
        path = lock_file_path(database, "alice")
        assert path == tmp_path / "ledger.sqlite3.lock.d" / "alice.lock"
        with ledger.account_lock("alice"):
            assert path.read_text() == f"{os.getpid()}\n"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == ""  # emptied, kept: unlinking would race


@pytest.mark.parametrize("account", ["../escape", "a/b", "..", "", "ü name", "x" * 300])
def test_lock_file_names_stay_in_their_folder(tmp_path: Path, account: str) -> None:
    database = tmp_path / "ledger.sqlite3"
    path = lock_file_path(database, account)
    assert path.parent == tmp_path / "ledger.sqlite3.lock.d"
    assert len(path.name) <= 255
    assert path.name.endswith(".lock")
    with Ledger.open(f"sqlite:///{database}") as ledger, ledger.account_lock(account):
        assert path.is_file()


def test_lock_file_names_are_distinct() -> None:
    database = Path("/srv/ledger.sqlite3")
    names = {lock_file_path(database, a) for a in ["a/b", "a%2Fb", "A/b", "x" * 300, "x" * 301]}
    assert len(names) == 5


def test_unwritable_lock_folder_is_a_ledger_error(tmp_path: Path) -> None:
    database = tmp_path / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{database}") as ledger:
        (tmp_path / "ledger.sqlite3.lock.d").write_text("a file, not a folder")
        with pytest.raises(LedgerError, match="account lock file"), ledger.account_lock("a"):
            pass


# -- in-memory SQLite ----------------------------------------------------------------------


def test_in_memory_ledger_uses_a_lock_of_this_process() -> None:
    with Ledger.open("sqlite://") as ledger:
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with ledger.account_lock("alice"):
                held.set()
                release.wait(10)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert held.wait(10)
            with pytest.raises(AccountBusy) as caught, ledger.account_lock("alice"):
                pass
            assert caught.value.pid == os.getpid()
            with ledger.account_lock("bob"):
                pass
            threading.Timer(0.2, release.set).start()
            with ledger.account_lock("alice", wait=10):
                pass
        finally:
            release.set()
            thread.join()


# -- PostgreSQL keys ----------------------------------------------------------------------------


def test_advisory_keys_are_stable_signed_64_bit_and_distinct() -> None:
    keys = {advisory_key(name) for name in ["alice", "Alice", "bob", "", "ü"]}
    assert len(keys) == 5
    assert all(-(2**63) <= key < 2**63 for key in keys)
    # Stable across processes and releases: a change would let an old and a new
    # popvault run one account at once.
    assert advisory_key("alice") == advisory_key("alice")
    assert advisory_key("alice") == ALICE_KEY


ALICE_KEY = -7346162186040434869
