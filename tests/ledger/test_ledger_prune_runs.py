"""Pruning the runs history (``[ledger] keep_runs``), on SQLite and PostgreSQL.

Old finished runs go; kept whatever their age: the account's latest run, its
latest success and its latest run with a listing (what ``status`` shows), a
run still going, and every other account's runs.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import T0
from sqlalchemy import select

from popvault.ledger import Ledger
from popvault.ledger.models import Run

DAY = timedelta(days=1)


def run(ledger: Ledger, account: str, day: int, outcome: str, on_server: int | None = None) -> int:
    started = T0 + day * DAY
    run_id = ledger.start_run(account, started_at=started)
    if outcome != "running":
        ledger.finish_run(
            run_id,
            ended_at=started + timedelta(minutes=1),
            outcome=outcome,
            messages=0,
            bytes=0,
            error=None if outcome == "ok" else "boom",
            on_server=on_server,
        )
    return run_id


def run_ids(ledger: Ledger, account: str) -> set[int]:
    with ledger._engine.connect() as connection:
        return set(connection.scalars(select(Run.id).where(Run.account == account)))


def test_old_runs_go_and_what_status_shows_stays(ledger: Ledger) -> None:
    old_ok = run(ledger, "a", 0, "ok", on_server=5)
    run(ledger, "a", 1, "failed", on_server=4)
    listed = run(ledger, "a", 2, "failed", on_server=3)
    run(ledger, "a", 3, "ok", on_server=2)
    latest_ok = run(ledger, "a", 4, "ok", on_server=1)
    failing = [run(ledger, "a", day, "failed") for day in range(5, 10)]
    others = {run(ledger, "b", 0, "ok"), run(ledger, "b", 1, "failed")}
    before = {row.name: row for row in ledger.status()}

    removed = ledger.prune_runs("a", before=T0 + 100 * DAY)

    # Kept: the latest (a failure), the latest success, the latest with a listing.
    assert run_ids(ledger, "a") == {failing[-1], latest_ok}
    assert removed == 10 - 2
    assert run_ids(ledger, "b") == others
    assert {row.name: row for row in ledger.status()} == before
    assert old_ok not in run_ids(ledger, "a")
    assert listed not in run_ids(ledger, "a")


def test_recent_runs_and_a_run_going_on_stay(ledger: Ledger) -> None:
    kept = {run(ledger, "a", day, "ok") for day in (8, 9)}
    run(ledger, "a", 1, "failed")
    going = run(ledger, "a", 2, "running")  # old, but its process may still be alive
    assert ledger.prune_runs("a", before=T0 + 5 * DAY) == 1
    assert run_ids(ledger, "a") == kept | {going}


def test_one_ledger_prunes_an_account_at_most_once_an_hour(ledger: Ledger) -> None:
    for day in range(5):
        run(ledger, "a", day, "failed")
        run(ledger, "b", day, "failed")
    keep, now = 2 * DAY, T0 + 10 * DAY
    assert ledger.prune_runs_now("a", keep=keep, now=now) == 4  # the latest stays
    later = run(ledger, "a", 6, "failed")
    run(ledger, "a", 7, "failed")
    # Within the hour nothing more goes; another account is its own.
    assert ledger.prune_runs_now("a", keep=keep, now=now + timedelta(minutes=59)) == 0
    assert later in run_ids(ledger, "a")
    assert ledger.prune_runs_now("b", keep=keep, now=now) == 4
    # An hour on, it prunes again; a clock that stepped back prunes too.
    assert ledger.prune_runs_now("a", keep=keep, now=now + timedelta(hours=1)) == 2
    assert later not in run_ids(ledger, "a")
    run(ledger, "a", 1, "failed")
    run(ledger, "a", 8, "failed")
    assert ledger.prune_runs_now("a", keep=keep, now=now - timedelta(days=1)) == 1


def test_a_naive_cut_off_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="aware"):
        ledger.prune_runs("a", before=T0.replace(tzinfo=None))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    outcomes=st.lists(
        st.tuples(st.sampled_from(["ok", "failed"]), st.booleans()), min_size=1, max_size=12
    ),
    cut=st.integers(min_value=0, max_value=13),
)
def test_pruning_never_changes_status(
    ledger: Ledger, outcomes: list[tuple[str, bool]], cut: int
) -> None:
    account = f"p{len(outcomes)}-{cut}-{abs(hash(tuple(outcomes))) % 10**6}"
    for day, (outcome, listed) in enumerate(outcomes):
        run(ledger, account, day, outcome, on_server=day if listed else None)
    before = [row for row in ledger.status() if row.name == account]
    ledger.prune_runs(account, before=T0 + cut * DAY)
    assert [row for row in ledger.status() if row.name == account] == before
    # Every run on or after the cut-off stays.
    assert len(run_ids(ledger, account)) >= sum(1 for day in range(len(outcomes)) if day >= cut)
