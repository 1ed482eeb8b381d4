"""Faults: refusals, vanishing and repeated messages, a failing disk, a failing or locked ledger.

Each scenario breaks one thing during a run, checks that the run failed
cleanly (nothing half-recorded, no QUIT after an undurable RETR, nothing
deleted that is not archived), then lets a clean run finish and checks the
archive invariant.
"""

from __future__ import annotations

import errno
import os
import poplib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from crash_runner import spawn
from invariant_check import (
    ACCOUNT,
    PASSWORD,
    USERNAME,
    WitnessServer,
    account_entry,
    assert_no_secret,
    check_invariant,
    new_workspace,
    pending_rows,
    sqlite_holding_write_lock,
    temp_files,
    wait_until_idle,
)
from psycopg import sql

from popvault import fetch
from popvault.errors import DatabaseUnavailable
from popvault.ledger import Ledger, engine
from popvault.pop3.client import Retrieval
from popvault.store import durable
from popvault.testing import Served, sample_messages
from workspace import Workspace, maildir_form, wire_form


@pytest.fixture
def srv() -> Iterator[WitnessServer]:
    with WitnessServer(sample_messages(5, seed=21)) as server:
        yield server


@pytest.fixture
def ws(tmp_path: Path, srv: WitnessServer) -> Workspace:
    workspace = new_workspace(tmp_path)
    workspace.write_config([account_entry(srv, retention="delete")])
    srv.watch(workspace)
    return workspace


def session_commands(srv: WitnessServer, since: int) -> list[str]:
    return [command.split(" ")[0].upper() for command in srv.commands[since:]]


def clean_run_and_check(ws: Workspace, srv: WitnessServer, originals: dict[str, bytes]) -> None:
    srv.clear_faults()
    wait_until_idle(srv)
    clean = ws.cli("run")
    assert clean.code == 0, clean.output
    assert_no_secret(clean.output)
    assert srv.mailbox == []
    check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses, still_on_server=[])


def assert_nothing_half_recorded(ws: Workspace) -> None:
    assert pending_rows(ws) == 0
    assert temp_files(ws) == []
    verify = ws.cli("verify")
    assert verify.code == 0, verify.output


# -- the server refuses each command in turn ---------------------------------


@pytest.mark.parametrize(
    ("verb", "arg"),
    [
        ("USER", None),
        ("PASS", None),
        ("UIDL", None),
        ("LIST", None),
        ("RETR", "1"),
        ("RETR", "3"),
        ("RETR", "5"),
        ("DELE", "1"),
        ("DELE", "4"),
        ("QUIT", None),
    ],
)
def test_a_refused_command_then_a_clean_run(
    ws: Workspace, srv: WitnessServer, verb: str, arg: str | None
) -> None:
    originals = dict(srv.mailbox)
    srv.fail_command(verb, "-ERR scripted refusal", arg=arg)
    failed = ws.cli("run")
    assert failed.code == 1, failed.output
    assert "scripted refusal" in failed.output or verb in ("USER", "PASS"), failed.output
    assert_no_secret(failed.output)
    assert_nothing_half_recorded(ws)
    if verb in ("USER", "PASS", "UIDL", "LIST"):
        assert srv.deleted == []
        assert "RETR" not in session_commands(srv, 0)
    clean_run_and_check(ws, srv, originals)


