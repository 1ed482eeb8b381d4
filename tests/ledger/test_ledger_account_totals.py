"""account_totals: kept in step with the messages by every write, counted by migration 0008.

``status`` and ``archived_totals`` read each account's totals from one row
(issue 11 part 4: a count of ten million rows took seconds). The rule tested
is the general one: after any sequence of ledger writes, each account's row
says exactly what counting its messages says, and a write that fails leaves
it as it was.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import T0, migrate, record
from sqlalchemy import case, func, insert, select

from popvault.errors import LedgerError
from popvault.ledger import Ledger, MessageKey
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.models import Message

_names = itertools.count()


def counted(ledger: Ledger, account: str) -> tuple[int, int, int]:
    """(archived messages, their octets, held ones still on the server), counted from messages."""
    archived = Message.state == "archived"
    held = archived & Message.hold_reason.is_not(None)
    held = held & Message.deleted_at.is_(None) & Message.gone_at.is_(None)
    query = select(
        func.coalesce(func.sum(case((archived, 1), else_=0)), 0),
        func.coalesce(func.sum(case((archived, Message.size), else_=0)), 0),
        func.coalesce(func.sum(case((held, 1), else_=0)), 0),
    ).where(Message.account == account)
    with ledger._engine.connect() as connection:
        row = connection.execute(query).one()
    return int(row[0]), int(row[1]), int(row[2])


def shown(ledger: Ledger, account: str) -> tuple[int, int, int]:
    """What status and archived_totals say of the account (they must agree)."""
    by_name = {entry.name: entry for entry in ledger.status()}
    entry = by_name.get(account)
    if entry is None:  # nothing recorded yet: not an account of the ledger's
        assert ledger.archived_totals(account) == (0, 0)
        return 0, 0, 0
    assert ledger.archived_totals(account) == (entry.archived_messages, entry.archived_bytes)
    assert ledger.archived_totals_by_account()[account] == ledger.archived_totals(account)
    return entry.archived_messages, entry.archived_bytes, entry.held_messages


STEP = st.one_of(
    st.tuples(st.just("record"), st.lists(st.integers(0, 2**40), min_size=1, max_size=5)),
    st.tuples(st.just("archive"), st.integers(0, 4)),
    st.tuples(st.just("archive-wrong"), st.integers(0, 4)),
    st.tuples(st.just("drop"), st.integers(0, 4)),
    st.tuples(st.just("delete"), st.integers(0, 4)),
    st.tuples(st.just("hold"), st.integers(0, 4)),
    st.tuples(st.just("release"), st.integers(0, 4)),
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(STEP, min_size=1, max_size=12))
def test_the_totals_say_what_counting_the_messages_says_after_any_writes(
    ledger: Ledger, steps: list[tuple[str, object]]
) -> None:
    account = f"t{next(_names)}"
    pending: list[str] = []
    archived: list[str] = []
    serial = itertools.count()
    at = T0 + timedelta(seconds=1)
    for verb, arg in steps:
        if verb == "record":
            assert isinstance(arg, list)
            for size in arg:
                uidl = f"m{next(serial)}"
                record(ledger, uidl, account=account, size=size)
                pending.append(uidl)
        elif verb == "archive" and pending:
            assert isinstance(arg, int)
            batch, pending = pending[: arg + 1], pending[arg + 1 :]
            ledger.mark_archived_many(account, batch, archived_at=at)
            archived += batch
        elif verb == "archive-wrong" and archived:
            # A batch with one key already archived: all or nothing, the totals too.
            assert isinstance(arg, int)
            batch = [*pending[:arg], archived[arg % len(archived)]]
            with pytest.raises(LedgerError, match="no pending message"):
                ledger.mark_archived_many(account, batch, archived_at=at)
        elif verb == "drop" and pending:
            assert isinstance(arg, int)
            ledger.drop_pending(account, pending.pop(arg % len(pending)))
        elif verb == "delete" and archived:
            assert isinstance(arg, int)
            ledger.mark_deleted(account, [archived[arg % len(archived)]], at=at)
        elif verb == "hold" and archived:
            assert isinstance(arg, int)
            ledger.hold(account, archived[arg % len(archived)], reason="size differs", at=at)
        elif verb == "release":
            ledger.release_holds(account)
        assert shown(ledger, account) == counted(ledger, account), (verb, arg)


def test_a_shared_uidl_s_occurrences_count_once_each(ledger: Ledger) -> None:
    for occurrence in (1, 2):
        key = MessageKey("same", occurrence)
        record(ledger, key, size=5 * occurrence)
        ledger.mark_archived("alice", key, archived_at=T0 + timedelta(seconds=1))
    assert shown(ledger, "alice")[:2] == (2, 15) == counted(ledger, "alice")[:2]


def test_migration_0008_counts_the_messages_already_there(ledger_url: str) -> None:
    engine = create_ledger_engine(parse_url(ledger_url))
    try:
        migrate(engine, "0007")
        rows = [
            ("alice", "a1", "archived", 2**33, None),  # past 32 bits: the columns are 64-bit
            ("alice", "a2", "archived", 7, "size differs"),
            ("alice", "a3", "pending", 100, None),
            ("bob", "b1", "pending", 5, None),
        ]
        with engine.begin() as connection:
            connection.execute(
                insert(Message),
                [
                    {
                        "account": account,
                        "uidl": uidl,
                        "state": state,
                        "size": size,
                        "sha256": "0" * 64,
                        "path": f"cur/{uidl}",
                        "first_seen_at": T0,
                        "archived_at": T0 if state == "archived" else None,
                        "hold_reason": reason,
                        "held_at": T0 if reason else None,
                    }
                    for account, uidl, state, size, reason in rows
                ],
            )
    finally:
        engine.dispose()
    with Ledger.open(ledger_url) as ledger:  # Alembic: 0007 -> the head
        assert shown(ledger, "alice") == counted(ledger, "alice") == (2, 2**33 + 7, 1)
        assert shown(ledger, "bob") == counted(ledger, "bob") == (0, 0, 0)
        # From here on the writes keep them.
        ledger.mark_archived("alice", "a3", archived_at=T0 + timedelta(seconds=2))
        assert shown(ledger, "alice") == (3, 2**33 + 107, 1)
