"""Adopting a Maildir a real tool wrote, against a real server: getmail6 and mpop, Dovecot.

The tool fetches a mailbox from the private Dovecot (keeping the messages on
the server, tests/importing/real_tools.py); more mail arrives; then popvault's
client reads every header section with pipelined TOP n 0, and the matcher
must say exactly which file each server message is. The expected answer is
found independently: the file whose bytes hold the message's Message-ID line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from real_tools import run_getmail6, run_mpop, work_folder

from dovecot import DovecotMailbox, DovecotServer
from popvault.importing.maildir import (
    AdoptPlan,
    ServerMessage,
    header_facts,
    plan_maildir_adoption,
)
from popvault.pop3.client import Pop3Client
from popvault.testing import FakePop3Server, sample_messages

FETCHED = sample_messages(30, seed=12)
# Delivered to the server twice before the tool ran: two server messages, two files.
TWICE = FETCHED[0]
# Arrived after the tool ran: on the server only.
LATER = sample_messages(3, seed=99)


def _getmail6(server: DovecotServer, mailbox: DovecotMailbox, work: Path) -> Path:
    run_getmail6(server, mailbox, work)
    return work / "getmail-maildir"


def _mpop(server: DovecotServer, mailbox: DovecotMailbox, work: Path) -> Path:
    run_mpop(server, [mailbox], work)
    return work / "mpop-account0"


Tool = Callable[[DovecotServer, DovecotMailbox, Path], Path]


@pytest.fixture(params=[_getmail6, _mpop], ids=["getmail6", "mpop"])
def tool(request: pytest.FixtureRequest) -> Tool:
    chosen: Tool = request.param
    return chosen


@pytest.fixture
def work() -> Iterator[Path]:
    with work_folder() as folder:
        yield folder


def server_view(client: Pop3Client) -> list[ServerMessage]:
    """UIDL, LIST and pipelined TOP n 0 of the whole mailbox."""
    uidls = dict(client.uidl())
    sizes = dict(client.list())
    return [
        ServerMessage(
            reply.number,
            uidls[reply.number],
            sizes[reply.number],
            reply.headers,
            None if reply.error is None else str(reply.error),
        )
        for reply in client.top_headers_many(sorted(uidls))
    ]


def holder(maildir: Path, raw: bytes) -> list[Path]:
    """The files whose bytes hold ``raw``'s Message-ID line (found without the matcher)."""
    message_id = header_facts(raw).message_id
    assert message_id is not None
    line = b"Message-ID: " + message_id.encode()
    files = sorted(p for sub in ("cur", "new") for p in (maildir / sub).iterdir())
    return [p for p in files if line.lower() in p.read_bytes().lower()]


def test_a_real_tools_maildir_is_adopted_exactly(
    dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox, tool: Tool, work: Path
) -> None:
    for raw in [*FETCHED, TWICE]:
        dovecot_mailbox.deliver(raw)
    maildir = tool(dovecot, dovecot_mailbox, work)
    for raw in LATER:
        dovecot_mailbox.deliver(raw)
    with Pop3Client(
        dovecot.host, dovecot.port, security="plain", timeout=20, account="d"
    ) as client:
        client.connect()
        client.login(dovecot_mailbox.username, dovecot_mailbox.password, allow_plaintext=True)
        assert client.pipelining  # Dovecot offers PIPELINING: the TOPs went in windows
        server = server_view(client)
        client.quit()
    plan = plan_maildir_adoption(maildir, server)
    check_plan(plan, server, maildir)


def check_plan(plan: AdoptPlan, server: list[ServerMessage], maildir: Path) -> None:
    by_number = dict(enumerate([*FETCHED, TWICE, *LATER], 1))
    expected_matched, expected_unmatched, expected_ambiguous = [], [], []
    for number, raw in by_number.items():
        facts = header_facts(raw)
        if facts.key is None:
            expected_unmatched.append((number, f"its headers have {facts.problem}"))
        elif raw in LATER:
            expected_unmatched.append((number, "no file has its Message-ID and Date"))
        elif raw == TWICE:
            expected_ambiguous.append((number, tuple(holder(maildir, raw))))
        else:
            (path,) = holder(maildir, raw)
            expected_matched.append((number, path))
    uidls = {m.number: m.uidl for m in server}
    assert [(m.number, m.path) for m in plan.matched] == expected_matched
    assert all(m.uidl == uidls[m.number] for m in plan.matched)
    # The tool stored LF line ends (getmail6 also its own Return-Path): no file has the
    # server's size, so only the body rule can have matched them.
    sizes = {m.number: m.size for m in server}
    assert all(m.path.stat().st_size != sizes[m.number] for m in plan.matched)
    assert [(u.number, u.reason) for u in plan.unmatched] == expected_unmatched
    assert [(a.number, tuple(sorted(a.candidates))) for a in plan.ambiguous] == expected_ambiguous
    assert all("2 server messages" in a.reason for a in plan.ambiguous)
    assert len(expected_ambiguous[0][1]) == 2  # the tool wrote both copies
    # Every file is matched or a candidate; the messages without a key are files too.
    assert plan.files_unmatched == sum(header_facts(raw).key is None for raw in FETCHED)
    assert plan.unreadable == ()


def test_against_the_fake_server_no_retr_is_sent(tmp_path: Path) -> None:
    mailbox = sample_messages(12, seed=5)
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    for number, raw in enumerate(mailbox):
        (tmp_path / "new" / f"{number}.M1P1.host").write_bytes(
            b"Delivered-To: a@example.org\n" + raw.replace(b"\r\n", b"\n")
        )
    with FakePop3Server(mailbox, username="u", password="p") as srv:
        with Pop3Client(srv.host, srv.port, security="plain", timeout=5, account="f") as client:
            client.connect()
            client.login("u", "p", allow_plaintext=True)
            plan = plan_maildir_adoption(tmp_path, server_view(client))
            client.quit()
        verbs = {line.split()[0] for line in srv.commands}
    assert "RETR" not in verbs
    assert "TOP" in verbs
    keyed = [n for n, raw in enumerate(mailbox) if header_facts(raw).key is not None]
    assert [m.path.name for m in plan.matched] == [f"{n}.M1P1.host" for n in keyed]
    assert plan.ambiguous == ()
