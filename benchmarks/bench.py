"""popvault side by side with mpop and getmail6 against a private Dovecot (README "Benchmarks").

Run it through ``benchmarks/run``, which installs the tools and the project's ``.venv`` first.
Every scenario gets a Dovecot mailbox of its own, filled once; each tool gets fresh state (archive,
ledger or UIDL file) for every repetition, tools in turn (A B A B), and every archived message is
compared byte for byte with the corpus. Wall time is the tool's command from start to exit; peak RSS
is that of the tool's own process (GNU time's %M, from wait4: not inflated by this big process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import functools
import hashlib
import os
import platform
import poplib
import pwd
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from dovecot import (  # noqa: E402
    DovecotMailbox,
    DovecotServer,
    find_dovecot,
    make_private_root,
    make_tls_certs,
)
from popvault.testing.samples import large_attachment_message, sample_messages  # noqa: E402

HOST = "127.0.0.1"
ONE_WAY_DELAY = 0.025  # 25 ms each way: 50 ms round-trip time
SMALL_LIMIT = 16 * 1024  # "small" messages of scenario 3 are under this many octets
RUN_TIMEOUT = 3600.0
MB = 1_000_000
GNU_TIME = "/usr/bin/time"
DELIVERY_USER = "mail"  # getmail6 run as root delivers as this user


# -- corpus ------------------------------------------------------------------------------------

# Issue #9's mailboxes: 2,000 varied messages of 43 MB and 20,000 small ones of 113 MB (MB = 10^6).
# popvault.testing.samples makes smaller messages (tests depend on its bytes, so it stays as it is):
# the benchmark grows them here, deterministically, to those averages.
VARIED_AVERAGE = 43 * MB // 2000  # 21,500 octets a message
SMALL_AVERAGE = 113 * MB // 20_000  # 5,650 octets a message
VARIED_GROWTH_CAP = 2 * 1024 * 1024  # no grown varied message gains more than 2 MiB
# Growth weights: a multipart/mixed message gains an attachment, this many times (on average) what
# a text message gains in quoted text (attachments are where mail's octets are).
ATTACHMENT_WEIGHT = 8.0
_B64_LINE_OCTETS = 57  # one 76-character base64 line (RFC 2045 section 6.8) encodes 57 octets
_PROSE = (  # noqa: SIM905 - one sentence reads better than 62 quoted words
    "thanks for the notes from the meeting yesterday, the budget looks fine to me but the "
    "schedule for the release is tight and the backup of the archive server still needs a "
    "review before the deadline; see the report attached to my last message and the minutes "
    "of the project call, travel plans for the weekend concert and the museum tickets below"
).split()


def varied(count: int, seed: int) -> list[bytes]:
    """Varied messages: attachments, 8-bit bodies, dot lines, long lines, no final newline.

    ``sample_messages`` grown to VARIED_AVERAGE octets a message on average.
    """
    corpus = sample_messages(count, seed=seed)
    return grow(corpus, count * VARIED_AVERAGE, cap=lambda _raw: VARIED_GROWTH_CAP, seed=seed)


def small(count: int, seed: int) -> list[bytes]:
    """``count`` messages under SMALL_LIMIT octets, SMALL_AVERAGE on average (no huge line)."""
    out: list[bytes] = []
    batch = 0
    while len(out) < count:
        # A 15th more than needed, and 14 (one of each kind): the huge line is left out, and
        # sample_messages spends most of its time making those lines.
        want = count - len(out)
        more = sample_messages(want + want // 13 + 14, seed=seed + batch)
        out += [m for m in more if len(m) < SMALL_LIMIT]
        batch += 1
    # 1,024 octets of headroom: quoted text lands within a few lines of what it was given.
    room = lambda raw: max(0, SMALL_LIMIT - 1024 - len(raw))  # noqa: E731 - a one-line cap
    return grow(out[:count], count * SMALL_AVERAGE, cap=room, seed=seed)


def grow(corpus: list[bytes], total: int, *, cap: Callable[[bytes], int], seed: int) -> list[bytes]:
    """``corpus`` with messages grown so that it holds about ``total`` octets.

    A multipart/mixed message gains one more attachment (a base64 part before its closing
    boundary), a message with a text body gains quoted text at the start of its body (its last
    line, dot lines and long lines stay as they were), a message without a body stays as it is.
    The shares are random (from ``seed``), each at most ``cap(message)``.
    """
    rng = random.Random(seed)  # noqa: S311 - corpus, not keys
    weights = [_growth_weight(raw, rng) for raw in corpus]
    caps = [cap(raw) if w else 0 for raw, w in zip(corpus, weights, strict=True)]
    extra = _share(max(0, total - sum(map(len, corpus))), weights, caps)
    return [_grown(raw, n, rng) if n > 0 else raw for raw, n in zip(corpus, extra, strict=True)]


def _growth_weight(raw: bytes, rng: random.Random) -> float:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not body:
        return 0.0
    if _mixed_boundary(head) is not None:
        return ATTACHMENT_WEIGHT * rng.expovariate(1.0)
    return rng.expovariate(1.0)


def _share(octets: int, weights: list[float], caps: list[int]) -> list[int]:
    """``octets`` split in proportion to ``weights``, none over its cap (water-filling)."""
    if octets <= 0 or not any(weights):
        return [0] * len(weights)
    low, high = 0.0, float(octets) / min(w for w in weights if w) + max(caps)
    for _ in range(100):
        scale = (low + high) / 2
        if sum(min(c, scale * w) for w, c in zip(weights, caps, strict=True)) < octets:
            low = scale
        else:
            high = scale
    return [int(min(c, high * w)) for w, c in zip(weights, caps, strict=True)]


def _mixed_boundary(head: bytes) -> bytes | None:
    match = re.search(rb'multipart/mixed;\s*boundary="([^"]+)"', head, re.IGNORECASE)
    return match[1] if match else None


def _grown(raw: bytes, octets: int, rng: random.Random) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    boundary = _mixed_boundary(head)
    closing = b"--" + boundary + b"--\r\n" if boundary else b""
    if boundary and closing in body:
        at = body.rindex(closing)
        return head + b"\r\n\r\n" + body[:at] + _attachment_part(boundary, octets, rng) + body[at:]
    return head + b"\r\n\r\n" + _quoted_text(octets, rng) + body


def _attachment_part(boundary: bytes, octets: int, rng: random.Random) -> bytes:
    number = rng.randrange(10_000)
    head = (
        b"--" + boundary + b"\r\n"
        b'Content-Type: image/jpeg; name="photo-%d.jpg"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="photo-%d.jpg"\r\n\r\n' % (number, number)
    )
    lines = max(1, (octets - len(head)) // 78)  # 76 characters and CRLF a line
    encoded = base64.encodebytes(rng.randbytes(lines * _B64_LINE_OCTETS))
    return head + encoded.replace(b"\n", b"\r\n")


def _quoted_text(octets: int, rng: random.Random) -> bytes:
    """About ``octets`` of quoted reply text: lines of 40 to 76 characters from a fixed pool."""
    pool = _prose_lines()
    lines = [b"> On Tuesday you wrote:\r\n"]
    average = sum(map(len, pool)) / len(pool)
    lines += rng.choices(pool, k=max(1, round(octets / average)))
    return b"".join(lines) + b"\r\n"


@functools.cache
def _prose_lines() -> tuple[bytes, ...]:
    """1,024 quoted lines, the same every time (a Python call per word would take minutes)."""
    rng = random.Random(0)  # noqa: S311 - corpus, not keys
    out = []
    for _ in range(1024):
        width = rng.randint(40, 76)
        words = [">"]
        while len(" ".join(words)) < width - 8:
            words.append(rng.choice(_PROSE))
        out.append(" ".join(words).encode() + b"\r\n")
    return tuple(out)


def expected_form(raw: bytes) -> bytes:
    """A corpus message as a Maildir client stores it: LF line ends, a final line end.

    Dovecot serves a message without a final line end with one added (RFC 1939 needs the CRLF before
    the terminating dot), so that is the byte-exact truth on the wire.
    """
    text = raw.replace(b"\r\n", b"\n")
    return text if text.endswith(b"\n") else text + b"\n"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Scenario:
    key: str
    title: str
    mailbox: str  # scenarios with the same mailbox share one Dovecot user
    corpus: Callable[[], list[bytes]]
    latency: bool = False
    noop: bool = False


def scenarios(quick: bool) -> list[Scenario]:
    scale = 10 if quick else 1
    n_varied, n_latency, n_small = 2000 // scale, 300 // scale, 20_000 // scale
    large_mb = 10 if quick else 100
    small_corpus = _cached(lambda: small(n_small, seed=3))
    return [
        Scenario(
            "1", f"{n_varied:,} varied, first run", "varied", _cached(lambda: varied(n_varied, 1))
        ),
        Scenario(
            "2",
            f"{n_latency:,} varied at 50 ms RTT",
            "latency",
            _cached(lambda: varied(n_latency, 2)),
            latency=True,
        ),
        Scenario("3", f"{n_small:,} small, first run", "small", small_corpus),
        Scenario(
            "4",
            f"one {large_mb} MB message",
            "large",
            _cached(lambda: [large_attachment_message(large_mb * 1024 * 1024)]),
        ),
        Scenario("5", f"no-op over {n_small:,} archived", "small", small_corpus, noop=True),
    ]


def _cached(make: Callable[[], list[bytes]]) -> Callable[[], list[bytes]]:
    box: list[list[bytes]] = []

    def get() -> list[bytes]:
        if not box:
            box.append(make())
        return box[0]

    return get


# -- latency proxy -----------------------------------------------------------------------------


class LatencyProxy:
    """A TCP proxy on loopback that delays every chunk by ``delay`` seconds each way.

    Chunks are forwarded in order as soon as their delay has passed; nothing is throttled (the
    bandwidth stays loopback's), so it models a long link, not a slow one. With no delay it only
    counts connections: ``peak`` is the most that were open at once (exact, not sampled;
    from the accept until the client's end of stream).
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        # Connections open now and the most open at once (only the proxy's thread writes them).
        self.active = 0
        self.peak = 0

    def start(self) -> LatencyProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = future.result(10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, HOST, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # A connection counts from its accept until its client closes its side (its
        # end of stream), not until both halves are closed: a run that has just ended
        # must not overlap the next one's connect in the count.
        self.active += 1
        self.peak = max(self.peak, self.active)
        counted = True

        def client_gone() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.active -= 1

        try:
            try:
                server_r, server_w = await asyncio.open_connection(HOST, self.target_port)
            except OSError:
                client_w.close()
                return
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.gather(
                    self._pipe(client_r, server_w, on_end=client_gone),
                    self._pipe(server_r, client_w),
                )
            for writer in (client_w, server_w):
                writer.close()
        finally:
            client_gone()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await reader.read(256 * 1024)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
        except OSError:
            queue.put_nowait((loop.time(), b""))
        if on_end is not None:
            on_end()
        await sender


# -- tools -------------------------------------------------------------------------------------


@dataclass
class Account:
    port: int
    username: str
    password: str


class Tool:
    name = ""

    def command(self, state: Path, account: Account) -> list[str]:
        """Write the tool's config under ``state`` (fresh) and return its command line."""
        raise NotImplementedError

    def maildir(self, state: Path) -> Path:
        raise NotImplementedError

    def archived(self, state: Path) -> list[bytes]:
        """Every stored message, as stored, with CRLF turned into LF."""
        return self.read_maildir(self.maildir(state))

    def read_maildir(self, maildir: Path) -> list[bytes]:
        files = [
            path
            for sub in ("cur", "new")
            if (maildir / sub).is_dir()
            for path in (maildir / sub).iterdir()
            if path.is_file()
        ]
        return [self.normalize(path.read_bytes()) for path in files]

    def normalize(self, data: bytes) -> bytes:
        return data.replace(b"\r\n", b"\n")

    def expect(self, raw: bytes) -> bytes:
        """A corpus message as this tool must store it."""
        return expected_form(raw)


def _private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def _make_maildir(folder: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


class Popvault(Tool):
    name = "popvault"

    def command(self, state: Path, account: Account) -> list[str]:
        config = _private(
            state / "config.toml",
            f"""\
[ledger]
url = "sqlite:///{state / "ledger.sqlite3"}"

[archive]
root = "{state / "archive"}"

[[accounts]]
name = "bench"
host = "{HOST}"
port = {account.port}
security = "plain"
allow_plaintext = true
auth = "user"
username = "{account.username}"
password = "{account.password}"
format = "maildir"
retention = "keep"
""",
        )
        return [str(ROOT / ".venv" / "bin" / "popvault"), "run", "--config", str(config)]

    def maildir(self, state: Path) -> Path:
        return state / "archive" / "bench"


class Mpop(Tool):
    name = "mpop"

    def command(self, state: Path, account: Account) -> list[str]:
        maildir = _make_maildir(self.maildir(state))
        config = _private(
            state / "mpoprc",
            f"""\
defaults
account bench
host {HOST}
port {account.port}
tls off
auth user
user {account.username}
password {account.password}
keep on
only_new on
received_header off
uidls_file {state / "uidls"}
delivery maildir {maildir}
""",
        )
        return ["mpop", "--quiet", f"--file={config}", "bench"]

    def maildir(self, state: Path) -> Path:
        return state / "Maildir"


class Getmail(Tool):
    name = "getmail6"

    def command(self, state: Path, account: Account) -> list[str]:
        maildir = _make_maildir(self.maildir(state))
        getmaildir = state / "getmail"
        user_line = ""
        if os.getuid() == 0:
            # getmail6 refuses to deliver as root: its Maildir destination's `user` delivers as
            # another (it forks a delivery process for every message either way).
            user_line = f"user = {DELIVERY_USER}\n"
            mail = pwd.getpwnam(DELIVERY_USER)
            for path in (state, maildir, *(maildir / s for s in ("cur", "new", "tmp"))):
                os.chown(path, mail.pw_uid, mail.pw_gid)
        rcfile = _private(
            getmaildir / "getmailrc",
            f"""\
[retriever]
type = SimplePOP3Retriever
server = {HOST}
port = {account.port}
username = {account.username}
password = {account.password}

[destination]
type = Maildir
path = {maildir}/
{user_line}
[options]
verbose = 0
read_all = false
delete = false
delivered_to = false
received = false
message_log_syslog = false
""",
        )
        return ["getmail", "--quiet", f"--getmaildir={getmaildir}", f"--rcfile={rcfile}"]

    def maildir(self, state: Path) -> Path:
        return state / "Maildir"

    def expect(self, raw: bytes) -> bytes:
        # getmail6 always writes a Return-Path header of its own first (from the message's first
        # Return-Path or Sender field, else "unknown") and drops the message's own Return-Path
        # fields; everything else must come through as the other tools store it.
        text = expected_form(raw)
        head, sep, body = text.partition(b"\n\n")
        fields: list[list[bytes]] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1].append(line)
            else:
                fields.append([line])

        def value(name: bytes) -> bytes | None:
            for field_lines in fields:
                key, colon, rest = b"\n".join(field_lines).partition(b":")
                if colon and key.strip().lower() == name:
                    return rest
            return None

        sender = value(b"return-path") or value(b"sender") or b"unknown"
        address = sender.decode("utf-8", "replace")
        if "<" in address:
            address = address.split("<")[1].split(">")[0]
        address = " ".join(part.strip() for part in address.splitlines())
        kept = [
            b"\n".join(f)
            for f in fields
            if b"\n".join(f).partition(b":")[0].strip().lower() != b"return-path"
        ]
        return f"Return-Path: <{address}>\n".encode() + b"\n".join(kept) + sep + body


TOOLS: dict[str, Tool] = {t.name: t for t in (Popvault(), Mpop(), Getmail())}


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Measurement:
    wall: float
    maxrss_kb: int
    ok: bool
    note: str = ""


def run_measured(argv: list[str], state: Path) -> tuple[float, int, int]:
    """Run ``argv`` to its end: (wall seconds, its own peak RSS in KiB, exit code).

    Through GNU time: a child forked from this process (which holds the corpus) would report this
    process's RSS as its own (Linux keeps the high-water mark across exec); time is small.
    """
    env = dict(os.environ)
    env.update(
        HOME=str(state / "home"),
        XDG_CONFIG_HOME=str(state / "xdg-config"),
        XDG_STATE_HOME=str(state / "xdg-state"),
        XDG_DATA_HOME=str(state / "xdg-data"),
        XDG_CACHE_HOME=str(state / "xdg-cache"),
    )
    (state / "home").mkdir(parents=True, exist_ok=True)
    rss_file = state / "maxrss"
    timed = [GNU_TIME, "-q", "-f", "%M", "-o", str(rss_file), *argv]
    with (state / "stdout").open("wb") as out, (state / "stderr").open("wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen(timed, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        # A blocking wait: Popen.wait(timeout) polls in steps of up to 50 ms, too coarse for mpop.
        killer = threading.Timer(RUN_TIMEOUT, process.kill)
        killer.start()
        code = process.wait()
        wall = time.perf_counter() - start
        killer.cancel()
    try:
        rss = int(rss_file.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        rss = 0
    return wall, rss, code


def check(tool: Tool, state: Path, corpus_digests: collections.Counter[str]) -> tuple[bool, str]:
    got = collections.Counter(digest(m) for m in tool.archived(state))
    if got == corpus_digests:
        return True, ""
    missing = sum((corpus_digests - got).values())
    extra = sum((got - corpus_digests).values())
    return (
        False,
        f"{missing} of {sum(corpus_digests.values())} not byte-exact/missing, {extra} extra",
    )


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


@dataclass
class Row:
    scenario: Scenario
    tool: str
    messages: int
    octets: int
    runs: list[Measurement] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(m.wall for m in self.runs)

    @property
    def rss_mb(self) -> float:
        return max(m.maxrss_kb for m in self.runs) / 1024

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.runs)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the daemon scenario ---------------------------------------------------------------------

# Issue #9: 500 small accounts on one server, every 5 minutes, under 25% of one core, at most
# max_concurrent connections, a no-op tick of one account cheaper than mpop's no-op run. The
# schedule is compressed (every DAEMON_EVERY instead of 5 minutes) so that a window of a minute
# holds several ticks of every account; the CPU a tick costs is then projected to the real schedule.
DAEMON_KEY = "6"  # its --scenario name
DAEMON_ACCOUNTS = 500
DAEMON_MESSAGES = 10  # small messages in each account, archived by its first run
DAEMON_EVERY = 15.0  # seconds; its jitter (a tenth) spreads the ticks
DAEMON_WINDOW = 60.0  # seconds of steady state measured, after every account's first run
DAEMON_REAL_EVERY = 300.0  # the schedule the projection is for
DAEMON_MAX_CONCURRENT = 4  # [daemon] max_concurrent (its default)
DAEMON_MPOP_SAMPLES = 20  # mpop no-op runs timed, over as many accounts
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class DaemonResult:
    accounts: int
    messages: int
    every: float
    window: float = 0.0
    ticks: int = 0  # account runs that ended within the window
    cpu: float = 0.0  # the daemon's user + system seconds within the window
    run_median: float | None = None  # wall seconds of one run (from the ledger), in the window
    peak_connections: int = 0
    rss_kb: int = 0
    mpop_wall: float | None = None
    mpop_cpu: float | None = None
    ok: bool = False
    note: str = ""


def process_cpu(pid: int) -> float:
    """User + system seconds of a process so far, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15


def process_peak_rss(pid: int) -> int:
    """The process's peak RSS in KiB so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def ended_runs(ledger: Path) -> int:
    """Runs the ledger has recorded as ended (read-only, beside the daemon's writes)."""
    if not ledger.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
            return int(
                db.execute("SELECT count(*) FROM runs WHERE ended_at IS NOT NULL").fetchone()[0]
            )
    except sqlite3.Error:
        return 0  # the schema is not there yet


def median_run_seconds(ledger: Path, since_runs: int) -> float | None:
    """The median wall time of the runs after the first ``since_runs`` (ended ones)."""
    query = (
        "SELECT (julianday(ended_at) - julianday(started_at)) * 86400.0 FROM runs"
        " WHERE ended_at IS NOT NULL ORDER BY id LIMIT -1 OFFSET ?"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
            values = [row[0] for row in db.execute(query, (since_runs,)) if row[0] is not None]
    except sqlite3.Error:
        return None
    return statistics.median(values) if values else None


def daemon_config(state: Path, accounts: list[Account], every: float) -> Path:
    blocks = [
        f"""\
[[accounts]]
name = "a{i:04d}"
host = "{HOST}"
port = {account.port}
username = "{account.username}"
password = "{account.password}"
"""
        for i, account in enumerate(accounts)
    ]
    return _private(
        state / "config.toml",
        f"""\
[ledger]
url = "sqlite:///{state / "ledger.sqlite3"}"

[archive]
root = "{state / "archive"}"

[daemon]
max_concurrent = {DAEMON_MAX_CONCURRENT}

[defaults]
security = "plain"
allow_plaintext = true
auth = "user"
format = "maildir"
retention = "keep"
every = "{every:g}s"

"""
        + "\n".join(blocks),
    )


def wait_for(
    what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], limit: float
) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"popvault daemon exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {limit:.0f} s")
        time.sleep(0.2)


def mpop_noop(accounts: list[Account], work: Path) -> tuple[float, float]:
    """Median wall and user + system seconds of mpop's no-op run (each account archived first)."""
    tool = TOOLS["mpop"]
    walls, cpus = [], []
    for i, account in enumerate(accounts):
        state = work / f"daemon-mpop-{i}"
        state.mkdir(parents=True)
        argv = tool.command(state, account)
        _, _, code = run_measured(argv, state)
        if code != 0:
            raise RuntimeError(f"mpop's first run: exit {code}: {tail(state / 'stderr')}")
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)  # CPU of mpop itself, to the microsecond
        walls.append(time.perf_counter() - start)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"mpop's no-op run: exit {process.returncode}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        shutil.rmtree(state, ignore_errors=True)
    return statistics.median(walls), statistics.median(cpus)


def daemon_scenario(quick: bool, work: Path, *, with_mpop: bool) -> DaemonResult:
    """Run ``popvault daemon`` over many small accounts; see DAEMON_ACCOUNTS and below."""
    n = DAEMON_ACCOUNTS // (10 if quick else 1)
    window = DAEMON_WINDOW / (3 if quick else 1)
    result = DaemonResult(n, DAEMON_MESSAGES, DAEMON_EVERY)
    corpus = small(n * DAEMON_MESSAGES, seed=6)
    say(
        f"== daemon: {n} accounts x {DAEMON_MESSAGES} messages, {sum(map(len, corpus)) / MB:.1f} MB"
    )
    with dovecot() as server:
        direct: list[Account] = []
        for i in range(n):
            mailbox = server.add_user()
            fill(mailbox, corpus[i * DAEMON_MESSAGES : (i + 1) * DAEMON_MESSAGES], server.port)
            direct.append(Account(server.port, mailbox.username, mailbox.password))
        proxy = LatencyProxy(server.port, 0.0).start()
        try:
            accounts = [Account(proxy.port, a.username, a.password) for a in direct]
            if with_mpop:
                result.mpop_wall, result.mpop_cpu = mpop_noop(accounts[:DAEMON_MPOP_SAMPLES], work)
            proxy.peak = 0
            _measure_daemon(result, accounts, corpus, work, window)
            result.peak_connections = proxy.peak
        finally:
            proxy.stop()
    return result


def _measure_daemon(
    result: DaemonResult, accounts: list[Account], corpus: list[bytes], work: Path, window: float
) -> None:
    state = work / "daemon-popvault"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    (state / "home").mkdir()
    config = daemon_config(state, accounts, result.every)
    ledger = state / "ledger.sqlite3"
    argv = [str(ROOT / ".venv" / "bin" / "popvault"), "daemon", "--config", str(config)]
    env = dict(os.environ, HOME=str(state / "home"))
    with (state / "stderr").open("wb") as err:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        try:
            n = len(accounts)
            wait_for(
                f"first run of all {n} accounts", lambda: ended_runs(ledger) >= n, process, 900
            )
            runs0, cpu0, t0 = ended_runs(ledger), process_cpu(process.pid), time.monotonic()
            time.sleep(window)
            runs1, cpu1, t1 = ended_runs(ledger), process_cpu(process.pid), time.monotonic()
            result.rss_kb = process_peak_rss(process.pid)
        finally:
            process.terminate()
            code = process.wait(120)
    result.window, result.ticks, result.cpu = t1 - t0, runs1 - runs0, cpu1 - cpu0
    result.run_median = median_run_seconds(ledger, runs0)
    if code != 0:
        result.note = f"daemon exit {code}: {tail(state / 'stderr')}"
        return
    _check_daemon_archive(result, state, corpus)
    if result.ok:
        shutil.rmtree(state, ignore_errors=True)


def _check_daemon_archive(result: DaemonResult, state: Path, corpus: list[bytes]) -> None:
    tool = TOOLS["popvault"]
    got: collections.Counter[str] = collections.Counter()
    for i in range(result.accounts):
        got.update(digest(m) for m in tool.read_maildir(state / "archive" / f"a{i:04d}"))
    want = collections.Counter(digest(tool.expect(m)) for m in corpus)
    result.ok = got == want
    if not result.ok:
        missing, extra = sum((want - got).values()), sum((got - want).values())
        result.note = f"{missing} of {len(corpus)} not byte-exact/missing, {extra} extra"
        say(f"!! MISMATCH daemon scenario: {result.note} (its state: {state})")


def daemon_table(r: DaemonResult) -> str:
    due = r.accounts * r.window / (r.every + jitter_mean(r.every))
    per_tick = r.cpu / r.ticks if r.ticks else None
    # The goal's load (DAEMON_ACCOUNTS every DAEMON_REAL_EVERY), also after a --quick run.
    projected = (
        per_tick * DAEMON_ACCOUNTS / DAEMON_REAL_EVERY * 100 if per_tick is not None else None
    )
    rows = [
        ("accounts x small messages", f"{r.accounts} x {r.messages}"),
        ("schedule (compressed)", f"every {r.every:g} s (+ up to {r.every / 10:g} s jitter)"),
        ("window after every first run", f"{r.window:.1f} s"),
        ("account runs ended in the window", f"{r.ticks} (about {due:.0f} due)"),
        (
            "daemon CPU (user+sys) in the window",
            f"{r.cpu:.2f} s = {r.cpu / r.window * 100:.1f}% of one core" if r.window else "-",
        ),
        (
            "CPU per no-op tick of one account",
            f"{per_tick * 1000:.1f} ms" if per_tick is not None else "-",
        ),
        (
            "wall per run (median, ledger)",
            f"{r.run_median * 1000:.1f} ms" if r.run_median is not None else "-",
        ),
        (
            f"projected: {DAEMON_ACCOUNTS} accounts every {DAEMON_REAL_EVERY / 60:g} min",
            f"{projected:.2f}% of one core" if projected is not None else "-",
        ),
        (
            "most connections at once (proxy count)",
            f"{r.peak_connections} (max_concurrent {DAEMON_MAX_CONCURRENT})",
        ),
        ("daemon peak RSS", f"{r.rss_kb / 1024:.1f} MB"),
        (
            "mpop no-op run of one account (median)",
            f"{r.mpop_wall * 1000:.1f} ms wall, {r.mpop_cpu * 1000:.1f} ms CPU"
            if r.mpop_wall is not None and r.mpop_cpu is not None
            else "-",
        ),
        ("every archived message byte-exact", "yes" if r.ok else f"NO: {r.note[:60]}"),
    ]
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    head = f"| {'daemon scenario'.ljust(width)} | {'popvault daemon'.ljust(value_width)} |"
    sep = f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|"
    return "\n".join(
        [head, sep, *(f"| {k.ljust(width)} | {v.ljust(value_width)} |" for k, v in rows)]
    )


def jitter_mean(every: float) -> float:
    """The mean delay APScheduler's jitter adds to an interval (uniform up to a tenth, <= 60 s)."""
    return min(every / 10, 60.0) / 2


# -- main --------------------------------------------------------------------------------------


def fill(mailbox: DovecotMailbox, corpus: list[bytes], port: int) -> None:
    for raw in corpus:
        mailbox.deliver(raw)
    # One session first, so that Dovecot's index is built before anything is timed.
    pop = poplib.POP3(HOST, port, timeout=600)
    try:
        pop.user(mailbox.username)
        pop.pass_(mailbox.password)
        count, _ = pop.stat()
        if count != len(corpus):
            raise RuntimeError(f"Dovecot lists {count} messages, {len(corpus)} delivered")
        pop.uidl()
    finally:
        pop.quit()


@contextlib.contextmanager
def dovecot() -> Iterator[DovecotServer]:
    binary = find_dovecot()
    if binary is None:
        raise SystemExit("Dovecot not found (benchmarks/run installs dovecot-pop3d)")
    root = make_private_root()
    server = DovecotServer(binary, root, make_tls_certs(root / "tls"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure(
    *,
    tool: Tool,
    scenario: Scenario,
    account: Account,
    work: Path,
    digests: collections.Counter[str],
    template: dict[str, Path],
    rep: int,
) -> Measurement:
    # A first run gets a new folder per repetition, none deleted until the benchmark
    # ends: on ext4 without a journal (this VM's disk) creating files right after
    # thousands were deleted makes the inode allocator skip the recently freed ones
    # (the kernel's recently_deleted()), a cost of the harness, not of the tool that
    # runs next. A no-op run creates no files: its state is copied to one path.
    state = work / f"s{scenario.key}-{tool.name}" / ("noop" if scenario.noop else f"r{rep}")
    shutil.rmtree(state, ignore_errors=True)
    if scenario.noop:
        # Fresh state that has archived everything: one untimed first run, copied for each
        # repetition (same path, so that every absolute path in the state stays right).
        if tool.name not in template:
            state.mkdir(parents=True)
            argv = tool.command(state, account)
            _, _, code = run_measured(argv, state)
            if code != 0:
                return Measurement(
                    0.0, 0, False, f"setup run exit {code}: {tail(state / 'stderr')}"
                )
            saved = work / f"template-{tool.name}"
            shutil.rmtree(saved, ignore_errors=True)
            shutil.copytree(state, saved, symlinks=True)
            template[tool.name] = saved
            shutil.rmtree(state)
        shutil.copytree(template[tool.name], state, symlinks=True)
        argv = tool.command(state, account)
    else:
        state.mkdir(parents=True)
        argv = tool.command(state, account)
    wall, rss, code = run_measured(argv, state)
    if code != 0:
        note = f"exit {code}: {tail(state / 'stderr')}"
        return Measurement(wall, rss, False, note)
    ok, note = check(tool, state, digests)
    if not ok:
        say(
            f"!! MISMATCH {tool.name} scenario {scenario.key}: {note} (its state: {state};"
            " kept after the run only with --work)"
        )
        return Measurement(wall, rss, False, note)
    return Measurement(wall, rss, True)


def table(rows: list[Row]) -> str:
    head = ["scenario", "tool", "wall (median)", "msg/s", "MB/s", "peak RSS", "x mpop", "exact"]
    lines = []
    mpop = {r.scenario.key: r.wall for r in rows if r.tool == "mpop" and r.runs}
    for row in rows:
        if not row.runs:
            continue
        wall = row.wall
        noop = row.scenario.noop
        rate = "-" if noop or wall == 0 else f"{row.messages / wall:,.0f}"
        mbs = "-" if noop or wall == 0 else f"{row.octets / MB / wall:,.1f}"
        base = mpop.get(row.scenario.key)
        ratio = f"{wall / base:.2f}x" if base else "-"
        exact = "yes" if row.ok else "NO: " + next(m.note for m in row.runs if not m.ok)[:60]
        lines.append(
            [
                f"{row.scenario.key}. {row.scenario.title}",
                row.tool,
                f"{wall:.3f} s",
                rate,
                mbs,
                f"{row.rss_mb:.1f} MB",
                ratio,
                exact,
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep, *(fmt(line) for line in lines)])


def repetitions(
    *,
    scenario: Scenario,
    tools: list[Tool],
    account: Account,
    work: Path,
    repeat: int,
) -> list[Row]:
    """Every tool ``repeat`` times in turn (A B A B) on the scenario's mailbox."""
    corpus = scenario.corpus()
    octets = sum(len(m) for m in corpus)
    rows = [Row(scenario, t.name, len(corpus), octets) for t in tools]
    template: dict[str, Path] = {}
    expected = {t.name: collections.Counter(digest(t.expect(m)) for m in corpus) for t in tools}
    for rep in range(repeat):
        for tool, row in zip(tools, rows, strict=True):
            m = measure(
                tool=tool,
                scenario=scenario,
                account=account,
                work=work,
                digests=expected[tool.name],
                template=template,
                rep=rep,
            )
            row.runs.append(m)
            status = "ok" if m.ok else f"FAILED {m.note}"
            say(
                f"   scenario {scenario.key} rep {rep + 1} {tool.name:9} "
                f"{m.wall:8.3f} s {m.maxrss_kb / 1024:7.1f} MB {status}"
            )
    return rows


def run_all(chosen: list[Scenario], tools: list[Tool], work: Path, repeat: int) -> list[Row]:
    rows: list[Row] = []
    with dovecot() as server:
        accounts: dict[str, Account] = {}
        proxy: LatencyProxy | None = None
        try:
            for scenario in chosen:
                if scenario.mailbox not in accounts:
                    corpus = scenario.corpus()
                    say(
                        f"== mailbox {scenario.mailbox}: {len(corpus):,} messages, "
                        f"{sum(len(m) for m in corpus) / MB:.1f} MB"
                    )
                    mailbox = server.add_user()
                    fill(mailbox, corpus, server.port)
                    accounts[scenario.mailbox] = Account(
                        server.port, mailbox.username, mailbox.password
                    )
                account = accounts[scenario.mailbox]
                if scenario.latency:
                    proxy = proxy or LatencyProxy(server.port, ONE_WAY_DELAY).start()
                    account = Account(proxy.port, account.username, account.password)
                rows += repetitions(
                    scenario=scenario, tools=tools, account=account, work=work, repeat=repeat
                )
        finally:
            if proxy is not None:
                proxy.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="counts /10, a 10 MB large message")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per tool (default 3)")
    parser.add_argument(
        "--scenario", action="append", help="only these (1-5, 6 = the daemon; repeatable)"
    )
    parser.add_argument("--tool", action="append", choices=list(TOOLS), help="only these tools")
    parser.add_argument("--work", type=Path, help="folder for the tools' state (default: a temp)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    tools = [TOOLS[name] for name in (args.tool or list(TOOLS))]
    chosen = [s for s in scenarios(args.quick) if not args.scenario or s.key in args.scenario]
    work = args.work or Path(tempfile.mkdtemp(prefix="popvault-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # getmail6's delivery user must reach its Maildir
    run_daemon = "popvault" in (t.name for t in tools) and (
        not args.scenario or DAEMON_KEY in args.scenario
    )
    try:
        rows = run_all(chosen, tools, work, args.repeat) if chosen else []
        daemon = (
            daemon_scenario(args.quick, work, with_mpop="mpop" in (t.name for t in tools))
            if run_daemon
            else None
        )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}"
    print(
        f"popvault benchmark {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"{' --quick' if args.quick else ''} --repeat {args.repeat}; {machine}"
    )
    print(f"Dovecot on loopback, plain POP3; latency scenario {ONE_WAY_DELAY * 2000:.0f} ms RTT")
    if rows:
        print(table(rows))
    bad = sorted({row.tool for row in rows if not row.ok})
    if daemon is not None:
        print(
            f"\n{DAEMON_KEY}. the daemon (one run: not repeated), the schedule compressed from"
            f" {DAEMON_REAL_EVERY / 60:g} min to {daemon.every:g} s:"
        )
        print(daemon_table(daemon))
        if not daemon.ok:
            bad = sorted({*bad, "popvault"})
    if bad:
        print(
            f"\n!! NOT BYTE-EXACT OR FAILED: {', '.join(bad)} (see above; the tools' state is kept"
            " only with --work)"
        )
    # getmail6 rewrites some messages (it regenerates them with Python's email package, which
    # refolds long header fields): loud above, but only popvault or mpop failing fails the command.
    return 1 if set(bad) & {"popvault", "mpop"} else 0


if __name__ == "__main__":
    sys.exit(main())