def test_a_message_that_vanishes_between_uidl_and_retr(ws: Workspace, srv: WitnessServer) -> None:
    """RETR 2 is refused as if another client took it: the rest is archived and deleted."""
    originals = dict(srv.mailbox)
    second = srv.mailbox[1][0]
    srv.fail_command("RETR", "-ERR no such message", arg="2")
    failed = ws.cli("run")
    assert failed.code == 1, failed.output
    assert "message 2" in failed.out, failed.output
    assert_nothing_half_recorded(ws)
    assert sorted(srv.deleted) == sorted(set(originals) - {second})
    assert [uidl for uidl, _ in srv.mailbox] == [second]

    # Now it really goes: another client deletes it before our next session.
    wait_until_idle(srv)
    other = poplib.POP3(srv.host, srv.port)
    other.user(USERNAME)
    other.pass_(PASSWORD)
    other.dele(1)
    other.quit()
    srv.clear_faults()
    clean = ws.cli("run")
    assert clean.code == 0, clean.output
    taken = {uidl: raw for uidl, raw in originals.items() if uidl != second}
    ours = [uidl for uidl in srv.deleted if uidl != second]
    # The witness also saw the other client's DELE; only ours must be archived.
    witnessed = [w for w in srv.witnesses if w.uidl != second]
    check_invariant(ws, taken, ours, witnesses=witnessed)
    assert ws.ledger_rows("SELECT count(*) FROM failures") == [(0,)]


@pytest.mark.parametrize("keep_octets", [0, 40, -5])
def test_a_truncated_body_is_not_archived_and_the_session_ends_without_quit(
    ws: Workspace, srv: WitnessServer, keep_octets: int
) -> None:
    """RETR 2 hands out fewer octets than LIST announced (a server still storing it).

    Some servers count a message as retrieved once RETR answered; without QUIT
    they keep offering it (and delete nothing), so the session must not QUIT.
    """
    originals = dict(srv.mailbox)

    def short_retr(served: Served) -> bytes:
        return served.raw[:keep_octets] if served.number == 2 else served.raw

    srv.serve = short_retr
    failed = ws.cli("run")
    srv.serve = None
    assert failed.code == 1, failed.output
    assert "truncated" in failed.out, failed.output
    assert "QUIT" not in session_commands(srv, 0)
    assert srv.deleted == []
    assert_nothing_half_recorded(ws)
    assert len(ws.archived_files("acct")) == len(originals) - 1
    clean_run_and_check(ws, srv, originals)


@pytest.mark.parametrize("same_content", [False, True])
def test_messages_under_a_repeated_uidl_are_each_archived_once_and_deleted(
    tmp_path: Path, same_content: bool
) -> None:
    """Two messages under one UIDL (RFC 1939 section 7 forbids it; servers do it).

    Both are archived, each once; each server copy is deleted only after its
    own content is durably archived (the witness compares the very bytes).
    """
    raws = sample_messages(4, seed=5)
    if same_content:
        raws[2] = raws[1]
    uidls = ["u-a", "u-dup", "u-dup", "u-b"]
    with WitnessServer(raws, uidls=uidls) as srv:
        ws = new_workspace(tmp_path)
        ws.write_config([account_entry(srv, retention="delete")])
        srv.watch(ws)
        for _ in range(2):
            result = ws.cli("run")
            assert result.code == 0, result.output
        assert srv.mailbox == []
        assert sorted(srv.deleted) == sorted(uidls)
        _check_witnesses_saw_every_dele(srv, len(uidls))
        # Each message once: four RETRs in the first run, none in the second.
        assert [c for c in srv.commands if c.startswith("RETR")] == [
            "RETR 1",
            "RETR 2",
            "RETR 3",
            "RETR 4",
        ]
    stored = sorted(path.read_bytes() for path in ws.archived_files(ACCOUNT))
    assert stored == sorted(maildir_form(wire_form(raw)) for raw in raws)
    rows = ws.ledger_rows("SELECT uidl, occurrence, deleted_at IS NOT NULL FROM messages")
    assert sorted(rows) == [("u-a", 1, 1), ("u-b", 1, 1), ("u-dup", 1, 1), ("u-dup", 2, 1)]
    verify = ws.cli("verify")
    assert verify.code == 0, verify.output


def _check_witnesses_saw_every_dele(srv: WitnessServer, count: int) -> None:
    assert len(srv.witnesses) == count
    bad = [w for w in srv.witnesses if w.problem is not None]
    assert not bad, f"DELE sent for a message not durably archived: {bad}"


# -- the disk fails ------------------------------------------------------------


