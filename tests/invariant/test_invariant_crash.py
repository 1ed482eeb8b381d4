"""Crash at every step: SIGKILL a `popvault run` child at each point of the archive protocol.

The fake server lives in this (the parent) process, so its mailbox and what
it deleted survive the kill. After each kill a clean run must complete and
the archive invariant must hold; the server witnesses every DELE.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from crash_runner import run_crashing
from invariant_check import (
    WitnessServer,
    account_entry,
    assert_no_secret,
    check_invariant,
    new_workspace,
    wait_until_idle,
)

from popvault.store import durable
from popvault.testing import large_attachment_message, sample_messages

# Called once per message: killing at the 1st and the 3rd call covers a crash
# with nothing yet archived and one with earlier messages done.
PER_MESSAGE = ("retr_into", "seal", "record_pending", "commit", "mark_archived")
# Called once per session (with retention "delete").
PER_SESSION = ("mark_delete_requested", "quit", "mark_deleted")
# Writer.write is called once per chunk the client hands on (up to 64 KiB):
# with the mailbox below, call 1 is the first message, call 4 the middle of
# the large third one, call 6 the fourth message.
WRITE_CHUNKS = (1, 4, 6)


def mailbox() -> list[bytes]:
    """Four varied messages with a 150 kB one third, so a RETR spans several chunks."""
    messages = sample_messages(4, seed=11)
    messages.insert(2, large_attachment_message(150_000))
    return messages


def _cases() -> list[Any]:
    cases = []
    for retention in ("keep", "delete"):
        points = PER_MESSAGE + (("dele",) if retention == "delete" else ())
        for point in points:
            for when in ("before", "after"):
                for nth in (1, 3):
                    cases.append((point, when, nth, retention))
        session = PER_SESSION if retention == "delete" else ("quit",)
        for point in session:
            for when in ("before", "after"):
                cases.append((point, when, 1, retention))
        cases += [("write", "after", k, retention) for k in WRITE_CHUNKS]
    return [pytest.param(*case, id="-".join(map(str, case))) for case in cases]


def crash_then_clean(tmp_path: Path, point: str, when: str, nth: int, **extra: object) -> None:
    fmt = str(extra.pop("format", "maildir"))
    with WitnessServer(mailbox()) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(tmp_path)
        ws.write_config([account_entry(srv, fmt=fmt, **extra)])  # type: ignore[arg-type]
        srv.watch(ws)

        killed = run_crashing(ws.config, point, nth, when)
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
        assert_no_secret(killed.stdout, killed.stderr)
        wait_until_idle(srv)

        clean = ws.cli("run")
        assert clean.code == 0, clean.output
        assert_no_secret(clean.output)
        on_server = [uidl for uidl, _ in srv.mailbox]
        check_invariant(
            ws,
            originals,
            srv.deleted,
            fmt=fmt,  # type: ignore[arg-type]
            still_on_server=on_server,
            witnesses=srv.witnesses,
        )
        if extra.get("retention") == "delete":
            assert on_server == [], "a clean run with retention 'delete' empties the server"
        again = ws.cli("run")
        assert again.code == 0, again.output
        assert "0 new message(s)" in again.out, "a later run downloaded again"


@pytest.mark.parametrize(("point", "when", "nth", "retention"), _cases())
def test_kill_at_every_point_then_a_clean_run_archives_exactly_once(
    tmp_path: Path, point: str, when: str, nth: int, retention: str
) -> None:
    crash_then_clean(tmp_path, point, when, nth, retention=retention)


@pytest.mark.slow
@pytest.mark.parametrize("point", [*PER_MESSAGE, "dele", *PER_SESSION])
@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_every_point_eml(tmp_path: Path, point: str, when: str) -> None:
    nth = 1 if point in PER_SESSION else 2
    crash_then_clean(tmp_path, point, when, nth, retention="delete", format="eml")


# Two kills in a row, then a clean run: the second kill lands in the recovery
# of the first (settling a pending row, re-sending DELEs, a lost QUIT answer).
SEQUENCES = [
    (("mark_archived", "before", 3), ("mark_archived", "before", 1)),
    (("commit", "after", 2), ("retr_into", "after", 1)),
    (("dele", "after", 2), ("quit", "after", 1)),
    (("mark_delete_requested", "after", 1), ("mark_deleted", "before", 1)),
    (("write", "after", 4), ("seal", "after", 1)),
]


@pytest.mark.parametrize("kills", SEQUENCES, ids=lambda kills: "+".join(k[0] for k in kills))
def test_a_kill_during_recovery_from_a_kill(
    tmp_path: Path, kills: tuple[tuple[str, str, int], ...]
) -> None:
    with WitnessServer(mailbox()) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(tmp_path)
        ws.write_config([account_entry(srv, retention="delete")])
        srv.watch(ws)
        for point, when, nth in kills:
            wait_until_idle(srv)
            killed = run_crashing(ws.config, point, nth, when)
            assert killed.returncode == -signal.SIGKILL, (point, killed.stdout, killed.stderr)
        wait_until_idle(srv)
        clean = ws.cli("run")
        assert clean.code == 0, clean.output
        assert srv.mailbox == []
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses, still_on_server=[])


@pytest.mark.parametrize("nth", [1, 2])
def test_a_kill_inside_the_first_schema_migration(tmp_path: Path, nth: int) -> None:
    """The first run creates the ledger's tables; a kill half-way must not wedge the ledger."""
    with WitnessServer(mailbox()) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(tmp_path)
        ws.ledger_file.unlink()  # no migrated template: the child migrates
        ws.write_config([account_entry(srv, retention="delete")])
        srv.watch(ws)
        killed = run_crashing(ws.config, "create_table", nth, "after")
        assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
        assert srv.sessions == 0
        clean = ws.cli("run")
        assert clean.code == 0, clean.output
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses, still_on_server=[])


