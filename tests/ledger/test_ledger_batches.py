"""Group commit in the ledger: a batch's pending rows and archived marks, each one transaction.

On SQLite and PostgreSQL: all or nothing, one statement round per batch, and
the same rows as the one-at-a-time calls.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from popvault.errors import LedgerError
from popvault.ledger import DuplicateMessage, Ledger, MessageKey, NewMessage

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SHA = "ab" * 32


def new(uidl: str, occurrence: int = 1, **extra: object) -> NewMessage:
    return NewMessage(
        MessageKey(uidl, occurrence),
        path=f"acct/new/{uidl}-{occurrence}",
        size=100,
        sha256=SHA,
        server_size=102,
        first_seen_at=T0,
        **extra,  # type: ignore[arg-type]
    )


def states(ledger: Ledger) -> dict[MessageKey, str]:
    rows = ledger.known_rows("acct", [])
    rows.update(ledger.known_rows("acct", [f"u{n}" for n in range(200)]))
    return {MessageKey(r.uidl, r.occurrence): r.state for rs in rows.values() for r in rs}


def test_a_batch_is_recorded_pending_then_archived(ledger: Ledger) -> None:
    batch = [new(f"u{n}") for n in range(70)] + [new("u1", 2)]
    ledger.record_pending_many("acct", batch)
    assert {p.key for p in ledger.pending("acct")} == {m.key for m in batch}
    ledger.mark_archived_many("acct", [m.key for m in batch], archived_at=T0)
    assert ledger.pending("acct") == []
    assert set(states(ledger).values()) == {"archived"}
    assert ledger.archived_totals("acct") == (71, 7100)


def test_a_duplicate_in_a_batch_records_nothing(ledger: Ledger) -> None:
    ledger.record_pending(
        "acct", "u3", path="p", size=1, sha256=SHA, server_size=1, first_seen_at=T0
    )
    with pytest.raises(DuplicateMessage) as caught:
        ledger.record_pending_many("acct", [new("u1"), new("u2"), new("u3"), new("u4")])
    assert caught.value.key == MessageKey("u3")
    assert [p.key for p in ledger.pending("acct")] == [MessageKey("u3")]


def test_marking_a_batch_with_one_key_not_pending_changes_nothing(ledger: Ledger) -> None:
    ledger.record_pending_many("acct", [new("u1"), new("u2")])
    with pytest.raises(LedgerError, match="u9"):
        ledger.mark_archived_many("acct", ["u1", "u9", "u2"], archived_at=T0)
    assert {p.key for p in ledger.pending("acct")} == {MessageKey("u1"), MessageKey("u2")}


def test_a_held_message_in_a_batch_keeps_its_hold(ledger: Ledger) -> None:
    held = new("u1", received_size=500, hold_reason="received 500 octets", held_at=T0)
    ledger.record_pending_many("acct", [held, new("u2")])
    ledger.mark_archived_many("acct", ["u1", "u2"], archived_at=T0)
    assert [h.uidl for h in ledger.held("acct")] == ["u1"]


def test_an_empty_batch_is_nothing(ledger: Ledger) -> None:
    ledger.record_pending_many("acct", [])
    ledger.mark_archived_many("acct", [], archived_at=T0)
    assert ledger.pending("acct") == []


def test_a_batch_checks_every_message_before_writing(ledger: Ledger) -> None:
    bad = NewMessage(MessageKey("u2"), "p", 1, "not-hex", 1, T0)
    with pytest.raises(ValueError, match="sha256"):
        ledger.record_pending_many("acct", [new("u1"), bad])
    assert ledger.pending("acct") == []
