"""The ledger at scale (issue 11): 10,000 accounts and 10 million messages, SQLite and PostgreSQL.

Creates a fresh ledger with ``Ledger.open`` (which builds the schema), fills it with bulk SQL
straight into its tables (PostgreSQL: ``INSERT ... SELECT`` over ``generate_series``; SQLite: the
same over a numbers table, in one transaction), then times the per-run and per-claim queries
through the public Ledger API, each several times, and prints a table side by side: median and
max in milliseconds, and the statements each call sent (a ``before_cursor_execute`` spy on the
ledger's engine, this thread only: the lease heartbeat's renewals are not counted). Then the plans
(PostgreSQL ``EXPLAIN (ANALYZE, BUFFERS)``, SQLite ``EXPLAIN QUERY PLAN``) of the statements that
claim_due, the mailbox diff, archived_totals and status sent, captured with their parameters by
the same spy and run again in a transaction that is rolled back.

The data: messages spread over the accounts with a skew (one account has ``--big`` = 100,000,
the others 1/(rank+10)^0.8, so most mailboxes are small and a few are large), written in
``--slices`` rounds of time so that each account's rows are spread through the table as a
years-long history is (a run records its new messages together), all archived and still on the
server (``retention = "keep"``: the worst case for the diff); every account has a schedules row
(a sixteenth due, at least what the claims take), an expired lease, and ``--runs-per-account``
past runs (``keep_runs`` is 90 days by default: every 15 minutes that is 8,640 an account).
The fill drops the tables' secondary indexes and builds them again afterwards from their own
definitions (as pg_restore does), then runs VACUUM ANALYZE (PostgreSQL; autovacuum may be off)
or ANALYZE.

    .venv/bin/python benchmarks/ledger_scale.py                        # the issue's sizes
    .venv/bin/python benchmarks/ledger_scale.py --accounts 1000 --messages 1000000 --repeat 3

Not part of the package or of the test suite. The PostgreSQL database (created on
``--postgres-url``, named popvault_scale_<hex>) is dropped and the SQLite file deleted at the end,
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import platform
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, event

from popvault.ledger import (
    DueRun,
    Lease,
    LeaseOwner,
    LeaseTerms,
    Ledger,
    MessageKey,
    NewMessage,
    ScheduleEntry,
)

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
BIG = 100_000  # the one large mailbox: the diff of a 100k-message mailbox (issue 11)
SKEW = 0.8  # the other mailboxes: weight 1/(rank + 10)^SKEW
SERVERS = 50  # POP3 servers the accounts are spread over (max_per_host counts per server)
MAX_PER_HOST = 4
BATCH = 1000  # messages recorded in one group commit
LEASES = 100  # leases renewed in one call
HISTORY_DAYS = 3 * 365  # the messages arrived over this long
RUN_EVERY = timedelta(minutes=15)  # the schedule the runs and schedules rows follow
UIDL_VALIDITY = 0x5F000000  # Dovecot's UIDL is %08Xu%08Xv: the UID, then UIDVALIDITY
NEW_ON_SERVER = 10  # messages the server lists beyond the archived ones, in the diff
MB = 1_000_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the data ----------------------------------------------------------------------------------


def account_name(index: int) -> str:
    return f"acct{index:05d}"


def server_of(index: int) -> str:
    return f"pop{index % SERVERS}.example.net"


def uidl(index: int, number: int) -> str:
    """The UIDL the fill gives message ``number`` (1-based) of account ``index``."""
    return f"{number:08X}{UIDL_VALIDITY + index:08X}"


def mailbox_sizes(accounts: int, messages: int, big: int) -> list[int]:
    """Messages per account: account 0 has ``big``, the rest share what is left with a skew."""
    if accounts < 2 or messages < accounts:
        raise SystemExit("need at least 2 accounts and a message per account")
    big = min(big, messages - (accounts - 1))
    rest = messages - big
    weights = [(rank + 10) ** -SKEW for rank in range(1, accounts)]
    scale = (rest - (accounts - 1)) / sum(weights)  # every account gets at least one
    sizes = [1 + int(w * scale) for w in weights]
    for i in range(rest - sum(sizes)):  # what the rounding left, to the largest ones
        sizes[i % len(sizes)] += 1
    return [big, *sizes]


@dataclass
class Plan:
    """What to fill: the sizes, and the times every row is placed around."""

    sizes: list[int]
    runs_per_account: int
    slices: int
    due: int  # accounts due when the timing starts
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    @property
    def accounts(self) -> int:
        return len(self.sizes)

    @property
    def messages(self) -> int:
        return sum(self.sizes)

    @property
    def history_start(self) -> int:
        """Unix time of the first message."""
        return int(self.now.timestamp()) - HISTORY_DAYS * 86400

    @property
    def median_account(self) -> int:
        """An account of median size (its index)."""
        order = sorted(range(self.accounts), key=self.sizes.__getitem__)
        return order[len(order) // 2]


def schedule_rows(plan: Plan) -> list[tuple[Any, ...]]:
    """(account, next_run_at, ...) for every account: spread over one tick, ``plan.due`` due."""
    tick = RUN_EVERY.total_seconds()
    rows = []
    for i in range(plan.accounts):
        place = (i * 7919) % plan.accounts  # a shuffle (7919 is prime)
        offset = timedelta(seconds=(place - plan.due) * tick / plan.accounts)
        rows.append((account_name(i), plan.now + offset, 0, None, 1, "bench"))
    return rows


def lease_rows(plan: Plan) -> list[tuple[Any, ...]]:
    """An expired lease for every account, as a daemon that ran them all once leaves them."""
    claimed = plan.now - timedelta(hours=1)
    return [
        (
            account_name(i),
            1 + i % 1000,
            "bench-old",
            1,
            "0" * 32,
            claimed,
            claimed + timedelta(seconds=30),
            server_of(i),
        )
        for i in range(plan.accounts)
    ]


def failure_rows(plan: Plan) -> list[tuple[Any, ...]]:
    """A failing message for every hundredth account."""
    at = plan.now - timedelta(days=1)
    return [
        (account_name(i), f"POISON{i:05d}", 3, at, at, "-ERR message unavailable", 1)
        for i in range(0, plan.accounts, 100)
    ]


# -- filling PostgreSQL ------------------------------------------------------------------------

_PG_MESSAGES = """
INSERT INTO messages (account, uidl, state, size, sha256, path, server_size, first_seen_at,
                      archived_at, occurrence, received_size)