class _OrderServer(WitnessServer):
    """Notes each DELE in a shared list of events, next to the folder fsyncs."""

    def __init__(self, events: list[tuple[str, str]], messages: list[bytes]) -> None:
        super().__init__(messages)
        self.events = events

    def _record(self, line: str) -> None:
        super()._record(line)
        if line.startswith("DELE "):
            self.events.append(("dele", self.mailbox[int(line.split()[1]) - 1][0]))


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
def test_a_file_linked_before_a_kill_is_made_durable_before_its_dele(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Killed between the link of the last message and its folder's fsync.

    The next run finds the file in place and settles its pending row; with
    nothing else to fetch, its next step is the DELE. The folder must be
    fsynced before that DELE, or a power cut soon after the kill could take
    the name away after the server copy is gone.
    """
    events: list[tuple[str, str]] = []
    with _OrderServer(events, mailbox()) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(tmp_path)
        ws.write_config([account_entry(srv, retention="delete", fmt=fmt)])  # type: ignore[arg-type]
        srv.watch(ws)
        killed = run_crashing(ws.config, "linked", len(originals), "after")
        assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
        ((path,),) = ws.ledger_rows("SELECT path FROM messages WHERE state = 'pending'")
        wait_until_idle(srv)

        real_sync_dir = durable.sync_dir

        def sync_dir(folder: Path) -> None:
            real_sync_dir(folder)
            events.append(("sync", str(folder)))

        monkeypatch.setattr(durable, "sync_dir", sync_dir)
        clean = ws.cli("run")
        monkeypatch.undo()
        assert clean.code == 0, clean.output
        check_invariant(ws, originals, srv.deleted, fmt=fmt, witnesses=srv.witnesses)  # type: ignore[arg-type]
        (uidl,) = [u for (u,) in ws.ledger_rows("SELECT uidl FROM messages WHERE path = ?", path)]
        folder = str((ws.archive / path).parent)
        dele = events.index(("dele", uidl))
        assert ("sync", folder) in events[:dele], (
            "DELE before the settled file's folder was fsynced"
        )
