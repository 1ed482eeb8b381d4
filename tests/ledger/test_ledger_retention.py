"""Retention: retained(), DELE bookkeeping, reconcile() and retention_summary()."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta, timezone

import pytest
from ledger_helpers import T0, archive, column, fill, record

from popvault.errors import LedgerError
from popvault.ledger import Ledger, Reconciled, RetainedMessage, RetentionSummary

LATER = T0 + timedelta(days=3)
NOW = T0 + timedelta(days=10)


def uidls_of(messages: list[RetainedMessage]) -> list[str]:
    return [m.uidl for m in messages]


# -- retained ---------------------------------------------------------------


def test_retained_lists_archived_rows_in_input_order_once(ledger: Ledger) -> None:
    archive(ledger, "a")
    archive(ledger, "b", at=LATER)
    record(ledger, "pending")
    got = ledger.retained("alice", ["b", "x", "pending", "a", "b"])
    assert got == [
        RetainedMessage("b", "alice/new/b.eml", 10, LATER, server_size=12),
        RetainedMessage("a", "alice/new/a.eml", 10, T0 + timedelta(seconds=1), server_size=12),
    ]
    assert got[0].archived_at.tzinfo is not None


def test_retained_of_nothing_is_nothing(ledger: Ledger, statements: list[str]) -> None:
    assert ledger.retained("alice", []) == []
    assert statements == []


def test_retained_is_per_account_and_case_sensitive(ledger: Ledger) -> None:
    archive(ledger, "abc", account="bob")
    assert ledger.retained("alice", ["abc"]) == []
    assert uidls_of(ledger.retained("bob", ["abc", "ABC"])) == ["abc"]


def test_retained_leaves_out_deleted_and_gone(ledger: Ledger) -> None:
    for uidl in ("kept", "deleted", "gone"):
        archive(ledger, uidl)
    ledger.mark_deleted("alice", ["deleted"], at=LATER)
    ledger.reconcile("alice", ["kept", "deleted"], now=NOW)  # "gone" vanished
    assert uidls_of(ledger.retained("alice", ["gone", "deleted", "kept"])) == ["kept"]


def test_retained_large_input_takes_the_bulk_path(ledger: Ledger) -> None:
    fill(ledger, "alice", [f"u{i:05}" for i in range(0, 2000, 3)])
    fill(ledger, "bob", ["u00001"])
    wanted = [f"u{i:05}" for i in range(2000)][::-1]
    assert uidls_of(ledger.retained("alice", wanted)) == [u for u in wanted if int(u[1:]) % 3 == 0]


# -- DELE bookkeeping ---------------------------------------------------------


def test_mark_delete_requested_keeps_the_message_retained(ledger: Ledger) -> None:
    archive(ledger, "m1")
    archive(ledger, "m2")
    ledger.mark_delete_requested("alice", ["m1"], at=LATER)
    assert column(ledger, "delete_requested_at") == {"m1": LATER, "m2": None}
    assert uidls_of(ledger.retained("alice", ["m1", "m2"])) == ["m1", "m2"]


def test_mark_deleted_sets_deleted_at_and_clears_the_request(ledger: Ledger) -> None:
    archive(ledger, "m1")
    archive(ledger, "m2")
    ledger.mark_delete_requested("alice", ["m1", "m2"], at=LATER)
    ledger.mark_deleted("alice", ["m1"], at=LATER + timedelta(seconds=2))
    assert column(ledger, "deleted_at") == {"m1": LATER + timedelta(seconds=2), "m2": None}
    assert column(ledger, "delete_requested_at") == {"m1": None, "m2": LATER}
    assert uidls_of(ledger.retained("alice", ["m1", "m2"])) == ["m2"]


def test_dele_marks_touch_only_retained_rows_of_the_account(ledger: Ledger) -> None:
    record(ledger, "pending")
    archive(ledger, "m1", account="bob")
    archive(ledger, "done")
    ledger.mark_deleted("alice", ["done"], at=T0)
    ledger.mark_delete_requested("alice", ["pending", "m1", "done", "unknown"], at=LATER)
    ledger.mark_deleted("alice", ["pending", "m1", "done"], at=LATER)
    assert column(ledger, "delete_requested_at") == {"pending": None, "done": None}
    assert column(ledger, "deleted_at") == {"pending": None, "done": T0}  # first time kept
    assert column(ledger, "deleted_at", account="bob") == {"m1": None}


def test_dele_marks_of_many_uidls(ledger: Ledger, statements: list[str]) -> None:
    uidls = [f"m{i:05}" for i in range(3000)]
    fill(ledger, "alice", uidls)
    statements.clear()
    ledger.mark_delete_requested("alice", uidls[::2], at=LATER)
    ledger.mark_deleted("alice", uidls[:1500], at=NOW)
    assert sum(s.lstrip().upper().startswith("UPDATE") for s in statements) == 2
    requested = column(ledger, "delete_requested_at")
    deleted = column(ledger, "deleted_at")
    assert sum(v is not None for v in requested.values()) == 750  # even ones past 1500
    assert all(requested[u] == LATER for u in uidls[1500::2])
    assert sorted(u for u, v in deleted.items() if v is not None) == uidls[:1500]


def test_dele_marks_of_nothing_send_nothing(ledger: Ledger, statements: list[str]) -> None:
    ledger.mark_delete_requested("alice", [], at=T0)
    ledger.mark_deleted("alice", [], at=T0)
    assert statements == []


# -- reconcile ----------------------------------------------------------------


def test_reconcile_settles_the_three_cases(ledger: Ledger) -> None:
    for uidl in ("lost-quit", "taken", "never-quit", "kept", "done"):
        archive(ledger, uidl)
    ledger.mark_deleted("alice", ["done"], at=T0)
    ledger.mark_delete_requested("alice", ["lost-quit", "never-quit"], at=LATER)
    record(ledger, "pending")  # not on the server either: not reconcile's business

    settled = ledger.reconcile("alice", ["never-quit", "kept", "new"], now=NOW)

    assert settled == Reconciled(deleted=1, gone=1, cleared=1)
    assert column(ledger, "deleted_at") == {
        "lost-quit": LATER,  # the request time, not now
        "taken": None,
        "never-quit": None,
        "kept": None,
        "done": T0,
        "pending": None,
    }
    gone = {u: v for u, v in column(ledger, "gone_at").items() if v is not None}
    assert gone == {"taken": NOW}
    requested = {u: v for u, v in column(ledger, "delete_requested_at").items() if v}
    assert requested == {}
    assert uidls_of(ledger.retained("alice", ["never-quit", "kept"])) == ["never-quit", "kept"]


def test_reconcile_twice_changes_nothing_more(ledger: Ledger) -> None:
    archive(ledger, "a")
    archive(ledger, "b")
    ledger.mark_delete_requested("alice", ["a"], at=LATER)
    assert ledger.reconcile("alice", [], now=NOW) == Reconciled(deleted=1, gone=1, cleared=0)
    later = NOW + timedelta(days=1)
    assert ledger.reconcile("alice", [], now=later) == Reconciled(deleted=0, gone=0, cleared=0)
    assert column(ledger, "gone_at")["b"] == NOW


def test_a_gone_message_listed_again_is_live_again(ledger: Ledger) -> None:
    archive(ledger, "a")
    archive(ledger, "b")
    ledger.mark_delete_requested("alice", ["b"], at=LATER)
    # A short listing: "a" looks taken by another client, "b" deleted by us.
    assert ledger.reconcile("alice", [], now=NOW) == Reconciled(deleted=1, gone=1, cleared=0)
    assert uidls_of(ledger.retained("alice", ["a", "b"])) == []
    back = ledger.reconcile("alice", ["a", "b"], now=NOW + timedelta(hours=1))
    assert back == Reconciled(deleted=0, gone=0, cleared=0, returned=1)
    # "a" is retained again (so retention may delete it); "b" stays deleted.
    assert uidls_of(ledger.retained("alice", ["a", "b"])) == ["a"]
    assert column(ledger, "gone_at")["a"] is None


def test_reconcile_is_per_account(ledger: Ledger) -> None:
    archive(ledger, "m1", account="bob")
    assert ledger.reconcile("alice", [], now=NOW) == Reconciled(0, 0, 0)
    assert uidls_of(ledger.retained("bob", ["m1"])) == ["m1"]


def test_reconcile_drops_failures_of_messages_no_longer_on_the_server(ledger: Ledger) -> None:
    ledger.record_failure("alice", "still-there", error="-ERR boom", at=T0)
    ledger.record_failure("alice", "vanished", error="-ERR boom", at=T0)
    ledger.record_failure("bob", "vanished", error="-ERR boom", at=T0)
    ledger.reconcile("alice", ["still-there"], now=NOW)
    assert [f.uidl for f in ledger.failures("alice")] == ["still-there"]
    assert [f.uidl for f in ledger.failures("bob")] == ["vanished"]


def test_reconcile_of_many_rows_is_set_wise(ledger: Ledger, statements: list[str]) -> None:
    uidls = [f"m{i:05}" for i in range(3000)]
    fill(ledger, "alice", uidls[:1000], delete_requested_at=LATER)
    fill(ledger, "alice", uidls[1000:])
    statements.clear()
    # On the server: requested 500..999 (cleared) and plain 2000..2999.
    settled = ledger.reconcile("alice", uidls[500:1000] + uidls[2000:], now=NOW)
    assert settled == Reconciled(deleted=500, gone=1000, cleared=500)
    assert sum(s.lstrip().upper().startswith("UPDATE") for s in statements) == 3
    assert ledger.retention_summary("alice", cutoff=None).retained == 1500


# -- retention_summary ----------------------------------------------------------


def test_retention_summary_boundaries(ledger: Ledger) -> None:
    cutoff = T0 + timedelta(days=1)
    archive(ledger, "old", at=cutoff - timedelta(microseconds=1))
    archive(ledger, "edge", at=cutoff)  # exactly at the cutoff: due
    archive(ledger, "next", at=cutoff + timedelta(microseconds=1))
    archive(ledger, "last", at=cutoff + timedelta(days=5))
    assert ledger.retention_summary("alice", cutoff=cutoff) == RetentionSummary(
        retained=4, due=2, next_due_archived_at=cutoff + timedelta(microseconds=1)
    )


def test_retention_summary_without_cutoff_has_nothing_due(ledger: Ledger) -> None:
    archive(ledger, "a")
    archive(ledger, "b")
    assert ledger.retention_summary("alice", cutoff=None) == RetentionSummary(2, 0, None)


def test_retention_summary_when_all_or_none_are_due(ledger: Ledger) -> None:
    archive(ledger, "a", at=T0)
    assert ledger.retention_summary("alice", cutoff=NOW) == RetentionSummary(1, 1, None)
    assert ledger.retention_summary("alice", cutoff=T0 - timedelta(days=1)) == RetentionSummary(
        1, 0, T0
    )
    assert ledger.retention_summary("nobody", cutoff=NOW) == RetentionSummary(0, 0, None)


def test_retention_summary_counts_only_retained_rows(ledger: Ledger) -> None:
    for uidl in ("kept", "deleted", "gone"):
        archive(ledger, uidl, at=T0)
    record(ledger, "pending")
    archive(ledger, "other", account="bob", at=T0)
    ledger.mark_deleted("alice", ["deleted"], at=LATER)
    ledger.reconcile("alice", ["kept", "pending"], now=NOW)
    assert ledger.retention_summary("alice", cutoff=NOW) == RetentionSummary(1, 1, None)


def test_retention_summary_compares_instants_not_zones(ledger: Ledger) -> None:
    archive(ledger, "a", at=T0)
    plus_five = T0.astimezone(timezone(timedelta(hours=5)))
    assert ledger.retention_summary("alice", cutoff=plus_five).due == 1
    assert ledger.retention_summary("alice", cutoff=plus_five - timedelta(seconds=1)).due == 0


# -- validation ------------------------------------------------------------------

NAIVE = T0.replace(tzinfo=None)


@pytest.mark.parametrize(
    "call",
    [
        lambda ledger: ledger.mark_delete_requested("alice", ["m"], at=NAIVE),
        lambda ledger: ledger.mark_deleted("alice", ["m"], at=NAIVE),
        lambda ledger: ledger.reconcile("alice", [], now=NAIVE),
        lambda ledger: ledger.retention_summary("alice", cutoff=NAIVE),
    ],
    ids=["mark_delete_requested", "mark_deleted", "reconcile", "retention_summary"],
)
def test_naive_datetimes_are_refused(ledger: Ledger, call: Callable[[Ledger], object]) -> None:
    archive(ledger, "m")
    with pytest.raises(ValueError, match="timezone-aware"):
        call(ledger)
    assert column(ledger, "delete_requested_at") == {"m": None}
    assert column(ledger, "gone_at") == {"m": None}


def test_closed_ledger_refuses_retention_calls(ledger_url: str) -> None:
    ledger = Ledger.open(ledger_url)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.retained("alice", ["m"])
    with pytest.raises(LedgerError, match="closed"):
        ledger.reconcile("alice", [], now=NOW)