SELECT a.name,
       lpad(upper(to_hex(g.n)), 8, '0') || upper(to_hex(a.validity)),
       'archived',
       s.size,
       md5(a.name || ':' || g.n) || md5(g.n || ':' || a.name),
       a.name || '/cur/' || (1700000000 + g.n) || '.M' || g.n || 'P' || a.idx
           || '.bench,S=' || s.size || ':2,S',
       s.size + g.n %% 50,
       t.at,
       t.at + interval '1 second',
       1,
       s.size + g.n %% 50
FROM fill_accounts a,
     generate_series(a.cnt::bigint * %(slice)s / %(slices)s + 1,
                     a.cnt::bigint * (%(slice)s + 1) / %(slices)s) AS g(n),
     LATERAL (SELECT 1000 + (g.n * 7919 + a.idx * 104729) %% 49000 AS size) AS s,
     LATERAL (SELECT to_timestamp(%(start)s + %(span)s * g.n / a.cnt) AS at) AS t
"""

_PG_RUNS = """
INSERT INTO runs (account, started_at, ended_at, outcome, messages, bytes, error, on_server)
SELECT a.name, r.at, r.at + interval '2 seconds',
       CASE WHEN k.n %% 50 = 0 THEN 'failed' ELSE 'ok' END,
       k.n %% 3, (k.n %% 3) * 20000,
       CASE WHEN k.n %% 50 = 0 THEN 'connection timed out' END,
       a.cnt
FROM generate_series(1, %(runs)s) AS k(n) CROSS JOIN fill_accounts a,
     LATERAL (SELECT to_timestamp(%(now)s - (%(runs)s - k.n + 1) * %(every)s + a.idx %% 600) AS at)
         AS r
