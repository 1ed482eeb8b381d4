"""Messages archived elsewhere (issue 12 part 1): recorded once, found in bulk, marked deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import archive

from popvault.ledger import ImportedUidl, ImportOutcome, Ledger

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATE_FILE = "/home/u/.getmail/oldmail-pop.example-110-u"


def seen(*uidls: str, at: datetime | None = None) -> list[ImportedUidl]:
    return [ImportedUidl(uidl, at, STATE_FILE) for uidl in uidls]


def test_imported_uidls_are_found_with_their_source_and_dates(ledger: Ledger) -> None:
    outcome = ledger.record_imported(
        "alice", seen("a", "b", at=T0), source="getmail6", allow_delete=False, at=T0
    )

    assert outcome == ImportOutcome(recorded=2, already_imported=0, already_archived=0)
    found = ledger.imported_among("alice", ["a", "b", "c"])
    assert set(found) == {"a", "b"}
    assert found["a"].source == "getmail6"
    assert found["a"].seen_at == T0
    assert found["a"].seen_at.tzinfo is UTC
    assert found["a"].allow_delete is False
    assert found["a"].deleted_at is None
    assert ledger.imported_among("bob", ["a", "b"]) == {}


def test_importing_twice_changes_nothing(ledger: Ledger) -> None:
    ledger.record_imported("alice", seen("a", "b"), source="mpop", allow_delete=False, at=T0)
    later = T0 + timedelta(days=1)

    again = ledger.record_imported(
        "alice", seen("a", "b", "c"), source="fetchmail", allow_delete=True, at=later
    )

    assert again == ImportOutcome(recorded=1, already_imported=2, already_archived=0)
    found = ledger.imported_among("alice", ["a", "b", "c"])
    # The first import stands: its source, time and (no) permission to delete.
    assert (found["a"].source, found["a"].imported_at, found["a"].allow_delete) == (
        "mpop",
        T0,
        False,
    )
    assert (found["c"].source, found["c"].allow_delete) == ("fetchmail", True)
    assert {row.name: row.imported_messages for row in ledger.status()} == {"alice": 3}


def test_a_uidl_popvault_archived_itself_is_not_imported(ledger: Ledger) -> None:
    archive(ledger, "mine")

    outcome = ledger.record_imported(
        "alice", seen("mine", "theirs"), source="getmail6", allow_delete=True, at=T0
    )

    assert outcome == ImportOutcome(recorded=1, already_imported=0, already_archived=1)
    assert set(ledger.imported_among("alice", ["mine", "theirs"])) == {"theirs"}


def test_a_repeated_uidl_counts_once_its_first_entry(ledger: Ledger) -> None:
    entries = [ImportedUidl("x", T0, "first"), ImportedUidl("x", None, "second")]

    outcome = ledger.record_imported("alice", entries, source="mpop", allow_delete=False, at=T0)

    assert outcome.recorded == 1
    assert ledger.imported_among("alice", ["x"])["x"].seen_at == T0


def test_deleted_imports_are_marked_once(ledger: Ledger) -> None:
    ledger.record_imported("alice", seen("a", "b"), source="mpop", allow_delete=True, at=T0)
    first, second = T0 + timedelta(hours=1), T0 + timedelta(hours=2)

    ledger.mark_imported_deleted("alice", ["a"], at=first)
    ledger.mark_imported_deleted("alice", ["a", "b"], at=second)

    found = ledger.imported_among("alice", ["a", "b"])
    assert found["a"].deleted_at == first
    assert found["b"].deleted_at == second


def test_an_unknown_source_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="unknown import source"):
        ledger.record_imported("alice", seen("a"), source="thunderbird", allow_delete=False, at=T0)


def test_a_large_state_file_is_recorded_and_found_in_bulk(ledger: Ledger) -> None:
    uidls = [f"UID{index:06d}" for index in range(20_000)]

    outcome = ledger.record_imported(
        "alice", seen(*uidls), source="getmail6", allow_delete=False, at=T0
    )

    assert outcome.recorded == 20_000
    asked = [*uidls[::3], "not-imported"]
    assert set(ledger.imported_among("alice", asked)) == set(uidls[::3])


UIDL = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.lists(UIDL, max_size=30),
    second=st.lists(UIDL, max_size=30),
    archived=st.lists(UIDL, max_size=5, unique=True),
)
def test_imports_add_up_to_the_union_less_what_popvault_archived(
    tmp_path_factory: pytest.TempPathFactory,
    first: list[str],
    second: list[str],
    archived: list[str],
) -> None:
    url = f"sqlite:///{tmp_path_factory.mktemp('imported')}/ledger.sqlite3"
    with Ledger.open(url) as ledger:
        for uidl in archived:
            archive(ledger, uidl)
        one = ledger.record_imported(
            "alice", seen(*first), source="mpop", allow_delete=False, at=T0
        )
        two = ledger.record_imported(
            "alice", seen(*second), source="mpop", allow_delete=False, at=T0
        )

        expected = (set(first) | set(second)) - set(archived)
        everything = list(set(first) | set(second) | set(archived))
        assert set(ledger.imported_among("alice", everything)) == expected
        assert one.recorded + two.recorded == len(expected)
        assert one.already_archived == len(set(first) & set(archived))
        assert two.already_imported == len((set(second) & set(first)) - set(archived))


def test_status_counts_each_accounts_imported_messages(ledger: Ledger) -> None:
    archive(ledger, "mine")
    ledger.record_imported("alice", seen("a", "b"), source="mpop", allow_delete=False, at=T0)
    ledger.record_imported("carol", seen("c"), source="maildir", allow_delete=False, at=T0)

    by_name = {status.name: status for status in ledger.status()}

    assert by_name["alice"].imported_messages == 2
    assert by_name["alice"].archived_messages == 1
    # An account with imports only has its line too.
    assert by_name["carol"].imported_messages == 1
    assert by_name["carol"].archived_messages == 0
