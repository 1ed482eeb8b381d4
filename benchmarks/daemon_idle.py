"""One ``popvault daemon`` with 10,000 accounts: start-up, the first round, idle (issue 11, 4).

"A daemon keeps 10,000 configured accounts without 10,000 timers in memory (the ledger is the
schedule), starts in seconds, and idles under a few percent of a core." This measures it, on a
SQLite ledger file and on a PostgreSQL ledger (a fresh database, popvault_idle_<hex>, dropped at
the end unless ``--keep``).

The private Dovecot of ``benchmarks/daemons_scale.py`` (its helpers are imported from there) with
one user per account, ``--messages`` small messages each (default 1), and one config naming
every account (``every = "3600s"``, so that after the start-up round nothing is due for the rest
of the measurement; ``security = "plain"``; the password from an environment variable;
``[daemon] max_concurrent = --max-concurrent``, default 8). For each ledger the schema is made
first (a daemon's usual start, not its first ever), then one daemon
(``popvault --config FILE daemon --log-format json``) is started and the benchmark prints:

- ready: seconds from the process start to its ``daemon started`` line, and to its first run line;
- round: seconds until every account has an ok run (from the run lines, checked against the
  ledger's ``runs`` table), and the daemon's CPU seconds until then;
- idle, over ``--idle`` seconds from 15 s after the round: the daemon's CPU (utime + stime of
  all its threads, /proc/PID/stat) as a share of one core, overall and per slice of 30 s; its read
  and write system calls (/proc/PID/io) and context switches (all threads) a second; on PostgreSQL
  the database's transactions a second (``pg_stat_database``: every ledger statement of the
  daemon runs in a transaction of its own or with a few others; the statistics reach the view
  within about 10 s, so a short window is off by that much); the runs that started (none due);
- memory and threads: RSS (VmRSS) and thread count at ready, after the round and at the end of
  the idle window; peak RSS (VmHWM);
- the stop: SIGTERM, seconds until it exits, and its exit code (must be 0); then a restart on the
  same ledger (schema, schedules and 10,000 accounts' history present): seconds to ready, RSS,
  and its exit code after an immediate SIGTERM;
- the warnings and errors the daemons logged, the runs table's outcomes, and the archived rows
  (must be accounts x messages).

    .venv/bin/python benchmarks/daemon_idle.py                                  # both ledgers
    .venv/bin/python benchmarks/daemon_idle.py --backend sqlite --accounts 1000 --idle 60

Needs root (Dovecot's Maildirs belong to the ``mail`` user), like daemons_scale.py, and for the
PostgreSQL ledger a server on ``--postgres-url`` (a URL without a database). Not part of the
package or of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from daemons_scale import (
    CLOCK_TICKS,
    DEFAULT_SERVER,
    Daemon,
    Dovecot,
    Outcome,
    machine_cpu,
    message,
    pg_database,
    problem_rows,
    psycopg_url,
    read_lines,
    say,
    start_daemon,
    write_config,
)

from popvault.ledger import Ledger

EVERY_S = 3600.0  # the accounts' schedule: nothing is due again during the measurement
SLICE_S = 30.0  # the idle window's CPU is also shown per slice of this many seconds
POLL_S = 0.1  # how often the log and /proc are read until the round is done
READY_TEXT = "daemon started"  # core.ArchiveDaemon.start's line, once the dispatcher runs
STOP_TIMEOUT_S = 90.0
# Between the round and the idle window: PostgreSQL's backends send their statistics to
# pg_stat_database at most every 10 s when idle (PGSTAT_IDLE_INTERVAL), so the round's last
# transactions would otherwise land in the window.
SETTLE_S = 15.0

Query = Callable[[str], list[tuple[Any, ...]]]


# -- the process, from /proc -------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The daemon process at one moment (all its threads)."""

    at: float  # time.monotonic()
    cpu: float  # utime + stime, seconds
    rss_kb: int
    hwm_kb: int
    threads: int
    syscalls: int  # read and write system calls so far (syscr + syscw)
    switches: int  # voluntary and involuntary context switches so far, all threads


