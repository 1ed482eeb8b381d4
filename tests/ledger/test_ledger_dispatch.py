"""The ledger as the daemons' shared schedule (issue 11 part 3), on SQLite and PostgreSQL.

Due accounts are claimed earliest first, up to the free slots; on PostgreSQL a
claim is a lease, so a second daemon (another Ledger object: another owner)
cannot claim the account again until the first finishes it or its lease
expires; concurrent claimers never share an account; ``max_per_host`` bounds
the live leases per POP3 server across every claimer, also when they claim at
once; finishing writes the next run and releases the lease in one fenced
transaction, and keeps an earlier run asked for meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import postgres
from popvault.errors import LeaseLost
from popvault.ledger import DueRun, LeaseTerms, Ledger, ScheduleEntry

TERMS = LeaseTerms(ttl=timedelta(seconds=30), heartbeat=timedelta(seconds=10))


def now() -> datetime:
    return datetime.now(UTC)


def entry(account: str, at: datetime | None, **changes: object) -> ScheduleEntry:
    values: dict[str, object] = {
        "account": account,
        "next_run_at": at,
        "consecutive_failures": 0,
        "backoff_reason": None,
        "daemon_pid": 1,
        "daemon_host": "here",
        "updated_at": now(),
    }
    values.update(changes)
    return ScheduleEntry(**values)  # type: ignore[arg-type]


def plan(ledger: Ledger, due: dict[str, datetime | None]) -> None:
    ledger.ensure_schedules([entry(name, at) for name, at in due.items()], replace=True)


def names(runs: list[DueRun]) -> list[str]:
    return [run.account for run in runs]


def postgresql(ledger: Ledger) -> bool:
    return ledger.url.startswith("postgresql")


@pytest.fixture
def other(ledger: Ledger, ledger_url: str) -> Iterator[Ledger]:
    """A second Ledger on the same database: another daemon (another lease owner)."""
    with Ledger.open(ledger_url) as opened:
        yield opened


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """An empty PostgreSQL ledger database (leases and max_per_host are PostgreSQL's)."""
    postgres.reset_ledger(postgres_url)
    return postgres_url


@pytest.fixture
def pair(pg_url: str) -> Iterator[tuple[Ledger, Ledger]]:
    """Two daemons' Ledgers on one PostgreSQL ledger."""
    with Ledger.open(pg_url) as first, Ledger.open(pg_url) as second:
        yield first, second


def test_due_accounts_are_claimed_earliest_first_up_to_the_limit(ledger: Ledger) -> None:
    t = now()
    plan(
        ledger,
        {
            "late": t - timedelta(seconds=1),
            "early": t - timedelta(minutes=5),
            "future": t + timedelta(minutes=5),
            "unplanned": None,
            "unconfigured": t - timedelta(hours=1),
        },
    )
    servers = dict.fromkeys(["late", "early", "future", "unplanned", "mine-only"], "pop.example")
    assert names(ledger.claim_due(servers, limit=1, terms=TERMS)) == ["early"]
    if not postgresql(ledger):
        # SQLite: no leases; the daemon leaves out what it runs itself.
        got = ledger.claim_due(servers, limit=5, terms=TERMS, busy={"early"})
        assert names(got) == ["late"]
        assert all(run.hold is None for run in got)
    else:
        assert names(ledger.claim_due(servers, limit=5, terms=TERMS)) == ["late"]
    assert ledger.claim_due(servers, limit=0, terms=TERMS) == []


@pytest.mark.postgres
def test_on_sqlite_the_accounts_running_here_do_not_send_a_claim_to_a_second_query(
    ledger: Ledger, statements: list[str]
) -> None:
    if postgresql(ledger):
        pytest.skip("SQLite's: on PostgreSQL their live leases leave them out of the query")
    t = now()
    plan(ledger, {f"a{n}": t - timedelta(minutes=10 - n) for n in range(6)})
    servers = dict.fromkeys([f"a{n}" for n in range(6)], "pop.example")
    busy = {"a0", "a1", "a2"}  # the earliest, running here: still due on SQLite
    statements.clear()
    assert names(ledger.claim_due(servers, limit=2, terms=TERMS, busy=busy)) == ["a3", "a4"]
    # One query: the names list goes only when other daemons' rows crowd in.
    assert len([s for s in statements if "SELECT" in s.upper()]) == 1, statements


def test_a_claimed_account_is_not_claimed_again_until_finished(pair: tuple[Ledger, Ledger]) -> None:
    ledger, other = pair
    t = now()
    plan(ledger, {"a": t - timedelta(seconds=5), "b": t - timedelta(seconds=1)})
    servers = {"a": "pop.example", "b": "pop.example"}
    (first,) = ledger.claim_due(servers, limit=1, terms=TERMS)
    assert first.account == "a"
    assert first.hold is not None
    assert first.hold.lease is not None
    assert first.hold.lease.server_host == "pop.example"
    # Another daemon sees only b; the first owner's own second claim skips a as well.
    assert names(other.claim_due(servers, limit=5, terms=TERMS)) == ["b"]
    assert ledger.claim_due(servers, limit=5, terms=TERMS) == []
    later = t + timedelta(minutes=5)
    ledger.finish_claim(first, entry("a", later, consecutive_failures=2, backoff_reason="why"))
    (row,) = [row for row in ledger.schedules() if row.account == "a"]
    assert (row.next_run_at, row.consecutive_failures, row.backoff_reason) == (later, 2, "why")
    lease = ledger.current_lease("a")
    assert lease is not None
    assert lease.expires_at <= now()
    assert other.claim_due(servers, limit=5, terms=TERMS) == []  # a is not due, b is leased


@pytest.mark.postgres
def test_an_account_whose_holder_died_is_due_again_when_its_lease_expires(
    pair: tuple[Ledger, Ledger],
) -> None:
    ledger, other = pair
    t = now()
    plan(ledger, {"a": t - timedelta(minutes=2)})
    # A claim a minute old with a 30 s lease: its holder stopped renewing (killed).
    (dead,) = ledger.claim_due({"a": "h"}, limit=1, terms=TERMS, now=t - timedelta(minutes=1))
    (taken,) = other.claim_due({"a": "h"}, limit=1, terms=TERMS)
    assert dead.hold is not None
    assert taken.hold is not None
    assert taken.hold.lease is not None
    assert dead.hold.lease is not None
    assert taken.hold.lease.token == dead.hold.lease.token + 1
    # The dead holder's finish is fenced out: nothing written, the new holder plans.
    with pytest.raises(LeaseLost):
        ledger.finish_claim(dead, entry("a", t + timedelta(hours=9)))
    (row,) = ledger.schedules()
    assert row.next_run_at == t - timedelta(minutes=2)
    other.finish_claim(taken, entry("a", t + timedelta(minutes=5)))
    assert ledger.schedules()[0].next_run_at == t + timedelta(minutes=5)


def test_a_run_asked_for_during_a_run_is_kept_when_it_is_sooner(ledger: Ledger) -> None:
    t = now()
    plan(ledger, {"a": t - timedelta(seconds=5), "b": t - timedelta(seconds=4)})
    servers = {"a": "h", "b": "h"}
    run_a, run_b = ledger.claim_due(servers, limit=2, terms=TERMS)
    soon = t + timedelta(seconds=2)
    ledger.save_schedule(entry("a", soon))  # a reload: run a again soon
    ledger.save_schedule(entry("b", t + timedelta(hours=2)))  # later than b's plan: not kept
    ledger.finish_claim(run_a, entry("a", t + timedelta(minutes=5)))
    ledger.finish_claim(run_b, entry("b", t + timedelta(minutes=5)))
    a, b = ledger.schedules()
    assert (a.next_run_at, b.next_run_at) == (soon, t + timedelta(minutes=5))


def test_release_leaves_the_account_due_for_any_daemon(ledger: Ledger, other: Ledger) -> None:
    t = now()
    plan(ledger, {"a": t - timedelta(seconds=5)})
    (run,) = ledger.claim_due({"a": "h"}, limit=1, terms=TERMS)
    ledger.release_claim(run)  # a daemon stopping before (or during) the run
    claimer = other if postgresql(ledger) else ledger
    assert names(claimer.claim_due({"a": "h"}, limit=1, terms=TERMS)) == ["a"]


@pytest.mark.postgres
def test_max_per_host_counts_every_daemons_live_leases(pair: tuple[Ledger, Ledger]) -> None:
    ledger, other = pair
    t = now()
    plan(ledger, {f"m{n}": t - timedelta(seconds=20 - n) for n in range(8)})
    # One server under three spellings of its name (RFC 4343: case-insensitive).
    servers = {f"m{n}": ("POP.Example.", "pop.example", "pop.EXAMPLE")[n % 3] for n in range(6)}
    servers |= {"m6": "other.example", "m7": "other.example"}
    mine = ledger.claim_due(servers, limit=8, terms=TERMS, max_per_host=3)
    assert names(mine) == ["m0", "m1", "m2", "m6", "m7"]
    theirs = other.claim_due(servers, limit=8, terms=TERMS, max_per_host=3)
    assert theirs == []
    ledger.finish_claim(mine[0], entry("m0", t + timedelta(minutes=5)))
    assert names(other.claim_due(servers, limit=8, terms=TERMS, max_per_host=3)) == ["m3"]


@pytest.mark.postgres
def test_concurrent_claimers_share_nothing_and_respect_max_per_host(pg_url: str) -> None:
    t = now()
    daemons = [Ledger.open(pg_url) for _ in range(6)]
    try:
        plan(daemons[0], {f"a{n:02}": t - timedelta(seconds=n) for n in range(40)})
        servers = {f"a{n:02}": f"pop{n % 2}.example" for n in range(40)}
        claims: list[list[DueRun]] = [[] for _ in daemons]
        start = threading.Barrier(len(daemons))

        def claim(index: int) -> None:
            start.wait()
            claims[index] = daemons[index].claim_due(servers, limit=3, terms=TERMS, max_per_host=2)

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(daemons))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        claimed = [run.account for runs in claims for run in runs]
        assert len(claimed) == len(set(claimed))  # no account claimed twice
        per_host: dict[str, int] = {}
        for account in claimed:
            per_host[servers[account]] = per_host.get(servers[account], 0) + 1
        assert per_host == {"pop0.example": 2, "pop1.example": 2}
    finally:
        for daemon in daemons:
            daemon.close()