ORDER BY k.n, a.idx
"""


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# The rows the ledger's archiving transactions keep (models.AccountTotals), counted once
# for the rows the fill wrote around the Ledger (every one archived).
_ACCOUNT_TOTALS = (
    "INSERT INTO account_totals (account, archived_messages, archived_octets)"
    " SELECT account, count(*), sum(size) FROM messages GROUP BY account"
)


def pg_fill(url: str, plan: Plan) -> dict[str, float]:
    """Fill the ledger at ``url``; returns seconds per phase."""
    phases: dict[str, float] = {}
    with psycopg.connect(psycopg_url(url)) as db:
        db.execute("SET synchronous_commit = off")
        db.execute("SET maintenance_work_mem = '1GB'")
        db.execute("SET work_mem = '256MB'")
        db.execute("SET max_parallel_maintenance_workers = 2")
        with _phase(phases, "secondary indexes dropped"):
            rebuild = pg_drop_secondary(db, "messages") + pg_drop_secondary(db, "runs")
        with _phase(phases, "accounts table"):
            pg_accounts_table(db, plan)
        with _phase(phases, "messages"):
            pg_messages(db, plan)
        with _phase(phases, "runs"):
            if plan.runs_per_account:
                db.execute(
                    _PG_RUNS,
                    {
                        "runs": plan.runs_per_account,
                        "now": int(plan.now.timestamp()),
                        "every": int(RUN_EVERY.total_seconds()),
                    },
                )
        with _phase(phases, "indexes built"):
            for statement in rebuild:
                db.execute(statement)  # type: ignore[call-overload]  # the catalog's own text
        with _phase(phases, "schedules, leases, failures"):
            pg_small_tables(db, plan)
        with _phase(phases, "account totals"):
            db.execute(_ACCOUNT_TOTALS)
        db.commit()
    with _phase(phases, "VACUUM ANALYZE"), psycopg.connect(psycopg_url(url), autocommit=True) as db:
        db.execute("VACUUM (ANALYZE) messages, runs, schedules, leases, failures, account_totals")
    return phases


def pg_drop_secondary(db: psycopg.Connection, table: str) -> list[str]:
    """Drop ``table``'s unique constraints and plain indexes; returns the statements that
    build them again (their definitions as the catalog has them, names and all)."""
    rebuild: list[str] = []
    constraints = db.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'u'",
        (table,),
    ).fetchall()
    for name, definition in constraints:
        rebuild.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ")
            .format(sql.Identifier(table), sql.Identifier(name))
            .as_string(db)
            + definition
        )
        db.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
    indexes = db.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        (table,),
    ).fetchall()
    for name, definition in indexes:
        rebuild.append(definition)
        db.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return rebuild


def pg_accounts_table(db: psycopg.Connection, plan: Plan) -> None:
    db.execute(
        "CREATE TEMP TABLE fill_accounts (idx int PRIMARY KEY, name text, cnt int, validity bigint)"
    )
    with db.cursor().copy("COPY fill_accounts FROM STDIN") as copy:
        for i, count in enumerate(plan.sizes):
            copy.write_row((i, account_name(i), count, UIDL_VALIDITY + i))
    db.execute("ANALYZE fill_accounts")


def pg_messages(db: psycopg.Connection, plan: Plan) -> None:
    span = HISTORY_DAYS * 86400
    done = 0
    started = time.monotonic()
    for number in range(plan.slices):
        params = {
            "slice": number,
            "slices": plan.slices,
            "start": plan.history_start,
            "span": span,
        }
        done += db.execute(_PG_MESSAGES, params).rowcount
        _progress("messages", done, plan.messages, started)


def pg_small_tables(db: psycopg.Connection, plan: Plan) -> None:
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO schedules (account, next_run_at, consecutive_failures, backoff_reason,"
            " daemon_pid, daemon_host, updated_at) VALUES (%s, %s, %s, %s, %s, %s, now())",
            schedule_rows(plan),
        )
        cursor.executemany(
            "INSERT INTO leases (account, token, owner_host, owner_pid, daemon_id, claimed_at,"
            " expires_at, server_host) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            lease_rows(plan),
        )
        cursor.executemany(
            "INSERT INTO failures (account, uidl, attempts, first_failed_at, last_failed_at,"
            " last_error, occurrence) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            failure_rows(plan),
        )


def pg_size(url: str) -> int:
    with psycopg.connect(psycopg_url(url)) as db:
        row = db.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


# -- filling SQLite ----------------------------------------------------------------------------

# UTCDateTime stores naive UTC in SQLAlchemy's SQLite format, and SQLite compares the text:
# the fill must write exactly that format ("YYYY-MM-DD HH:MM:SS.ffffff").
_SQLITE_MESSAGES = """
INSERT INTO messages (account, uidl, state, size, sha256, path, server_size, first_seen_at,
                      archived_at, occurrence, received_size)
SELECT a.name,
       printf('%08X%08X', q.n, a.validity),
       'archived',
       1000 + (q.n * 7919 + a.idx * 104729) % 49000,
       lower(hex(randomblob(32))),
       a.name || '/cur/' || (1700000000 + q.n) || '.M' || q.n || 'P' || a.idx
           || '.bench,S=' || (1000 + (q.n * 7919 + a.idx * 104729) % 49000) || ':2,S',
       1000 + (q.n * 7919 + a.idx * 104729) % 49000 + q.n % 50,
       strftime('%Y-%m-%d %H:%M:%S', :start + :span * q.n / a.cnt, 'unixepoch') || '.000000',
       strftime('%Y-%m-%d %H:%M:%S', :start + :span * q.n / a.cnt + 1, 'unixepoch') || '.000000',
       1,
       1000 + (q.n * 7919 + a.idx * 104729) % 49000 + q.n % 50