def _status_fields(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            status = _status_fields(task / "status")
            total += int(status["voluntary_ctxt_switches"])
            total += int(status["nonvoluntary_ctxt_switches"])
    return total


def sample(pid: int) -> Sample:
    at = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    status = _status_fields(Path(f"/proc/{pid}/status"))
    io = _status_fields(Path(f"/proc/{pid}/io"))
    return Sample(
        at=at,
        cpu=(int(stat[11]) + int(stat[12])) / CLOCK_TICKS,  # utime, stime: fields 14, 15
        rss_kb=int(status["VmRSS"].split()[0]),
        hwm_kb=int(status["VmHWM"].split()[0]),
        threads=int(status["Threads"]),
        syscalls=int(io["syscr"]) + int(io["syscw"]),
        switches=_switches(pid),
    )


def per_second(first: Sample, last: Sample, value: Callable[[Sample], float]) -> float:
    return (value(last) - value(first)) / max(last.at - first.at, 1e-9)


# -- the daemon's log --------------------------------------------------------------------------


class LogTail:
    """The daemon's JSON lines as they are written (a partial last line waits for its end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as stream:
            stream.seek(self._offset)
            data = stream.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        lines = []
        for raw in complete:
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(raw)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines


def seconds_after(entry: dict[str, Any], start_wall: float) -> float:
    return datetime.fromisoformat(entry["ts"]).timestamp() - start_wall


def alive_or_raise(daemon: Daemon) -> None:
    code = daemon.process.poll()
    if code is not None:
        tail = daemon.log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"the daemon exited ({code}):\n" + "\n".join(t[:500] for t in tail))


# -- the ledgers -------------------------------------------------------------------------------


@contextlib.contextmanager
def ledger_query(url: str) -> Iterator[Query]:
    """Read-only queries of the ledger from the benchmark's side (never during the idle window)."""
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            yield lambda text: connection.execute(text).fetchall()
        finally:
            connection.close()
    else:
        with psycopg.connect(psycopg_url(url), autocommit=True) as db:
            yield lambda text: db.execute(text).fetchall()


def pg_transactions(query: Query, url: str) -> tuple[int, int]:
    """Committed and rolled-back transactions of the ledger's database so far."""
    name = url.rpartition("/")[2]
    count = "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = "
    rows = query(f"{count}'{name}'")  # our own hex name, no outside input
    return int(rows[0][0]), int(rows[0][1])


def pg_table_use(query: Query) -> dict[str, tuple[int, int]]:
    """Each ledger table's (scans, rows written) so far: which tables the idle daemon touches."""
    rows = query(
        "SELECT relname, seq_scan + coalesce(idx_scan, 0), n_tup_ins + n_tup_upd + n_tup_del"
        " FROM pg_stat_user_tables"
    )
    return {str(name): (int(scans), int(writes)) for name, scans, writes in rows}


def table_use_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    cells = []
    for name, (scans, writes) in sorted(after.items()):
        old = before.get(name, (0, 0))
        if (scans, writes) != old:
            cells.append(f"{name} {scans - old[0]} scans/{writes - old[1]} rows written")
    return ", ".join(cells) or "none"


# -- one ledger --------------------------------------------------------------------------------


@dataclass
class Measure:
    backend: str
    ready_s: float | None = None
    ready_line_chars: int = 0
    first_run_s: float | None = None
    round_s: float | None = None
    at_ready: Sample | None = None
    after_round: Sample | None = None
    idle: list[Sample] = field(default_factory=list)
    # Commits and rollbacks a second (PostgreSQL): a read-only transaction ends in either.
    idle_transactions: tuple[float, float] | None = None
    idle_tables: str = "-"  # PostgreSQL: the tables scanned and written in the idle window
    idle_runs: int = 0
    machine_busy: float | None = None  # share of all CPUs during the idle window
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # at the end of the idle window
    stop_s: float | None = None
    exit_code: int | None = None
    restart_ready_s: float | None = None
    restart_rss_kb: int | None = None
    restart_exit_code: int | None = None
    ok_accounts_in_ledger: int = 0
    outcomes: str = "-"
    archived: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)


