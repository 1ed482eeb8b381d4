"""Issue 11 part 3's acceptance check: three daemons, one PostgreSQL ledger, many Dovecot accounts.

Three ``popvault daemon`` processes with the same configuration share a
PostgreSQL ledger and nine Dovecot accounts reached through one latency proxy
(so runs take a second or two and overlap); ``retention = "delete"``.

1. Every message is archived once and deleted from the server, the runs
   spread over the three daemons (their run lines), and the proxy never sees
   more than ``max_per_host`` sessions open at once, although the daemons
   could hold six.
2. New mail; one daemon is SIGKILLed and another SIGSTOPped, each in the middle
   of a run. The third takes their accounts within the lease bound and
   archives everything. Resumed, the stopped daemon sends nothing more in its
   stalled session (no DELE, no QUIT) and stops that run; every message ends
   archived exactly once, and nothing is left on the server.
"""

from __future__ import annotations

import base64
import binascii
import signal
import time
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest
from daemon_helpers import DaemonProcess, wait_for

from popvault.testing import sample_messages
from tcp_proxy import TcpProxy
from workspace import Workspace, maildir_form, wire_form

pytestmark = [pytest.mark.dovecot, pytest.mark.postgres]

ACCOUNTS = 9
FIRST, SECOND = 6, 30  # messages per account before and after the faults
MAX_PER_HOST = 3
LATENCY_S = 0.04
# Long enough that a daemon starved of CPU by a busy 2-core machine still renews
# in time (a lost lease ends a session without QUIT and a new claim may start
# one beside it), short enough for the takeovers to be quick.
LEASE = {"lease": "5s", "lease_heartbeat": "1s"}
# A stalled holder's lease (5 s), one heartbeat, a dispatch poll and the time to
# notice: the account is taken again well inside this.
TAKEOVER_BOUND_S = 15.0


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as connection:
        return connection.execute(sql, params).fetchall()


def live_leases(url: str) -> dict[str, tuple[int, int]]:
    """account -> (owner pid, token) of every live lease."""
    rows = query(url, "SELECT account, owner_pid, token FROM leases WHERE expires_at > now()")
    return {row[0]: (row[1], row[2]) for row in rows}


def archived(url: str) -> int:
    rows = query(url, "SELECT count(*) FROM messages WHERE state = 'archived'")
    return int(rows[0][0])


def on_server(mailboxes: list[Any]) -> int:
    try:
        return sum(len(mailbox.messages()) for mailbox in mailboxes)
    except FileNotFoundError:  # Dovecot removing a file under the listing
        return -1


def runs_by(process: DaemonProcess) -> int:
    return sum(1 for record in process.records() if "outcome" in record)


def logged_in_as(lines: list[bytes], username: str) -> bool:
    """Whether a session logged in as ``username``: USER, or SASL PLAIN or SCRAM's first message.

    PLAIN (RFC 4616) carries ``authzid NUL user NUL password``; SCRAM's client-first
    message (RFC 5802 section 7) ``n,,n=user,r=nonce``; either inline after the
    mechanism name or on the next line, in base64.
    """
    name = username.encode()
    for line in lines[:6]:
        words = line.split(b" ")
        if words[:2] == [b"USER", name]:
            return True
        for word in words:
            try:
                decoded = base64.b64decode(word, validate=True)
            except (binascii.Error, ValueError):
                continue
            if f"n={username},".encode() in decoded or b"\0" + name + b"\0" in decoded:
                return True
    return False


def mid_session(proxy: TcpProxy, username: str) -> int | None:
    """The proxy connection of ``username`` in the middle of its RETRs now, if any.

    Its latest session, with some RETRs sent, no QUIT, and more than five
    of the new messages still to fetch (so that it is still going a moment later).
    """
    for index in reversed(range(proxy.connections)):
        lines = proxy.client_lines(index)
        if logged_in_as(lines, username):
            retrs = sum(line.startswith(b"RETR") for line in lines)
            if b"QUIT" not in lines and 0 < retrs < SECOND - 5:
                return index
            return None
    return None


