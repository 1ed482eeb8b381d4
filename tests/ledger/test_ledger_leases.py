"""Leases with fencing tokens (issue 11 part 2), on SQLite and the real PostgreSQL.

Claim, renew, release and check; a second owner is kept out of a live lease and
takes an expired one with a greater token; the first owner's renewal, check and
fenced writes then raise LeaseLost and change no row; concurrent claimers on
PostgreSQL (exactly one wins); a property test over claim/renew/release/expire
by several owners; and claim/renew timings at 10,000 leases (printed).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import T0, sha
from sqlalchemy import select

from popvault.errors import LeaseLost
from popvault.ledger import Lease, LeaseOwner, Ledger, NewMessage
from popvault.ledger.models import Message, Run
from postgres import reset_ledger

TTL = timedelta(seconds=30)
A, B, C = (LeaseOwner(f"host-{n}", 100 + i, f"daemon-{n}") for i, n in enumerate("abc"))


def message(uidl: str) -> NewMessage:
    return NewMessage(
        uidl, path=f"alice/new/{uidl}.eml", size=3, sha256=sha(uidl), server_size=3,
        first_seen_at=T0,
    )  # fmt: skip


def rows(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Every messages and runs row, to show a refused write changed nothing."""
    with ledger._engine.connect() as connection:
        return {
            table.name: [tuple(row) for row in connection.execute(select(table).order_by("id"))]
            for table in (Message.__table__, Run.__table__)
        }


def test_claim_renew_release(ledger: Ledger) -> None:
    lease = ledger.claim_lease("alice", A, TTL, now=T0, server_host="pop.example")
    assert lease == Lease("alice", A, 1, T0, T0 + TTL, "pop.example")
    assert lease.expires_at.tzinfo is not None
    assert ledger.current_lease("alice") == lease
    ledger.check_lease(lease, now=T0 + TTL - timedelta(microseconds=1))

    renewed = ledger.renew_lease(lease, TTL, now=T0 + timedelta(seconds=10))
    assert renewed == Lease("alice", A, 1, T0, T0 + timedelta(seconds=40), "pop.example")
    ledger.check_lease(renewed, now=T0 + timedelta(seconds=35))  # past the first expiry

    ledger.release_lease(renewed, now=T0 + timedelta(seconds=20))
    with pytest.raises(LeaseLost, match="expired"):
        ledger.check_lease(renewed, now=T0 + timedelta(seconds=20))
    ledger.release_lease(renewed, now=T0 + timedelta(seconds=21))  # again: no error
    again = ledger.claim_lease("alice", B, TTL, now=T0 + timedelta(seconds=20))
    assert again is not None
    assert (again.owner, again.token) == (B, 2)  # free at once after a release


def test_the_database_clock_is_used_without_now(ledger: Ledger) -> None:
    lease = ledger.claim_lease("alice", A, TTL)
    assert lease is not None
    assert lease.expires_at - lease.claimed_at == TTL
    ledger.check_lease(lease)
    assert ledger.renew_lease(lease, TTL).expires_at >= lease.expires_at
    assert ledger.claim_lease("alice", B, TTL) is None
    ledger.release_lease(lease)
    taken = ledger.claim_lease("alice", B, TTL)
    assert taken is not None
    assert taken.token == 2


def test_a_live_lease_keeps_others_out_and_an_expired_one_passes_on(ledger: Ledger) -> None:
    first = ledger.claim_lease("alice", A, TTL, now=T0)
    assert first is not None
    assert ledger.claim_lease("alice", B, TTL, now=T0 + TTL - timedelta(microseconds=1)) is None
    assert ledger.current_lease("alice") == first  # the refused claim changed nothing
    second = ledger.claim_lease("alice", B, TTL, now=T0 + TTL)
    assert second is not None
    assert (second.owner, second.token, second.claimed_at) == (B, 2, T0 + TTL)
    # Other accounts have their own counters.
    other = ledger.claim_lease("bob", B, TTL, now=T0)
    assert other is not None
    assert other.token == 1


def test_the_holder_may_claim_again_and_fences_out_its_earlier_claim(ledger: Ledger) -> None:
    first = ledger.claim_lease("alice", A, TTL, now=T0)
    again = ledger.claim_lease("alice", A, TTL, now=T0 + timedelta(seconds=1))
    assert first is not None
    assert again is not None
    assert again.token == first.token + 1
    with pytest.raises(LeaseLost, match="token 2"):
        ledger.check_lease(first, now=T0 + timedelta(seconds=1))


