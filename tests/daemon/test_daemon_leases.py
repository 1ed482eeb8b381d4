"""Issue 11 part 2's acceptance check: daemons on one PostgreSQL ledger, one SIGSTOPped mid-run.

Two ``popvault daemon`` processes share a PostgreSQL ledger and a Dovecot
account reached through a latency proxy (so a run takes seconds). The first
daemon is stopped with SIGSTOP in the middle of the account's run; the second
takes the account once the stopped one's lease has expired, and archives it
(retention "delete": it deletes every server copy once archived). Resumed
with SIGCONT, the stopped daemon's session sends nothing more (no DELE, no
QUIT: the proxy saw every line it sent) and it records nothing for its run.
Every message ends archived exactly once.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from daemon_helpers import DaemonProcess, wait_for

import postgres
from popvault.testing import sample_messages
from tcp_proxy import TcpProxy
from workspace import Workspace, maildir_form, wire_form

pytestmark = [pytest.mark.dovecot, pytest.mark.postgres]

MESSAGES = 40
# Each reply chunk from Dovecot waits this long in the proxy: with one RETR in
# flight at a time (pipeline_depth = 1) a run of MESSAGES takes a few seconds.
LATENCY_S = 0.08
LEASE = {"lease": "2s", "lease_heartbeat": "0.5s"}


def lease_row(url: str) -> tuple[Any, ...] | None:
    with psycopg.connect(url) as connection:
        return connection.execute(
            "SELECT owner_pid, token, expires_at > now() FROM leases WHERE account = 'box'"
        ).fetchone()


def left_on_server(mailbox: Any) -> int:
    """Messages in the Maildir (-1 while Dovecot removes a file under the listing)."""
    try:
        return len(mailbox.messages())
    except FileNotFoundError:
        return -1


def archived(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM messages WHERE account = 'box' AND state = 'archived'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("fault", ["sigstop", "ledger-cut"])
def test_a_stalled_daemon_is_fenced_out_and_another_finishes_its_account(
    dovecot, dovecot_mailbox, tmp_path, *, monkeypatch, database: str, daemons, fault: str
) -> None:
    """``sigstop``: the first daemon stopped; ``ledger-cut``: its PostgreSQL connections
    black-holed (a TCP proxy in front of PostgreSQL stops forwarding), while its POP3
    session goes on."""
    raws = sample_messages(MESSAGES, seed=5)
    for raw in raws:
        dovecot_mailbox.deliver(raw)
    monkeypatch.setenv("PW_BOX", dovecot_mailbox.password)
    ws = Workspace(tmp_path)
    with ExitStack() as stack:
        proxy = stack.enter_context(TcpProxy(dovecot.host, dovecot.port, latency=LATENCY_S))
        ws.write_config(
            [
                {
                    "name": "box",
                    "host": proxy.host,
                    "port": proxy.port,
                    "security": "plain",
                    "allow_plaintext": True,
                    "username": dovecot_mailbox.username,
                    "password_env": "PW_BOX",
                    "timeout": "20s",
                    "every": "2s",
                    "retention": "delete",
                    "pipeline_depth": 1,
                }
            ],
            ledger_url=database,
            ledger=LEASE,
        )
        # The first daemon reaches PostgreSQL through a proxy of its own (ledger-cut).
        pg_proxy = stack.enter_context(TcpProxy(postgres.HOST, postgres.PORT))
        first_ws = Workspace(tmp_path)
        first_ws.config = tmp_path / "first.toml"
        through = database.replace(
            f"{postgres.HOST}:{postgres.PORT}", f"{pg_proxy.host}:{pg_proxy.port}"
        )
        first_ws.config.write_text(ws.config.read_text().replace(database, through))
        first_ws.config.chmod(0o600)
        first = DaemonProcess(first_ws, log_name="first.log")
        daemons.append(first)
        # Mid-run: it holds the lease and some RETRs went through.
        wait_for(
            lambda: (
                (row := lease_row(database)) is not None
                and row[0] == first.process.pid
                and row[2]
                and proxy.connections > 0
                and sum(line.startswith(b"RETR") for line in proxy.client_lines(0)) >= 5
            ),
            what="the first daemon's run to be under way",
        )
        if fault == "sigstop":
            first.signal(signal.SIGSTOP)
        else:
            pg_proxy.pause()
        stopped_at = time.monotonic()
        stale = lease_row(database)
        assert stale is not None
        assert archived(database) < MESSAGES

        second = DaemonProcess(ws, log_name="second.log")
        daemons.append(second)
        taken = wait_for(
            lambda: (row := lease_row(database)) is not None and row[0] == second.process.pid,
            what="the second daemon to take the account",
        )
        assert taken
        # The stopped daemon's 2 s lease, one heartbeat, the second daemon's start-up
        # (imports, ledger) and its 2 s schedule tick: well inside 15 s.
        assert time.monotonic() - stopped_at < 15
        wait_for(lambda: archived(database) == MESSAGES, timeout=60, what="every message")
        wait_for(lambda: left_on_server(dovecot_mailbox) == 0, timeout=30, what="the deletions")

        if fault == "sigstop":
            first.signal(signal.SIGCONT)
        else:
            pg_proxy.resume()
        wait_for(lambda: first.logged("lease"), timeout=30, what="the resumed daemon to stop")
        time.sleep(1.0)
        # Not one DELE or QUIT in the stalled run's session, before or after the stall.
        sent = proxy.client_lines(0)
        verbs = {line.split(b" ")[0].upper() for line in sent}
        assert not verbs & {b"DELE", b"QUIT", b"RSET"}, sent
        second.signal(signal.SIGTERM)
        first.signal(signal.SIGTERM)
        assert second.wait() == 0
        assert first.wait() == 0

    stored = sorted(path.read_bytes() for path in ws.archived_files("box"))
    assert stored == sorted(maildir_form(wire_form(raw)) for raw in raws)
    assert archived(database) == MESSAGES
    with psycopg.connect(database) as connection:
        outcomes = [row[0] for row in connection.execute("SELECT outcome FROM runs ORDER BY id")]
    # The stale run never recorded an outcome: the next run marked it interrupted.
    assert outcomes[0] == "interrupted"
    assert "ok" in outcomes[1:]
