"""What a run holds on PostgreSQL (issue 11 part 2): a lease kept by a heartbeat, fenced writes.

The stalled holder is a real process stopped with SIGSTOP: its heartbeat
stops with it, its lease expires, another ledger takes the account; once it
is resumed, every write it tries through its hold fails and its check says
the lease is lost.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import postgres
from popvault.errors import LeaseLost, LedgerError
from popvault.ledger import AccountBusy, LeaseOwner, LeaseTerms, Ledger, MessageKey

pytestmark = pytest.mark.postgres

SHORT = LeaseTerms(ttl=timedelta(seconds=1.5), heartbeat=timedelta(seconds=0.3))
WAIT_S = 30

# Holds an account on a 2 s lease; on each stdin line tries a fenced write and a
# check, and prints what became of them.
HOLDER = """
import sys
from datetime import UTC, datetime, timedelta
from popvault.errors import LeaseLost
from popvault.ledger import Ledger, LeaseTerms
url = sys.argv[1]
terms = LeaseTerms(ttl=timedelta(seconds=2), heartbeat=timedelta(seconds=0.5))
with Ledger.open(url) as ledger, ledger.account_lock("alice", terms=terms) as hold:
    print("held", hold.lease.token, flush=True)
    for line in sys.stdin:
        outcome = []
        try:
            hold.ledger.start_run("alice", started_at=datetime.now(UTC))
            outcome.append("wrote")
        except LeaseLost:
            outcome.append("write-refused")
        try:
            hold.check()
            outcome.append("held")
        except LeaseLost:
            outcome.append("lost")
        print(" ".join(outcome), flush=True)
"""


@pytest.fixture
def pg(postgres_url: str) -> str:
    """An empty PostgreSQL ledger (leases hold accounts on PostgreSQL; SQLite keeps its flock)."""
    postgres.reset_ledger(postgres_url)
    return postgres_url


@pytest.fixture
def holder(pg: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, pg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def ask(process: subprocess.Popen[str]) -> str:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write("go\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def test_the_heartbeat_keeps_a_lease_past_its_time_to_live(pg: str) -> None:
    with Ledger.open(pg) as ledger, Ledger.open(pg) as other:
        with ledger.account_lock("alice", terms=SHORT) as hold:
            assert hold.lease is not None
            time.sleep(SHORT.ttl.total_seconds() * 2.5)
            hold.check()  # renewed several times meanwhile
            with pytest.raises(AccountBusy) as busy, other.account_lock("alice", terms=SHORT):
                pytest.fail("took a lease that its holder's heartbeat keeps")
            assert busy.value.pid == ledger.lease_owner.pid
            hold.ledger.start_run("alice", started_at=datetime.now(UTC))  # a fenced write
        # Released at the end of the block: free at once, with the next token.
        with other.account_lock("alice", terms=SHORT) as taken:
            assert taken.lease is not None
            assert taken.lease.token == hold.lease.token + 1


def heartbeats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "popvault lease heartbeat"]


def test_closing_the_ledger_ends_its_heartbeat_even_with_a_hold_open(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = heartbeats()
    ledger = Ledger.open(pg)
    with caplog.at_level(logging.WARNING, logger="popvault"):
        with ledger.account_lock("alice", terms=SHORT) as hold:
            assert [t for t in heartbeats() if t not in before]
            ledger.close()  # as a daemon that stops with a run still going
            time.sleep(SHORT.heartbeat.total_seconds() * 4)
            with pytest.raises(LedgerError):
                hold.ledger.start_run("alice", started_at=datetime.now(UTC))
        assert not [t for t in heartbeats() if t not in before]
    # No "could not renew ... is closed" every heartbeat, nor "could not release".
    assert not caplog.records, caplog.text


def test_a_stopped_holder_is_fenced_out_and_writes_nothing_when_resumed(
    pg: str, holder: subprocess.Popen[str]
) -> None:
    assert holder.stdout is not None
    first = holder.stdout.readline().split()
    assert first[0] == "held", first
    assert ask(holder) == "wrote held"
    holder.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    with Ledger.open(pg) as other, other.account_lock("alice", wait=WAIT_S, terms=SHORT) as hold:
        took = time.monotonic() - started
        # Within the holder's lease (2 s) plus one heartbeat (0.5 s) and the polling.
        assert took < 2 + 0.5 + 1.0, took
        assert hold.lease is not None
        assert hold.lease.token == int(first[1]) + 1
        holder.send_signal(signal.SIGCONT)
        assert ask(holder) == "write-refused lost"
        runs = other.running_accounts()
        # Only the write it made while it held the lease.
        assert runs == ["alice"]
        hold.check()  # the resumed one's heartbeat did not take it back
        current = other.current_lease("alice")
        assert current is not None
        assert current.token == hold.lease.token


def test_a_lease_lost_to_another_claim_fails_the_check_and_every_write(pg: str) -> None:
    thief = LeaseOwner("elsewhere.example", 1, "0" * 16)
    with Ledger.open(pg) as ledger, ledger.account_lock("alice", terms=SHORT) as hold:
        assert hold.lease is not None
        # Another daemon's claim after an expiry (forced: the lease's time is in the past).
        later = datetime.now(UTC) + SHORT.ttl + timedelta(seconds=1)
        taken = ledger.claim_lease("alice", thief, SHORT.ttl, now=later)
        assert taken is not None
        assert taken.token == hold.lease.token + 1
        with pytest.raises(LeaseLost):
            hold.check()
        with pytest.raises(LeaseLost):
            hold.ledger.start_run("alice", started_at=datetime.now(UTC))
        with pytest.raises(LeaseLost):
            hold.ledger.mark_deleted("alice", [MessageKey("u1", 1)], at=datetime.now(UTC))
    # The block's end did not release the thief's lease.
    with Ledger.open(pg) as reader:
        current = reader.current_lease("alice")
        assert current is not None
        assert current.owner == thief


def test_renew_leases_renews_held_ones_in_one_call_and_leaves_out_lost_ones(pg: str) -> None:
    owner, other = LeaseOwner.new(), LeaseOwner.new()
    ttl = timedelta(seconds=30)
    with Ledger.open(pg) as ledger:
        leases = [ledger.claim_lease(f"acct{n}", owner, ttl) for n in range(1000)]
        held = [lease for lease in leases if lease is not None]
        assert len(held) == 1000
        # acct7 passes to another owner after an expiry.
        later = datetime.now(UTC) + ttl + timedelta(seconds=1)
        assert ledger.claim_lease("acct7", other, ttl, now=later) is not None
        started = time.monotonic()
        renewed = ledger.renew_leases(held, ttl)
        elapsed = time.monotonic() - started
        assert set(renewed) == {(lease.account, lease.token) for lease in held} - {
            ("acct7", held[7].token)
        }
        assert all(expiry > held[0].expires_at for expiry in renewed.values())
        assert elapsed < 5, elapsed  # a generous bound: the benchmark measures it
        with pytest.raises(ValueError, match="one owner"):
            ledger.renew_leases([held[0], ledger.claim_lease("x", other, ttl)], ttl)  # type: ignore[list-item]


def test_lease_terms_refuse_a_heartbeat_not_well_inside_the_lease() -> None:
    with pytest.raises(ValueError, match="at most half"):
        LeaseTerms(ttl=timedelta(seconds=30), heartbeat=timedelta(seconds=20))
    with pytest.raises(ValueError, match="positive"):
        LeaseTerms(ttl=timedelta(0))
