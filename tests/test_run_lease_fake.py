"""A run whose lease passes to another daemon mid-run stops dead (issue 11 part 2).

On a PostgreSQL ledger every run holds its account by a lease. Here another
holder takes the lease while the run is fetching (the lease forced to expire
and claimed by another owner, from the server's RETR hook): the run must not
publish, record or delete anything more, must end the session without QUIT
(so the server deletes nothing, RFC 1939 section 6), and the next run must
archive every message exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import postgres
from popvault import config as config_module
from popvault.errors import LeaseLost
from popvault.ledger import LeaseOwner, Ledger
from popvault.sync import sync_account
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

pytestmark = pytest.mark.postgres

PASSWORD = "fake-Pa55word-never-shown"
THIEF = LeaseOwner("elsewhere.example", 4242, "f" * 16)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with postgres.databases("popvault_lease") as make:
        yield make()


@pytest.fixture
def pg(database: str) -> str:
    postgres.reset_ledger(database)
    return database


def steal(url: str, account: str) -> None:
    """Another daemon takes the lease: it is made to expire, then claimed by THIEF."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "UPDATE leases SET expires_at = now() - interval '1 second' WHERE account = %s",
            (account,),
        )
    with Ledger.open(url) as other:
        assert other.claim_lease(account, THIEF, timedelta(seconds=60)) is not None


def release(url: str, account: str) -> None:
    with Ledger.open(url) as other:
        lease = other.current_lease(account)
        assert lease is not None
        assert lease.owner == THIEF
        other.release_lease(lease)


@pytest.mark.parametrize("depth", [1, 256], ids=["unpipelined", "pipelined"])
@pytest.mark.parametrize("steal_at", [1, 5, 12])
def test_a_run_that_loses_its_lease_records_publishes_and_deletes_nothing_more(
    tmp_path: Path, pg: str, depth: int, steal_at: int
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    messages = sample_messages(12)
    with FakePop3Server(messages, username="alice", password=PASSWORD) as srv:
        ws.write_config(
            [fake_account(srv, "acct", retention="delete", pipeline_depth=depth)],
            ledger_url=pg,
        )
        cfg = config_module.load(ws.config)
        hooks_left = [steal_at]

        def retr(_session: int, _arg: str) -> None:
            hooks_left[0] -= 1
            if hooks_left[0] == 0:
                steal(pg, "acct")

        srv.on_command("RETR", retr)
        with Ledger.open(pg) as ledger:
            result = sync_account(cfg, cfg.accounts[0], ledger)
            assert isinstance(result.exception, LeaseLost), result.error
            commands = [line.split()[0].upper() for line in srv.commands if line]
            assert "DELE" not in commands, commands
            assert "QUIT" not in commands, commands
            assert srv.deleted == []
            # Recorded nothing after the theft: what it archived came before it.
            archived_before = ledger.archived_totals("acct")[0]
            assert archived_before < steal_at
            assert len(ws.archived_files("acct")) == archived_before
            assert ledger.running_accounts() == ["acct"]  # its run row was never closed
        srv.clear_faults()
        release(pg, "acct")
        with Ledger.open(pg) as ledger:
            again = sync_account(cfg, cfg.accounts[0], ledger)
            assert again.ok, again.error
            assert ledger.archived_totals("acct")[0] == len(messages)
        assert len(ws.archived_files("acct")) == len(messages)
        assert len(set(ws.stored("acct"))) == len(messages)  # each message once
        assert srv.mailbox == []  # retention = "delete": all gone, after archiving
        # The second run took the account after the stale one: the old run row interrupted.
        assert ledger_rows_outcomes(pg) == ["interrupted", "ok"]


def test_a_run_gives_its_lease_back_at_the_end(tmp_path: Path, pg: str) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    with FakePop3Server(sample_messages(3), username="alice", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")], ledger_url=pg)
        cfg = config_module.load(ws.config)
        with Ledger.open(pg) as ledger:
            assert sync_account(cfg, cfg.accounts[0], ledger).ok
            lease = ledger.current_lease("acct")
            assert lease is not None
            assert lease.expires_at <= datetime.now(UTC)  # released
            assert lease.server_host == srv.host
            assert lease.owner == ledger.lease_owner
            assert ledger.claim_lease("acct", THIEF, timedelta(seconds=5)) is not None


def ledger_rows_outcomes(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT outcome FROM runs ORDER BY id").fetchall()
    return [row[0] for row in rows]


def test_status_names_the_holder_of_each_account_being_archived(tmp_path: Path, pg: str) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    with FakePop3Server(sample_messages(2), username="alice", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct"), fake_account(srv, "idle")], ledger_url=pg)
        with Ledger.open(pg) as ledger, ledger.account_lock("acct") as hold:
            assert hold.lease is not None
            shown = ws.cli("status", "--json")
            table = ws.cli("status")
        after = ws.cli("status", "--json")
    assert shown.code == 0, shown.output
    rows = {row["name"]: row for row in json.loads(shown.out)}
    owner = hold.lease.owner
    assert rows["acct"]["running_by"] == owner.describe()
    assert str(owner.pid) in rows["acct"]["running_by"]
    assert rows["acct"]["running_since"] == hold.lease.claimed_at.isoformat()
    assert rows["acct"]["lease_expires_at"] > rows["acct"]["running_since"]
    assert rows["idle"]["running_by"] is None
    assert f"acct: being archived now by {owner.describe()} since" in table.out
    # Released at the end of the block: nobody holds it any more.
    assert all(row["running_by"] is None for row in json.loads(after.out))
