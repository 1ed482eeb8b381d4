"""A run prunes its account's history past [ledger] keep_runs (issue 11 part 4)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PASSWORD = "prune-Secret-3"


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(2), username="bob", password=PASSWORD) as srv:
        yield srv


def runs(ws: Workspace) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in ws.ledger_rows("SELECT started_at, outcome FROM runs ORDER BY id")
    ]


@pytest.mark.parametrize(("keep", "left"), [("2d", 3), ("forever", 5)])
def test_runs_older_than_keep_runs_are_pruned_after_each_run(
    tmp_path: Path, server: FakePop3Server, keep: str, left: int
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    ws.write_config([fake_account(server)], ledger={"keep_runs": keep})
    for day in range(5):
        result = ws.run_at(T0 + timedelta(days=day))
        assert result.ok, result.error
    # "2d": the runs of days 2, 3 and 4 (day 4's run prunes what started before day 2).
    assert len(runs(ws)) == left
    assert len(ws.stored()) == 2