FROM fill_accounts a CROSS JOIN fill_numbers q
WHERE q.n > a.cnt * :slice / :slices AND q.n <= a.cnt * (:slice + 1) / :slices
"""

_SQLITE_RUNS = """
INSERT INTO runs (account, started_at, ended_at, outcome, messages, bytes, error, on_server)
SELECT a.name,
       strftime('%Y-%m-%d %H:%M:%S', :now - (:runs - k.n + 1) * :every + a.idx % 600,
                'unixepoch') || '.000000',
       strftime('%Y-%m-%d %H:%M:%S', :now - (:runs - k.n + 1) * :every + a.idx % 600 + 2,
                'unixepoch') || '.000000',
       CASE WHEN k.n % 50 = 0 THEN 'failed' ELSE 'ok' END,
       k.n % 3, (k.n % 3) * 20000,
       CASE WHEN k.n % 50 = 0 THEN 'connection timed out' END,
       a.cnt
FROM fill_numbers k CROSS JOIN fill_accounts a
WHERE k.n <= :runs
"""


def sqlite_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_fill(path: Path, plan: Plan) -> dict[str, float]:
    """Fill the ledger file at ``path``; returns seconds per phase.

    One transaction without a journal (a fresh file: a crash only loses the benchmark), the
    page cache big enough to hold the indexes, then the ledger's WAL mode back on.
    """
    phases: dict[str, float] = {}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA cache_size = -4000000")  # KiB: 4 GB
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("BEGIN")
        with _phase(phases, "secondary indexes dropped"):
            rebuild = sqlite_drop_secondary(db, "messages") + sqlite_drop_secondary(db, "runs")
        with _phase(phases, "accounts table"):
            sqlite_accounts_table(db, plan)
        with _phase(phases, "messages"):
            sqlite_messages(db, plan)
        with _phase(phases, "runs"):
            params = {
                "runs": plan.runs_per_account,
                "now": int(plan.now.timestamp()),
                "every": int(RUN_EVERY.total_seconds()),
            }
            db.execute(_SQLITE_RUNS, params)
        with _phase(phases, "indexes built"):
            for statement in rebuild:
                db.execute(statement)
        with _phase(phases, "schedules, leases, failures"):
            sqlite_small_tables(db, plan)
        with _phase(phases, "account totals"):
            db.execute(_ACCOUNT_TOTALS)
        db.execute("DROP TABLE fill_accounts")
        db.execute("DROP TABLE fill_numbers")
        db.execute("COMMIT")
        with _phase(phases, "ANALYZE"):
            db.execute("ANALYZE")
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise RuntimeError(f"the ledger's WAL mode did not come back: {mode}")
    finally:
        db.close()
    return phases


def sqlite_drop_secondary(db: sqlite3.Connection, table: str) -> list[str]:
    """Drop ``table``'s own indexes (a UNIQUE constraint's autoindex stays: SQLite cannot
    drop it); returns their CREATE INDEX statements."""
    rows = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
        " AND sql IS NOT NULL",
        (table,),
    ).fetchall()
    for name, _ in rows:
        db.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in rows]


def sqlite_accounts_table(db: sqlite3.Connection, plan: Plan) -> None:
    db.execute(
        "CREATE TEMP TABLE fill_accounts (idx INTEGER PRIMARY KEY, name TEXT, cnt INTEGER,"
        " validity INTEGER)"
    )
    db.executemany(
        "INSERT INTO fill_accounts VALUES (?, ?, ?, ?)",
        [(i, account_name(i), n, UIDL_VALIDITY + i) for i, n in enumerate(plan.sizes)],
    )
    db.execute("CREATE TEMP TABLE fill_numbers (n INTEGER PRIMARY KEY)")
    top = max(*plan.sizes, plan.runs_per_account)
    db.execute(
        "INSERT INTO fill_numbers WITH RECURSIVE c(n) AS (VALUES (1) UNION ALL"
        " SELECT n + 1 FROM c WHERE n < ?) SELECT n FROM c",
        (top,),
    )


def sqlite_messages(db: sqlite3.Connection, plan: Plan) -> None:
    done = 0
    started = time.monotonic()
    for number in range(plan.slices):
        params = {
            "slice": number,
            "slices": plan.slices,
            "start": plan.history_start,
            "span": HISTORY_DAYS * 86400,
        }
        done += db.execute(_SQLITE_MESSAGES, params).rowcount
        _progress("messages", done, plan.messages, started)


def sqlite_small_tables(db: sqlite3.Connection, plan: Plan) -> None:
    updated = sqlite_time(plan.now)
    db.executemany(
        "INSERT INTO schedules (account, next_run_at, consecutive_failures, backoff_reason,"
        " daemon_pid, daemon_host, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(a, sqlite_time(t), f, r, p, h, updated) for a, t, f, r, p, h in schedule_rows(plan)],
    )
    db.executemany(
        "INSERT INTO leases (account, token, owner_host, owner_pid, daemon_id, claimed_at,"
        " expires_at, server_host) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (a, t, h, p, d, sqlite_time(c), sqlite_time(e), s)
            for a, t, h, p, d, c, e, s in lease_rows(plan)
        ],
    )
    db.executemany(
        "INSERT INTO failures (account, uidl, attempts, first_failed_at, last_failed_at,"
        " last_error, occurrence) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (a, u, n, sqlite_time(f), sqlite_time(la), e, o)
            for a, u, n, f, la, e, o in failure_rows(plan)
        ],
    )


def sqlite_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


# -- timing ------------------------------------------------------------------------------------


class Spy:
    """The statements this thread sends through ``engine``, with their parameters."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.thread = threading.get_ident()
        self.seen: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(
        self, _conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool
    ) -> None:
        if threading.get_ident() == self.thread:
            self.seen.append((statement, params))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


