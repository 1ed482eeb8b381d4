"""Several ``popvault daemon`` processes sharing one PostgreSQL ledger over many small accounts.

A private Dovecot (POP3 only, plain, on a free loopback port; its config, state, log, passwd-file
and Maildirs in one temporary folder) with ``--accounts`` users of ``--messages`` small messages
each, a fresh PostgreSQL ledger, one config naming every account (``every = "60s"``,
``security = "plain"``, the password from an environment variable), and ``--daemons`` daemons
(``popvault --config FILE daemon --log-format json``, ``[daemon] max_concurrent = 4`` each)
started a second apart, all on that config. Once the initial messages are archived,
``--arrivals`` new messages a second are delivered to random accounts (until ``--every`` + 30 s
before the end, so that every account that got one is due again before it). After
``--duration`` seconds the benchmark waits until the ledger holds every delivered message, stops
the daemons with SIGTERM and prints:

- throughput: how long the first pass took (every account's first run; the initial messages
  archived) and messages archived per second in it; runs per second over the whole run;
- spread: runs per daemon (from each daemon's JSON run lines, which carry ``account`` and
  ``outcome``), and per account;
- lag behind schedule: for each run after an account's first, its start (the line's time minus
  ``duration_s``) minus the ``next_run_at`` its previous run planned (in whichever daemon):
  median, p95 and max; also the interval between an account's consecutive starts minus ``every``;
- each daemon's CPU (utime + stime from /proc/PID/stat, all threads) and its share of one core
  over its life, and its peak RSS (VmHWM); the machine's CPU busy share (from /proc/stat);
- exactly once: archived rows == delivered messages (per account, no duplicate key, nothing
  pending), runs of one account never overlapping, and every archived file byte for byte a
  delivered message (CRLF read as LF, as Dovecot stores it).

    .venv/bin/python benchmarks/daemons_scale.py                          # 1,000 accounts, 5 min
    .venv/bin/python benchmarks/daemons_scale.py --accounts 100 --duration 120

Needs root (Dovecot's Maildirs belong to the ``mail`` user) and PostgreSQL on ``--postgres-url``
(a server URL; the benchmark makes its own database, popvault_daemons_<hex>, and drops it at the
end unless ``--keep``). Not part of the package or of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import os
import platform
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from popvault.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent
POPVAULT = ROOT / ".venv" / "bin" / "popvault"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
HOST = "127.0.0.1"
MAIL_USER = "mail"  # Dovecot's mail processes refuse uid 0: the Maildirs belong to this user
# The Dovecot users' password, given to the daemons through the environment.
PASSWORD = "daemons-bench-pw"  # noqa: S105 - a throwaway server's test password
PASSWORD_ENV = "BENCH_POP3_PASSWORD"  # noqa: S105 - the variable's name
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_GAP = 1.0  # seconds between the daemons' starts
MB = 1_000_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- messages ----------------------------------------------------------------------------------

_WORDS = (  # noqa: SIM905 - one line of words reads better than 23 quoted ones
    "archive budget meeting notes schedule release review backup server report minutes travel "
    "weekend concert museum tickets project call deadline invoice holiday photos thanks"
).split()


def message(user: int, number: int) -> bytes:
    """A small message (1 to 5 KB), LF line ends, a final newline: as Dovecot's Maildir holds it."""
    rng = random.Random(user * 1_000_003 + number)  # noqa: S311 - a corpus, not keys
    lines = [
        f"From: sender{rng.randrange(100)}@example.net",
        f"To: u{user:04d}@example.org",
        f"Subject: {' '.join(rng.choices(_WORDS, k=4))}",
        f"Date: Tue, 01 Dec 2026 {number % 24:02d}:{user % 60:02d}:00 +0000",
        f"Message-ID: <{user}.{number}.{rng.getrandbits(48):x}@bench.example.net>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
    ]
    for _ in range(rng.randint(15, 80)):
        lines.append(" ".join(rng.choices(_WORDS, k=rng.randint(6, 11))))
    return ("\n".join(lines) + "\n").encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a private Dovecot -------------------------------------------------------------------------

_DOVECOT_CONFIG = """\
# Written by benchmarks/daemons_scale.py: a private POP3-only Dovecot, plain, loopback.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot-info.log
instance_name = popvault-daemons-{port}
protocols = pop3
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login
first_valid_uid = {uid}
first_valid_gid = {gid}
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {port}
  }}
}}
"""


