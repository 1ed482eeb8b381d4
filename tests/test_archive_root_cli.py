"""`popvault run` and `popvault daemon` refuse an archive root that is not the ledger's.

Through the command line and a real daemon process, against a fake server:
a root holding another ledger's marker, an empty root (a share not mounted)
while the ledger's files are elsewhere, and a missing root are refused before
any connection, with the message on standard error and exit status 1; a fresh
root gets its marker quietly; an archive from before markers gets one; a
ledger from before ledger ids gets an id by its upgrade, and its archive the
marker.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from popvault.ledger import Ledger, current
from popvault.ledger.engine import WRITE_INTENT, create_ledger_engine, parse_url
from popvault.ledger.migrate import alembic_config
from popvault.store import durable
from popvault.store.marker import MARKER_NAME, marker_text, read_marker
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "marker-Pa55word"
OTHER = "fedcba9876543210fedcba9876543210"
CLI = "from popvault.cli import main; raise SystemExit(main())"
DAEMON = (sys.executable, "-c", CLI, "--config")
WAIT_S = 30.0


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(3), username="bob", password=PASSWORD) as srv:
        yield srv


def configure(ws: Workspace, srv: FakePop3Server, **extra: Any) -> None:
    ws.write_config([fake_account(srv, "acct", every="1s", **extra)])


def ledger_id(ws: Workspace) -> str:
    with Ledger.open(f"sqlite:///{ws.ledger_file}") as ledger:
        return ledger.ledger_id()


def environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("POPVAULT")}


def daemon_refusal(ws: Workspace) -> subprocess.CompletedProcess[str]:
    """`popvault daemon` in a child process, expected to exit at once."""
    return subprocess.run(
        [*DAEMON, str(ws.config), "daemon", "--log-format", "json"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


class Daemon:
    """`popvault daemon` as a child process that is meant to keep running."""

    def __init__(self, ws: Workspace) -> None:
        self.log = ws.folder / "daemon.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*DAEMON, str(ws.config), "daemon", "--log-format", "json"],
                stdout=out,
                stderr=out,
                env=environment(),
            )

    def messages(self) -> list[str]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(str(json.loads(line).get("message", "")))
            except json.JSONDecodeError:
                found.append(line)
        return found

    def wait_for(self, fragment: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not any(fragment in message for message in self.messages()):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"no {fragment!r} in {self.messages()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(WAIT_S)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(WAIT_S)


def assert_refused_before_connecting(srv: FakePop3Server, seen: int, text: str) -> None:
    assert srv.commands[seen:] == [], "the refusal came after connecting"
    assert "Nothing was archived" in text
    assert "must see the same shared archive at the same path" in text
    assert "point `[archive] root` at it" in text


def move_archive_away(ws: Workspace) -> Path:
    """The ledger's files move away; the root stays, empty: an unmounted share's mount point."""
    moved = ws.folder / "the-share"
    ws.archive.rename(moved)
    ws.archive.mkdir()
    return moved


# -- popvault run ------------------------------------------------------------------------


def test_a_fresh_root_gets_its_marker_quietly(ws: Workspace, server: FakePop3Server) -> None:
    configure(ws, server)
    result = ws.cli("run")
    assert result.code == 0, result.output
    assert read_marker(ws.archive) == ledger_id(ws)
    assert "marker" not in result.output
    assert MARKER_NAME not in result.output
    again = ws.cli("run")
    assert again.code == 0, again.output
    assert "0 new message(s)" in again.out


def test_run_refuses_a_root_with_another_ledger_s_marker(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server)
    ws.archive.mkdir()
    (ws.archive / MARKER_NAME).write_bytes(marker_text(OTHER))
    for args in (["run"], ["run", "--dry-run"]):
        result = ws.cli(*args)
        assert result.code == 1, (args, result.output)
        assert result.out == ""
        err = result.err
        assert f"popvault: the archive root {ws.archive} belongs to another popvault ledger" in err
        assert f"holds ledger id {OTHER}" in err
        assert_refused_before_connecting(server, 0, err)
    assert sorted(p.name for p in ws.archive.iterdir()) == [MARKER_NAME]
    assert ws.ledger_rows("SELECT count(*) FROM runs") == [(0,)]


def test_run_refuses_an_empty_root_while_the_ledger_s_files_are_elsewhere(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server)
    assert ws.cli("run").code == 0
    moved = move_archive_away(ws)
    seen = len(server.commands)
    for args in (["run"], ["run", "--dry-run"]):
        result = ws.cli(*args)
        assert result.code == 1, (args, result.output)
        err = result.err
        assert f"the archive root {ws.archive} has no marker ({MARKER_NAME})" in err
        assert f"none of the 3 file(s) the ledger {ws.ledger_file} archived last" in err
        assert "acct/new/" in err
        assert_refused_before_connecting(server, seen, err)
    assert list(ws.archive.iterdir()) == []  # no marker written into the wrong folder
    # No root at all (the mount point gone too): refused, and not created.
    ws.archive.rmdir()
    result = ws.cli("run")
    assert result.code == 1
    assert f"the archive root {ws.archive} does not exist" in result.err
    assert not ws.archive.exists()
    # The share back in its place: fine again.
    moved.rename(ws.archive)
    back = ws.cli("run")
    assert back.code == 0, back.output
    assert "0 new message(s)" in back.out


def test_an_archive_from_before_markers_gets_one(ws: Workspace, server: FakePop3Server) -> None:
    configure(ws, server)
    assert ws.cli("run").code == 0
    (ws.archive / MARKER_NAME).unlink()
    dry = ws.cli("run", "--dry-run")
    assert dry.code == 0, dry.output
    assert not (ws.archive / MARKER_NAME).exists()  # a dry run writes nothing
    result = ws.cli("run")
    assert result.code == 0, result.output
    assert read_marker(ws.archive) == ledger_id(ws)


def test_a_ledger_from_before_ids_gets_one_and_its_archive_the_marker(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server)
    assert ws.cli("run").code == 0
    (ws.archive / MARKER_NAME).unlink()
    old_id = ledger_id(ws)
    downgrade_to_0005(ws)
    assert current(f"sqlite:///{ws.ledger_file}") == "0005"

    result = ws.cli("run")  # upgrades the ledger (a new id), then marks its archive

    assert result.code == 0, result.output
    new_id = ledger_id(ws)
    assert new_id != old_id
    assert read_marker(ws.archive) == new_id
    assert list(ws.folder.glob("ledger.sqlite3.bak-0005-*"))


def downgrade_to_0005(ws: Workspace) -> None:
    engine = create_ledger_engine(parse_url(f"sqlite:///{ws.ledger_file}"))
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_INTENT: True})
            with connection.begin():
                config = alembic_config()
                config.attributes["connection"] = connection
                command.downgrade(config, "0005")
    finally:
        engine.dispose()


# -- popvault daemon ---------------------------------------------------------------------


def test_the_daemon_refuses_to_start_on_another_ledger_s_archive(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server)
    ws.archive.mkdir()
    (ws.archive / MARKER_NAME).write_bytes(marker_text(OTHER))
    done = daemon_refusal(ws)
    assert done.returncode == 1, done.stderr
    assert f"popvault: the archive root {ws.archive} belongs to another popvault ledger" in (
        done.stderr
    )
    assert f"holds ledger id {OTHER}, but the ledger {ws.ledger_file}" in done.stderr
    assert_refused_before_connecting(server, 0, done.stderr)
    assert "daemon started" not in done.stderr
    assert ws.ledger_rows("SELECT count(*) FROM runs") == [(0,)]


def test_the_daemon_refuses_an_empty_root_while_the_ledger_s_files_are_elsewhere(
    ws: Workspace, server: FakePop3Server
) -> None:
    configure(ws, server)
    assert ws.cli("run").code == 0
    move_archive_away(ws)
    seen = len(server.commands)
    done = daemon_refusal(ws)
    assert done.returncode == 1, done.stderr
    assert f"the archive root {ws.archive} has no marker" in done.stderr
    assert "none of the 3 file(s)" in done.stderr
    assert_refused_before_connecting(server, seen, done.stderr)
    assert list(ws.archive.iterdir()) == []


def test_the_daemon_marks_an_archive_from_before_markers_and_runs(
    ws: Workspace, server: FakePop3Server, daemons: list[Daemon]
) -> None:
    configure(ws, server)
    assert ws.cli("run").code == 0
    (ws.archive / MARKER_NAME).unlink()
    server.add_message(b"Subject: later\r\n\r\nlater\r\n")
    daemon = Daemon(ws)
    daemons.append(daemon)
    daemon.wait_for("daemon started")
    assert read_marker(ws.archive) == ledger_id(ws)
    assert any(f"wrote {ws.archive / MARKER_NAME}" in m for m in daemon.messages())
    daemon.wait_for("1 new")
    assert len(ws.archived_files("acct")) == 4
    assert daemon.stop() == 0


def test_a_reload_onto_another_ledger_s_archive_keeps_the_old_config(
    ws: Workspace, server: FakePop3Server, daemons: list[Daemon]
) -> None:
    configure(ws, server)
    daemon = Daemon(ws)
    daemons.append(daemon)
    daemon.wait_for("daemon started")
    wrong = ws.folder / "wrong"
    wrong.mkdir()
    (wrong / MARKER_NAME).write_bytes(marker_text(OTHER))
    text = ws.config.read_text().replace('root = "archive"', 'root = "wrong"')
    ws.config.write_text(text)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for("configuration not reloaded, keeping the previous one")
    assert any(f"holds ledger id {OTHER}" in m for m in daemon.messages())
    assert sorted(p.name for p in wrong.iterdir()) == [MARKER_NAME]
    assert daemon.stop() == 0


class _DiskFull:
    """Stands in for ``os`` inside popvault.store.durable: every ``write`` fails, ENOSPC."""

    def __getattr__(self, name: str) -> Any:
        if name == "write":
            return self._write
        return getattr(os, name)

    @staticmethod
    def _write(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_marker_that_cannot_be_written_fails_the_run_before_connecting(
    ws: Workspace, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(ws, server)
    monkeypatch.setattr(durable, "os", _DiskFull())
    result = ws.cli("run")
    monkeypatch.undo()
    assert result.code == 1
    assert "popvault: cannot write" in result.err
    assert "disk full" in result.err
    assert server.commands == []
    assert sorted(p.name for p in ws.archive.iterdir()) == []  # no marker, no temp file
    again = ws.cli("run")
    assert again.code == 0, again.output
    assert read_marker(ws.archive) == ledger_id(ws)