@dataclass
class Timing:
    label: str
    seconds: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def max_ms(self) -> float:
        return max(self.seconds) * 1000

    @property
    def statements(self) -> int:
        return min(self.queries)


class Timer:
    """Times calls of one ledger and keeps the results by label, in order."""

    def __init__(self, ledger: Ledger, repeat: int) -> None:
        self.ledger = ledger
        self.repeat = repeat
        self.spy = Spy(ledger._engine)
        self.results: dict[str, Timing] = {}

    def time(self, label: str, call: Callable[[], object]) -> object:
        """Run ``call`` once, timed and counted under ``label``; returns its result."""
        self.spy.seen.clear()
        started = time.perf_counter()
        result = call()
        elapsed = time.perf_counter() - started
        timing = self.results.setdefault(label, Timing(label))
        timing.seconds.append(elapsed)
        timing.queries.append(len(self.spy.seen))
        return result

    def repeated(self, label: str, function: Callable[..., object], *args: Any, **kw: Any) -> None:
        """``self.repeat`` timed calls of ``function(*args, **kw)``."""
        for _ in range(self.repeat):
            self.time(label, functools.partial(function, *args, **kw))

    def capture(self, call: Callable[[], object]) -> list[tuple[str, Any]]:
        """The statements ``call`` sends (untimed)."""
        self.spy.seen.clear()
        call()
        return list(self.spy.seen)


@dataclass
class Scenario:
    """The names the timings use."""

    plan: Plan
    server: list[str]  # the big mailbox as the server lists it: archived + new
    servers: dict[str, str | None]  # every account's POP3 server, for claim_due

    @property
    def big(self) -> str:
        return account_name(0)

    @property
    def median(self) -> str:
        return account_name(self.plan.median_account)


def scenario(plan: Plan) -> Scenario:
    archived = [uidl(0, n) for n in range(1, plan.sizes[0] + 1)]
    new = [f"NEWONSERVER{n:05d}" for n in range(NEW_ON_SERVER)]
    servers: dict[str, str | None] = {account_name(i): server_of(i) for i in range(plan.accounts)}
    return Scenario(plan, archived + new, servers)


def time_all(ledger: Ledger, scene: Scenario, repeat: int) -> tuple[dict[str, Timing], Plans]:
    timer = Timer(ledger, repeat)
    try:
        ledger.known_rows(scene.big, scene.server)  # the caches warmed once, untimed
        time_diff(timer, scene)
        time_batches(timer, scene)
        time_dispatch(timer, scene)
        time_leases(timer, scene)
        time_daemon_rows(timer, scene)
        time_reports(timer, scene)
        plans = explain_all(timer, scene)
    finally:
        timer.spy.close()
    return timer.results, plans


def time_diff(timer: Timer, scene: Scenario) -> None:
    """What a run of the big account (and of a median one) reads before it fetches."""
    ledger, big, server = timer.ledger, scene.big, scene.server
    size = scene.plan.sizes[0]
    at = datetime.now(UTC)
    timer.repeated(f"diff: known_rows, {size:,}-message mailbox", ledger.known_rows, big, server)
    timer.repeated(f"diff: unarchived, {size:,}-message mailbox", ledger.unarchived, big, server)
    timer.repeated(
        f"reconcile, {size:,} messages (none gone)", ledger.reconcile, big, server, now=at
    )
    timer.repeated(f"retained, {size:,} messages", ledger.retained, big, server)
    median = scene.plan.median_account
    listing = [uidl(median, n) for n in range(1, scene.plan.sizes[median] + 1)]
    label = f"diff: known_rows, median mailbox ({len(listing):,})"
    timer.repeated(label, ledger.known_rows, scene.median, listing)
    timer.repeated("pending, big account", ledger.pending, big)
    timer.repeated("failures, big account", ledger.failures, big)