class _FailingOs:
    """Stands in for the ``os`` module inside :mod:`popvault.store.durable`."""

    def __init__(self, name: str, code: int, nth: int) -> None:
        self._name, self._code, self._nth = name, code, nth
        self.calls = 0

    def __getattr__(self, attribute: str) -> Any:
        real = getattr(os, attribute)
        if attribute != self._name:
            return real
        return self._counting(real)

    def _counting(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self._nth:
                raise OSError(self._code, os.strerror(self._code))
            return real(*args, **kwargs)

        return call


@pytest.mark.parametrize(
    ("name", "code", "nth", "words"),
    [
        ("write", errno.ENOSPC, 1, "disk full"),
        ("write", errno.ENOSPC, 3, "disk full"),
        ("fsync", errno.ENOSPC, 6, "disk full"),
        ("link", errno.EROFS, 1, "read-only file system"),
        ("link", errno.EROFS, 4, "read-only file system"),
        # The run's first open reads the archive root's marker (written by mark_archive).
        ("open", errno.EROFS, 2, "read-only file system"),
        ("mkdir", errno.EROFS, 1, "read-only file system"),
    ],
)
def test_a_failing_disk_fails_the_run_cleanly(
    *,
    ws: Workspace,
    srv: WitnessServer,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    code: int,
    nth: int,
    words: str,
) -> None:
    originals = dict(srv.mailbox)
    ws.mark_archive()  # the marker's own writes first: the faults land in storing messages
    failing = _FailingOs(name, code, nth)
    monkeypatch.setattr(durable, "os", failing)
    failed = ws.cli("run")
    monkeypatch.undo()
    assert failing.calls >= nth, "the fault was never reached"
    assert failed.code == 1, failed.output
    assert words in failed.out, failed.output
    assert "QUIT" not in session_commands(srv, 0), "QUIT after a retrieved, unstored message"
    assert srv.deleted == []
    assert_nothing_half_recorded(ws)
    clean_run_and_check(ws, srv, originals)


# -- the ledger fails -------------------------------------------------------------


def test_a_ledger_that_cannot_be_created_fails_before_the_server(tmp_path: Path) -> None:
    with WitnessServer(sample_messages(2)) as srv:
        ws = new_workspace(tmp_path)
        (tmp_path / "blocked").write_text("a file where the ledger's folder should be\n")
        ws.write_config(
            [account_entry(srv, retention="delete")], ledger_url="sqlite:///blocked/ledger.sqlite3"
        )
        result = ws.cli("run")
        assert result.code == 1
        assert "ledger error" in result.err
        assert "cannot create the ledger file" in result.err
        assert srv.sessions == 0
        assert srv.deleted == []


def test_a_ledger_that_is_not_a_database_fails_clearly(ws: Workspace, srv: WitnessServer) -> None:
    ws.ledger_file.write_bytes(b"this is not an SQLite database, it is garbage" * 100)
    result = ws.cli("run")
    assert result.code == 1
    assert "ledger error" in result.err, result.output
    assert "not a database" in result.err, result.output
    assert srv.sessions == 0
    assert srv.deleted == []


@pytest.mark.postgres
def test_a_dropped_postgres_ledger_fails_clearly(tmp_path: Path) -> None:
    name = f"popvault_dropped_{os.getpid()}_{time.monotonic_ns()}"
    try:
        admin = psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    db_password = "Pg-secret-in-url-9"
    with WitnessServer(sample_messages(2)) as srv:
        ws = new_workspace(tmp_path)
        url = f"postgresql://postgres:{db_password}@127.0.0.1:5432/{name}"
        ws.write_config([account_entry(srv, retention="delete")], ledger_url=url)
        result = ws.cli("run")
        assert result.code == 1
        assert "unavailable" in result.err, result.output
        assert name in result.err, result.output
        assert db_password not in result.output
        assert srv.sessions == 0
        assert srv.deleted == []


def _failing_on(nth: int, real: Callable[..., Any]) -> Callable[..., Any]:
    calls = 0

    def method(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise DatabaseUnavailable("ledger database unavailable: scripted outage")
        return real(*args, **kwargs)

    return method


@pytest.mark.parametrize(
    ("method", "nth", "quit_sent"),
    [
        # Per batch of 2 messages (below): the 1st batch, the 3rd, the 2nd.
        ("record_pending_many", 1, False),
        ("record_pending_many", 3, False),
        ("mark_archived_many", 2, False),
        ("mark_delete_requested", 1, False),
        ("mark_deleted", 1, True),
    ],
)
def test_a_ledger_outage_mid_run_deletes_nothing_unrecorded(
    *,
    ws: Workspace,
    srv: WitnessServer,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    nth: int,
    quit_sent: bool,
) -> None:
    originals = dict(srv.mailbox)
    monkeypatch.setattr(fetch, "BATCH_MESSAGES", 2)  # several batches, so an nth one
    monkeypatch.setattr(Ledger, method, _failing_on(nth, getattr(Ledger, method)))
    failed = ws.cli("run")
    monkeypatch.undo()
    assert failed.code == 1, failed.output
    assert "scripted outage" in failed.out, failed.output
    assert ("QUIT" in session_commands(srv, 0)) is quit_sent
    if not quit_sent:
        assert srv.deleted == []
    # A pending row may be left (mark_archived failed after the publish): the
    # next run settles it before it lists the server.
    wait_until_idle(srv)
    clean_run_and_check(ws, srv, originals)


def test_a_ledger_locked_for_a_second_makes_the_run_wait(ws: Workspace, srv: WitnessServer) -> None:
    """Another connection holds the write lock for 1 s, within the busy timeout: the run waits."""
    originals = dict(srv.mailbox)
    taken = threading.Event()

    def hold() -> None:
        with sqlite_holding_write_lock(ws.ledger_file):
            taken.set()
            time.sleep(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5.0)
    started = time.monotonic()
    try:
        result = ws.cli("run")
    finally:
        holder.join()
    assert result.code == 0, result.output
    assert time.monotonic() - started >= 0.8, "the run did not wait for the lock"
    check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)


def test_a_ledger_locked_past_the_busy_timeout_fails_cleanly(
    ws: Workspace, srv: WitnessServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process takes the write lock after the first RETR and keeps it."""
    originals = dict(srv.mailbox)
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 300)
    lock = sqlite_holding_write_lock(ws.ledger_file)
    real_read = Retrieval.read_into

    def read_then_lock(self: Retrieval, sink: Any) -> int:
        written = real_read(self, sink)
        if self.number == 2:
            lock.__enter__()
        return written

    monkeypatch.setattr(Retrieval, "read_into", read_then_lock)
    try:
        failed = ws.cli("run")
    finally:
        lock.__exit__(None, None, None)
        monkeypatch.undo()
    assert failed.code == 1, failed.output
    assert "locked" in failed.out, failed.output
    assert "QUIT" not in session_commands(srv, 0)
    assert srv.deleted == []
    assert_nothing_half_recorded(ws)
    clean_run_and_check(ws, srv, originals)


# -- two runs at once -------------------------------------------------------------


def test_two_runs_at_once_never_download_twice(ws: Workspace, srv: WitnessServer) -> None:
    originals = dict(srv.mailbox)
    srv.delay = 0.03  # each answer waits: the first run is still busy when the second starts
    children = [spawn(ws.config, "run") for _ in range(2)]
    outputs = [child.communicate(timeout=60) for child in children]
    codes = sorted(child.returncode for child in children)
    texts = [out + err for out, err in outputs]
    for text in texts:
        assert_no_secret(text)
    if codes == [0, 1]:
        refused = texts[[child.returncode for child in children].index(1)]
        assert "being archived by another popvault process" in refused, refused
    else:
        assert codes == [0, 0], texts  # the second waited, or came after the first
    retrs = [c for c in srv.commands if c.startswith("RETR")]
    assert len(retrs) == len(set(retrs)) == len(originals), retrs
    clean_run_and_check(ws, srv, originals)
