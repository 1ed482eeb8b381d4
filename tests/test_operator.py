"""Careless operators (issue 8, "The operator"): a lost ledger, killed runs, closed pipes,
missing secrets, unknown environment variables, a damaged ledger file."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from popvault.ledger import Ledger
from popvault.ledger.migrate import backup_sqlite
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "operator-Pa55word-never-shown"
CLI = "from popvault.cli import main; raise SystemExit(main())"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server():
    with FakePop3Server(sample_messages(40), username="alice", password=PASSWORD) as srv:
        yield srv


def account(srv: FakePop3Server, name: str = "acct", **extra: Any) -> dict[str, Any]:
    return fake_account(srv, name, **extra)


def popvault_process(ws: Workspace, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``popvault --config ws.config ARGS`` in a child process (its own stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPVAULT_")}
    return subprocess.run(
        [sys.executable, "-c", CLI, "--config", str(ws.config), *args],
        env=env,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


# -- standard output closed early ------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["status"], ["--help"]])
def test_a_closed_stdout_ends_quietly_without_a_traceback(
    ws: Workspace, server: FakePop3Server, command: list[str]
) -> None:
    ws.write_config([account(server)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before popvault writes a line (`| head`, early)
    try:
        done = popvault_process(ws, *command, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert "Exception ignored" not in done.stderr
    if command != ["--help"]:  # argparse exits on its own; the rest is popvault's
        assert done.returncode == 141, done.stderr  # 128 + SIGPIPE, as `yes | head` gives


def test_a_pipe_to_head_reads_the_first_line(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([account(server)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPVAULT_")}
    shell = (
        f"{sys.executable} -c '{CLI}' --config {ws.config} run --dry-run | head -n 1; "
        "echo status=${PIPESTATUS[0]}"
    )
    done = subprocess.run(
        ["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.startswith("acct: would download 40 of 40 message(s)")
    assert "Traceback" not in done.stderr
    assert done.stderr == ""
    assert done.stdout.rstrip().rsplit("status=", 1)[1] in ("0", "141")


# -- a password that cannot be read is a configuration error: exit 2 ---------------------


@pytest.mark.parametrize(
    "case",
    [
        ({"password_env": "POPVAULT_TEST_UNSET_PASSWORD"}, "password_env", "is not set"),
        ({"password_file": "no-such-secret"}, "password_file", "No such file"),
        ({"password_command": "no-such-password-tool --get"}, "password_command", "status 127"),
    ],
    ids=["env", "file", "command"],
)
def test_a_password_that_cannot_be_read_exits_2_naming_file_account_and_key(
    ws: Workspace,
    server: FakePop3Server,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[dict[str, str], str, str],
) -> None:
    source, key, detail = case
    monkeypatch.delenv("POPVAULT_TEST_UNSET_PASSWORD", raising=False)
    broken = account(server, "broken", path="broken", **{"password_file": None, **source})
    ws.write_config([broken, account(server, "good")])
    result = ws.cli("run")
    assert result.code == 2, result.output
    [line] = [line for line in result.out.splitlines() if line.startswith("broken:")]
    assert "configuration error" in line
    assert str(ws.config) in line
    assert "account 'broken'" in line
    assert f"key {key!r}" in line
    assert detail in line
    # The other accounts still ran.
    assert len(ws.archived_files("good")) == len(server.mailbox)
    assert dict(ws.ledger_rows("SELECT account, outcome FROM runs")) == {
        "broken": "failed",
        "good": "ok",
    }


def test_a_failed_account_without_a_config_problem_still_exits_1(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_secret("wrong-password", "wrong")
    ws.write_config([account(server, "bad", password_file="wrong", path="bad")])
    assert ws.cli("run").code == 1


# -- a lost ledger: the archive folder holds files the ledger does not know --------------

# The archive root's marker names the ledger its files are recorded in
# (popvault.store.marker): a new ledger in the old one's place is refused by it
# first, before any account. Without the marker (an archive from before markers,
# or the marker removed as that refusal says), each account's check below speaks.
MARKER = ".popvault-ledger"


def assert_refused_by_the_marker(ws: Workspace, result: Any, ledger_words: str) -> None:
    assert result.code == 1, result.output
    assert result.out == ""
    err = result.err
    assert f"the archive root {ws.archive} belongs to another popvault ledger" in err
    assert f"{ledger_words}, which knows no archived message yet" in err
    assert "restore the ledger from its backup" in err
    assert f"remove {ws.archive / MARKER}, then run `popvault run --archive-again`" in err


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_a_deleted_ledger_is_noticed_before_anything_is_fetched(
    ws: Workspace, server: FakePop3Server, fmt: str
) -> None:
    with FakePop3Server(sample_messages(3, seed=9), username="bob", password=PASSWORD) as other:
        ws.write_config([account(server, format=fmt), account(other, "other", format=fmt)])
        assert ws.cli("run").code == 0
        files = ws.archived_files("acct")
        assert len(files) == len(server.mailbox)
        ws.ledger_file.unlink()
        seen = len(server.commands)
        other.add_message(b"From: x@example.org\r\nSubject: new\r\n\r\nnew\r\n")

        marked = ws.cli("run")

        assert_refused_by_the_marker(ws, marked, f"the ledger {ws.ledger_file}")
        assert server.commands[seen:] == []
        assert ws.ledger_rows("SELECT count(*) FROM runs") == [(0,)]
        (ws.archive / MARKER).unlink()

        result = ws.cli("run")

        assert result.code == 1, result.output
        assert server.commands[seen:] == []  # refused before connecting
        assert ws.archived_files("acct") == files
        [line] = [line for line in result.out.splitlines() if line.startswith("acct:")]
        assert "FAILED" in line
        assert f"{ws.archive / 'acct'} already holds {len(files)} message file(s)" in line
        assert "knows no message of this account" in line
        assert f"{ws.ledger_file}.bak-<revision>-<UTC time>" in line
        assert "popvault run --archive-again" in line
        assert f"popvault import maildir {ws.archive / 'acct'} --account acct" in line
        # The other account still ran: its ledger rows were lost too, and it is refused as well.
        assert "other:" in result.out
    assert dict(ws.ledger_rows("SELECT account, outcome FROM runs")) == {
        "acct": "failed",
        "other": "failed",
    }
    status = ws.cli("status")
    assert "knows no message of this account" in status.out


def test_other_accounts_still_run_when_one_folder_is_unknown(
    ws: Workspace, server: FakePop3Server
) -> None:
    # An account renamed in the config keeps its folder, but the ledger knows the old name.
    ws.write_config([account(server, "old", path="mail")])
    assert ws.cli("run").code == 0
    with FakePop3Server(sample_messages(2, seed=4), username="bob", password=PASSWORD) as other:
        ws.write_config([account(server, "new", path="mail"), account(other, "other")])
        seen = len(server.commands)
        result = ws.cli("run")
        assert result.code == 1
        assert server.commands[seen:] == []
        assert "new: FAILED" in result.out
        assert "or the account was renamed" in result.out
        assert "other: ok, 2 new message(s)" in result.out
        assert len(ws.archived_files("other")) == 2


def test_a_ledger_pointed_elsewhere_is_noticed(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    ws.write_config([account(server)], ledger_url="sqlite:///elsewhere.sqlite3")
    seen = len(server.commands)
    marked = ws.cli("run")
    assert_refused_by_the_marker(ws, marked, f"the ledger {ws.folder / 'elsewhere.sqlite3'}")
    assert server.commands[seen:] == []
    (ws.archive / MARKER).unlink()
    result = ws.cli("run")
    assert result.code == 1
    assert f"the ledger {ws.folder / 'elsewhere.sqlite3'} knows no message" in result.out
    assert server.commands[seen:] == []


def test_a_dry_run_on_a_lost_ledger_says_so_and_creates_no_file(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    ws.ledger_file.unlink()
    marked = ws.cli("run", "--dry-run")
    assert_refused_by_the_marker(
        ws, marked, f"the ledger (its file {ws.ledger_file} does not exist)"
    )
    assert not ws.ledger_file.exists()
    (ws.archive / MARKER).unlink()
    result = ws.cli("run", "--dry-run")
    assert result.code == 1
    assert f"its file {ws.ledger_file} is missing" in result.out
    assert not ws.ledger_file.exists()
    assert not (ws.archive / MARKER).exists()  # a dry run writes no marker either


def test_archive_again_archives_anyway_accepting_duplicates(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    ws.ledger_file.unlink()
    refused = ws.cli("run", "--archive-again")  # the marker first: it names another ledger
    assert_refused_by_the_marker(ws, refused, f"the ledger {ws.ledger_file}")
    (ws.archive / MARKER).unlink()  # as that refusal says
    assert ws.cli("run").code == 1

    again = ws.cli("run", "--archive-again")

    assert again.code == 0, again.output
    assert f"{len(server.mailbox)} new message(s)" in again.out
    assert len(ws.archived_files("acct")) == 2 * len(server.mailbox)
    # From now on the ledger knows the account: later runs are not refused.
    later = ws.cli("run")
    assert later.code == 0, later.output
    assert "0 new message(s)" in later.out


def test_temp_files_alone_do_not_count_as_archived_messages(
    ws: Workspace, server: FakePop3Server
) -> None:
    # A first run killed before it recorded anything leaves at most a temp file.
    tmp = ws.archive / "acct" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "1.M1P1Q1.host").write_bytes(b"half a message")
    ws.write_config([account(server)])
    result = ws.cli("run")
    assert result.code == 0, result.output
    assert len(ws.archived_files("acct")) == len(server.mailbox)


# -- a damaged ledger file -------------------------------------------------------------


def damage(path: Path) -> None:
    """Garble every page after the first: the header stays, the tables are gone."""
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xab" * (len(data) - 4096)
    path.write_bytes(bytes(data))


def test_a_ledger_of_garbage_bytes_is_named_damaged_with_what_to_do(ws: Workspace) -> None:
    ws.write_config([])
    ws.ledger_file.write_bytes(os.urandom(8192))
    for command in (["status"], ["verify"], ["db", "upgrade"], ["held"]):
        result = ws.cli(*command)
        assert result.code == 1, (command, result.output)
        assert result.out == ""
        err = result.err
        assert f"the ledger file {ws.ledger_file} is damaged (file is not a database)" in err
        assert "before each schema upgrade, as ledger.sqlite3.bak-<revision>-<UTC time>" in err
        assert f"there is none in {ws.folder}" in err
        assert "stop `popvault daemon`" in err
        assert f"mv {ws.ledger_file} {ws.ledger_file}.damaged" in err
        assert f"{ws.ledger_file}-wal" in err


def test_a_malformed_ledger_names_its_newest_backup_and_how_to_restore_it(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    old = backup_sqlite(ws.ledger_file, "0001")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    newest = backup_sqlite(ws.ledger_file, "0002")
    with sqlite3.connect(ws.ledger_file) as db:  # one file, so that damage() reaches the tables
        db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    damage(ws.ledger_file)

    result = ws.cli("status")

    assert result.code == 1
    assert f"the ledger file {ws.ledger_file} is damaged (database disk image is malformed)" in (
        result.err
    )
    assert f"the newest is {newest} (2 in all)" in result.err
    assert f"cp -p {newest} {ws.ledger_file}" in result.err
    assert "popvault verify" in result.err

    # Following the steps brings the ledger back.
    for suffix in ("", "-wal", "-shm"):
        damaged = Path(f"{ws.ledger_file}{suffix}")
        if damaged.exists():
            damaged.rename(f"{damaged}.damaged")
    shutil.copy2(newest, ws.ledger_file)
    restored = ws.cli("run")
    assert restored.code == 0, restored.output
    assert "0 new message(s)" in restored.out


# -- a run killed by SIGKILL or SIGTERM ------------------------------------------------


def kill_run_mid_retr(ws: Workspace, server: FakePop3Server, signum: int) -> None:
    """Start `popvault run` in a child, and kill it with ``signum`` while RETR 1 hangs."""
    arrived = threading.Event()
    server.hang_on("RETR")
    server.on_command("RETR", lambda _session, _arg: arrived.set(), times=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPVAULT_")}
    child = subprocess.Popen(
        [sys.executable, "-c", CLI, "--config", str(ws.config), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert arrived.wait(30), "the run never reached RETR"
        assert ws.ledger_rows("SELECT outcome FROM runs") == [("running",)]
        child.send_signal(signum)
        assert child.wait(30) == -signum
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    server.clear_faults()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_status_shows_a_killed_run_as_interrupted(
    ws: Workspace, server: FakePop3Server, signum: int
) -> None:
    ws.write_config([account(server, timeout="30s")])
    kill_run_mid_retr(ws, server, signum)
    assert ws.ledger_rows("SELECT outcome FROM runs") == [("running",)]

    status = ws.cli("status", "--json")

    assert status.code == 0, status.output
    [row] = json.loads(status.out)
    assert row["last_outcome"] == "interrupted"
    assert "killed or crashed" in row["last_error"]
    assert ws.ledger_rows("SELECT outcome FROM runs") == [("interrupted",)]
    table = ws.cli("status")
    assert "interrupted" in table.out


def test_the_next_run_marks_a_killed_run_interrupted(
    ws: Workspace, server: FakePop3Server, caplog: pytest.LogCaptureFixture
) -> None:
    ws.write_config([account(server, timeout="30s")])
    kill_run_mid_retr(ws, server, signal.SIGKILL)
    caplog.set_level(logging.WARNING)

    result = ws.cli("run")

    assert result.code == 0, result.output
    assert ws.ledger_rows("SELECT outcome FROM runs ORDER BY id") == [("interrupted",), ("ok",)]
    assert any("never recorded an outcome" in r.getMessage() for r in caplog.records)
    assert len(ws.archived_files("acct")) == len(server.mailbox)


def test_status_leaves_a_live_run_running(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([account(server)])
    assert ws.cli("db", "upgrade").code == 0
    with Ledger.open(f"sqlite:///{ws.ledger_file}") as ledger, ledger.account_lock("acct"):
        ledger.start_run("acct", started_at=datetime.now(UTC))  # a run in progress, alive
        [row] = json.loads(ws.cli("status", "--json").out)
        assert row["last_outcome"] == "running"
    # Its holder gone, the same row is stale.
    [row] = json.loads(ws.cli("status", "--json").out)
    assert row["last_outcome"] == "interrupted"