def new_batch(account: str, number: int) -> list[NewMessage]:
    seen = datetime.now(UTC)
    return [
        NewMessage(
            MessageKey(f"BATCH{number:03d}{n:06d}"),
            path=f"{account}/cur/batch-{number}-{n}:2,S",
            size=5000 + n,
            sha256=hashlib.sha256(b"%d/%d" % (number, n)).hexdigest(),
            server_size=5000 + n,
            first_seen_at=seen,
            received_size=5000 + n,
        )
        for n in range(BATCH)
    ]


def time_batches(timer: Timer, scene: Scenario) -> None:
    """A group commit of 1,000 new messages: pending rows, then archived (plain and fenced)."""
    ledger, big = timer.ledger, scene.big
    lease = ledger.claim_lease(big, LeaseOwner.new(), timedelta(minutes=30))
    if lease is None:
        raise RuntimeError(f"could not lease {big}")
    writers = [("", ledger), (" (fenced by a lease)", ledger.fenced(lease))]
    serial = 0
    for suffix, writer in writers:
        for _ in range(timer.repeat):
            batch = new_batch(big, serial)
            serial += 1
            keys = [message.key for message in batch]
            timer.time(
                f"record_pending_many, {BATCH:,} new{suffix}",
                functools.partial(writer.record_pending_many, big, batch),
            )
            timer.time(
                f"mark_archived_many, {BATCH:,}{suffix}",
                functools.partial(
                    writer.mark_archived_many, big, keys, archived_at=datetime.now(UTC)
                ),
            )
    ledger.release_lease(lease)


def planned_entry(run: DueRun) -> ScheduleEntry:
    now = datetime.now(UTC)
    return ScheduleEntry(run.account, now + RUN_EVERY, 0, None, os.getpid(), platform.node(), now)


def time_dispatch(timer: Timer, scene: Scenario) -> None:
    """A daemon's claims: claim_due of 1 and of 10 among every account, then finish_claim."""
    ledger = timer.ledger
    terms = LeaseTerms()
    accounts = len(scene.servers)
    for limit in (1, 10):
        label = f"claim_due: {limit} of {accounts:,} accounts, max_per_host {MAX_PER_HOST}"
        for _ in range(timer.repeat):
            call = functools.partial(
                ledger.claim_due, scene.servers, limit=limit, terms=terms, max_per_host=MAX_PER_HOST
            )
            runs: Any = timer.time(label, call)
            if len(runs) != limit:
                raise RuntimeError(f"claim_due gave {len(runs)} accounts, not {limit}")
            for run in runs:
                timer.time(
                    "finish_claim (next run planned, lease given up)",
                    functools.partial(ledger.finish_claim, run, planned_entry(run)),
                )


def time_leases(timer: Timer, scene: Scenario) -> None:
    """``popvault run``'s claim of one account, and the heartbeat renewing 100 leases at once."""
    ledger = timer.ledger
    owner = LeaseOwner.new()
    ttl = timedelta(seconds=30)
    leases: list[Lease] = []
    for i in range(1, LEASES + 1):
        call = functools.partial(
            ledger.claim_lease, account_name(i), owner, ttl, server_host=server_of(i)
        )
        lease: Any = timer.time("claim_lease (one account)", call)
        if lease is None:
            raise RuntimeError(f"could not lease {account_name(i)}")
        leases.append(lease)
    for _ in range(timer.repeat):
        renewed: Any = timer.time(
            f"renew_leases, {LEASES} leases", functools.partial(ledger.renew_leases, leases, ttl)
        )
        if len(renewed) != LEASES:
            raise RuntimeError(f"renew_leases renewed {len(renewed)} of {LEASES}")
    for lease in leases:
        timer.time("release_lease", functools.partial(ledger.release_lease, lease))


def time_daemon_rows(timer: Timer, scene: Scenario) -> None:
    """A run's start and end rows, and what a daemon's minute heartbeat does (PostgreSQL)."""
    ledger = timer.ledger
    account = scene.median
    for _ in range(timer.repeat):
        run_id: Any = timer.time(
            "start_run", functools.partial(ledger.start_run, account, started_at=datetime.now(UTC))
        )
        finish = functools.partial(
            ledger.finish_run,
            run_id,
            ended_at=datetime.now(UTC),
            outcome="ok",
            messages=0,
            bytes=0,
            error=None,
            on_server=10,
        )
        timer.time("finish_run", finish)
    names = list(scene.servers)
    now = datetime.now(UTC)
    # The daemon's minute heartbeat on PostgreSQL: refresh (and adopt) its rows, read them all.
    label = f"heartbeat: touch_schedules, adopt {len(names):,}"
    timer.repeated(
        label,
        ledger.touch_schedules,
        pid=1,
        host="bench",
        at=now,
        adopt=names,
        stale_before=now - timedelta(minutes=3),
    )
    timer.repeated(f"heartbeat: schedules(), {len(names):,} rows", ledger.schedules)
    # A daemon's start alone on the ledger: every account's row written (here: as they are).
    entries = ledger.schedules()
    label = f"daemon start: ensure_schedules, {len(entries):,} rows replaced"
    timer.repeated(label, ledger.ensure_schedules, entries, replace=True)


