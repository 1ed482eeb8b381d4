"""Runs whose process died: marked interrupted by the next run, or by status (migration 0003)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ledger_helpers import migrate
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from popvault.ledger import Ledger, current
from popvault.ledger.engine import create_ledger_engine, parse_url

T0 = datetime(2026, 3, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


def outcomes(ledger: Ledger, account: str = "alice") -> list[tuple[str, str | None]]:
    engine: Engine = ledger._engine
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT outcome, error FROM runs WHERE account = :a ORDER BY id"), {"a": account}
        )
        return [(row.outcome, row.error) for row in rows]


def test_the_next_run_of_an_account_marks_its_dead_running_run_interrupted(
    ledger: Ledger,
) -> None:
    ledger.start_run("alice", started_at=T0)  # its process was killed: never finished
    ledger.start_run("bob", started_at=T0)  # another account's run: not touched
    second = ledger.start_run("alice", started_at=T1)
    [(first_outcome, first_error), (second_outcome, _)] = outcomes(ledger)
    assert (first_outcome, second_outcome) == ("interrupted", "running")
    assert first_error is not None
    assert "killed or crashed" in first_error
    assert "next run" in first_error
    assert outcomes(ledger, "bob") == [("running", None)]
    [alice, _bob] = ledger.status()
    assert alice.last_outcome == "running"  # the new run is the latest
    ledger.finish_run(second, ended_at=T1, outcome="ok", messages=0, bytes=0, error=None)
    assert ledger.status()[0].last_outcome == "ok"


def test_interrupt_runs_marks_only_the_running_runs_of_that_account(ledger: Ledger) -> None:
    done = ledger.start_run("alice", started_at=T0)
    ledger.finish_run(done, ended_at=T0, outcome="ok", messages=1, bytes=1, error=None)
    ledger.start_run("alice", started_at=T1)
    ledger.start_run("bob", started_at=T1)
    assert ledger.running_accounts() == ["alice", "bob"]
    assert ledger.interrupt_runs("alice", noticed="by a test") == 1
    assert [outcome for outcome, _ in outcomes(ledger)] == ["ok", "interrupted"]
    assert ledger.running_accounts() == ["bob"]
    [alice, bob] = ledger.status()
    assert (alice.last_outcome, bob.last_outcome) == ("interrupted", "running")
    assert alice.last_error is not None
    assert "by a test" in alice.last_error
    assert alice.last_success_at == T0


RUN = "INSERT INTO runs (account, started_at, outcome, messages, bytes) VALUES ('a', :t, :o, 0, 0)"


def test_migration_0003_allows_interrupted_and_goes_back(ledger_url: str) -> None:
    engine = create_ledger_engine(parse_url(ledger_url))
    try:
        migrate(engine, "0002")
        with engine.begin() as connection:
            connection.execute(text(RUN), {"t": "2026-01-01 00:00:00", "o": "running"})
        with pytest.raises(IntegrityError, match="ck_runs_outcome"), engine.begin() as connection:
            connection.execute(text(RUN), {"t": "2026-01-01 00:00:00", "o": "interrupted"})

        migrate(engine, "0003")

        assert current(ledger_url) == "0003"
        with engine.begin() as connection:
            connection.execute(text(RUN), {"t": "2026-01-02 00:00:00", "o": "interrupted"})
        with pytest.raises(IntegrityError, match="ck_runs_outcome"), engine.begin() as connection:
            connection.execute(text(RUN), {"t": "2026-01-03 00:00:00", "o": "maybe"})
        with engine.connect() as connection:
            ddl_checks = connection.execute(text("SELECT outcome FROM runs ORDER BY id")).all()
        assert [row.outcome for row in ddl_checks] == ["running", "interrupted"]

        migrate(engine, "0002", down=True)

        with engine.connect() as connection:
            rows = connection.execute(text("SELECT outcome FROM runs ORDER BY id")).all()
        assert [row.outcome for row in rows] == ["running", "failed"]
        with pytest.raises(IntegrityError, match="ck_runs_outcome"), engine.begin() as connection:
            connection.execute(text(RUN), {"t": "2026-01-04 00:00:00", "o": "interrupted"})
    finally:
        engine.dispose()


def test_migration_0003_keeps_the_account_column_bytewise_on_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    with Ledger.open(url):
        pass
    engine = create_ledger_engine(parse_url(url))
    try:
        with engine.connect() as connection:
            ddl = connection.execute(text("SELECT sql FROM sqlite_master WHERE name = 'runs'"))
            sql = ddl.scalar_one()
    finally:
        engine.dispose()
    assert 'account VARCHAR COLLATE "BINARY"' in sql
    assert "'interrupted'" in sql
