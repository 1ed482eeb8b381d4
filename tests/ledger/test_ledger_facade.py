"""The Ledger facade, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from ledger_helpers import T0, record, sha

from popvault.errors import LedgerError
from popvault.ledger import (
    AccountStatus,
    ArchivedMessage,
    DuplicateMessage,
    Ledger,
    PendingMessage,
)


def archive(ledger: Ledger, uidl: str, *, account: str = "alice", size: int = 10) -> None:
    record(ledger, uidl, account=account, size=size)
    ledger.mark_archived(account, uidl, archived_at=T0 + timedelta(seconds=1))


# -- unarchived -------------------------------------------------------------


def test_unarchived_on_empty_ledger_returns_every_uidl_in_order(ledger: Ledger) -> None:
    assert ledger.unarchived("alice", ["c", "a", "b"]) == ["c", "a", "b"]


def test_unarchived_of_nothing_is_nothing(ledger: Ledger) -> None:
    assert ledger.unarchived("alice", []) == []


def test_unarchived_removes_duplicates_keeping_first_position(ledger: Ledger) -> None:
    assert ledger.unarchived("alice", ["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_unarchived_skips_archived_and_pending(ledger: Ledger) -> None:
    archive(ledger, "done")
    record(ledger, "half")
    assert ledger.unarchived("alice", ["new1", "done", "half", "new2"]) == ["new1", "new2"]


def test_unarchived_is_case_sensitive(ledger: Ledger) -> None:
    archive(ledger, "abc")
    assert ledger.unarchived("alice", ["abc", "ABC", "Abc"]) == ["ABC", "Abc"]
    archive(ledger, "ABC")
    assert ledger.unarchived("alice", ["abc", "ABC", "Abc"]) == ["Abc"]


def test_unarchived_is_per_account(ledger: Ledger) -> None:
    archive(ledger, "u1", account="alice")
    assert ledger.unarchived("bob", ["u1"]) == ["u1"]
    assert ledger.unarchived("alice", ["u1"]) == []


def test_unarchived_large_input_takes_the_bulk_path(ledger: Ledger) -> None:
    # Past the IN-list limit the ledger reads the account's UIDLs instead.
    archive(ledger, "u00007")
    archive(ledger, "other", account="bob")
    uidls = [f"u{i:05}" for i in range(2000)] + ["other"]
    expected = [u for u in uidls if u != "u00007"]
    assert ledger.unarchived("alice", uidls) == expected


def test_unarchived_uses_one_query(ledger: Ledger, statements: list[str]) -> None:
    ledger.unarchived("alice", [f"u{i}" for i in range(10)])
    small = len(statements)
    statements.clear()
    ledger.unarchived("alice", [f"u{i}" for i in range(5000)])
    assert len(statements) == small
    assert sum("messages" in s for s in statements) == 1


# -- pending -> archived ------------------------------------------------------


def test_record_pending_then_pending_lists_it(ledger: Ledger) -> None:
    record(ledger, "m1")
    record(ledger, "m2")
    assert ledger.pending("alice") == [
        PendingMessage("alice", "m1", "alice/new/m1.eml", 10, sha("m1")),
        PendingMessage("alice", "m2", "alice/new/m2.eml", 10, sha("m2")),
    ]
    assert ledger.pending("bob") == []
    assert list(ledger.archived("alice")) == []


def test_mark_archived_moves_pending_to_archived(ledger: Ledger) -> None:
    record(ledger, "m1")
    ledger.mark_archived("alice", "m1", archived_at=T0)
    assert ledger.pending("alice") == []
    assert list(ledger.archived("alice")) == [
        ArchivedMessage("alice", "m1", "alice/new/m1.eml", 10, sha("m1"), T0)
    ]


def test_mark_archived_without_pending_row_raises(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no pending message"):
        ledger.mark_archived("alice", "ghost", archived_at=T0)


def test_mark_archived_twice_raises_and_keeps_first_time(ledger: Ledger) -> None:
    archive(ledger, "m1")
    with pytest.raises(LedgerError, match="no pending message"):
        ledger.mark_archived("alice", "m1", archived_at=T0 + timedelta(days=9))
    assert next(ledger.archived("alice")).archived_at == T0 + timedelta(seconds=1)


def test_drop_pending_forgets_the_row(ledger: Ledger) -> None:
    record(ledger, "m1")
    ledger.drop_pending("alice", "m1")
    assert ledger.pending("alice") == []
    assert ledger.unarchived("alice", ["m1"]) == ["m1"]


def test_drop_pending_of_unknown_uidl_is_a_no_op(ledger: Ledger) -> None:
    record(ledger, "m1")
    ledger.drop_pending("alice", "nope")
    assert [p.uidl for p in ledger.pending("alice")] == ["m1"]


def test_drop_pending_refuses_an_archived_message(ledger: Ledger) -> None:
    archive(ledger, "m1")
    with pytest.raises(LedgerError, match="not pending"):
        ledger.drop_pending("alice", "m1")
    assert [m.uidl for m in ledger.archived("alice")] == ["m1"]


def test_second_record_pending_raises_and_keeps_one_row(ledger: Ledger) -> None:
    record(ledger, "m1", size=10)
    with pytest.raises(DuplicateMessage) as caught:
        record(ledger, "m1", size=99)
    assert isinstance(caught.value, LedgerError)
    assert (caught.value.account, caught.value.uidl) == ("alice", "m1")
    assert ledger.pending("alice") == [
        PendingMessage("alice", "m1", "alice/new/m1.eml", 10, sha("m1"))
    ]


def test_record_pending_of_an_archived_uidl_raises(ledger: Ledger) -> None:
    archive(ledger, "m1")
    with pytest.raises(DuplicateMessage):
        record(ledger, "m1")
    assert ledger.pending("alice") == []
    assert len(list(ledger.archived("alice"))) == 1


def test_same_uidl_in_two_accounts_is_two_messages(ledger: Ledger) -> None:
    record(ledger, "m1", account="alice")
    record(ledger, "m1", account="bob")
    assert len(ledger.pending("alice")) == len(ledger.pending("bob")) == 1


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("size", -1, "negative"),
        ("server_size", -5, "negative"),
        ("sha256", "ABC", "64 lowercase hex"),
        ("sha256", "F" * 64, "64 lowercase hex"),
        ("path", "", "path"),
    ],
)
def test_record_pending_rejects_bad_values(ledger: Ledger, field, value, match) -> None:
    values = {"path": "p", "size": 1, "sha256": sha("x"), "server_size": None}
    values[field] = value
    with pytest.raises(ValueError, match=match):
        ledger.record_pending("alice", "m1", first_seen_at=T0, **values)
    assert ledger.unarchived("alice", ["m1"]) == ["m1"]


def test_archived_streams_many_rows_in_order_for_one_account(ledger: Ledger) -> None:
    for i in range(30):
        archive(ledger, f"m{i:03}")
    archive(ledger, "elsewhere", account="bob")
    record(ledger, "still-pending")
    uidls = [m.uidl for m in ledger.archived("alice")]
    assert uidls == [f"m{i:03}" for i in range(30)]


# -- time -------------------------------------------------------------------


def test_timestamps_come_back_aware_utc_and_equal(ledger: Ledger) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 14, 30, 0, 500, tzinfo=plus_two)
    record(ledger, "m1")
    ledger.mark_archived("alice", "m1", archived_at=local)
    got = next(ledger.archived("alice")).archived_at
    assert got == local
    assert got.tzinfo == UTC
    assert got.hour == 12


NAIVE = datetime(2025, 1, 1, 0, 0)
NAIVE_CALLS = {
    "record_pending": lambda ledger: ledger.record_pending(
        "a", "u", path="p", size=1, sha256=sha("u"), server_size=1, first_seen_at=NAIVE
    ),
    "mark_archived": lambda ledger: ledger.mark_archived("a", "u", archived_at=NAIVE),
    "start_run": lambda ledger: ledger.start_run("a", started_at=NAIVE),
}


@pytest.mark.parametrize("method", sorted(NAIVE_CALLS))
def test_naive_datetimes_are_refused(ledger: Ledger, method: str) -> None:
    call = NAIVE_CALLS[method]
    with pytest.raises(ValueError, match="timezone-aware"):
        call(ledger)
    assert ledger.accounts() == []


def test_finish_run_refuses_a_naive_end(ledger: Ledger) -> None:
    run_id = ledger.start_run("alice", started_at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.finish_run(run_id, ended_at=NAIVE, outcome="ok", messages=0, bytes=0, error=None)
    assert ledger.status()[0].last_outcome == "running"


# -- runs and status --------------------------------------------------------


def test_run_lifecycle_shows_in_status(ledger: Ledger) -> None:
    run_id = ledger.start_run("alice", started_at=T0)
    [running] = ledger.status()
    assert (running.last_outcome, running.last_run_at, running.last_success_at) == (
        "running",
        T0,
        None,
    )
    ledger.finish_run(
        run_id, ended_at=T0 + timedelta(minutes=1), outcome="ok", messages=2, bytes=20, error=None
    )
    [done] = ledger.status()
    assert done.last_outcome == "ok"
    assert done.last_success_at == T0 + timedelta(minutes=1)


def test_failed_run_keeps_last_success_and_shows_error(ledger: Ledger) -> None:
    first = ledger.start_run("alice", started_at=T0)
    ledger.finish_run(first, ended_at=T0, outcome="ok", messages=0, bytes=0, error=None)
    later = T0 + timedelta(hours=1)
    second = ledger.start_run("alice", started_at=later)
    ledger.finish_run(
        second, ended_at=later, outcome="failed", messages=0, bytes=0, error="[IN-USE] locked"
    )
    [status] = ledger.status()
    assert status == AccountStatus(
        name="alice",
        archived_messages=0,
        archived_bytes=0,
        last_run_at=later,
        last_outcome="failed",
        last_error="[IN-USE] locked",
        last_success_at=T0,
        on_server=None,
        failed_messages=0,
        last_sessions=1,
    )


def test_run_ids_are_distinct(ledger: Ledger) -> None:
    ids = {ledger.start_run("alice", started_at=T0) for _ in range(3)}
    assert len(ids) == 3


def test_finish_run_twice_raises(ledger: Ledger) -> None:
    run_id = ledger.start_run("alice", started_at=T0)
    ledger.finish_run(run_id, ended_at=T0, outcome="ok", messages=0, bytes=0, error=None)
    with pytest.raises(LedgerError, match="already finished"):
        ledger.finish_run(run_id, ended_at=T0, outcome="failed", messages=0, bytes=0, error="x")
    assert ledger.status()[0].last_outcome == "ok"


def test_finish_unknown_run_raises(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        ledger.finish_run(12345, ended_at=T0, outcome="ok", messages=0, bytes=0, error=None)


@pytest.mark.parametrize("outcome", ["running", "OK", "maybe"])
def test_finish_run_rejects_unknown_outcomes(ledger: Ledger, outcome: str) -> None:
    run_id = ledger.start_run("alice", started_at=T0)
    with pytest.raises(ValueError, match="outcome"):
        ledger.finish_run(run_id, ended_at=T0, outcome=outcome, messages=0, bytes=0, error=None)
    assert ledger.status()[0].last_outcome == "running"


def test_status_aggregates_archived_messages_per_account(ledger: Ledger) -> None:
    archive(ledger, "a1", size=100)
    archive(ledger, "a2", size=2**33)  # past 32 bits: the columns are 64-bit
    record(ledger, "a3", size=7)  # pending: not counted
    archive(ledger, "b1", account="bob", size=5)
    record(ledger, "c1", account="carol")
    by_name = {s.name: s for s in ledger.status()}
    assert sorted(by_name) == ["alice", "bob", "carol"]
    assert (by_name["alice"].archived_messages, by_name["alice"].archived_bytes) == (2, 100 + 2**33)
    assert (by_name["bob"].archived_messages, by_name["bob"].archived_bytes) == (1, 5)
    assert (by_name["carol"].archived_messages, by_name["carol"].archived_bytes) == (0, 0)
    assert by_name["carol"].last_run_at is None
    assert by_name["carol"].last_outcome is None


def test_status_includes_accounts_with_only_runs(ledger: Ledger) -> None:
    ledger.start_run("dave", started_at=T0)
    assert [s.name for s in ledger.status()] == ["dave"]


def test_status_uses_a_few_queries(ledger: Ledger, statements: list[str]) -> None:
    for account in ("a", "b", "c", "d"):
        archive(ledger, "m", account=account)
        ledger.start_run(account, started_at=T0)
    statements.clear()
    assert len(ledger.status()) == 4
    assert len(statements) <= 4  # BEGIN (SQLite) + three queries


def test_accounts_lists_every_account_once(ledger: Ledger) -> None:
    assert ledger.accounts() == []
    archive(ledger, "m", account="zed")
    record(ledger, "m", account="amy")
    ledger.start_run("bob", started_at=T0)
    ledger.start_run("zed", started_at=T0)
    assert ledger.accounts() == ["amy", "bob", "zed"]


# -- lifecycle --------------------------------------------------------------


def test_closed_ledger_refuses_calls(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(LedgerError, match="closed"):
        ledger.unarchived("alice", ["x"])
    with pytest.raises(LedgerError, match="closed"):
        ledger.archived("alice")


def test_data_survives_reopening(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as first:
        archive(first, "m1")
    with Ledger.open(ledger_url, upgrade=False) as second:
        assert second.unarchived("alice", ["m1", "m2"]) == ["m2"]
