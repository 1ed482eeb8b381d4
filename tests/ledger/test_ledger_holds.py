"""Holds: server copies retention must not delete until the user releases them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from ledger_helpers import T0, archive, by_key, path_of, record
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from popvault.errors import LedgerError
from popvault.ledger import HeldMessage, Ledger, MessageKey, RetentionSummary

A2 = MessageKey("same", 2)
HELD_AT = T0 + timedelta(hours=2)
NOW = T0 + timedelta(days=10)
SUBSTITUTED = "the server sent 4096 octets for a message it listed as 12"


def test_hold_is_listed_with_its_sizes_and_reason(ledger: Ledger) -> None:
    archive(ledger, "free")
    archive(ledger, A2, received_size=4096)
    ledger.hold("alice", A2, reason=SUBSTITUTED, at=HELD_AT)
    assert ledger.held("alice") == [
        HeldMessage("same", 2, path_of(A2), 12, 4096, SUBSTITUTED, HELD_AT)
    ]
    assert ledger.held("bob") == []
    [free, held] = ledger.retained("alice", ["free", A2])
    assert (free.hold_reason, free.held) == (None, False)
    assert (held.hold_reason, held.held) == (SUBSTITUTED, True)


def test_a_second_hold_keeps_the_first(ledger: Ledger) -> None:
    archive(ledger, "m")
    ledger.hold("alice", "m", reason="first", at=HELD_AT)
    ledger.hold("alice", "m", reason="second", at=NOW)
    [held] = ledger.held("alice")
    assert (held.reason, held.held_at) == ("first", HELD_AT)


def test_hold_of_an_unknown_message_raises(ledger: Ledger) -> None:
    archive(ledger, "same")
    with pytest.raises(LedgerError, match=r"no message with UIDL 'same' \(occurrence 2\)"):
        ledger.hold("alice", A2, reason="x", at=HELD_AT)
    with pytest.raises(LedgerError, match="no message"):
        ledger.hold("bob", "same", reason="x", at=HELD_AT)
    assert ledger.held("alice") == []


@pytest.mark.parametrize("reason", ["", "   "])
def test_hold_needs_a_reason(ledger: Ledger, reason: str) -> None:
    archive(ledger, "m")
    with pytest.raises(ValueError, match="reason"):
        ledger.hold("alice", "m", reason=reason, at=HELD_AT)
    assert ledger.held("alice") == []


def test_hold_refuses_a_naive_time(ledger: Ledger) -> None:
    archive(ledger, "m")
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.hold("alice", "m", reason="x", at=HELD_AT.replace(tzinfo=None))
    assert ledger.held("alice") == []


def test_record_pending_can_hold_from_the_start(ledger: Ledger) -> None:
    record(ledger, "m", received_size=4096, hold_reason=SUBSTITUTED, held_at=HELD_AT)
    assert ledger.held("alice") == []  # pending: nothing retained yet
    ledger.mark_archived("alice", "m", archived_at=T0)
    assert ledger.held("alice") == [
        HeldMessage("m", 1, path_of("m"), 12, 4096, SUBSTITUTED, HELD_AT)
    ]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"hold_reason": "x"}, "needs held_at"),
        ({"hold_reason": "x", "held_at": HELD_AT.replace(tzinfo=None)}, "timezone-aware"),
        ({"held_at": HELD_AT}, "without a hold_reason"),
        ({"hold_reason": "", "held_at": HELD_AT}, "reason"),
        ({"received_size": -1}, "negative"),
    ],
    ids=["no-time", "naive-time", "time-without-reason", "empty-reason", "negative-received"],
)
def test_record_pending_checks_the_hold(ledger: Ledger, extra: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        record(ledger, "m", **extra)
    assert ledger.unarchived("alice", ["m"]) == ["m"]


def test_held_lists_only_retained_rows_in_recorded_order(ledger: Ledger) -> None:
    for key in ("b", "a", "deleted", "gone", "c"):
        archive(ledger, key)
    record(ledger, "pending")
    for key in ("c", "a", "b", "deleted", "gone", "pending"):
        ledger.hold("alice", key, reason=f"why {key}", at=HELD_AT)
    ledger.mark_deleted("alice", ["deleted"], at=NOW)
    ledger.reconcile("alice", ["a", "b", "c", "deleted"], now=NOW)  # "gone" vanished
    assert [h.uidl for h in ledger.held("alice")] == ["b", "a", "c"]


def test_release_holds_by_key(ledger: Ledger) -> None:
    for key in ("same", A2, "other"):
        archive(ledger, key)
        ledger.hold("alice", key, reason="x", at=HELD_AT)
    archive(ledger, "same", account="bob")
    ledger.hold("bob", "same", reason="x", at=HELD_AT)

    assert ledger.release_holds("alice", [A2, "unknown", A2]) == 1
    assert ledger.release_holds("alice", [A2]) == 0  # already released
    assert ledger.release_holds("alice", []) == 0
    assert [h.key for h in ledger.held("alice")] == [MessageKey("same"), MessageKey("other")]
    assert by_key(ledger, "held_at")[("same", 2)] is None
    assert len(ledger.held("bob")) == 1


def test_release_forgets_the_list_size_of_released_rows_only(ledger: Ledger) -> None:
    for key in ("held", "kept"):
        archive(ledger, key)
    ledger.hold("alice", "held", reason="size changed", at=HELD_AT)
    before = by_key(ledger, "server_size")
    assert before[("held", 1)] is not None
    assert ledger.release_holds("alice", ["held"]) == 1
    after = by_key(ledger, "server_size")
    # The user vouched for it: a later size the server reports differently is no reason.
    assert after[("held", 1)] is None
    assert after[("kept", 1)] == before[("kept", 1)]


def test_release_every_hold_of_an_account(ledger: Ledger) -> None:
    for key in ("a", "b", "gone"):
        archive(ledger, key)
        ledger.hold("alice", key, reason="x", at=HELD_AT)
    archive(ledger, "a", account="bob")
    ledger.hold("bob", "a", reason="x", at=HELD_AT)
    ledger.reconcile("alice", ["a", "b"], now=NOW)
    assert ledger.release_holds("alice") == 3  # the gone one too: it may come back
    assert by_key(ledger, "hold_reason") == {("a", 1): None, ("b", 1): None, ("gone", 1): None}
    assert len(ledger.held("bob")) == 1


def test_held_rows_are_never_due(ledger: Ledger) -> None:
    cutoff = T0 + timedelta(days=1)
    archive(ledger, "old-held", at=T0)
    archive(ledger, "old", at=T0)
    archive(ledger, "next-held", at=cutoff + timedelta(hours=1))
    archive(ledger, "next", at=cutoff + timedelta(hours=2))
    ledger.hold("alice", "old-held", reason="x", at=HELD_AT)
    ledger.hold("alice", "next-held", reason="x", at=HELD_AT)
    assert ledger.retention_summary("alice", cutoff=cutoff) == RetentionSummary(
        retained=4, due=1, next_due_archived_at=cutoff + timedelta(hours=2), held=2
    )
    assert ledger.retention_summary("alice", cutoff=None) == RetentionSummary(4, 0, None, held=2)
    ledger.release_holds("alice", ["old-held", "next-held"])
    assert ledger.retention_summary("alice", cutoff=cutoff) == RetentionSummary(
        retained=4, due=2, next_due_archived_at=cutoff + timedelta(hours=1), held=0
    )


def test_only_held_rows_left_promise_no_deletion(ledger: Ledger) -> None:
    archive(ledger, "m", at=T0)
    ledger.hold("alice", "m", reason="x", at=HELD_AT)
    assert ledger.retention_summary("alice", cutoff=NOW) == RetentionSummary(1, 0, None, held=1)
    assert ledger.retention_summary("alice", cutoff=T0 - timedelta(days=1)) == RetentionSummary(
        1, 0, None, held=1
    )


def test_held_rows_that_left_the_server_are_not_counted(ledger: Ledger) -> None:
    for key in ("kept", "deleted", "gone"):
        archive(ledger, key)
        ledger.hold("alice", key, reason="x", at=HELD_AT)
    ledger.mark_deleted("alice", ["deleted"], at=NOW)
    ledger.reconcile("alice", ["kept", "deleted"], now=NOW)
    assert ledger.retention_summary("alice", cutoff=NOW) == RetentionSummary(1, 0, None, held=1)


def test_status_counts_held_messages(ledger: Ledger) -> None:
    for key in ("a", "b", "deleted"):
        archive(ledger, key)
        ledger.hold("alice", key, reason="x", at=HELD_AT)
    archive(ledger, "free")
    record(ledger, "pending", hold_reason="x", held_at=HELD_AT)
    ledger.mark_deleted("alice", ["deleted"], at=NOW)
    archive(ledger, "m", account="bob")
    ledger.record_failure("carol", "f", error="x", at=T0)
    by_name = {s.name: s for s in ledger.status()}
    assert {name: s.held_messages for name, s in by_name.items()} == {
        "alice": 2,
        "bob": 0,
        "carol": 0,
    }
    assert by_name["alice"].archived_messages == 4


def test_a_hold_always_has_a_time(ledger: Ledger) -> None:
    archive(ledger, "m")
    with pytest.raises(IntegrityError, match="ck_messages_held_at"), ledger._engine.begin() as c:
        c.execute(text("UPDATE messages SET hold_reason = 'x' WHERE uidl = 'm'"))