def test_three_daemons_share_kill_and_stall(
    dovecot, tmp_path, *, monkeypatch, database: str, daemons: list[DaemonProcess]
) -> None:
    mailboxes = [dovecot.add_user() for _ in range(ACCOUNTS)]
    delivered: dict[str, list[bytes]] = {}
    for n, mailbox in enumerate(mailboxes):
        raws = sample_messages(FIRST, seed=100 + n)
        delivered[f"box{n}"] = list(raws)
        for raw in raws:
            mailbox.deliver(raw)
    monkeypatch.setenv("PW_BOX", mailboxes[0].password)
    ws = Workspace(tmp_path)
    with ExitStack() as stack:
        proxy = stack.enter_context(TcpProxy(dovecot.host, dovecot.port, latency=LATENCY_S))
        ws.write_config(
            [
                {
                    "name": f"box{n}",
                    "host": proxy.host,
                    "port": proxy.port,
                    "security": "plain",
                    "allow_plaintext": True,
                    "username": mailbox.username,
                    "password_env": "PW_BOX",
                    "timeout": "20s",
                    "every": "3s",
                    "retention": "delete",
                    "pipeline_depth": 1,
                }
                for n, mailbox in enumerate(mailboxes)
            ],
            ledger_url=database,
            ledger=LEASE,
        )
        with ws.config.open("a", encoding="utf-8") as config:
            config.write(f"\n[daemon]\nmax_concurrent = 2\nmax_per_host = {MAX_PER_HOST}\n")
        trio = [DaemonProcess(ws, log_name=f"daemon{n}.log") for n in range(3)]
        daemons.extend(trio)

        # 1. Shared work, within max_per_host, counted at the server's side of the proxy.
        total = ACCOUNTS * FIRST
        wait_for(lambda: archived(database) == total, timeout=90, what="the first messages")
        wait_for(lambda: on_server(mailboxes) == 0, timeout=60, what="the first deletions")
        assert proxy.peak_open <= MAX_PER_HOST, proxy.peak_open
        wait_for(
            lambda: all(runs_by(process) > 0 for process in trio),
            timeout=30,
            what="runs by every daemon",
        )
        spread = [runs_by(process) for process in trio]
        assert all(count > 0 for count in spread), spread

        # 2. New mail; one daemon killed and one stopped in the middle of runs.
        for n, mailbox in enumerate(mailboxes):
            raws = sample_messages(SECOND, seed=200 + n)
            delivered[f"box{n}"] += raws
            for raw in raws:
                mailbox.deliver(raw)
        total = ACCOUNTS * (FIRST + SECOND)
        username = {f"box{n}": mailbox.username for n, mailbox in enumerate(mailboxes)}

        def held_by(process: DaemonProcess) -> dict[str, int]:
            """account -> lease token of the live leases ``process`` holds."""
            leases = live_leases(database).items()
            return {a: t for a, (pid, t) in leases if pid == process.process.pid}

        def one_mid_run() -> tuple[DaemonProcess, dict[str, int], list[int]] | None:
            # Whichever daemon is in the middle of RETRs first: which one the
            # claims give the new work to is chance, and a fixed choice could
            # wait for a daemon that gets none of it.
            for process in trio:
                mine = held_by(process)
                sessions = [mid_session(proxy, username[a]) for a in mine]
                found = [index for index in sessions if index is not None]
                if found:
                    return process, mine, found
            return None

        stalled, stalled_held, stalled_sessions = wait_for(
            one_mid_run, timeout=60, what="a daemon to be mid-run"
        )
        stalled.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        others = [process for process in trio if process is not stalled]

        def one_running() -> tuple[DaemonProcess, dict[str, int]] | None:
            for process in others:
                mine = held_by(process)
                if mine:
                    return process, mine
            return None

        killed, held = wait_for(one_running, what="another daemon to be running accounts")
        survivor = next(process for process in others if process is not killed)
        killed.process.kill()
        killed.process.wait(10)
        killed_at = time.monotonic()
        proxy.reset_peak()

        def taken_over(accounts: dict[str, int]) -> bool:
            rows = query(
                database,
                "SELECT account, token FROM leases WHERE account = ANY(%s)",
                list(accounts),
            )
            return all(token > accounts[account] for account, token in rows)

        wait_for(lambda: taken_over(held), timeout=30, what="the killed daemon's accounts")
        assert time.monotonic() - killed_at < TAKEOVER_BOUND_S
        wait_for(lambda: taken_over(stalled_held), timeout=30, what="the stalled one's accounts")
        assert time.monotonic() - stopped_at < TAKEOVER_BOUND_S
        wait_for(lambda: archived(database) == total, timeout=120, what="every message")
        wait_for(lambda: on_server(mailboxes) == 0, timeout=60, what="every deletion")
        # The stalled daemon's sessions stay open at the server until it wakes (or
        # the server's idle timeout): they come on top of max_per_host, nothing else.
        assert proxy.peak_open <= MAX_PER_HOST + len(stalled_held), proxy.peak_open

        stalled.signal(signal.SIGCONT)
        wait_for(lambda: stalled.logged("lease"), timeout=30, what="the resumed daemon to stop")
        time.sleep(1.0)
        for index in stalled_sessions:
            verbs = {line.split(b" ")[0].upper() for line in proxy.client_lines(index)}
            after = proxy.commands_after(index, stopped_at)
            assert b"QUIT" not in verbs, proxy.client_lines(index)
            assert not {line.split(b" ")[0].upper() for line in after} & {b"DELE", b"RSET"}
        survivor.signal(signal.SIGTERM)
        stalled.signal(signal.SIGTERM)
        assert survivor.wait() == 0
        assert stalled.wait() == 0

    assert archived(database) == total
    for name, raws in delivered.items():
        stored = sorted(path.read_bytes() for path in ws.archived_files(name))
        assert stored == sorted(maildir_form(wire_form(raw)) for raw in raws), name
