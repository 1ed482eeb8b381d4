"""Poison messages: failure records, setting aside in unarchived(), and status."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ledger_helpers import T0, archive, record

from popvault.ledger import FailedMessage, Ledger

T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(hours=1)


def fail(ledger: Ledger, uidl: str, times: int, *, account: str = "alice") -> int:
    attempts = 0
    for i in range(times):
        attempts = ledger.record_failure(
            account, uidl, error=f"-ERR try {i}", at=T0 + timedelta(minutes=i)
        )
    return attempts


# -- record_failure / failures / clear_failure ---------------------------------


def test_record_failure_counts_attempts_and_keeps_the_first_time(ledger: Ledger) -> None:
    assert ledger.record_failure("alice", "m1", error="-ERR no such message", at=T0) == 1
    assert ledger.record_failure("alice", "m1", error="disk full", at=T1) == 2
    assert ledger.record_failure("alice", "m1", error="-ERR [SYS/TEMP] later", at=T2) == 3
    assert ledger.failures("alice") == [FailedMessage("m1", 3, T0, T2, "-ERR [SYS/TEMP] later")]


def test_failures_are_per_account_and_uidl(ledger: Ledger) -> None:
    assert fail(ledger, "m1", 2) == 2
    assert fail(ledger, "m1", 1, account="bob") == 1
    assert fail(ledger, "M1", 1) == 1  # UIDLs are case-sensitive
    assert [(f.uidl, f.attempts) for f in ledger.failures("alice")] == [("m1", 2), ("M1", 1)]
    assert [(f.uidl, f.attempts) for f in ledger.failures("bob")] == [("m1", 1)]
    assert ledger.failures("carol") == []


def test_failures_come_oldest_first(ledger: Ledger) -> None:
    ledger.record_failure("alice", "late", error="x", at=T2)
    ledger.record_failure("alice", "early", error="x", at=T0)
    ledger.record_failure("alice", "late", error="y", at=T2 + timedelta(hours=1))
    assert [f.uidl for f in ledger.failures("alice")] == ["early", "late"]


def test_long_errors_are_clipped(ledger: Ledger) -> None:
    ledger.record_failure("alice", "m1", error="e" * 10_000, at=T0)
    [failure] = ledger.failures("alice")
    assert failure.last_error == "e" * 2000


def test_clear_failure_forgets_only_that_message(ledger: Ledger) -> None:
    fail(ledger, "m1", 2)
    fail(ledger, "m2", 1)
    fail(ledger, "m1", 1, account="bob")
    ledger.clear_failure("alice", "m1")
    ledger.clear_failure("alice", "never-failed")  # no-op
    assert [f.uidl for f in ledger.failures("alice")] == ["m2"]
    assert len(ledger.failures("bob")) == 1
    assert fail(ledger, "m1", 1) == 1  # counting starts again


def test_record_failure_refuses_a_naive_time(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.record_failure("alice", "m1", error="x", at=T0.replace(tzinfo=None))
    assert ledger.failures("alice") == []


# -- unarchived sets poison messages aside ----------------------------------------


def test_unarchived_sets_aside_at_max_attempts(ledger: Ledger) -> None:
    fail(ledger, "twice", 2)
    fail(ledger, "thrice", 3)
    fail(ledger, "once", 1)
    uidls = ["new", "twice", "thrice", "once"]
    assert ledger.unarchived("alice", uidls, max_attempts=3) == ["new", "twice", "once"]
    assert ledger.unarchived("alice", uidls, max_attempts=2) == ["new", "once"]
    assert ledger.unarchived("alice", uidls, max_attempts=1) == ["new"]


def test_unarchived_without_max_attempts_never_sets_aside(ledger: Ledger) -> None:
    fail(ledger, "m1", 50)
    assert ledger.unarchived("alice", ["m1"]) == ["m1"]


def test_retry_failed_brings_set_aside_messages_back(ledger: Ledger) -> None:
    fail(ledger, "m1", 5)
    archive(ledger, "done")
    uidls = ["m1", "done", "new"]
    assert ledger.unarchived("alice", uidls, max_attempts=3, retry_failed=True) == ["m1", "new"]


def test_set_aside_is_per_account(ledger: Ledger) -> None:
    fail(ledger, "m1", 5, account="bob")
    assert ledger.unarchived("alice", ["m1"], max_attempts=1) == ["m1"]
    assert ledger.unarchived("bob", ["m1"], max_attempts=1) == []


def test_set_aside_on_the_bulk_path(ledger: Ledger, statements: list[str]) -> None:
    fail(ledger, "u00042", 3)
    fail(ledger, "u00043", 1)
    record(ledger, "u00044")
    uidls = [f"u{i:05}" for i in range(2000)]
    expected = [u for u in uidls if u not in {"u00042", "u00044"}]
    statements.clear()
    assert ledger.unarchived("alice", uidls, max_attempts=2) == expected
    bulk = len(statements)
    statements.clear()
    assert ledger.unarchived("alice", uidls[40:46], max_attempts=2) == [
        "u00040",
        "u00041",
        "u00043",
        "u00045",
    ]
    assert len(statements) == bulk <= 2  # (SQLite BEGIN) + one statement


@pytest.mark.parametrize("bad", [0, -1])
def test_max_attempts_must_be_positive(ledger: Ledger, bad: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        ledger.unarchived("alice", ["m1"], max_attempts=bad)


# -- status -------------------------------------------------------------------------


def test_status_counts_failed_messages(ledger: Ledger) -> None:
    fail(ledger, "m1", 3)
    fail(ledger, "m2", 1)
    archive(ledger, "ok")
    fail(ledger, "x", 1, account="bob")  # an account whose only message failed
    by_name = {s.name: s for s in ledger.status()}
    assert by_name["alice"].failed_messages == 2
    assert by_name["alice"].archived_messages == 1
    assert by_name["bob"].failed_messages == 1
    assert by_name["bob"].archived_messages == 0
    ledger.clear_failure("alice", "m1")
    assert {s.name: s.failed_messages for s in ledger.status()} == {"alice": 1, "bob": 1}


def test_status_on_server_comes_from_the_latest_run_that_listed(ledger: Ledger) -> None:
    first = ledger.start_run("alice", started_at=T0)
    ledger.finish_run(
        first, ended_at=T0, outcome="ok", messages=0, bytes=0, error=None, on_server=120
    )
    [status] = ledger.status()
    assert status.on_server == 120
    second = ledger.start_run("alice", started_at=T1)
    ledger.finish_run(
        second, ended_at=T1, outcome="failed", messages=0, bytes=0, error="connect refused"
    )  # never listed the server
    ledger.start_run("alice", started_at=T2)  # and one still running
    [status] = ledger.status()
    assert (status.on_server, status.last_outcome, status.last_success_at) == (
        120,
        "running",
        T0,
    )
    ledger.start_run("bob", started_at=T0)
    assert {s.name: s.on_server for s in ledger.status()} == {"alice": 120, "bob": None}


def test_finish_run_rejects_a_negative_on_server(ledger: Ledger) -> None:
    run_id = ledger.start_run("alice", started_at=T0)
    with pytest.raises(ValueError, match="on_server"):
        ledger.finish_run(
            run_id, ended_at=T0, outcome="ok", messages=0, bytes=0, error=None, on_server=-1
        )
    assert ledger.status()[0].last_outcome == "running"


def test_status_still_uses_a_few_queries(ledger: Ledger, statements: list[str]) -> None:
    for account in ("a", "b", "c"):
        archive(ledger, "m", account=account)
        fail(ledger, "f", 2, account=account)
        run_id = ledger.start_run(account, started_at=T0)
        ledger.finish_run(
            run_id, ended_at=T1, outcome="ok", messages=1, bytes=1, error=None, on_server=7
        )
    statements.clear()
    assert [(s.on_server, s.failed_messages) for s in ledger.status()] == [(7, 1)] * 3
    assert len(statements) <= 3  # (SQLite BEGIN) + two queries
