"""End-to-end archive runs (keep, delete, incremental, verify) against every server profile.

Each profile of :mod:`popvault.testing.profiles` reproduces one real server
style; the corpus holds the messages that trip up archivers: raw UTF-8
headers, no final newline, a bare CR, a 5000-octet line, a 20,000-line body,
two byte-identical messages. On every profile every listed message must be
archived exactly once, byte-exact as a UTF-8 capable client receives it; a
second run fetches nothing and warns about nothing; `verify` passes; and
retention ``delete`` empties the server.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from corpus import corpus
from popvault import config as config_module
from popvault.ledger import Ledger
from popvault.sync import RunResult, sync_account
from popvault.testing import FakePop3Server
from popvault.testing.profiles import PROFILES, ServerProfile
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "profiles-Secret-31"
T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)


def stored_form(raw: bytes) -> bytes:
    return maildir_form(wire_form(raw))


@pytest.fixture(params=sorted(PROFILES), ids=str)
def profile(request: pytest.FixtureRequest) -> ServerProfile:
    return PROFILES[request.param]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


def configure(ws: Workspace, srv: FakePop3Server, profile: ServerProfile, **extra: Any) -> None:
    # A server that reports estimated sizes is declared as such (README "Servers").
    if profile.list_size is not None:
        extra.setdefault("trust_list_sizes", False)
    ws.write_config([fake_account(srv, "acct", **extra)])


def run_at(ws: Workspace, when: datetime) -> RunResult:
    cfg = config_module.load(ws.config)
    with Ledger.open(cfg.ledger_url) as ledger:
        return sync_account(cfg, cfg.accounts[0], ledger, clock=lambda: when)


def stored(ws: Workspace) -> list[bytes]:
    return sorted(path.read_bytes() for path in ws.archived_files("acct"))


def serve(profile: ServerProfile, messages: list[bytes]) -> FakePop3Server:
    return profile.server(messages, username="alice", password=PASSWORD)


def test_keep_archives_everything_once_then_only_what_is_new(
    ws: Workspace, profile: ServerProfile, caplog: pytest.LogCaptureFixture
) -> None:
    messages = corpus()
    late = b"From: late@example.org\r\nSubject: later\r\n\r\narrived later\r\n"
    with serve(profile, messages) as srv:
        configure(ws, srv, profile)
        first = run_at(ws, T0)
        assert first.ok, first.error
        assert first.messages == len(messages)
        assert first.held == []
        assert stored(ws) == sorted(stored_form(raw) for raw in messages)

        caplog.clear()
        caplog.set_level(logging.WARNING)
        again = run_at(ws, T0 + timedelta(hours=1))
        assert again.ok, again.error
        assert again.messages == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

        srv.add_message(late)
        third = run_at(ws, T0 + timedelta(hours=2))
        assert third.ok, third.error
        assert third.messages == 1
        assert len(srv.mailbox) == len(messages) + 1, "keep never deletes"
    assert stored(ws) == sorted(stored_form(raw) for raw in [*messages, late])
    verify = ws.cli("verify", "--json")
    assert verify.code == 0, verify.output
    (report,) = json.loads(verify.out)
    assert report["problems"] == []
    assert report["held"] == []


def test_delete_empties_the_server_and_archives_each_message_once(
    ws: Workspace, profile: ServerProfile
) -> None:
    messages = corpus()
    with serve(profile, messages) as srv:
        configure(ws, srv, profile, retention="delete")
        first = run_at(ws, T0)
        assert first.ok, first.error
        assert srv.mailbox == []
        assert first.deleted == len(messages)
        second = run_at(ws, T0 + timedelta(hours=1))
        assert second.ok, second.error
        assert (second.messages, second.deleted, second.on_server) == (0, 0, 0)
    assert stored(ws) == sorted(stored_form(raw) for raw in messages)
    status = json.loads(ws.cli("status", "--json").out)[0]
    assert status["archived_messages"] == len(messages)
    assert status["due_for_deletion"] == 0
    assert status["held_messages"] == 0
    assert ws.cli("verify").code == 0


def test_leave_on_server_deletes_each_copy_once_it_is_due(
    ws: Workspace, profile: ServerProfile
) -> None:
    messages = corpus()
    now = datetime.now(UTC)  # status reads the wall clock
    with serve(profile, messages) as srv:
        configure(ws, srv, profile, retention="3d")
        assert run_at(ws, now).ok
        status = json.loads(ws.cli("status", "--json").out)[0]
        assert status["due_for_deletion"] == 0
        assert status["held_messages"] == 0
        later = run_at(ws, now + timedelta(days=4))
        assert later.ok, later.error
        assert later.messages == 0, "nothing archived twice"
        assert later.deleted == len(messages)
        assert srv.mailbox == []
    assert stored(ws) == sorted(stored_form(raw) for raw in messages)
