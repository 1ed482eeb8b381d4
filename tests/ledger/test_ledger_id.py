"""The ledger's id and its sample of archived files (ledger/ledger_id.py), on both backends."""

from __future__ import annotations

import re

import pytest
from ledger_helpers import T0, archive, migrate, path_of, record
from sqlalchemy import delete, insert, select

from popvault.errors import LedgerError
from popvault.ledger import Ledger, current
from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.ledger_id import new_ledger_id
from popvault.ledger.migrate import HEAD_REVISION
from popvault.ledger.models import LedgerIdentity

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_a_new_ledger_has_an_id_that_stays(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        first = ledger.ledger_id()
    assert HEX32.fullmatch(first)
    with Ledger.open(ledger_url) as ledger:
        assert ledger.ledger_id() == first
    engine = create_ledger_engine(parse_url(ledger_url))
    try:
        with engine.connect() as connection:
            (row,) = connection.execute(select(LedgerIdentity.__table__)).all()
    finally:
        engine.dispose()
    assert row.id == first
    assert row.created_at.tzinfo is not None


def test_two_ledgers_have_two_ids(tmp_path) -> None:
    ids = set()
    for name in ("a", "b"):
        with Ledger.open(f"sqlite:///{tmp_path}/{name}.sqlite3") as ledger:
            ids.add(ledger.ledger_id())
    assert len(ids) == 2
    assert new_ledger_id() != new_ledger_id()


def test_a_ledger_from_before_ids_gets_one_from_the_migration(ledger_url: str) -> None:
    engine = create_ledger_engine(parse_url(ledger_url))
    try:
        migrate(engine, "0005")
        with engine.connect() as connection:
            assert not connection.dialect.has_table(connection, "ledger_identity")
    finally:
        engine.dispose()
    with Ledger.open(ledger_url) as ledger:  # Alembic: 0005 -> the head
        made = ledger.ledger_id()
    assert current(ledger_url) == HEAD_REVISION
    assert HEX32.fullmatch(made)
    engine = create_ledger_engine(parse_url(ledger_url))
    try:
        migrate(engine, "0005", down=True)
        with engine.connect() as connection:
            assert not connection.dialect.has_table(connection, "ledger_identity")
    finally:
        engine.dispose()


@pytest.mark.parametrize("rows", [0, 2])
def test_an_id_table_changed_by_hand_is_a_ledger_error(ledger: Ledger, rows: int) -> None:
    with ledger._engine.begin() as connection:
        if rows == 0:
            connection.execute(delete(LedgerIdentity))
        else:
            connection.execute(insert(LedgerIdentity).values(id=new_ledger_id(), created_at=T0))
    found = "no row" if rows == 0 else "more than one row"
    with pytest.raises(LedgerError, match=f"has {found} in its ledger_identity table"):
        ledger.ledger_id()


def test_the_sample_is_the_newest_archived_paths_first(ledger: Ledger) -> None:
    for n in range(7):
        archive(ledger, f"a{n}")
    archive(ledger, "b0", account="bob")
    record(ledger, "pending")  # not published yet: never in the sample
    archive(ledger, "c0", account="carol")

    assert ledger.archived_sample(3) == [
        path_of("c0", "carol"),
        path_of("b0", "bob"),
        path_of("a6"),
    ]
    assert ledger.archived_sample(2, accounts=["alice"]) == [path_of("a6"), path_of("a5")]
    assert ledger.archived_sample(5, accounts=["bob", "carol"]) == [
        path_of("c0", "carol"),
        path_of("b0", "bob"),
    ]
    assert ledger.archived_sample(2, exclude=["carol", "alice"]) == [path_of("b0", "bob")]
    assert ledger.archived_sample(9, accounts=["nobody"]) == []
    assert len(ledger.archived_sample(100)) == 9
    assert path_of("pending") not in ledger.archived_sample(100)
    with pytest.raises(ValueError, match="at least 1"):
        ledger.archived_sample(0)


def test_the_sample_of_an_empty_ledger_is_empty(ledger: Ledger) -> None:
    assert ledger.archived_sample(5) == []
    record(ledger, "only-pending")
    assert ledger.archived_sample(5) == []
