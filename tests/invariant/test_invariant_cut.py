"""Cut at every byte: the server drops the connection after N octets of a whole session.

For every offset up to the end of the LIST answer, and then every few octets to
the end of the session (QUIT's answer included), a run with the cut and then a
clean run must leave the archive invariant true. The cut comes after the server
carried out the command, so a QUIT whose ``+OK`` is lost has still deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from invariant_check import (
    Format,
    WitnessServer,
    account_entry,
    check_invariant,
    new_workspace,
    pending_rows,
    temp_files,
    wait_until_idle,
)

from popvault.testing import sample_messages
from workspace import Workspace

# Dense up to the end of LIST (every octet), then every 11th: a prime stride so
# that the sampled offsets fall at varying places within lines and replies.
STRIDE = 11


MESSAGES = 2


def small_mailbox() -> list[bytes]:
    # Two small messages keep a session near 1.5 kB (about 400 scenarios)
    # while still holding multi-line bodies and a DELE of each.
    return [raw for raw in sample_messages(6, seed=3) if len(raw) < 800][:MESSAGES]


@dataclass(frozen=True)
class Reply:
    verb: str
    start: int
    end: int


@pytest.fixture
def session_map(tmp_path: Path) -> list[Reply]:
    """Where each reply of a clean, deleting session of the small mailbox starts and ends."""
    replies: list[Reply] = []

    def measure(verb: str, data: bytes) -> bytes:
        # rewrite_reply sees every reply as it will be sent (before any cut).
        start = sum(reply.end - reply.start for reply in replies)
        replies.append(Reply(verb, start, start + len(data)))
        return data

    with WitnessServer(small_mailbox(), rewrite_reply=measure) as srv:
        ws = new_workspace(tmp_path / "reference")
        ws.write_config([account_entry(srv, retention="delete")])
        result = ws.cli("run")
        assert result.code == 0, result.output
        assert srv.mailbox == []
    return replies


# Octets on each side of every reply boundary that are all tried: a cut just
# before a RETR's terminating ".CRLF", or just after it, is where a client that
# took EOF for the end of a message would archive a truncated one.
EDGE = 6


def cut_offsets(replies: list[Reply]) -> list[int]:
    list_end = max(reply.end for reply in replies if reply.verb == "LIST")
    total = replies[-1].end
    offsets = set(range(list_end + 1)) | set(range(list_end + 1, total + 1, STRIDE))
    for reply in replies:
        offsets |= set(range(reply.start, reply.start + EDGE))
        offsets |= set(range(reply.end - EDGE, reply.end + 1))
    return sorted(offset for offset in offsets if offset <= total)


def refill(srv: WitnessServer, originals: dict[str, bytes]) -> None:
    """Put the small mailbox back (same UIDLs, same order: the same session bytes)."""
    assert srv.mailbox == []
    for uidl, raw in originals.items():
        srv.add_message(raw, uidl)
    srv.witnesses.clear()


def cut_then_clean(
    srv: WitnessServer, folder: Path, offset: int, fmt: Format = "maildir"
) -> Workspace:
    """One scenario on a server holding the small mailbox; leaves it empty again."""
    originals = dict(srv.mailbox)
    deleted_before = len(srv.deleted)
    ws = new_workspace(folder)
    ws.write_config([account_entry(srv, retention="delete", fmt=fmt)])
    srv.watch(ws)
    srv.cut_after(offset)
    ws.cli("run")  # fails for most offsets; must leave nothing half-recorded
    assert pending_rows(ws) == 0, "a cut left a pending row"
    srv.clear_faults()
    wait_until_idle(srv)
    clean = ws.cli("run")
    assert clean.code == 0, clean.output
    assert srv.mailbox == []
    deleted = srv.deleted[deleted_before:]
    check_invariant(ws, originals, deleted, fmt=fmt, witnesses=srv.witnesses)
    assert temp_files(ws) == []
    refill(srv, originals)
    return ws


@pytest.mark.slow
def test_a_cut_at_any_octet_of_a_session_loses_and_doubles_nothing(
    tmp_path: Path, session_map: list[Reply]
) -> None:
    verbs = [reply.verb for reply in session_map]
    assert verbs[-3:] == ["DELE", "DELE", "QUIT"], verbs  # the session the offsets cover
    offsets = cut_offsets(session_map)
    assert len(offsets) > 200
    with WitnessServer(small_mailbox()) as srv:
        for offset in offsets:
            try:
                cut_then_clean(srv, tmp_path / f"cut{offset}", offset)
            except AssertionError as exc:
                raise AssertionError(f"cut after {offset} octets: {exc}") from exc


def test_a_lost_quit_answer_still_counts_the_deletions(
    tmp_path: Path, session_map: list[Reply]
) -> None:
    """The cut swallows QUIT's +OK: the server deleted, the ledger learns it next session."""
    quit_reply = session_map[-1]
    with WitnessServer(small_mailbox()) as srv:
        ws = cut_then_clean(srv, tmp_path, quit_reply.start)
        assert len(srv.deleted) == MESSAGES
    rows = ws.ledger_rows("SELECT deleted_at FROM messages")
    assert len(rows) == MESSAGES
    assert all(deleted is not None for (deleted,) in rows)


def test_a_server_hanging_mid_retr_times_out_and_records_nothing(tmp_path: Path) -> None:
    with WitnessServer(small_mailbox()) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(tmp_path)
        ws.write_config([account_entry(srv, retention="delete", timeout="1s")])
        srv.watch(ws)
        srv.hang_on("RETR", after_octets=200)
        hung = ws.cli("run")
        assert hung.code == 1
        assert "no answer" in hung.out, hung.output
        assert "within 1.0s" in hung.out, hung.output
        assert "QUIT" not in srv.commands, "a session with an undurable RETR must not QUIT"
        assert pending_rows(ws) == 0
        assert temp_files(ws) == []
        assert ws.archived_files("acct") == []
        assert srv.deleted == []

        srv.clear_faults()
        wait_until_idle(srv)
        clean = ws.cli("run")
        assert clean.code == 0, clean.output
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)


@pytest.mark.slow
def test_cuts_with_the_eml_store(tmp_path: Path, session_map: list[Reply]) -> None:
    """A sparser sample for EML, whose month folders are made at publish time."""
    offsets = cut_offsets(session_map)[::10]
    with WitnessServer(small_mailbox()) as srv:
        for offset in offsets:
            try:
                cut_then_clean(srv, tmp_path / f"cut{offset}", offset, fmt="eml")
            except AssertionError as exc:
                raise AssertionError(f"cut after {offset} octets: {exc}") from exc
