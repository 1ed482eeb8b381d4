"""among(): ``column IN values`` past IN_LIST_LIMIT, one parameter, for any values.

On PostgreSQL a list of strings travels as a text[] literal popvault writes
itself (psycopg's list dumper was 0.4 s of a 100k-message diff); the rule
tested is that every string comes back itself, whatever it holds: quotes,
backslashes, braces, commas, spaces, NULL-like words, non-ASCII.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, MetaData, String, Table, insert, select

from popvault.ledger import Ledger
from popvault.ledger.core import IN_LIST_LIMIT, among
from popvault.ledger.models import binary_string

SCRATCH = Table("among_scratch", MetaData(), Column("value", binary_string(), primary_key=True))

# PostgreSQL text cannot hold NUL; every other code point may come.
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
AWKWARD = ["", " ", "NULL", "null", '"', "\\", '\\"', "{", "}", "{a,b}", "a,b", "ä ü", "\t\n"]


@pytest.fixture
def scratch(ledger: Ledger):
    with ledger._engine.begin() as connection:
        SCRATCH.create(connection)
    yield ledger
    with ledger._engine.begin() as connection:
        SCRATCH.drop(connection)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stored=st.sets(TEXT, max_size=40), asked=st.sets(TEXT, max_size=40))
def test_every_string_matches_itself_and_nothing_else(
    scratch: Ledger, stored: set[str], asked: set[str]
) -> None:
    stored |= set(AWKWARD)
    asked |= set(AWKWARD[::2])
    # Past the limit: the bulk form, not an IN list.
    padding = [f"pad{n}" for n in range(IN_LIST_LIMIT + 1)]
    wanted = sorted(asked) + padding
    with scratch._engine.begin() as connection:
        connection.execute(SCRATCH.delete())
        connection.execute(insert(SCRATCH), [{"value": value} for value in stored])
        found = set(
            connection.scalars(
                select(SCRATCH.c.value).where(among(SCRATCH.c.value, wanted, connection))
            )
        )
    assert found == stored & asked


def test_a_string_column_of_another_type_is_matched_too(scratch: Ledger) -> None:
    plain = Table("among_scratch", MetaData(), Column("value", String(), primary_key=True))
    with scratch._engine.begin() as connection:
        connection.execute(insert(plain), [{"value": value} for value in AWKWARD])
        values = [*AWKWARD[:3], *(f"pad{n}" for n in range(IN_LIST_LIMIT))]
        found = set(
            connection.scalars(
                select(plain.c.value).where(among(plain.c.value, values, connection))
            )
        )
    assert found == set(AWKWARD[:3])
