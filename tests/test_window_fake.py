"""A server that hands out a window of the mailbox (issue 12 part 2): drained in one run.

Gmail's POP3 lists about 250 of the oldest messages not yet downloaded, and a
message counts as downloaded once it was retrieved in a session that ended
with QUIT. FakePop3Server(window=250) does the same (tests/testing/
test_fake_window.py checks it); here popvault drains it: another session while
the last one may have left more on offer (popvault.plan.may_offer_more), up
to max_sessions_per_run, every message archived exactly once.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popvault.daemon.runlog import RunLine
from popvault.plan import SessionEnd, may_offer_more
from popvault.sync import RunResult
from popvault.testing import DEFAULT_CAPABILITIES, FakePop3Server
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "window-Secret-25"
T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def look_alike(count: int) -> list[bytes]:
    """Messages that differ only in a fixed-width number: every window has the same sizes."""
    return [
        f"From: robot@example.org\r\nSubject: notice {i:05d}\r\n\r\nnotice {i:05d}\r\n".encode()
        for i in range(count)
    ]


def stored_form(raw: bytes) -> bytes:
    return maildir_form(wire_form(raw))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


def serve(messages: list[bytes], **options: Any) -> FakePop3Server:
    return FakePop3Server(messages, username="alice", password=PASSWORD, **options)


def configure(ws: Workspace, srv: FakePop3Server, **extra: Any) -> None:
    ws.write_config([fake_account(srv, "acct", **extra)])


class Recorder:
    """A progress bar that keeps what it was told."""

    def __init__(self) -> None:
        self.plans: list[tuple[str, int, int]] = []
        self.messages = 0

    def planned(self, account: str, messages: int, octets: int) -> None:
        self.plans.append((account, messages, octets))

    def fetched(self, account: str, octets: int) -> None:
        self.messages += 1


def quits(srv: FakePop3Server) -> int:
    return sum(1 for command in srv.commands if command == "QUIT")


def test_a_thousand_messages_behind_a_250_window_are_drained_in_one_run(ws) -> None:
    messages = look_alike(1000)  # the same 250 sizes in every window: not a renaming server
    progress = Recorder()
    with serve(messages, window=250) as srv:
        configure(ws, srv)
        result = ws.run_at(T0, progress=progress)
        assert result.ok, result.error
        assert (result.messages, result.sessions) == (1000, 5)  # 4 full windows, then none
        assert (result.on_server, result.left_on_server) == (0, 0)
        assert srv.offered == []
        assert srv.downloaded == [uidl for uidl, _ in srv.mailbox]
        assert quits(srv) == srv.sessions == 5, "every session ended with QUIT"
        again = ws.run_at(T0)
        assert again.ok, again.error
        assert (again.messages, again.sessions) == (0, 1)
    stored = ws.stored()
    assert len(stored) == len(set(stored)) == 1000, "every message exactly once"
    assert stored == sorted(stored_form(raw) for raw in messages)
    assert [(label, count) for label, count, _ in progress.plans] == [
        ("acct", 250),
        ("acct (session 2)", 250),
        ("acct (session 3)", 250),
        ("acct (session 4)", 250),
        ("acct (session 5)", 0),
    ]
    assert progress.messages == 1000
    # One run record for the whole run, with the totals of every session.
    first, second = ws.ledger_rows(
        "SELECT outcome, messages, on_server, sessions FROM runs ORDER BY id"
    )
    assert (first, second) == (("ok", 1000, 0, 5), ("ok", 0, 0, 1))
    line = RunLine("acct", result, "ok", 1.0)
    assert "1000 new message(s)" in line.text(None, None)
    assert "5 sessions" in line.text(None, None)
    assert line.fields(None)["sessions"] == 5


def test_max_sessions_per_run_bounds_a_run_and_the_next_run_goes_on(ws, caplog) -> None:
    messages = look_alike(120)
    caplog.set_level(logging.INFO, logger="popvault.sync")
    with serve(messages, window=50) as srv:
        configure(ws, srv, max_sessions_per_run=2)
        first = ws.run_at(T0)
        assert first.ok, first.error
        assert (first.messages, first.sessions) == (100, 2)
        assert "(max_sessions_per_run); the next run goes on" in caplog.text
        assert len(srv.offered) == 20
        ran = ws.cli("run")
        assert ran.code == 0, ran.err
        assert "20 new message(s)" in ran.out, ran.out
        assert "in 2 sessions" in ran.out, ran.out
        shown = ws.cli("status")
        line = next(line for line in shown.out.splitlines() if line.startswith("acct "))
        assert "ok (2 sessions)" in line, shown.out
        (row,) = json.loads(ws.cli("status", "--json").out)
        assert row["last_sessions"] == 2
        third = ws.run_at(T0)
        assert (third.messages, third.sessions) == (0, 1)
    assert ws.stored() == sorted(stored_form(raw) for raw in messages)


def test_a_session_failing_mid_way_ends_the_run_and_loses_nothing(ws) -> None:
    messages = look_alike(300)
    with serve(messages, window=100) as srv:
        uidls = [uidl for uidl, _ in srv.mailbox]

        def cut_the_second_session(session: int, _arg: str) -> None:
            if session == 2:  # its 40th RETR reply is cut half-way
                srv.cut_reply("RETR", 40, nth=40)

        srv.on_command("PASS", cut_the_second_session)
        configure(ws, srv)
        broken = ws.run_at(T0)
        assert not broken.ok
        assert broken.sessions == 2, "no session after the one that failed"
        # Session 2 ended without QUIT: only session 1's messages count as downloaded.
        assert srv.downloaded == uidls[:100]
        archived = len(ws.stored())
        assert archived == broken.messages
        assert 100 < archived < 140
        srv.clear_faults()
        # What session 2 archived stays in the window (popvault does not fetch what it
        # holds); the rest drains around it, in one run.
        healed = ws.run_at(T0)
        assert healed.ok, healed.error
        assert healed.messages == 300 - archived
        left = [uidl for uidl, _ in srv.offered]
        assert left == uidls[100 : 100 + len(left)]
        assert len(left) == archived - 100
    stored = ws.stored()
    assert len(stored) == len(set(stored)) == 300
    assert stored == sorted(stored_form(raw) for raw in messages)


def test_retention_delete_drains_and_empties_a_window_server(ws) -> None:
    messages = look_alike(120)
    with serve(messages, window=50) as srv:
        configure(ws, srv, retention="delete")
        result = ws.run_at(T0)
        assert result.ok, result.error
        assert (result.messages, result.deleted, result.sessions) == (120, 120, 4)
        assert result.left_on_server == 0
        assert srv.mailbox == []
        assert sorted(srv.deleted) == sorted(srv.downloaded)
    assert ws.stored() == sorted(stored_form(raw) for raw in messages)
    ((on_server,),) = ws.ledger_rows("SELECT on_server FROM runs")
    assert on_server == 0


def test_a_later_session_refused_with_login_delay_ends_the_run_quietly(ws) -> None:
    messages = look_alike(80)
    with serve(messages, window=50) as srv:
        srv.on_command(
            "QUIT",
            lambda _session, _arg: srv.fail_command(
                "PASS", "-ERR [LOGIN-DELAY] wait 5 minutes", times=1
            ),
            times=1,
        )
        configure(ws, srv)
        first = ws.run_at(T0)
        assert first.ok, first.error
        assert (first.messages, first.sessions) == (50, 1)
        second = ws.run_at(T0)
        assert (second.messages, second.sessions) == (30, 2)


def test_a_dry_run_takes_one_session_and_downloads_nothing(ws) -> None:
    with serve(look_alike(80), window=50) as srv:
        configure(ws, srv)
        result = ws.run_at(T0, dry_run=True)
        assert result.ok, result.error
        assert (len(result.planned), result.sessions) == (50, 1)
        assert srv.downloaded == []


def test_gmail_recent_mode_takes_one_session(ws) -> None:
    messages = look_alike(80)
    with FakePop3Server(messages, username="recent:alice", password=PASSWORD, window=50) as srv:
        configure(ws, srv)
        result = ws.run_at(T0)
        assert result.ok, result.error
        assert (result.messages, result.sessions) == (50, 1)


@pytest.mark.parametrize("expire", ["EXPIRE NEVER", "EXPIRE 30", None])
def test_a_server_that_does_not_say_expire_0_gets_one_session(ws, expire) -> None:
    """Without EXPIRE 0 a server lists retrieved messages again (or says nothing of it)."""
    capabilities = [c for c in DEFAULT_CAPABILITIES if not c.startswith("EXPIRE")]
    capabilities += [expire] if expire else []
    with serve(look_alike(20), capabilities=capabilities) as srv:
        configure(ws, srv)
        result = ws.run_at(T0)
        assert (result.messages, result.sessions) == (20, 1)
        assert srv.sessions == 1


def test_a_window_server_that_does_not_say_expire_0_is_drained_a_window_a_run(ws) -> None:
    capabilities = [c for c in DEFAULT_CAPABILITIES if not c.startswith("EXPIRE")]
    with serve(look_alike(30), window=20, capabilities=capabilities) as srv:
        configure(ws, srv)
        assert [ws.run_at(T0).messages for _ in range(3)] == [20, 10, 0]
    assert len(ws.stored()) == 30


def test_a_server_renaming_its_messages_in_every_session_is_stopped_after_one(ws, caplog) -> None:
    """The same messages under new UIDLs in each session: one duplicate, not a window a session."""
    messages = look_alike(30)
    capabilities = [c for c in DEFAULT_CAPABILITIES if not c.startswith("EXPIRE")]
    with serve(messages, capabilities=[*capabilities, "EXPIRE 0"]) as srv:
        current = {"session": 0}
        srv.on_command("UIDL", lambda session, _arg: current.update(session=session))

        def renamed(verb: str, reply: bytes) -> bytes:
            if verb != "UIDL":
                return reply
            suffix = b"-s%d" % current["session"]
            lines = reply.split(b"\r\n")
            return b"\r\n".join(
                line + suffix if line[:1].isdigit() and b" " in line else line for line in lines
            )

        srv.rewrite_reply = renamed
        configure(ws, srv)
        result = ws.run_at(T0)
        assert result.ok, result.error
        assert (result.messages, result.sessions) == (31, 2)
    assert "gives its messages new UIDLs in every session" in caplog.text
    assert len(ws.stored()) == 31


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, True),
        ({"capabilities": {"EXPIRE": ["0", "USER"]}}, True),  # RFC 2449: per user, before login
        ({"capabilities": {"EXPIRE": ["NEVER"]}}, False),
        ({"capabilities": {"EXPIRE": ["31"]}}, False),
        ({"capabilities": {"EXPIRE": []}}, False),
        ({"capabilities": {}}, False),
        ({"quit": False}, False),
        ({"troubled": True}, False),
        ({"planned": 0}, False),
    ],
)
def test_may_offer_more(changes: dict[str, Any], expected: bool) -> None:
    fields: dict[str, Any] = {
        "quit": True,
        "troubled": False,
        "planned": 250,
        "sizes": (100,) * 250,
        "capabilities": {"EXPIRE": ["0"], "LOGIN-DELAY": ["300"]},  # Gmail's
    }
    assert may_offer_more(SessionEnd(**(fields | changes))) is expected


# -- the property: window, mailbox and bound -------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[Workspace]:
    """One workspace (one migrated ledger) for every example; each has its own account."""
    with tempfile.TemporaryDirectory() as folder:
        yield Workspace(Path(folder), password=PASSWORD)


_ACCOUNTS = itertools.count()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(window=st.integers(1, 4), total=st.integers(0, 12), bound=st.integers(1, 4))
def test_one_run_archives_min_of_the_mailbox_and_window_times_bound_exactly_once(
    shared: Workspace, window: int, total: int, bound: int
) -> None:
    name = f"acct{next(_ACCOUNTS)}"
    # Different sizes: a listing never looks like the one before (see the renaming test).
    messages = [f"Subject: {i}\r\n\r\n{'x' * i}\r\n".encode() for i in range(total)]
    with serve(messages, window=window) as srv:
        shared.write_config([fake_account(srv, name, max_sessions_per_run=bound)])
        result: RunResult = shared.run_at(T0)
        assert result.ok, result.error
        expected = min(total, window * bound)
        assert result.messages == expected
        assert result.sessions == min(bound, math.ceil(total / window) + 1)
        assert len(srv.downloaded) == expected
    stored = shared.stored(name)
    assert stored == sorted(stored_form(raw) for raw in messages[:expected])