def measure(backend: str, url: str, dovecot: Dovecot, args: argparse.Namespace) -> Measure:
    work = args.work / backend
    work.mkdir(parents=True, exist_ok=True)
    Ledger.open(url).close()  # the schema: a usual start, not the first ever
    config = write_config(work, url, dovecot.users, args)
    result = Measure(backend)
    daemons: list[Daemon] = []
    with ledger_query(url) as query:
        try:
            daemons.append(start_daemon(1, config, work))
            _first_life(result, daemons[0], query, url, args)
            daemons.append(start_daemon(2, config, work))
            _restart(result, daemons[1])
        finally:
            for daemon in daemons:
                _stop(daemon)
        runs = query("SELECT outcome, count(*) FROM runs GROUP BY outcome")
        result.outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(runs))
        archived = query("SELECT count(*) FROM messages WHERE state = 'archived'")
        result.archived = int(archived[0][0])
    for daemon in daemons:
        read_lines(daemon)
    outcome = Outcome(args, args.accounts, 0, {}, daemons, datetime.now(UTC))
    result.problems = problem_rows(outcome)
    return result


def _first_life(
    result: Measure, daemon: Daemon, query: Query, url: str, args: argparse.Namespace
) -> None:
    start_wall = time.time() - (time.monotonic() - daemon.started)
    tail = LogTail(daemon.log)
    say(f"== {result.backend}: daemon pid {daemon.process.pid} started")
    _wait_ready(result, daemon, tail, start_wall, args)
    _wait_round(result, daemon, tail, start_wall, args)
    result.ok_accounts_in_ledger = int(
        query("SELECT count(DISTINCT account) FROM runs WHERE outcome = 'ok'")[0][0]
    )
    say(f"   round done in {result.round_s:.1f} s; idle for {SETTLE_S:g} + {args.idle:g} s")
    time.sleep(SETTLE_S)
    shared = not url.startswith("sqlite")
    before = pg_transactions(query, url) if shared else (0, 0)
    tables = pg_table_use(query) if shared else {}
    _idle(result, daemon, tail, args)
    if shared:
        after = pg_transactions(query, url)
        result.idle_tables = table_use_delta(tables, pg_table_use(query))
        window = result.idle[-1].at - result.idle[0].at
        # Less the benchmark's own two reading transactions before the window.
        commits = (after[0] - before[0] - 2) / window
        result.idle_transactions = (commits, (after[1] - before[1]) / window)
    result.stop_s, result.exit_code = _stop(daemon)
    say(f"   stopped in {result.stop_s:.1f} s, exit {result.exit_code}")


def _wait_ready(
    result: Measure, daemon: Daemon, tail: LogTail, start_wall: float, args: argparse.Namespace
) -> None:
    deadline = time.monotonic() + args.ready_timeout
    while result.at_ready is None:
        alive_or_raise(daemon)
        for entry in tail.new_lines():
            text = str(entry.get("message", ""))
            if text.startswith(READY_TEXT):
                result.at_ready = sample(daemon.process.pid)
                result.ready_s = seconds_after(entry, start_wall)
                result.ready_line_chars = len(text)
            elif "outcome" in entry and result.first_run_s is None:
                result.first_run_s = seconds_after(entry, start_wall)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {READY_TEXT!r} line after {args.ready_timeout:g} s")
        time.sleep(POLL_S)
    say(f"   ready after {result.ready_s:.2f} s")


def _wait_round(
    result: Measure, daemon: Daemon, tail: LogTail, start_wall: float, args: argparse.Namespace
) -> None:
    done: set[str] = set()
    deadline = time.monotonic() + args.round_timeout
    next_report = time.monotonic() + 30
    while len(done) < args.accounts:
        alive_or_raise(daemon)
        for entry in tail.new_lines():
            if "outcome" not in entry:
                continue
            if result.first_run_s is None:
                result.first_run_s = seconds_after(entry, start_wall)
            if entry["outcome"] == "ok":
                done.add(entry["account"])
                result.round_s = seconds_after(entry, start_wall)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(done)} of {args.accounts} accounts ran in the round")
        if time.monotonic() > next_report:
            say(f"   {len(done):,} of {args.accounts:,} accounts ran")
            next_report += 30
        time.sleep(POLL_S)
    result.after_round = sample(daemon.process.pid)


def _idle(result: Measure, daemon: Daemon, tail: LogTail, args: argparse.Namespace) -> None:
    """Samples every SLICE_S (and at the end) over --idle seconds; the log read only at the end."""
    busy0 = machine_cpu()
    start = time.monotonic()
    result.idle.append(sample(daemon.process.pid))
    while (elapsed := time.monotonic() - start) < args.idle:
        time.sleep(min(SLICE_S - elapsed % SLICE_S, args.idle - elapsed))
        alive_or_raise(daemon)
        result.idle.append(sample(daemon.process.pid))
    busy1 = machine_cpu()
    result.machine_busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    result.load = os.getloadavg()
    result.idle_runs = sum("outcome" in entry for entry in tail.new_lines())


