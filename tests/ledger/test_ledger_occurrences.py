"""Messages keyed by (uidl, occurrence): servers that give identical messages one UIDL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ledger_helpers import T0, archive, by_key, fill, path_of, record, sha, sha_of

from popvault.errors import LedgerError
from popvault.ledger import (
    ArchivedMessage,
    DuplicateMessage,
    FailedMessage,
    KeyLike,
    KnownRow,
    Ledger,
    MessageKey,
    PendingMessage,
    Reconciled,
    RetainedMessage,
    as_key,
)
from popvault.ledger.core import IN_LIST_LIMIT, pairs_among
from popvault.ledger.models import Message

A1 = MessageKey("same")
A2 = MessageKey("same", 2)
A3 = MessageKey("same", 3)
LATER = T0 + timedelta(days=3)
NOW = T0 + timedelta(days=10)


# -- MessageKey -----------------------------------------------------------------


def test_a_plain_uidl_is_occurrence_one() -> None:
    assert as_key("m") == MessageKey("m") == MessageKey("m", 1)
    assert as_key(A2) is A2
    assert MessageKey("m", 2) != MessageKey("m", 1)


def test_keys_sort_by_uidl_then_occurrence() -> None:
    assert sorted([MessageKey("b"), A3, MessageKey("a", 9), A1]) == [
        MessageKey("a", 9),
        MessageKey("b"),
        A1,
        A3,
    ]


@pytest.mark.parametrize("bad", [0, -1])
def test_occurrence_starts_at_one(bad: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MessageKey("m", bad)


def test_occurrence_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="int"):
        MessageKey("m", True)
    with pytest.raises(TypeError, match="MessageKey"):
        as_key(3)  # type: ignore[arg-type]


def test_describe_names_the_occurrence_only_past_the_first() -> None:
    assert A1.describe() == "UIDL 'same'"
    assert A2.describe() == "UIDL 'same' (occurrence 2)"


def test_records_built_positionally_still_mean_occurrence_one() -> None:
    pending = PendingMessage("alice", "m", "p", 1, "0" * 64)
    assert (pending.occurrence, pending.key) == (1, MessageKey("m"))
    failed = FailedMessage("m", 1, T0, T0, "x", 4)
    assert failed.key == MessageKey("m", 4)
    retained = RetainedMessage("m", "p", 1, T0, 3)
    assert (retained.key, retained.hold_reason, retained.held) == (MessageKey("m"), None, False)


# -- recording ------------------------------------------------------------------


def test_two_occurrences_of_one_uidl_coexist(ledger: Ledger) -> None:
    archive(ledger, A1)
    record(ledger, A2, size=10)
    assert ledger.pending("alice") == [
        PendingMessage("alice", "same", path_of(A2), 10, sha_of(A2), occurrence=2)
    ]
    assert list(ledger.archived("alice")) == [
        ArchivedMessage("alice", "same", path_of(A1), 10, sha("same"), T0 + timedelta(seconds=1))
    ]
    ledger.mark_archived("alice", A2, archived_at=LATER)
    archived = list(ledger.archived("alice"))
    assert [(m.key, m.path, m.archived_at) for m in archived] == [
        (A1, path_of(A1), T0 + timedelta(seconds=1)),
        (A2, path_of(A2), LATER),
    ]


def test_a_repeated_key_is_a_duplicate_naming_the_occurrence(ledger: Ledger) -> None:
    archive(ledger, A1)
    archive(ledger, A2)
    with pytest.raises(DuplicateMessage) as caught:
        record(ledger, MessageKey("same", 2), size=99)
    assert (caught.value.uidl, caught.value.occurrence, caught.value.key) == ("same", 2, A2)
    assert (
        str(caught.value) == "account 'alice': UIDL 'same' (occurrence 2) is already in the ledger"
    )
    with pytest.raises(DuplicateMessage, match=r"UIDL 'same' is already in the ledger$"):
        record(ledger, "same")  # a plain UIDL is occurrence 1
    assert by_key(ledger, "size") == {("same", 1): 10, ("same", 2): 10}


def test_record_pending_keeps_the_received_size(ledger: Ledger) -> None:
    record(ledger, "m", size=10, received_size=13)
    record(ledger, "n")
    assert by_key(ledger, "received_size") == {("m", 1): 13, ("n", 1): None}


def test_mark_archived_and_drop_pending_touch_only_their_occurrence(ledger: Ledger) -> None:
    record(ledger, A1)
    record(ledger, A2)
    record(ledger, A3)
    ledger.mark_archived("alice", A2, archived_at=T0)
    ledger.drop_pending("alice", A3)
    assert by_key(ledger, "state") == {("same", 1): "pending", ("same", 2): "archived"}
    with pytest.raises(LedgerError, match=r"no pending message with UIDL 'same' \(occurrence 2\)"):
        ledger.mark_archived("alice", A2, archived_at=T0)
    with pytest.raises(LedgerError, match=r"UIDL 'same' \(occurrence 2\) is not pending"):
        ledger.drop_pending("alice", A2)
    ledger.drop_pending("alice", MessageKey("same", 7))  # no row: a no-op
    ledger.mark_archived("alice", "same", archived_at=T0)
    assert by_key(ledger, "state") == {("same", 1): "archived", ("same", 2): "archived"}


# -- unarchived -----------------------------------------------------------------


def test_unarchived_compares_keys(ledger: Ledger) -> None:
    archive(ledger, A1)
    record(ledger, A3)
    asked = [A1, A2, A3, MessageKey("new"), MessageKey("same", 4)]
    assert ledger.unarchived("alice", asked) == [A2, MessageKey("new"), MessageKey("same", 4)]


def test_unarchived_gives_back_what_it_was_given(ledger: Ledger) -> None:
    archive(ledger, A2)
    # A mixed list needs its type spelled out: mypy would join str and MessageKey to object.
    asked: list[KeyLike] = ["same", A2, MessageKey("same"), "other"]
    got = ledger.unarchived("alice", asked)
    # "same" and MessageKey("same") are one key: the first spelling stays.
    assert got == ["same", "other"]
    assert type(got[0]) is str
    only_uidls: list[str] = ledger.unarchived("alice", ["other", "same"])
    assert only_uidls == ["other", "same"]


def test_unarchived_str_means_occurrence_one(ledger: Ledger) -> None:
    archive(ledger, A2)
    assert ledger.unarchived("alice", ["same"]) == ["same"]
    archive(ledger, A1)
    assert ledger.unarchived("alice", ["same"]) == []


def test_unarchived_by_key_on_the_bulk_path(ledger: Ledger) -> None:
    fill(ledger, "alice", [f"u{i:05}" for i in range(0, 2000, 2)])
    fill(ledger, "alice", ["u00001"], occurrence=2)
    asked = [MessageKey(f"u{i:05}") for i in range(2000)] + [
        MessageKey("u00001", 2),
        MessageKey("u00002", 2),
    ]
    expected = [MessageKey(f"u{i:05}") for i in range(1, 2000, 2)] + [MessageKey("u00002", 2)]
    assert ledger.unarchived("alice", asked) == expected


def test_failures_set_aside_by_key(ledger: Ledger) -> None:
    for _ in range(3):
        ledger.record_failure("alice", A2, error="-ERR", at=T0)
    assert ledger.unarchived("alice", [A1, A2], max_attempts=3) == [A1]
    assert ledger.unarchived("alice", [A1, A2], max_attempts=3, retry_failed=True) == [A1, A2]


# -- failures -------------------------------------------------------------------


def test_failures_are_per_occurrence(ledger: Ledger) -> None:
    assert ledger.record_failure("alice", A2, error="-ERR one", at=T0) == 1
    assert ledger.record_failure("alice", A2, error="-ERR two", at=LATER) == 2
    assert ledger.record_failure("alice", "same", error="-ERR first", at=LATER) == 1
    assert ledger.failures("alice") == [
        FailedMessage("same", 2, T0, LATER, "-ERR two", occurrence=2),
        FailedMessage("same", 1, LATER, LATER, "-ERR first", occurrence=1),
    ]
    ledger.clear_failure("alice", "same")
    assert [f.key for f in ledger.failures("alice")] == [A2]
    ledger.clear_failure("alice", A2)
    assert ledger.failures("alice") == []


# -- retention ------------------------------------------------------------------


def test_retained_by_key_in_input_order(ledger: Ledger) -> None:
    archive(ledger, A1)
    archive(ledger, A2, at=LATER)
    archive(ledger, "other")
    got = ledger.retained("alice", [A2, MessageKey("same", 5), "same", A1, "other"])
    assert [(m.key, m.archived_at) for m in got] == [
        (A2, LATER),
        (A1, T0 + timedelta(seconds=1)),
        (MessageKey("other"), T0 + timedelta(seconds=1)),
    ]
    assert got[0] == RetainedMessage("same", path_of(A2), 10, LATER, server_size=12, occurrence=2)


def test_retained_by_key_on_the_bulk_path(ledger: Ledger) -> None:
    uidls = [f"u{i:05}" for i in range(1500)]
    fill(ledger, "alice", uidls)
    fill(ledger, "alice", uidls[:3], occurrence=2)
    asked = [MessageKey(u, 2) for u in uidls[1:]]
    assert [m.key for m in ledger.retained("alice", asked)] == asked[:2]


def test_dele_marks_touch_only_the_given_occurrences(ledger: Ledger) -> None:
    for key in (A1, A2, A3):
        archive(ledger, key)
    ledger.mark_delete_requested("alice", [A2, A3], at=LATER)
    ledger.mark_deleted("alice", [A3], at=NOW)
    assert by_key(ledger, "delete_requested_at") == {
        ("same", 1): None,
        ("same", 2): LATER,
        ("same", 3): None,
    }
    assert by_key(ledger, "deleted_at") == {("same", 1): None, ("same", 2): None, ("same", 3): NOW}
    assert [m.key for m in ledger.retained("alice", [A1, A2, A3])] == [A1, A2]


def test_dele_marks_with_many_uidls_and_occurrences(ledger: Ledger) -> None:
    # 600 UIDLs of occurrence 1 take among()'s bulk form; a few of 2 and 3 too.
    uidls = [f"m{i:04}" for i in range(IN_LIST_LIMIT + 100)]
    fill(ledger, "alice", uidls)
    fill(ledger, "alice", uidls[:4], occurrence=2)
    fill(ledger, "alice", uidls[:2], occurrence=3)
    chosen = [*(MessageKey(u) for u in uidls[1:]), MessageKey(uidls[0], 2), MessageKey(uidls[1], 3)]
    ledger.mark_deleted("alice", chosen, at=NOW)
    deleted = {key for key, at in by_key(ledger, "deleted_at").items() if at is not None}
    assert deleted == {(k.uidl, k.occurrence) for k in chosen}


def test_keys_group_by_uidl_when_one_uidl_has_many_occurrences(ledger: Ledger) -> None:
    # An mbox of 700 identical messages: one UIDL, occurrences 1..700.
    for number in range(1, 701):
        fill(ledger, "alice", ["empty"], occurrence=number)
    fill(ledger, "alice", ["other"])
    chosen = [MessageKey("empty", n) for n in range(2, 701, 2)] + [MessageKey("other")]
    with ledger._engine.connect() as connection:
        pairs = [(k.uidl, k.occurrence) for k in chosen]
        condition = pairs_among(Message.uidl, Message.occurrence, pairs, connection)
        # Grouped by UIDL: two groups, not 351.
        assert str(condition).count("messages.uidl =") == 2
    ledger.mark_deleted("alice", chosen, at=NOW)
    assert len(ledger.retained("alice", [MessageKey("empty", n) for n in range(1, 701)])) == 350
    assert ledger.retained("alice", ["other"]) == []


def test_reconcile_by_key(ledger: Ledger) -> None:
    for key in (A1, A2, A3):
        archive(ledger, key)
    ledger.mark_delete_requested("alice", [A3], at=LATER)
    ledger.record_failure("alice", MessageKey("flaky", 2), error="-ERR", at=T0)
    ledger.record_failure("alice", "flaky", error="-ERR", at=T0)
    # The server now lists "same" once, matched to occurrence 2, and "flaky" once.
    settled = ledger.reconcile("alice", [A2, "flaky"], now=NOW)
    assert settled == Reconciled(deleted=1, gone=1, cleared=0)
    assert by_key(ledger, "gone_at") == {("same", 1): NOW, ("same", 2): None, ("same", 3): None}
    assert by_key(ledger, "deleted_at")[("same", 3)] == LATER
    assert [f.key for f in ledger.failures("alice")] == [MessageKey("flaky")]
    # Occurrence 1 listed again: live again.
    back = ledger.reconcile("alice", ["same", A2], now=NOW + timedelta(hours=1))
    assert back == Reconciled(deleted=0, gone=0, cleared=0, returned=1)
    assert [m.key for m in ledger.retained("alice", [A1, A2, A3])] == [A1, A2]


def test_reconcile_with_plain_uidls_leaves_later_occurrences_gone(ledger: Ledger) -> None:
    archive(ledger, A1)
    archive(ledger, A2)
    assert ledger.reconcile("alice", ["same"], now=NOW) == Reconciled(deleted=0, gone=1, cleared=0)
    assert by_key(ledger, "gone_at") == {("same", 1): None, ("same", 2): NOW}


# -- known_rows -----------------------------------------------------------------


def test_known_rows_returns_every_state_grouped_and_ordered(ledger: Ledger) -> None:
    archive(ledger, "kept", server_size=12)
    archive(ledger, A3, at=LATER)
    archive(ledger, A1)
    record(ledger, A2)
    archive(ledger, "deleted")
    archive(ledger, "gone")
    ledger.mark_deleted("alice", ["deleted"], at=LATER)
    ledger.hold("alice", A3, reason="sizes differ", at=LATER)
    ledger.reconcile("alice", ["kept", "deleted", A1, A2, A3], now=NOW)  # "gone" vanished

    rows = ledger.known_rows("alice", ["gone", "kept", "deleted", "same", "unknown"])

    assert list(rows) == ["gone", "kept", "deleted", "same"]
    assert [r.occurrence for r in rows["same"]] == [1, 2, 3]
    assert rows["same"][1] == KnownRow(
        uidl="same",
        occurrence=2,
        state="pending",
        path=path_of(A2),
        size=10,
        sha256=sha_of(A2),
        server_size=12,
        archived_at=None,
        deleted=False,
        gone=False,
        hold_reason=None,
    )
    assert (rows["same"][2].state, rows["same"][2].archived_at) == ("archived", LATER)
    assert rows["same"][2].hold_reason == "sizes differ"
    assert [(r.deleted, r.gone) for r in rows["deleted"] + rows["gone"] + rows["kept"]] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    assert rows["kept"][0].key == MessageKey("kept")


def test_known_rows_includes_shared_uidls_not_asked_for(ledger: Ledger) -> None:
    archive(ledger, "solo")
    archive(ledger, "zeta")
    archive(ledger, MessageKey("zeta", 2))
    archive(ledger, A1)
    archive(ledger, A2)
    archive(ledger, "same", account="bob")  # another account's row never counts
    archive(ledger, MessageKey("same", 2), account="bob")
    rows = ledger.known_rows("alice", ["solo"])
    # Asked-for first, then the shared UIDLs in UIDL order.
    assert list(rows) == ["solo", "same", "zeta"]
    assert [r.key for r in rows["same"]] == [A1, A2]
    assert [r.key for r in rows["zeta"]] == [MessageKey("zeta"), MessageKey("zeta", 2)]
    assert list(ledger.known_rows("alice", [])) == ["same", "zeta"]
    assert ledger.known_rows("carol", ["solo"]) == {}


def test_known_rows_on_the_bulk_path(ledger: Ledger, statements: list[str]) -> None:
    uidls = [f"u{i:05}" for i in range(2000)]
    fill(ledger, "alice", uidls[::2])
    fill(ledger, "alice", ["u00000"], occurrence=2)
    statements.clear()
    rows = ledger.known_rows("alice", uidls[1:])
    assert len(statements) <= 2  # (SQLite BEGIN) + one statement
    assert len(rows) == 1000
    assert [r.occurrence for r in rows["u00000"]] == [1, 2]  # shared, though not asked for
    assert list(rows)[:2] == ["u00002", "u00004"]
    assert list(rows)[-1] == "u00000"


def test_next_occurrence(ledger: Ledger) -> None:
    assert ledger.next_occurrence("alice", "same") == 1
    archive(ledger, A1)
    assert ledger.next_occurrence("alice", "same") == 2
    record(ledger, A3)
    assert ledger.next_occurrence("alice", "same") == 4
    assert ledger.next_occurrence("alice", "SAME") == 1  # case-sensitive
    assert ledger.next_occurrence("bob", "same") == 1
    ledger.record_failure("alice", "failed", error="x", at=T0)
    assert ledger.next_occurrence("alice", "failed") == 1  # failures reserve nothing


def test_set_server_size(ledger: Ledger) -> None:
    archive(ledger, A1)
    archive(ledger, A2)
    ledger.set_server_size("alice", A2, 4096)
    assert by_key(ledger, "server_size") == {("same", 1): 12, ("same", 2): 4096}
    ledger.set_server_size("alice", "same", 0)
    assert by_key(ledger, "server_size")[("same", 1)] == 0
    with pytest.raises(LedgerError, match=r"no message with UIDL 'same' \(occurrence 3\)"):
        ledger.set_server_size("alice", A3, 1)
    with pytest.raises(ValueError, match="negative"):
        ledger.set_server_size("alice", A1, -1)