def test_ensure_schedules_adds_missing_rows_or_replaces_all(ledger: Ledger) -> None:
    t = now()
    plan(ledger, {"a": t})
    ledger.ensure_schedules([entry("a", t + timedelta(hours=1)), entry("b", t)], replace=False)
    a, b = ledger.schedules()
    assert (a.next_run_at, b.next_run_at) == (t, t)
    ledger.ensure_schedules([entry("a", t + timedelta(hours=1))], replace=True)
    assert ledger.schedules()[0].next_run_at == t + timedelta(hours=1)


def test_a_heartbeat_adopts_the_stale_rows_of_its_accounts(ledger: Ledger) -> None:
    t = now()
    old = t - timedelta(minutes=30)
    ledger.ensure_schedules(
        [
            entry("gone", t, daemon_pid=7, daemon_host="left", updated_at=old),
            entry("live", t, daemon_pid=8, daemon_host="peer", updated_at=t),
            entry("foreign", t, daemon_pid=7, daemon_host="left", updated_at=old),
        ],
        replace=True,
    )
    ledger.touch_schedules(
        pid=1, host="here", at=t, adopt=["gone", "live"], stale_before=t - timedelta(minutes=3)
    )
    rows = {
        row.account: (row.daemon_host, row.daemon_pid, row.updated_at) for row in ledger.schedules()
    }
    assert rows == {
        "gone": ("here", 1, t),
        "live": ("peer", 8, t),
        "foreign": ("left", 7, old),
    }
    assert ledger.other_daemons(pid=1, host="here", fresh_after=t - timedelta(minutes=3)) == [
        ("peer", 8)
    ]