def _restart(result: Measure, daemon: Daemon) -> None:
    """A second start on the same ledger: ready time and RSS, then SIGTERM at once."""
    start_wall = time.time() - (time.monotonic() - daemon.started)
    tail = LogTail(daemon.log)
    deadline = time.monotonic() + 300
    while result.restart_ready_s is None and time.monotonic() < deadline:
        alive_or_raise(daemon)
        for entry in tail.new_lines():
            if str(entry.get("message", "")).startswith(READY_TEXT):
                result.restart_ready_s = seconds_after(entry, start_wall)
                result.restart_rss_kb = sample(daemon.process.pid).rss_kb
        time.sleep(POLL_S)
    _, result.restart_exit_code = _stop(daemon)
    say(f"   restart: ready after {_s(result.restart_ready_s)}, exit {result.restart_exit_code}")


def _stop(daemon: Daemon) -> tuple[float, int]:
    """SIGTERM; seconds until it exited, and its exit code (a second call: the same code)."""
    began = time.monotonic()
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
    try:
        code = daemon.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        code = daemon.process.wait()
    daemon.code = code
    return time.monotonic() - began, code


# -- the report --------------------------------------------------------------------------------


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f} MB"


def _memory(point: Sample | None) -> str:
    return "-" if point is None else f"{_mb(point.rss_kb)}, {point.threads} threads"


def _idle_rows(m: Measure) -> list[tuple[str, str]]:
    if len(m.idle) < 2:
        return [("idle CPU (share of one core)", "-")]
    first, last = m.idle[0], m.idle[-1]
    share = per_second(first, last, lambda s: s.cpu) * 100
    slices = ", ".join(
        f"{per_second(a, b, lambda s: s.cpu) * 100:.1f}" for a, b in itertools.pairwise(m.idle)
    )
    transactions = "-"
    if m.idle_transactions is not None:
        commits, rollbacks = m.idle_transactions
        total = commits + rollbacks
        transactions = f"{total:.1f}/s ({commits:.1f} commit, {rollbacks:.1f} rollback)"
    busy = "-" if m.machine_busy is None else f"{m.machine_busy * 100:.0f}%"
    load = ", ".join(f"{x:.2f}" for x in m.load)
    return [
        (
            "idle window (from round + settle)",
            f"{last.at - first.at:.0f} s from {SETTLE_S:g} s after the round; "
            f"{m.idle_runs} runs after the round",
        ),
        ("idle CPU (share of one core)", f"{share:.2f}% ({last.cpu - first.cpu:.2f} s CPU)"),
        (f"  per {SLICE_S:g} s slice (%)", slices),
        ("idle file read+write syscalls", f"{per_second(first, last, lambda s: s.syscalls):.1f}/s"),
        ("idle context switches", f"{per_second(first, last, lambda s: s.switches):.1f}/s"),
        ("idle ledger transactions (PostgreSQL)", transactions),
        ("  tables used in the window (PostgreSQL)", m.idle_tables),
        ("machine busy in idle window; load avg", f"{busy} of {os.cpu_count()} CPUs; {load}"),
    ]


def rows_of(m: Measure, args: argparse.Namespace) -> list[tuple[str, str]]:
    ready, after = m.at_ready, m.after_round
    last = m.idle[-1] if m.idle else None
    round_cpu = "-" if after is None else f"{after.cpu:.1f} s CPU until then"
    expected = args.accounts * args.messages
    return [
        ("ready ('daemon started' line)", _s(m.ready_s)),
        ("  CPU until ready", "-" if ready is None else f"{ready.cpu:.2f} s"),
        ("  length of the 'daemon started' line", f"{m.ready_line_chars:,} characters"),
        ("first run line", _s(m.first_run_s)),
        ("start-up round done (every account ok)", f"{_s(m.round_s)}, {round_cpu}"),
        ("accounts with an ok run in the ledger", f"{m.ok_accounts_in_ledger:,}"),
        *_idle_rows(m),
        ("RSS, threads at ready", _memory(ready)),
        ("RSS, threads after the round", _memory(after)),
        ("RSS, threads at the end of idle", _memory(last)),
        ("peak RSS (VmHWM)", "-" if last is None else _mb(last.hwm_kb)),
        ("SIGTERM to exit; exit code", f"{_s(m.stop_s)}; {m.exit_code}"),
        ("restart: ready; RSS at ready", f"{_s(m.restart_ready_s)}; {_mb(m.restart_rss_kb)}"),
        ("restart: exit code after SIGTERM", str(m.restart_exit_code)),
        ("runs table (both starts)", m.outcomes),
        ("archived rows (expected)", f"{m.archived:,} ({expected:,})"),
    ]


