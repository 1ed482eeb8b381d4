"""The ledger's part: the schedules table, the daemon lock, and status reading them."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from popvault.ledger import DaemonRunning, Ledger, ScheduleEntry
from popvault.ledger.locks import daemon_lock_path, lock_file_path
from popvault.status import STALE_AFTER, live_schedules
from workspace import Workspace

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def entry(account: str, **changes) -> ScheduleEntry:
    values = {
        "account": account,
        "next_run_at": NOW + timedelta(minutes=15),
        "consecutive_failures": 0,
        "backoff_reason": None,
        "daemon_pid": 4242,
        "daemon_host": "host-a",
        "updated_at": NOW,
    }
    values.update(changes)
    return ScheduleEntry(**values)


@pytest.fixture
def ledger(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3") as opened:
        yield opened


def test_schedules_round_trip_replace_touch_and_drop(ledger):
    ledger.save_schedule(entry("a"))
    ledger.save_schedule(entry("b", daemon_pid=1))
    later = NOW + timedelta(hours=1)
    ledger.save_schedule(
        entry("a", next_run_at=later, consecutive_failures=2, backoff_reason="why")
    )
    a, b = ledger.schedules()
    assert (a.next_run_at, a.consecutive_failures, a.backoff_reason) == (later, 2, "why")
    assert b.daemon_pid == 1
    ledger.touch_schedules(pid=4242, host="host-a", at=later)
    a, b = ledger.schedules()
    assert (a.updated_at, b.updated_at) == (later, NOW)
    ledger.drop_schedules(pid=4242, host="host-a", accounts=["b"])
    assert len(ledger.schedules()) == 2  # b belongs to another daemon
    ledger.drop_schedules(pid=4242, host="host-a")
    assert [row.account for row in ledger.schedules()] == ["b"]


def test_a_naive_time_is_refused(ledger):
    with pytest.raises(ValueError, match="aware"):
        ledger.save_schedule(entry("a", updated_at=NOW.replace(tzinfo=None)))


def test_one_daemon_per_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/ledger.sqlite3"
    refused = pytest.raises(DaemonRunning, match=rf"already running.*pid {os.getpid()}")
    with Ledger.open(url) as first, Ledger.open(url) as second:
        with first.daemon_lock(), refused, second.daemon_lock():
            pass
        with second.daemon_lock():
            pass  # released when the first left its block


def test_one_daemon_per_in_memory_ledger():
    refused = pytest.raises(DaemonRunning)
    with Ledger.open("sqlite://") as ledger, ledger.daemon_lock(), refused, ledger.daemon_lock():
        pass


def test_the_daemon_lock_file_cannot_be_an_account_lock(tmp_path):
    database = tmp_path / "ledger.sqlite3"
    path = daemon_lock_path(database)
    assert path.parent == lock_file_path(database, "x").parent
    assert all(
        lock_file_path(database, name) != path for name in ("@daemon", "daemon", "@daemon.lock")
    )


def test_live_schedules_drop_rows_of_daemons_that_are_gone():
    rows = [
        entry("here-alive", daemon_host="here", daemon_pid=1),
        entry("here-dead", daemon_host="here", daemon_pid=2),
        entry("elsewhere", daemon_host="there", daemon_pid=2),
        entry("old", daemon_host="there", updated_at=NOW - STALE_AFTER - timedelta(seconds=1)),
    ]
    live = live_schedules(rows, now=NOW, host="here", alive=lambda pid: pid == 1)
    assert sorted(live) == ["elsewhere", "here-alive"]


def test_status_without_a_daemon_shows_nulls(tmp_path):
    ws = Workspace(tmp_path)
    ws.write_config([{"name": "a", "host": "h", "username": "u", "password": "p"}])
    result = ws.cli("status", "--json")
    assert result.code == 0, result.output
    (row,) = json.loads(result.out)
    assert row["next_run_at"] is None
    assert row["consecutive_failures"] is None


@pytest.fixture
def postgres_ledger() -> Iterator[Ledger]:
    """A ledger in a fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"popvault_daemon_{secrets.token_hex(6)}"
    admin_args = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "autocommit": True}
    try:
        with psycopg.connect(dbname="postgres", connect_timeout=5, **admin_args) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    try:
        with Ledger.open(f"postgresql://postgres@127.0.0.1:5432/{name}") as ledger:
            yield ledger
    finally:
        with psycopg.connect(dbname="postgres", **admin_args) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_schedules_and_no_daemon_lock_on_postgresql(postgres_ledger):
    postgres_ledger.save_schedule(entry("a"))
    postgres_ledger.save_schedule(entry("a", consecutive_failures=3, backoff_reason="busy"))
    (row,) = postgres_ledger.schedules()
    assert (row.consecutive_failures, row.backoff_reason, row.updated_at) == (3, "busy", NOW)
    # Several daemons may share a PostgreSQL ledger: the account locks keep them apart.
    with postgres_ledger.daemon_lock(), postgres_ledger.daemon_lock():
        pass
    postgres_ledger.drop_schedules(pid=4242, host="host-a")
    assert postgres_ledger.schedules() == []