def time_reports(timer: Timer, scene: Scenario) -> None:
    ledger = timer.ledger
    timer.repeated(
        f"archived_totals, {scene.plan.sizes[0]:,}-message account",
        ledger.archived_totals,
        scene.big,
    )
    label = f"daemon start: archived_totals_by_account, {scene.plan.accounts:,}"
    timer.repeated(label, ledger.archived_totals_by_account)
    timer.repeated(f"status(), {scene.plan.accounts:,} accounts", ledger.status)


# -- plans -------------------------------------------------------------------------------------


@dataclass
class Plans:
    """Query plans by label: (the statement's first line, the plan's lines)."""

    entries: list[tuple[str, str, list[str]]] = field(default_factory=list)


def explain_all(timer: Timer, scene: Scenario) -> Plans:
    """The plans of what claim_due, the diff, a lease renewal and status send."""
    ledger = timer.ledger
    plans = Plans()
    claimed: list[DueRun] = []

    def claim() -> None:
        terms = LeaseTerms()
        runs = ledger.claim_due(scene.servers, limit=10, terms=terms, max_per_host=MAX_PER_HOST)
        claimed.extend(runs)

    captured = timer.capture(claim)
    for run in claimed:
        ledger.finish_claim(run, planned_entry(run))
    wanted = [
        ("claim_due: the due accounts", captured, "FROM schedules"),
        ("claim_due: live leases per server", captured, "GROUP BY leases.server_host"),
        ("claim_due: one lease claimed", captured, "INSERT INTO leases"),
    ]
    size = scene.plan.sizes[0]
    for label, call, marker in (
        (
            f"known_rows, {size:,} messages",
            functools.partial(ledger.known_rows, scene.big, scene.server),
            "FROM messages",
        ),
        (
            f"unarchived, {size:,} messages",
            functools.partial(ledger.unarchived, scene.big, scene.server),
            "FROM messages",
        ),
        ("archived_totals", functools.partial(ledger.archived_totals, scene.big), "FROM messages"),
        ("status: totals", ledger.status, "FROM messages"),
        ("status: latest runs", ledger.status, "FROM runs"),
    ):
        wanted.append((label, timer.capture(call), marker))
    for label, statements, marker in wanted:
        found = [(text, params) for text, params in statements if marker in text]
        if not found:
            plans.entries.append((label, "(no statement sent)", []))
            continue
        text, params = found[0]
        plans.entries.append((label, one_line(text), explain(ledger._engine, text, params)))
    return plans


def one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def explain(engine: Engine, statement: str, params: Any) -> list[str]:
    """The plan of ``statement`` run with ``params``, in a transaction rolled back after."""
    postgresql = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgresql else "EXPLAIN QUERY PLAN "
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            rows = connection.exec_driver_sql(prefix + statement, params).all()
        finally:
            transaction.rollback()
    if postgresql:
        lines = [str(row[0]) for row in rows]
        return [line[: len(line) - len(line.lstrip())] + one_line(line, 150) for line in lines]
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + one_line(str(detail), 160))
    return lines


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    fill: dict[str, float]
    size: int
    timings: dict[str, Timing]
    plans: Plans
    version: str


def run_backend(backend: str, plan: Plan, args: argparse.Namespace, work: Path) -> Result:
    plan.now = datetime.now(UTC).replace(microsecond=0)
    if backend == "sqlite":
        path = work / "ledger.sqlite3"
        url = f"sqlite:///{path}"
        Ledger.open(url).close()
        say(f"== SQLite {sqlite3.sqlite_version}: filling {path}")
        fill = sqlite_fill(path, plan)
        size = sqlite_size(path)
        version = f"SQLite {sqlite3.sqlite_version}"
    else:
        url = args.database_url
        Ledger.open(url).close()
        say(f"== PostgreSQL: filling {url}")
        fill = pg_fill(url, plan)
        size = pg_size(url)
        version = pg_version(url)
    say(f"   filled in {sum(fill.values()):.1f} s, {size / MB:,.0f} MB; timing")
    with Ledger.open(url) as ledger:
        timings, plans = time_all(ledger, scenario(plan), args.repeat)
    return Result(backend, fill, size, timings, plans, version)


