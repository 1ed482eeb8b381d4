"""Several ArchiveDaemons on one PostgreSQL ledger share the schedule (issue 11 part 3).

In this process, against fake servers that answer slowly enough for runs to
overlap: the accounts spread over the daemons (each daemon's run counter in
its metrics), each account runs about once per tick however many daemons there
are (not once per daemon), one account never has two runs at once, and
``max_per_host`` bounds the runs to one server across all daemons (every fake
server listens on 127.0.0.1: one host). A daemon that stops leaves its
accounts to the others, without any reconfiguration.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

import psycopg
import pytest
from daemon_helpers import PASSWORD, account, wait_for

from popvault import config as config_module
from popvault.config import Config
from popvault.daemon.core import ArchiveDaemon
from popvault.daemon.metrics import Metrics
from popvault.ledger import Ledger
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace

pytestmark = pytest.mark.postgres

ACCOUNTS = 6
DAEMONS = 3
MAX_PER_HOST = 2


@pytest.fixture
def servers() -> Iterator[list[FakePop3Server]]:
    started = [
        FakePop3Server(sample_messages(3, seed=n), username="bob", password=PASSWORD).start()
        for n in range(ACCOUNTS)
    ]
    for srv in started:
        srv.delay = 0.04  # each reply: a run takes a few tenths of a second
    yield started
    for srv in started:
        srv.stop()


class Daemon:
    """One ArchiveDaemon with a Ledger object of its own (another lease owner)."""

    def __init__(self, config: Config) -> None:
        self.ledger = Ledger.open(config.ledger_url)
        self.metrics = Metrics()
        self.daemon = ArchiveDaemon(config, self.ledger, metrics=self.metrics)
        self.stopped = False

    def runs(self) -> float:
        value = self.metrics.registry.get_sample_value("popvault_daemon_runs_total")
        return value or 0.0

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            try:
                assert self.daemon.stop(10.0), "runs did not stop in time"
            finally:
                self.ledger.close()


def spans(url: str) -> list[tuple[str, datetime, datetime]]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT account, started_at, ended_at FROM runs WHERE ended_at IS NOT NULL"
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals that overlap at one instant."""
    events = sorted(
        itertools.chain(
            ((start, 1) for start, _ in intervals), ((end, -1) for _, end in intervals)
        ),
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_daemons_share_the_accounts_once_per_tick_within_max_per_host(
    tmp_path, database: str, servers: list[FakePop3Server]
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    ws.write_config(
        [account(f"acct{n}", srv, every="2s") for n, srv in enumerate(servers)],
        ledger_url=database,
    )
    with ws.config.open("a", encoding="utf-8") as config:
        config.write(f"\n[daemon]\nmax_concurrent = 2\nmax_per_host = {MAX_PER_HOST}\n")
    config = config_module.load(ws.config)
    assert config.daemon.max_per_host == MAX_PER_HOST
    daemons = [Daemon(config) for _ in range(DAEMONS)]
    try:
        began = time.monotonic()
        for each in daemons:
            each.daemon.start()
        wait_for(
            lambda: all(each.runs() >= 2 for each in daemons),
            timeout=40,
            what="every daemon to run accounts",
        )
        time.sleep(4.0)
        for each in daemons:
            each.stop()
        elapsed = time.monotonic() - began
    finally:
        for each in daemons:
            each.stop()

    done = spans(database)
    per_daemon = [each.runs() for each in daemons]
    assert sum(per_daemon) == len(done)
    assert all(count > 0 for count in per_daemon), per_daemon
    by_account: dict[str, list[tuple[datetime, datetime]]] = {}
    for name, start, end in done:
        by_account.setdefault(name, []).append((start, end))
    assert sorted(by_account) == [f"acct{n}" for n in range(ACCOUNTS)]
    for name, intervals in by_account.items():
        assert most_at_once(intervals) == 1, f"{name} had two runs at once: {intervals}"
        # Once per 2 s tick (plus the start-up run), not once per daemon and tick.
        assert len(intervals) <= elapsed / 2 + 2, (name, len(intervals), elapsed)
    assert most_at_once([(start, end) for _, start, end in done]) <= MAX_PER_HOST
    # Every message archived once: one row each, one file each.
    with psycopg.connect(database) as connection:
        archived = dict(
            connection.execute(
                "SELECT account, count(*) FROM messages WHERE state = 'archived' GROUP BY account"
            ).fetchall()
        )
    assert archived == {f"acct{n}": 3 for n in range(ACCOUNTS)}
    for n in range(ACCOUNTS):
        assert len(ws.archived_files(f"acct{n}")) == 3


def test_a_daemon_that_stops_leaves_its_accounts_to_the_others(
    tmp_path, database: str, servers: list[FakePop3Server]
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    ws.write_config(
        [account(f"acct{n}", srv, every="1s") for n, srv in enumerate(servers)],
        ledger_url=database,
    )
    config = config_module.load(ws.config)
    first, second = Daemon(config), Daemon(replace(config))
    try:
        first.daemon.start()
        wait_for(lambda: first.runs() >= ACCOUNTS, timeout=30, what="the first daemon's runs")
        second.daemon.start()
        first.stop()
        before = len(spans(database))
        wait_for(
            lambda: second.runs() >= ACCOUNTS,
            timeout=30,
            what="the second daemon to run every account",
        )
        assert len(spans(database)) > before
    finally:
        first.stop()
        second.stop()
    ran = {name for name, _, _ in spans(database)}
    assert ran == {f"acct{n}" for n in range(ACCOUNTS)}
