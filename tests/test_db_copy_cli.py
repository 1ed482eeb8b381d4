"""``popvault db copy``: a mailbox archived on one ledger, copied, and a run on the copy
that downloads nothing (FakePop3Server, SQLite files, the real PostgreSQL)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from popvault.ledger import copy as copy_module
from popvault.testing import FakePop3Server, sample_messages
from postgres import databases
from workspace import Workspace, fake_account

PASSWORD = "fake-Pa55word-never-shown"
# Trust auth ignores it, so a URL may carry it: it must show nowhere.
PG_PASSWORD = "db-Secret-never-shown-9"
PG = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432"


@pytest.fixture
def new_pg() -> Iterator[Callable[[], str]]:
    """Make empty PostgreSQL databases on demand (URLs with a password); dropped after."""
    with databases("popvault_cli_copy", PG) as make:
        yield make


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(8), username="alice", password=PASSWORD) as srv:
        yield srv


def retrs(server: FakePop3Server) -> int:
    return sum(1 for command in server.commands if command.upper().startswith("RETR"))


def secrets_absent(text: str) -> None:
    assert PG_PASSWORD not in text
    assert PASSWORD not in text


@pytest.mark.postgres
def test_sqlite_to_postgres_and_back_then_runs_download_nothing(
    ws: Workspace, server: FakePop3Server, new_pg
) -> None:
    account = [fake_account(server, "fake")]
    ws.write_config(account)
    assert ws.cli("run").code == 0
    assert retrs(server) == len(server.mailbox)
    pg = new_pg()

    to_pg = ws.cli("db", "copy", "--to", pg)
    assert to_pg.code == 0, to_pg.output
    assert "messages: 8 row(s)" in to_pg.out
    assert "archive files did not move" in to_pg.out
    assert "***@127.0.0.1" in to_pg.out
    secrets_absent(to_pg.output)

    ws.write_config(account, ledger_url=pg)
    again = ws.cli("run")
    assert again.code == 0, again.output
    assert "0 new message" in again.out
    assert retrs(server) == len(server.mailbox)

    back = f"sqlite:///{ws.folder}/back/ledger.sqlite3"
    to_sqlite = ws.cli("db", "copy", "--to", back)  # the source is the config's: PostgreSQL
    assert to_sqlite.code == 0, to_sqlite.output
    secrets_absent(to_sqlite.output)
    ws.write_config(account, ledger_url=back)
    server.add_message(b"From: a@example.org\r\nSubject: late\r\n\r\nafter the copies\r\n")
    last = ws.cli("run")
    assert last.code == 0, last.output
    assert "1 new message" in last.out
    assert retrs(server) == len(server.mailbox)  # only the new one
    runs = sqlite3.connect(ws.folder / "back" / "ledger.sqlite3")
    try:
        assert runs.execute("SELECT count(*) FROM runs").fetchone() == (3,)
    finally:
        runs.close()


@pytest.mark.postgres
def test_a_non_empty_target_is_refused_then_forced_and_nothing_leaks(
    ws: Workspace, server: FakePop3Server, new_pg
) -> None:
    ws.write_config([fake_account(server, "fake")])
    assert ws.cli("run").code == 0
    pg = new_pg()
    assert ws.cli("db", "copy", "--to", pg).code == 0

    refused = ws.cli("db", "copy", "--to", pg)
    assert refused.code == 1
    assert "is not empty (rows: account_totals 1, messages 8, runs 1)" in refused.err
    assert "--force empties its popvault tables first" in refused.err
    secrets_absent(refused.output)

    forced = ws.cli("db", "copy", "--to", pg, "--force")
    assert forced.code == 0, forced.output
    assert "--force: emptied the target's popvault tables first" in forced.out
    secrets_absent(forced.output)


def test_from_url_and_a_failed_verification_exit_1(
    ws: Workspace, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws.write_config([fake_account(server, "fake")])
    assert ws.cli("run").code == 0
    target = ws.folder / "copy.sqlite3"

    def corrupt(_url: str) -> None:
        db = sqlite3.connect(target)
        with db:
            db.execute("UPDATE messages SET sha256 = replace(sha256, substr(sha256, 1, 1), 'x')")
        db.close()

    monkeypatch.setattr(
        copy_module,
        "copy_ledger",
        functools.partial(copy_module.copy_ledger, before_verify=corrupt),
    )
    source = f"sqlite:///{ws.ledger_file}"
    failed = ws.cli("db", "copy", "--from", source, "--to", f"sqlite:///{target}")
    assert failed.code == 1
    assert "verification failed for table messages" in failed.err
    assert "The target was left as it is" in failed.err


def test_a_missing_source_file_is_refused_and_to_is_required(ws: Workspace, tmp_path: Path) -> None:
    ws.write_config([])
    nowhere = f"sqlite:///{tmp_path}/none.sqlite3"
    missing = ws.cli("db", "copy", "--from", nowhere, "--to", f"sqlite:///{tmp_path}/t.sqlite3")
    assert missing.code == 1
    assert "does not exist" in missing.err
    assert not (tmp_path / "none.sqlite3").exists()
    with pytest.raises(SystemExit) as exit_:
        ws.cli("db", "copy")
    assert exit_.value.code == 2
