"""Pipelined sessions (RFC 2449 section 6.6, PIPELINING) against the fake server.

What the client may do: with PIPELINING advertised, keep a window of RETRs (and DELEs) in
flight, bounded by ``pipeline_depth`` commands and by ``pipeline_octets`` of LIST sizes (a RETR
is sent only while the RETRs in flight stay under it; one larger message still goes, alone);
without PIPELINING, or with ``pipeline_depth = 1``, one command at a time.

What it must not change: the crash-safety rules. A cut in the middle of a pipelined reply, a
``-ERR`` for one RETR of a window and repeated random cuts with ``retention = "delete"`` leave
every message archived exactly once after a clean run, and none deleted without its copy.

The server's side is observed through :attr:`FakePop3Server.max_commands_in_flight` and
:attr:`FakePop3Server.max_in_flight_by_verb`; the first tests check that observation itself
with a raw socket, so that the rest do not rest on the client under test.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invariant.invariant_check import (
    WitnessServer,
    account_entry,
    check_invariant,
    new_workspace,
    pending_rows,
    temp_files,
    wait_until_idle,
)
from popvault.testing import DEFAULT_CAPABILITIES, FakePop3Server
from workspace import Workspace

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
NO_PIPELINING = tuple(c for c in DEFAULT_CAPABILITIES if c != "PIPELINING")
# Commands of a session that are not per message: CAPA, USER, PASS, STAT, UIDL, LIST, QUIT and
# some room (UTF8, NOOP, a second CAPA after login).
FIXED_COMMANDS = 12
# Hypothesis examples each run popvault a few times (about a second): few, and no deadline.
EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def sized_message(index: int, size: int) -> bytes:
    """A message of exactly ``size`` octets (at least 200), with a dot-stuffed line."""
    head = f"From: a@example.org\r\nSubject: message {index}\r\n\r\n.a dot line\r\n".encode()
    room = size - len(head) - 2
    if room < 0:
        raise ValueError("size too small")
    filler = (f"{index} " * size).encode()[:room]
    # Lines of at most 76 characters, the last one ending the message with CRLF.
    lines = [filler[i : i + 76] for i in range(0, len(filler), 78)]
    body = b"\r\n".join(lines)
    body += b"x" * (room - len(body))
    return head + body + b"\r\n"


def mailbox(count: int, size: int = 2000) -> list[bytes]:
    return [sized_message(i, size) for i in range(count)]


@pytest.fixture
def witness() -> Iterator[WitnessServer]:
    with WitnessServer(mailbox(10)) as srv:
        yield srv


def run(ws: Workspace, srv: FakePop3Server, **extra: Any) -> Any:
    """One run of the account (clock frozen), its RunResult."""
    ws.write_config([account_entry(srv, **extra)])
    return ws.run_at(T0)


def archived_uidls(ws: Workspace) -> list[str]:
    rows = ws.ledger_rows("SELECT uidl FROM messages WHERE state = 'archived'")
    return sorted(uidl for (uidl,) in rows)


# -- the observation itself (a raw socket as the client) -----------------------------------------


def _talk(srv: FakePop3Server, batches: list[list[str]]) -> None:
    """Send each batch of commands in one write, then read every reply of it."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        stream = sock.makefile("rb")
        stream.readline()  # greeting
        for batch in batches:
            sock.sendall(b"".join(f"{c}\r\n".encode() for c in batch))
            for command in batch:
                status = stream.readline()
                multi = command in ("CAPA", "UIDL", "LIST") or command.startswith("RETR")
                if status.startswith(b"+OK") and multi:
                    while stream.readline() not in (b".\r\n", b""):
                        pass


def test_a_client_that_waits_for_each_answer_has_one_command_in_flight() -> None:
    with FakePop3Server(mailbox(3)) as srv:
        _talk(srv, [["USER user"], ["PASS secret"], ["RETR 1"], ["RETR 2"], ["QUIT"]])
        assert srv.max_commands_in_flight == 1
        assert srv.max_in_flight_by_verb["RETR"] == 1


def test_commands_sent_in_one_write_are_all_in_flight() -> None:
    with FakePop3Server(mailbox(5)) as srv:
        assert srv.max_commands_in_flight == 0
        retrs = [f"RETR {n}" for n in range(1, 6)]
        _talk(srv, [["USER user", "PASS secret"], retrs, ["DELE 1", "DELE 2", "QUIT"]])
        assert srv.max_commands_in_flight == 5
        assert srv.max_in_flight_by_verb == {"USER": 1, "PASS": 1, "RETR": 5, "DELE": 2, "QUIT": 1}