def verdict(m: Measure, args: argparse.Namespace) -> bool:
    return (
        m.exit_code == 0
        and m.restart_exit_code == 0
        and m.ok_accounts_in_ledger == args.accounts
        and m.archived == args.accounts * args.messages
        and m.idle_runs == 0
    )


def report(measures: list[Measure], args: argparse.Namespace) -> str:
    columns = [dict(rows_of(m, args)) for m in measures]
    labels = [label for label, _ in rows_of(measures[0], args)]
    width = max(map(len, labels))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = [
        f"one popvault daemon, {args.accounts:,} accounts x {args.messages} message(s), "
        f"every {EVERY_S:g} s, max_concurrent {args.max_concurrent}; {when}; "
        f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "",
        "| " + " | ".join(["measure".ljust(width), *(m.backend for m in measures)]) + " |",
        "|" + "|".join(["-" * (width + 2), *("---" for _ in measures)]) + "|",
    ]
    body = [
        "| " + " | ".join([label.ljust(width), *(c[label] for c in columns)]) + " |"
        for label in labels
    ]
    problems = []
    for m in measures:
        problems.append(f"{m.backend}: " + "; ".join(f"{k.strip()} {v}" for k, v in m.problems))
    ok = all(verdict(m, args) for m in measures)
    tail = "all checks passed" if ok else "!! A CHECK FAILED (exit codes, ok runs, archive, idle)"
    return "\n".join([*head, *body, "", *problems, "", tail])


# -- main --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Measure]:
    dovecot = Dovecot(args.accounts)
    try:
        dovecot.prepare()
        for index, user in enumerate(dovecot.users):
            for number in range(args.messages):
                dovecot.deliver(user, message(index, number))
        dovecot.start()
        args.port = dovecot.port
        say(f"== Dovecot on port {dovecot.port}: {args.accounts:,} users")
        measures = []
        if args.backend in ("sqlite", "both"):
            url = f"sqlite:///{args.work / 'ledger.sqlite3'}"
            measures.append(measure("sqlite", url, dovecot, args))
        if args.backend in ("postgresql", "both"):
            with pg_database(args.postgres_url, args.keep, prefix="popvault_idle") as url:
                measures.append(measure("postgresql", url, dovecot, args))
        return measures
    finally:
        dovecot.stop()
        if not args.keep:
            dovecot.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1, help="messages per account (1)")
    parser.add_argument("--idle", type=float, default=120.0, help="idle window, seconds (120)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--max-concurrent", type=int, default=8)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--round-timeout", type=float, default=1800.0)
    parser.add_argument("--postgres-url", default=DEFAULT_SERVER, help="server URL, no database")
    parser.add_argument("--work", type=Path, help="folder for configs, ledger, archives, logs")
    parser.add_argument("--keep", action="store_true", help="keep database, Dovecot and files")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: the private Dovecot's Maildirs belong to the mail user")
    if args.idle >= EVERY_S / 2:
        parser.error(f"--idle must stay well under the accounts' schedule ({EVERY_S:g} s)")
    args.every, args.max_per_host = EVERY_S, None  # for daemons_scale.write_config
    given = args.work is not None
    args.work = args.work or Path(tempfile.mkdtemp(prefix="popvault-idle-", dir="/var/tmp"))
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        measures = run(args)
    finally:
        if args.keep or given:
            say(f"kept {args.work}")
        else:
            shutil.rmtree(args.work, ignore_errors=True)
    print(report(measures, args))
    return 0 if all(verdict(m, args) for m in measures) else 1


if __name__ == "__main__":
    sys.exit(main())