def pg_version(url: str) -> str:
    with psycopg.connect(psycopg_url(url)) as db:
        row = db.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


@contextlib.contextmanager
def pg_database(server: str, keep: bool) -> Iterator[str]:
    """A new database on ``server`` (a URL without one), dropped at the end unless ``keep``."""
    name = f"popvault_scale_{secrets.token_hex(4)}"
    admin = psycopg_url(server.rstrip("/")) + "/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server.rstrip('/')}/{name}"
    finally:
        if keep:
            say(f"kept the PostgreSQL database {name}")
        else:
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


def _progress(what: str, done: int, total: int, started: float) -> None:
    elapsed = time.monotonic() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    say(f"   {what}: {done:,} of {total:,} ({rate:,.0f}/s)")


# -- the report --------------------------------------------------------------------------------


def revision() -> str:
    """The checkout's commit, and whether its working tree differs from it."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "src", "migrations"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" with src/ or migrations/ modified" if dirty else "")


def report(plan: Plan, results: list[Result], repeat: int) -> str:
    median = plan.sizes[plan.median_account]
    out = [
        f"popvault ledger at scale, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{revision()}; {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
        f"{plan.accounts:,} accounts, {plan.messages:,} messages (largest mailbox "
        f"{plan.sizes[0]:,}, median {median:,}, smallest {min(plan.sizes):,}), "
        f"{plan.accounts * plan.runs_per_account:,} runs; "
        f"each call {repeat} times or more, ms median / max, statements per call",
        "",
    ]
    out += fill_table(results)
    out += ["", *timing_table(results)]
    for result in results:
        out += ["", f"Plans, {result.version}:"]
        for label, text, lines in result.plans.entries:
            out += ["", f"-- {label}: {text}", *(f"   {line}" for line in lines)]
    return "\n".join(out)


def fill_table(results: list[Result]) -> list[str]:
    head = ["fill", *(r.version for r in results)]
    phases = list(dict.fromkeys(name for r in results for name in r.fill))
    rows = [
        [name, *(f"{r.fill[name]:.1f} s" if name in r.fill else "-" for r in results)]
        for name in phases
    ]
    rows.append(["total", *(f"{sum(r.fill.values()):.1f} s" for r in results)])
    rows.append(["database size", *(f"{r.size / MB:,.0f} MB" for r in results)])
    return markdown(head, rows)


def timing_table(results: list[Result]) -> list[str]:
    head = ["operation"]
    for result in results:
        name = result.version.split()[0]
        head += [f"{name} median", f"{name} max", "stmts"]
    labels = list(dict.fromkeys(label for r in results for label in r.timings))
    rows = []
    for label in labels:
        row = [label]
        for result in results:
            timing = result.timings.get(label)
            if timing is None:
                row += ["-", "-", "-"]
            else:
                row += [ms(timing.median_ms), ms(timing.max_ms), str(timing.statements)]
        rows.append(row)
    return markdown(head, rows)


def ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def markdown(head: list[str], rows: Sequence[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(head, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--big", type=int, default=BIG, help="messages of the largest mailbox")
    parser.add_argument("--runs-per-account", type=int, default=100, help="past runs (default 100)")
    parser.add_argument("--slices", type=int, default=100, help="rounds of time the fill writes")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--postgres-url", default=DEFAULT_SERVER, help="server URL, no database")
    parser.add_argument("--repeat", type=int, default=5, help="calls of each operation (default 5)")
    parser.add_argument("--work", type=Path, help="folder for the SQLite file (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    if args.repeat < 1 or args.slices < 1 or args.runs_per_account < 0:
        parser.error("--repeat and --slices must be at least 1, --runs-per-account at least 0")
    sizes = mailbox_sizes(args.accounts, args.messages, args.big)
    # A sixteenth of the accounts due, and at least what the claims take (1 and 10 per repeat).
    due = min(args.accounts, max(args.accounts // 16, 11 * args.repeat + 20))
    plan = Plan(sizes, args.runs_per_account, args.slices, due)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    work = args.work or Path(tempfile.mkdtemp(prefix="popvault-ledger-scale-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        with contextlib.ExitStack() as stack:
            for backend in backends:
                if backend == "postgresql":
                    args.database_url = stack.enter_context(
                        pg_database(args.postgres_url, args.keep)
                    )
                results.append(run_backend(backend, plan, args, work))
    finally:
        if args.keep:
            say(f"kept {work}")
        elif args.work:
            for path in work.glob("ledger.sqlite3*"):
                path.unlink()
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(plan, results, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
