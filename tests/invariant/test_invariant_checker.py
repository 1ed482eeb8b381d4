"""The checker itself can fail: each kind of broken archive is caught."""

from __future__ import annotations

import contextlib
import poplib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from invariant_check import (
    PASSWORD,
    USERNAME,
    DeleWitness,
    WitnessServer,
    account_entry,
    check_invariant,
    new_workspace,
    wait_until_idle,
)

from popvault.testing import sample_messages
from workspace import Workspace


@pytest.fixture
def srv() -> Iterator[WitnessServer]:
    with WitnessServer(sample_messages(3, seed=2)) as server:
        yield server


@pytest.fixture
def archived(tmp_path: Path, srv: WitnessServer) -> tuple[Workspace, dict[str, bytes]]:
    """A workspace after one good run with retention 'keep'."""
    originals = dict(srv.mailbox)
    ws = new_workspace(tmp_path)
    ws.write_config([account_entry(srv)])
    srv.watch(ws)
    result = ws.cli("run")
    assert result.code == 0, result.output
    check_invariant(ws, originals, [], still_on_server=list(originals))
    return ws, originals


def test_a_second_copy_is_caught(archived: tuple[Workspace, dict[str, bytes]]) -> None:
    ws, originals = archived
    first = ws.archived_files("acct")[0]
    shutil.copyfile(first, first.with_name(first.name + "-copy"))
    with pytest.raises(AssertionError, match="unknown"):
        check_invariant(ws, originals, [])


def test_a_missing_file_is_caught(archived: tuple[Workspace, dict[str, bytes]]) -> None:
    ws, originals = archived
    ws.archived_files("acct")[1].unlink()
    with pytest.raises(AssertionError, match="missing"):
        check_invariant(ws, originals, [])


def test_a_pending_row_is_caught(archived: tuple[Workspace, dict[str, bytes]]) -> None:
    ws, originals = archived
    with contextlib.closing(sqlite3.connect(ws.ledger_file)) as db, db:
        db.execute("UPDATE messages SET state = 'pending' WHERE id = 1")
    with pytest.raises(AssertionError, match="pending"):
        check_invariant(ws, originals, [])


def test_a_message_never_archived_is_caught(archived: tuple[Workspace, dict[str, bytes]]) -> None:
    ws, originals = archived
    with pytest.raises(AssertionError, match="ledger: extra"):
        check_invariant(ws, {**originals, "never-seen": b"Subject: x\r\n\r\nx\r\n"}, [])


def test_changed_bytes_are_caught(archived: tuple[Workspace, dict[str, bytes]]) -> None:
    ws, originals = archived
    uidl = next(iter(originals))
    with pytest.raises(AssertionError, match="archived bytes differ"):
        check_invariant(ws, {**originals, uidl: originals[uidl] + b"tail\r\n"}, [])


def test_a_deletion_of_an_unarchived_message_is_caught(
    archived: tuple[Workspace, dict[str, bytes]],
) -> None:
    ws, originals = archived
    with pytest.raises(AssertionError, match="never archived"):
        check_invariant(ws, originals, ["not-archived-uidl"])
    with pytest.raises(AssertionError, match="deletion not in the ledger"):
        check_invariant(ws, originals, [next(iter(originals))])


def test_a_bad_witness_is_caught(archived: tuple[Workspace, dict[str, bytes]]) -> None:
    ws, originals = archived
    bad = [DeleWitness("x", "ledger state 'pending'")]
    with pytest.raises(AssertionError, match="not durably archived"):
        check_invariant(ws, originals, [], witnesses=bad)


def test_the_witness_sees_a_dele_of_an_unarchived_message(
    tmp_path: Path, srv: WitnessServer
) -> None:
    ws = new_workspace(tmp_path)
    ws.write_config([account_entry(srv)])
    srv.watch(ws)
    other = poplib.POP3(srv.host, srv.port)
    other.user(USERNAME)
    other.pass_(PASSWORD)
    other.dele(2)
    other.quit()
    wait_until_idle(srv)
    assert [w.problem for w in srv.witnesses] == ["0 ledger rows"]