class Dovecot:
    """A private Dovecot: users and Maildirs made before it starts, messages delivered any time.

    Its folder is 0755 under /tmp: the auth process (the dovecot user) must reach the
    passwd-file, the mail processes (the mail user) the Maildirs.
    """

    def __init__(self, users: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="popvault-daemons-dovecot-"))
        self.root.chmod(0o755)
        mail = pwd.getpwnam(MAIL_USER)
        self.uid, self.gid = mail.pw_uid, mail.pw_gid
        self.users = [f"u{i:04d}" for i in range(users)]
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._serial = 0

    def maildir(self, user: str) -> Path:
        return self.root / "home" / user / "Maildir"

    def prepare(self) -> None:
        lines = []
        for user in self.users:
            home = self.root / "home" / user
            folders = [
                home,
                home / "Maildir",
                *(home / "Maildir" / s for s in ("cur", "new", "tmp")),
            ]
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, self.uid, self.gid)
                folder.chmod(0o700)
            lines.append(f"{user}:{{PLAIN}}{PASSWORD}:{self.uid}:{self.gid}::{home}::\n")
        (self.root / "home").chmod(0o755)
        users = self.root / "users"
        users.write_text("".join(lines))
        users.chmod(0o644)

    def deliver(self, user: str, raw: bytes) -> None:
        """One message into the user's ``new/``, written aside and renamed (Maildir delivery)."""
        self._serial += 1
        name = f"{time.time_ns()}.P{os.getpid()}Q{self._serial}.bench"
        side = self.maildir(user) / "tmp" / name
        side.write_bytes(raw)
        os.chown(side, self.uid, self.gid)
        side.chmod(0o600)
        side.rename(self.maildir(user) / "new" / name)

    def start(self) -> None:
        binary = shutil.which("dovecot", path=os.pathsep.join([os.environ["PATH"], "/usr/sbin"]))
        if binary is None:
            raise SystemExit("dovecot not found (apt-get install dovecot-pop3d)")
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            self.port = int(probe.getsockname()[1])
        config = self.root / "dovecot.conf"
        config.write_text(
            _DOVECOT_CONFIG.format(
                root=self.root, host=HOST, port=self.port, uid=self.uid, gid=self.gid
            )
        )
        self.process = subprocess.Popen(
            [binary, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "dovecot.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dovecot did not start:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


# -- PostgreSQL --------------------------------------------------------------------------------


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextlib.contextmanager
def pg_database(server: str, keep: bool, prefix: str = "popvault_daemons") -> Iterator[str]:
    """A new database <prefix>_<hex> on ``server`` (a URL without one), dropped at the end
    unless ``keep``."""
    server = server.rstrip("/")
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = psycopg_url(server) + "/postgres"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server}/{name}"
    finally:
        if keep:
            say(f"kept the PostgreSQL database {name}")
        else:
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def archived_count(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM messages WHERE state = 'archived'").fetchone()
    return int(row[0]) if row else 0


# -- the daemons -------------------------------------------------------------------------------


def write_config(work: Path, url: str, users: list[str], args: argparse.Namespace) -> Path:
    bound = f"max_per_host = {args.max_per_host}\n" if args.max_per_host else ""
    head = f"""\
[ledger]
url = "{url}"

[archive]
root = "{work / "archive"}"

[daemon]
max_concurrent = {args.max_concurrent}
{bound}
[defaults]
host = "{HOST}"
port = {args.port}
security = "plain"
allow_plaintext = true
auth = "user"
password_env = "{PASSWORD_ENV}"
format = "maildir"
retention = "keep"
every = "{args.every:g}s"
"""
    accounts = "".join(f'\n[[accounts]]\nname = "{u}"\nusername = "{u}"\n' for u in users)
    path = work / "config.toml"
    path.write_text(head + accounts)
    path.chmod(0o600)
    return path


@dataclass
class Daemon:
    number: int
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic()
    cpu: float = 0.0
    life: float = 0.0
    rss_kb: int = 0
    code: int | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)

    def sample(self) -> None:
        """CPU seconds and peak RSS so far (call before it exits)."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        self.cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15
        self.life = time.monotonic() - self.started
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                self.rss_kb = int(line.split()[1])


def start_daemon(number: int, config: Path, work: Path) -> Daemon:
    home = work / f"home{number}"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), **{PASSWORD_ENV: PASSWORD})
    log = work / f"daemon{number}.jsonl"
    argv = [str(POPVAULT), "--config", str(config), "daemon", "--log-format", "json"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=work
        )
    return Daemon(number, process, log, time.monotonic())


def stop_daemons(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.sample()
            daemon.process.send_signal(signal.SIGTERM)
    for daemon in daemons:
        try:
            daemon.code = daemon.process.wait(90)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.code = daemon.process.wait()


def read_lines(daemon: Daemon) -> None:
    for text in daemon.log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(text)
        except json.JSONDecodeError:
            entry = {"level": "raw", "message": text}
        if isinstance(entry, dict):
            daemon.lines.append(entry)


# -- the machine's CPU -------------------------------------------------------------------------


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    args: argparse.Namespace
    accounts: int
    initial: int
    delivered: dict[str, list[bytes]]
    daemons: list[Daemon]
    t0_wall: datetime
    first_pass_messages_s: float | None = None  # seconds until the initial messages archived
    wall: float = 0.0  # seconds from the first start to the SIGTERM
    settle: float = 0.0  # seconds waited after --duration for the last arrivals
    machine_busy: float = 0.0  # share of all CPUs
    checks: dict[str, str] = field(default_factory=dict)
    ok: bool = True


def run(args: argparse.Namespace, work: Path, url: str) -> Outcome:
    dovecot = Dovecot(args.accounts)
    try:
        return _run_with(dovecot, args, work, url)
    finally:
        dovecot.stop()
        if not args.keep:
            dovecot.remove()


def _run_with(dovecot: Dovecot, args: argparse.Namespace, work: Path, url: str) -> Outcome:
    dovecot.prepare()
    delivered: dict[str, list[bytes]] = {user: [] for user in dovecot.users}
    for index, user in enumerate(dovecot.users):
        for number in range(args.messages):
            raw = message(index, number)
            dovecot.deliver(user, raw)
            delivered[user].append(raw)
    dovecot.start()
    args.port = dovecot.port
    initial = sum(map(len, delivered.values()))
    say(f"== Dovecot on port {dovecot.port}: {args.accounts} users, {initial} messages")
    Ledger.open(url).close()  # the schema, before several daemons start at once
    config = write_config(work, url, dovecot.users, args)
    outcome = Outcome(args, args.accounts, initial, delivered, [], datetime.now(UTC))
    with psycopg.connect(psycopg_url(url), autocommit=True) as db:
        busy0 = machine_cpu()
        t0 = time.monotonic()
        try:
            for number in range(args.daemons):
                outcome.daemons.append(start_daemon(number + 1, config, work))
                time.sleep(START_GAP)
            _watch(outcome, dovecot, db, t0)
        finally:
            outcome.wall = time.monotonic() - t0
            stop_daemons(outcome.daemons)
        busy1 = machine_cpu()
        outcome.machine_busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
        for daemon in outcome.daemons:
            read_lines(daemon)
        check_ledger(outcome, db)
    check_archive(outcome, work / "archive")
    return outcome


def _watch(outcome: Outcome, dovecot: Dovecot, db: psycopg.Connection, t0: float) -> None:
    """Deliver arrivals until --every + 30 s before the end, then wait for them all."""
    args = outcome.args
    rng = random.Random(11)  # noqa: S311 - which accounts get mail, not keys
    stop_arrivals = args.duration - args.every - 30
    owed = 0.0
    next_report = 0.0
    while (elapsed := time.monotonic() - t0) < args.duration:
        _check_alive(outcome.daemons)
        if outcome.first_pass_messages_s is None and archived_count(db) >= outcome.initial:
            outcome.first_pass_messages_s = elapsed
        # Arrivals once the first pass has archived the initial messages: a steady state.
        if outcome.first_pass_messages_s is not None and elapsed < stop_arrivals:
            owed += args.arrivals * 0.5
            while owed >= 1:
                owed -= 1
                user = rng.choice(dovecot.users)
                raw = message(dovecot.users.index(user), 1000 + len(outcome.delivered[user]))
                dovecot.deliver(user, raw)
                outcome.delivered[user].append(raw)
        if elapsed >= next_report:
            total = sum(map(len, outcome.delivered.values()))
            say(f"   {elapsed:5.0f} s: {archived_count(db):,} of {total:,} delivered archived")
            next_report += 30
        time.sleep(0.5)
    total = sum(map(len, outcome.delivered.values()))
    settle_start = time.monotonic()
    while archived_count(db) < total and time.monotonic() - settle_start < 2 * args.every + 60:
        _check_alive(outcome.daemons)
        time.sleep(0.5)
    outcome.settle = time.monotonic() - settle_start


def _check_alive(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        if daemon.process.poll() is not None:
            tail = daemon.log.read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(
                f"daemon {daemon.number} exited ({daemon.process.returncode}):\n" + "\n".join(tail)
            )


# -- checks ------------------------------------------------------------------------------------


def check_ledger(outcome: Outcome, db: psycopg.Connection) -> None:
    delivered = {user: len(raws) for user, raws in outcome.delivered.items()}
    total = sum(delivered.values())
    rows = db.execute(
        "SELECT account, count(*), count(DISTINCT (uidl, occurrence)),"
        " count(*) FILTER (WHERE state = 'pending') FROM messages GROUP BY account"
    ).fetchall()
    archived = {account: count for account, count, _, _ in rows}
    duplicates = sum(count - distinct for _, count, distinct, _ in rows)
    pending = sum(p for _, _, _, p in rows)
    wrong = sorted(u for u in delivered if archived.get(u, 0) != delivered[u])
    ok = not wrong and duplicates == 0 and pending == 0 and sum(archived.values()) == total
    outcome.checks["ledger rows == delivered"] = (
        f"{sum(archived.values()):,} rows for {total:,} delivered"
        + (
            ""
            if ok
            else f"; {len(wrong)} accounts differ, {duplicates} duplicate keys, {pending} pending"
        )
    )
    outcome.ok &= ok
    runs = dict(db.execute("SELECT outcome, count(*) FROM runs GROUP BY outcome").fetchall())
    outcome.checks["runs table"] = ", ".join(f"{k} {v:,}" for k, v in sorted(runs.items()))


def check_archive(outcome: Outcome, archive: Path) -> None:
    want: collections.Counter[str] = collections.Counter()
    got: collections.Counter[str] = collections.Counter()
    for user, raws in outcome.delivered.items():
        want.update(digest(raw) for raw in raws)
        for sub in ("cur", "new"):
            folder = archive / user / sub
            if folder.is_dir():
                got.update(digest(p.read_bytes().replace(b"\r\n", b"\n")) for p in folder.iterdir())
    missing, extra = sum((want - got).values()), sum((got - want).values())
    ok = missing == 0 and extra == 0
    outcome.checks["archive files byte-exact"] = (
        f"{sum(got.values()):,} files, all delivered messages"
        if ok
        else f"{missing} delivered messages missing or changed, {extra} files extra"
    )
    outcome.ok &= ok


# -- the report --------------------------------------------------------------------------------


@dataclass
class RunLine:
    daemon: int
    account: str
    outcome: str
    start: datetime
    end: datetime
    next_run_at: datetime | None
    messages: int


def run_lines(daemons: list[Daemon]) -> list[RunLine]:
    out = []
    for daemon in daemons:
        for entry in daemon.lines:
            if "account" not in entry or "outcome" not in entry or "duration_s" not in entry:
                continue
            end = datetime.fromisoformat(entry["ts"])
            planned = entry.get("next_run_at")
            out.append(
                RunLine(
                    daemon.number,
                    entry["account"],
                    entry["outcome"],
                    end - timedelta(seconds=float(entry["duration_s"])),
                    end,
                    datetime.fromisoformat(planned) if planned else None,
                    int(entry.get("messages") or 0),
                )
            )
    return sorted(out, key=lambda line: line.start)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def spread_of(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"median {statistics.median(values):.2f} s, p95 {percentile(values, 0.95):.2f} s, "
        f"max {max(values):.2f} s ({len(values):,} runs)"
    )


@dataclass
class Pace:
    """How the runs kept to the schedule (seconds), and whether two of one account overlapped."""

    lag: list[float] = field(default_factory=list)
    excess: list[float] = field(default_factory=list)
    overlaps: int = 0
    first_pass: float | None = None
    per_account: list[int] = field(default_factory=list)
    # By an account's run number (2nd, 3rd, ...): the runs' lags, and when they were due
    # (seconds after the first start): how bunched the accounts' due times stay, tick by tick.
    lag_by_tick: dict[int, list[float]] = field(default_factory=dict)
    due_by_tick: dict[int, list[float]] = field(default_factory=dict)


def pace_of(lines: list[RunLine], every: float, t0: datetime) -> Pace:
    by_account: dict[str, list[RunLine]] = collections.defaultdict(list)
    for line in lines:
        by_account[line.account].append(line)
    pace = Pace(per_account=[len(runs) for runs in by_account.values()])
    for runs in by_account.values():
        for tick, (previous, current) in enumerate(itertools.pairwise(runs), start=2):
            if previous.next_run_at is not None:
                lag = (current.start - previous.next_run_at).total_seconds()
                pace.lag.append(lag)
                pace.lag_by_tick.setdefault(tick, []).append(lag)
                due = (previous.next_run_at - t0).total_seconds()
                pace.due_by_tick.setdefault(tick, []).append(due)
            pace.excess.append((current.start - previous.start).total_seconds() - every)
            pace.overlaps += current.start < previous.end
    if by_account:
        pace.first_pass = (max(r[0].end for r in by_account.values()) - t0).total_seconds()
    return pace


def by_tick(values: dict[int, list[float]], cell: Any) -> str:
    """One cell per run number that (nearly) every account reached: not the tick the stop cut."""
    top = max((len(v) for v in values.values()), default=0)
    cells = [f"#{k}: {cell(v)}" for k, v in sorted(values.items()) if len(v) >= 0.9 * top]
    return "; ".join(cells) or "-"


def lag_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {percentile(values, 0.95):.1f} s"


def window_cell(values: list[float]) -> str:
    low, high = percentile(values, 0.05), percentile(values, 0.95)
    return f"{low:.0f}-{high:.0f} s"


def summary_rows(outcome: Outcome, lines: list[RunLine], pace: Pace) -> list[tuple[str, str]]:
    args = outcome.args
    delivered = sum(map(len, outcome.delivered.values()))
    daemons = f"{args.daemons} x max_concurrent {args.max_concurrent}"
    if args.max_per_host:
        daemons += f", max_per_host {args.max_per_host}"
    daemons += f"; every {args.every:g} s; ran {outcome.wall:.0f} s"
    daemons += f" (incl. {outcome.settle:.0f} s waiting for the last arrivals)"
    seconds = outcome.first_pass_messages_s
    rate = f"{outcome.initial / seconds:,.0f} messages/s ({outcome.initial:,} in {seconds:.1f} s)"
    counts = pace.per_account or [0]
    return [
        ("accounts x messages at start", f"{outcome.accounts:,} x {args.messages}, one Dovecot"),
        ("daemons", daemons),
        ("arrivals while running", f"{delivered - outcome.initial:,} ({args.arrivals:g}/s)"),
        (
            "first pass (every account's first run)",
            "-" if pace.first_pass is None else f"{pace.first_pass:.1f} s after the first start",
        ),
        ("initial messages archived per second", rate if seconds else "-"),
        ("account runs", f"{len(lines):,} = {len(lines) / outcome.wall:.1f} runs/s"),
        (
            "runs per account",
            f"min {min(counts)}, median {statistics.median(counts):g}, max {max(counts)}",
        ),
        ("lag: start - planned next_run_at", spread_of(pace.lag)),
        (f"interval between starts - {args.every:g} s", spread_of(pace.excess)),
        ("lag by run of an account (median / p95)", by_tick(pace.lag_by_tick, lag_cell)),
        ("when 90% of those runs were due (window)", by_tick(pace.due_by_tick, window_cell)),
        ("runs of one account overlapping", str(pace.overlaps)),
        (
            "machine CPU busy (all CPUs)",
            f"{outcome.machine_busy * 100:.0f}% of {os.cpu_count()} CPUs",
        ),
    ]


def daemon_rows(outcome: Outcome, lines: list[RunLine]) -> list[tuple[str, str]]:
    rows = []
    for daemon in outcome.daemons:
        mine = [line for line in lines if line.daemon == daemon.number]
        outcomes = ", ".join(
            f"{k} {v:,}" for k, v in sorted(collections.Counter(x.outcome for x in mine).items())
        )
        share = len(mine) / len(lines) * 100 if lines else 0.0
        life = max(daemon.life, 1e-9)
        rows.append(
            (
                f"daemon {daemon.number} (exit {daemon.code})",
                f"{len(mine):,} runs ({share:.0f}%; {outcomes}), "
                f"{sum(x.messages for x in mine):,} messages; {daemon.cpu:.1f} s CPU = "
                f"{daemon.cpu / life * 100:.1f}% of one core; "
                f"peak RSS {daemon.rss_kb / 1024:.0f} MB",
            )
        )
    return rows


def problem_rows(outcome: Outcome) -> list[tuple[str, str]]:
    """Warnings and errors the daemons logged outside their run lines."""
    problems: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    for daemon in outcome.daemons:
        for entry in daemon.lines:
            if entry.get("level") not in ("warning", "error", "critical", "raw"):
                continue
            if "outcome" in entry:
                continue
            text = str(entry.get("message", ""))[:200]
            # One pattern for every account and number: 'u0123' and 42 alike.
            pattern = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'…'", text))
            problems[pattern] += 1
            example.setdefault(pattern, text)
    if not problems:
        return [("warnings and errors (not run lines)", "none")]
    return [
        ("warnings and errors (not run lines)", f"{sum(problems.values())}"),
        *((f"  {count} x", example[pattern]) for pattern, count in problems.most_common(5)),
        *lost_lease_rows(outcome),
    ]


_LOST = re.compile(r"account '([^']+)': lease with token \d+ lost")


def lost_lease_rows(outcome: Outcome) -> list[tuple[str, str]]:
    """How many "lease lost" warnings came within a second of that daemon's own ok run line of
    the account: a heartbeat racing the run's release, not a lost lease."""
    total = at_end = 0
    for daemon in outcome.daemons:
        ends: dict[str, list[datetime]] = collections.defaultdict(list)
        for entry in daemon.lines:
            if entry.get("outcome") == "ok" and "account" in entry:
                ends[entry["account"]].append(datetime.fromisoformat(entry["ts"]))
        for entry in daemon.lines:
            found = _LOST.search(str(entry.get("message", "")))
            if found is None or "ts" not in entry:
                continue
            total += 1
            at = datetime.fromisoformat(entry["ts"])
            at_end += any(abs((end - at).total_seconds()) < 1 for end in ends[found[1]])
    if not total:
        return []
    return [("  of the lease-lost ones", f"{at_end} within 1 s of that run's own ok end")]


def report(outcome: Outcome) -> str:
    lines = run_lines(outcome.daemons)
    pace = pace_of(lines, outcome.args.every, outcome.t0_wall)
    outcome.ok &= pace.overlaps == 0 and all(d.code == 0 for d in outcome.daemons)
    rows = [
        *summary_rows(outcome, lines, pace),
        *daemon_rows(outcome, lines),
        *outcome.checks.items(),
        *problem_rows(outcome),
    ]
    width = max(len(k) for k, _ in rows)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = [
        f"popvault daemons sharing one PostgreSQL ledger, {when}; "
        f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "",
        f"| {'measure'.ljust(width)} | value |",
        f"|{'-' * (width + 2)}|-------|",
    ]
    body = [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    verdict = "every message archived exactly once" if outcome.ok else "!! A CHECK FAILED (above)"
    return "\n".join([*head, *body, "", verdict])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=3, help="messages per account at start")
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--max-per-host", type=int, help="[daemon] max_per_host (default: none)")
    parser.add_argument("--every", type=float, default=60.0, help="the schedule, seconds")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds to run (300)")
    parser.add_argument("--arrivals", type=float, default=2.0, help="new messages a second")
    parser.add_argument("--postgres-url", default=DEFAULT_SERVER, help="server URL, no database")
    parser.add_argument("--work", type=Path, help="folder for config, archive and logs")
    parser.add_argument("--keep", action="store_true", help="keep database, Dovecot and files")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: the private Dovecot's Maildirs belong to the mail user")
    if args.duration < args.every * 2:
        parser.error("--duration must be at least twice --every")
    work = args.work or Path(tempfile.mkdtemp(prefix="popvault-daemons-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with pg_database(args.postgres_url, args.keep) as url:
            outcome = run(args, work, url)
    finally:
        if args.keep or args.work:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(outcome))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