def test_cut_reply_drops_the_line_inside_the_nth_reply_of_a_verb() -> None:
    messages = mailbox(6, size=1000)
    with FakePop3Server(messages) as srv:
        srv.cut_reply("RETR", after_octets=500, nth=3)
        received = b""
        with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
            sock.sendall(b"USER user\r\nPASS secret\r\nRETR 5\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\n")
            while chunk := sock.recv(65536):
                received += chunk
        # The third RETR (of message 2) got 500 octets of its reply, then EOF.
        before, _, third = received.partition(messages[1][:40])
        assert b"Subject: message 4\r\n" in before
        assert b"Subject: message 0\r\n" in before
        status = b"+OK 1000 octets\r\n"
        assert len(status) + len(messages[1][:40]) + len(third) == 500
        # One session only: the next one is served whole.
        _talk(srv, [["USER user"], ["PASS secret"], ["RETR 2"], ["QUIT"]])
        assert "QUIT" in srv.commands


# -- the window: by count and by octets ---------------------------------------------------------


def test_with_pipelining_many_retrs_are_in_flight(tmp_path: Path) -> None:
    with WitnessServer(mailbox(40)) as srv:
        ws = new_workspace(tmp_path)
        result = run(ws, srv)
        assert result.ok, result.error
        assert result.messages == 40
        assert srv.max_in_flight_by_verb["RETR"] > 1


def test_with_pipelining_deles_are_in_flight_too(tmp_path: Path) -> None:
    with WitnessServer(mailbox(40)) as srv:
        ws = new_workspace(tmp_path)
        srv.watch(ws)
        originals = dict(srv.mailbox)
        result = run(ws, srv, retention="delete")
        assert result.ok, result.error
        assert srv.mailbox == []
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)
        assert srv.max_in_flight_by_verb["DELE"] > 1


@pytest.mark.parametrize(
    ("label", "server_options"),
    [
        ("no PIPELINING in CAPA", {"capabilities": NO_PIPELINING}),
        ("no CAPA at all (RFC 1939 only)", {"capa": False}),
    ],
)
def test_without_pipelining_one_command_at_a_time(
    tmp_path: Path, label: str, server_options: dict[str, Any]
) -> None:
    with WitnessServer(mailbox(12), **server_options) as srv:
        ws = new_workspace(tmp_path)
        srv.watch(ws)
        originals = dict(srv.mailbox)
        result = run(ws, srv, retention="delete")
        assert result.ok, f"{label}: {result.error}"
        assert srv.max_commands_in_flight == 1, label
        # At most one round trip per message: its RETR, and its DELE.
        commands = srv.commands
        assert len(commands) <= FIXED_COMMANDS + 2 * len(originals), (label, commands)
        assert sum(c.startswith("RETR") for c in commands) == len(originals), label
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)


def test_pipeline_depth_1_sends_one_retr_and_one_dele_at_a_time(tmp_path: Path) -> None:
    """``pipeline_depth = 1`` turns pipelining off: one command in flight, login included."""
    with WitnessServer(mailbox(12)) as srv:
        ws = new_workspace(tmp_path)
        srv.watch(ws)
        originals = dict(srv.mailbox)
        result = run(ws, srv, retention="delete", pipeline_depth=1)
        assert result.ok, result.error
        in_flight = srv.max_in_flight_by_verb
        assert in_flight["RETR"] == 1
        assert in_flight["DELE"] == 1
        assert srv.max_commands_in_flight == 1
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)


def test_the_window_holds_at_most_pipeline_depth_retrs(tmp_path: Path) -> None:
    with WitnessServer(mailbox(40)) as srv:
        ws = new_workspace(tmp_path)
        result = run(ws, srv, pipeline_depth=4)
        assert result.ok, result.error
        assert 1 < srv.max_in_flight_by_verb["RETR"] <= 4


def test_messages_larger_than_the_octet_window_go_one_at_a_time(tmp_path: Path) -> None:
    with WitnessServer(mailbox(12, size=3000)) as srv:
        ws = new_workspace(tmp_path)
        result = run(ws, srv, pipeline_octets=2048)
        assert result.ok, result.error
        assert result.messages == 12
        assert srv.max_in_flight_by_verb["RETR"] == 1


def test_the_octet_window_bounds_the_retrs_in_flight(tmp_path: Path) -> None:
    # 3 x 3000 octets: the RETRs in flight before the last one sent stay under 9000.
    with WitnessServer(mailbox(24, size=3000)) as srv:
        ws = new_workspace(tmp_path)
        result = run(ws, srv, pipeline_octets=9000)
        assert result.ok, result.error
        assert 1 < srv.max_in_flight_by_verb["RETR"] <= 4


def most_in_flight(sizes: list[int], depth: int, octets: int) -> int:
    """The most RETRs the rule allows at once: ``depth``, and one more than fits under ``octets``.

    A RETR is sent only while the LIST sizes of those in flight stay under ``octets``: k in
    flight means k - 1 of them summed to less than ``octets`` when the last was sent, at the
    least the k - 1 smallest sizes do.
    """
    fitting, total = 0, 0
    for size in sorted(sizes):
        if total + size >= octets:
            break
        total += size
        fitting += 1
    return max(1, min(depth, fitting + 1))