def test_the_old_holder_is_fenced_out_and_writes_nothing(ledger: Ledger) -> None:
    now = [T0]
    old = ledger.claim_lease("alice", A, TTL, now=T0)
    assert old is not None
    stale = ledger.fenced(old, clock=lambda: now[0])
    run = stale.start_run("alice", started_at=T0)
    stale.record_pending_many("alice", [message("m1"), message("m2")])
    stale.mark_archived_many("alice", ["m1"], archived_at=T0)
    before = rows(ledger)
    assert len(before["messages"]) == 2

    now[0] = T0 + TTL  # A stalls past its expiry; B takes the account
    new = ledger.claim_lease("alice", B, TTL, now=now[0])
    assert new is not None
    assert new.token > old.token

    with pytest.raises(LeaseLost, match=r"claimed since by host-b pid 101 \(daemon daemon-b\)"):
        ledger.renew_lease(old, TTL, now=now[0])
    with pytest.raises(LeaseLost) as lost:
        ledger.check_lease(old, now=now[0])
    assert (lost.value.account, lost.value.token) == ("alice", old.token)
    writes = [
        lambda: stale.record_pending_many("alice", [message("m3")]),
        lambda: stale.mark_archived_many("alice", ["m2"], archived_at=now[0]),
        lambda: stale.mark_delete_requested("alice", ["m1"], at=now[0]),
        lambda: stale.mark_deleted("alice", ["m1"], at=now[0]),
        lambda: stale.finish_run(
            run, ended_at=now[0], outcome="ok", messages=1, bytes=3, error=None
        ),
        lambda: stale.start_run("alice", started_at=now[0]),
        lambda: stale.reconcile("alice", [], now=now[0]),
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            write()
    assert rows(ledger) == before
    # The new holder's fenced writes go through; reads through the stale view still work.
    fresh = ledger.fenced(new, clock=lambda: now[0])
    fresh.mark_archived_many("alice", ["m2"], archived_at=now[0])
    assert [m.uidl for m in stale.archived("alice")] == ["m1", "m2"]
    stale.close()  # closes nothing: the ledger owns the engine
    assert ledger.pending("alice") == []


def test_an_expired_lease_fences_even_before_anyone_claims(ledger: Ledger) -> None:
    lease = ledger.claim_lease("alice", A, TTL, now=T0)
    assert lease is not None
    fenced = ledger.fenced(lease, clock=lambda: T0 + TTL)
    with pytest.raises(LeaseLost, match="expired"):
        fenced.record_pending_many("alice", [message("m1")])
    with pytest.raises(LeaseLost, match="expired"):
        ledger.renew_lease(lease, TTL, now=T0 + TTL)
    assert ledger.pending("alice") == []


def test_a_lease_is_checked_against_its_own_account(ledger: Ledger) -> None:
    ghost = Lease("nobody", A, 1, T0, T0 + TTL)
    with pytest.raises(LeaseLost, match="no lease"):
        ledger.check_lease(ghost, now=T0)
    with pytest.raises(ValueError, match="positive"):
        ledger.claim_lease("alice", A, timedelta(0), now=T0)


def test_a_fenced_view_dies_with_its_ledger(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    lease = ledger.claim_lease("alice", A, TTL)
    assert lease is not None
    view = ledger.fenced(lease)
    ledger.close()
    with pytest.raises(Exception, match="closed"):
        view.pending("alice")


@pytest.mark.postgres
def test_concurrent_claimers_on_postgres_exactly_one_wins(postgres_url: str) -> None:
    reset_ledger(postgres_url)  # the module's database, emptied
    owners = [LeaseOwner("host", n, f"daemon-{n}") for n in range(8)]
    ledgers = [Ledger.open(postgres_url) for _ in owners]
    try:
        for round_ in range(20):
            account = f"acct-{round_}"
            barrier = threading.Barrier(len(owners))
            won: list[Lease | None] = [None] * len(owners)

            def claim(n: int, account: str, barrier: Any, won: list[Lease | None]) -> None:
                barrier.wait()
                won[n] = ledgers[n].claim_lease(account, owners[n], TTL)

            threads = [
                threading.Thread(target=claim, args=(n, account, barrier, won))
                for n in range(len(owners))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            winners = [lease for lease in won if lease is not None]
            assert len(winners) == 1, round_
            assert winners[0].token == 1
            assert ledgers[0].current_lease(account) == winners[0]
    finally:
        for opened in ledgers:
            opened.close()


_counter = itertools.count()

OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "renew", "release", "check", "wait"]),
        st.integers(0, 2),
        st.integers(1, 40),
    ),
    max_size=30,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_tokens_grow_and_one_live_owner_at_most(ledger: Ledger, ops: list[Any]) -> None:
    account = f"prop-{next(_counter)}"  # a new account per example: no reset needed
    owners = (A, B, C)
    now = T0
    held: dict[int, Lease] = {}
    tokens: list[int] = []
    for kind, who, seconds in ops:
        if kind == "wait":
            now += timedelta(seconds=seconds)
        elif kind == "claim":
            before = ledger.current_lease(account)
            live = before is not None and before.expires_at > now
            lease = ledger.claim_lease(account, owners[who], TTL, now=now)
            mine = before is not None and before.owner == owners[who]
            assert (lease is not None) == (not live or mine)
            if lease is not None:
                assert not tokens or lease.token > tokens[-1]
                tokens.append(lease.token)
                held[who] = lease
        elif who in held:
            current = ledger.current_lease(account)
            valid = current is not None and current.token == held[who].token
            valid = valid and current is not None and current.expires_at > now
            try:
                if kind == "renew":
                    held[who] = ledger.renew_lease(held[who], TTL, now=now)
                elif kind == "release":
                    ledger.release_lease(held[who], now=now)
                else:
                    ledger.check_lease(held[who], now=now)
                assert valid or kind == "release"
            except LeaseLost:
                assert not valid
        # At most one owner holds a live lease with the current token.
        current = ledger.current_lease(account)
        live_holders = [
            who
            for who, lease in held.items()
            if current is not None and lease.token == current.token and current.expires_at > now
        ]
        assert len(live_holders) <= 1
        if current is not None:
            assert current.token == (tokens[-1] if tokens else 0)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("POPVAULT_LEASE_TIMINGS"),
    reason="a measurement, not a check (about a minute): set POPVAULT_LEASE_TIMINGS=1 to print it",
)
def test_claim_and_renew_timings_at_10000_leases(ledger: Ledger, capsys) -> None:
    owners = [LeaseOwner("host", n, f"daemon-{n}") for n in range(4)]
    count = 10_000
    started = time.perf_counter()
    # Long leases: claiming and renewing 10,000 one by one takes longer than TTL.
    ttl = timedelta(hours=1)
    leases = [ledger.claim_lease(f"acct-{n:05d}", owners[n % 4], ttl) for n in range(count)]
    claimed = time.perf_counter() - started
    assert all(lease is not None for lease in leases)
    held = [lease for lease in leases if lease is not None]
    started = time.perf_counter()
    renewed = [ledger.renew_lease(lease, ttl) for lease in held]
    renewing = time.perf_counter() - started
    started = time.perf_counter()
    for lease in renewed[:1000]:
        ledger.check_lease(lease)
    checking = time.perf_counter() - started
    fenced = ledger.fenced(renewed[-1])
    started = time.perf_counter()
    for n in range(200):
        fenced.record_pending_many(renewed[-1].account, [message(f"m{n}")])
    writing = time.perf_counter() - started
    # The next claim of a due account, with 10,000 rows: one more statement.
    started = time.perf_counter()
    ledger.release_lease(renewed[5000])
    again = ledger.claim_lease(renewed[5000].account, owners[0], ttl)
    reclaim = time.perf_counter() - started
    assert again is not None
    with capsys.disabled():
        backend = ledger._engine.dialect.name
        print(
            f"\n[{backend}] {count} leases: claim {claimed / count * 1e3:.3f} ms each "
            f"({claimed:.2f} s), renew {renewing / count * 1e3:.3f} ms each ({renewing:.2f} s), "
            f"check {checking:.3f} ms each (1000), fenced 1-row write "
            f"{writing / 200 * 1e3:.3f} ms each (200), release+claim at 10k rows "
            f"{reclaim * 1e3:.2f} ms"
        )