@EXAMPLES
@given(
    sizes=st.lists(st.integers(1100, 6000), min_size=6, max_size=20),
    depth=st.integers(1, 8),
    octets=st.integers(1024, 30_000),
)
def test_the_window_is_bounded_by_count_and_octets(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], depth: int, octets: int
) -> None:
    messages = [sized_message(i, size) for i, size in enumerate(sizes)]
    with WitnessServer(messages) as srv:
        ws = new_workspace(tmp_path_factory.mktemp("window"))
        result = run(ws, srv, pipeline_depth=depth, pipeline_octets=octets)
        assert result.ok, result.error
        assert result.messages == len(messages)
        assert srv.max_in_flight_by_verb["RETR"] <= most_in_flight(sizes, depth, octets)


# -- crash safety in pipelined sessions ---------------------------------------------------------


def test_a_cut_inside_the_fifth_pipelined_reply(tmp_path: Path, witness: WitnessServer) -> None:
    srv = witness
    originals = dict(srv.mailbox)
    uidls = [uidl for uidl, _ in srv.mailbox]
    ws = new_workspace(tmp_path)
    srv.watch(ws)
    srv.cut_reply("RETR", after_octets=1000, nth=5)  # 2000-octet messages: in the middle
    cut = run(ws, srv, retention="delete")
    assert not cut.ok
    commands = srv.commands
    retrs = [int(c.split()[1]) for c in commands if c.startswith("RETR")]
    assert len(retrs) >= 5
    first_four = sorted(uidls[n - 1] for n in retrs[:4])
    assert archived_uidls(ws) == first_four, "the 4 messages before the cut, each once"
    assert len(ws.archived_files("acct")) == 4
    assert pending_rows(ws) == 0
    assert temp_files(ws) == []
    assert "QUIT" not in commands, "no QUIT in a session that was cut"
    assert srv.deleted == []
    assert len(srv.mailbox) == 10

    wait_until_idle(srv)
    seen = len(srv.commands)
    clean = run(ws, srv, retention="delete")
    assert clean.ok, clean.error
    assert clean.messages == 6
    again = [c for c in srv.commands[seen:] if c.startswith("RETR")]
    assert len(again) == 6, "the next run fetches only the rest"
    assert srv.mailbox == []
    check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)


def test_an_err_for_one_retr_inside_a_window(tmp_path: Path, witness: WitnessServer) -> None:
    srv = witness
    originals = dict(srv.mailbox)
    failing_uidl = srv.mailbox[2][0]
    ws = new_workspace(tmp_path)
    srv.watch(ws)
    srv.fail_command("RETR", "-ERR cannot read this message", arg="3")
    result = run(ws, srv, retention="delete")
    assert not result.ok
    assert "cannot read this message" in (result.error or "") + " ".join(result.message_errors)
    assert result.messages == 9
    assert srv.commands[-1] == "QUIT"
    assert [uidl for uidl, _ in srv.mailbox] == [failing_uidl], "only archived ones deleted"
    assert sorted(srv.deleted) == sorted(set(originals) - {failing_uidl})
    failures = ws.ledger_rows("SELECT uidl, attempts FROM failures")
    assert failures == [(failing_uidl, 1)]
    assert archived_uidls(ws) == sorted(set(originals) - {failing_uidl})
    assert pending_rows(ws) == 0
    assert temp_files(ws) == []

    srv.clear_faults()
    wait_until_idle(srv)
    clean = run(ws, srv, retention="delete")
    assert clean.ok, clean.error
    assert clean.messages == 1
    assert srv.mailbox == []
    check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)


CUT_VERBS = ("RETR", "DELE", "QUIT", "UIDL", "LIST")
cuts = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(CUT_VERBS), st.integers(1, 12), st.integers(0, 2200)),
        st.integers(0, 40_000),  # octets of the whole session (cut_after)
    ),
    min_size=1,
    max_size=4,
)


@EXAMPLES
@given(
    count=st.integers(4, 12),
    plan=cuts,
    depth=st.sampled_from([1, 3, 32]),
    octets=st.sampled_from([1024, 5000, 8 * 1024 * 1024]),
)
def test_random_cuts_in_pipelined_sessions_then_a_clean_run(
    tmp_path_factory: pytest.TempPathFactory,
    count: int,
    plan: list[tuple[str, int, int] | int],
    depth: int,
    octets: int,
) -> None:
    with WitnessServer(mailbox(count)) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(tmp_path_factory.mktemp("cuts"))
        srv.watch(ws)
        options = {"retention": "delete", "pipeline_depth": depth, "pipeline_octets": octets}
        for cut in plan:
            if isinstance(cut, int):
                srv.cut_after(cut)
            else:
                verb, nth, after = cut
                srv.cut_reply(verb, after_octets=after, nth=nth)
            run(ws, srv, **options)  # fails for most cuts: must leave nothing half-done
            assert pending_rows(ws) == 0, f"{cut}: a pending row left"
            assert temp_files(ws) == [], f"{cut}: a temporary file left"
            srv.clear_faults()
            wait_until_idle(srv)
        clean = run(ws, srv, **options)
        assert clean.ok, clean.error
        assert srv.mailbox == []
        check_invariant(ws, originals, srv.deleted, witnesses=srv.witnesses)
