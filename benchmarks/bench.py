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
import collections
import contextlib
import hashlib
import os
import platform
import poplib
import pwd
import shutil
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


def varied(count: int, seed: int) -> list[bytes]:
    """Varied messages: attachments, 8-bit bodies, dot lines, long lines, no final newline."""
    return sample_messages(count, seed=seed)


def small(count: int, seed: int) -> list[bytes]:
    """``count`` sample messages under SMALL_LIMIT octets (every kind but the huge line)."""
    out: list[bytes] = []
    batch = 0
    while len(out) < count:
        out += [m for m in sample_messages(count, seed=seed + batch) if len(m) < SMALL_LIMIT]
        batch += 1
    return out[:count]


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
    bandwidth stays loopback's), so it models a long link, not a slow one.
    """

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

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
        try:
            server_r, server_w = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            client_w.close()
            return
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        for writer in (client_w, server_w):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        files = [
            path
            for sub in ("cur", "new")
            if (self.maildir(state) / sub).is_dir()
            for path in (self.maildir(state) / sub).iterdir()
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
) -> Measurement:
    state = work / f"s{scenario.key}-{tool.name}"
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
            f"!! MISMATCH {tool.name} scenario {scenario.key}: {note} (its state: {state}, until"
            " the next repetition; after the run only with --work)"
        )
        return Measurement(wall, rss, False, note)
    shutil.rmtree(state, ignore_errors=True)
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
            )
            row.runs.append(m)
            status = "ok" if m.ok else f"FAILED {m.note}"
            say(
                f"   scenario {scenario.key} rep {rep + 1} {tool.name:9} "
                f"{m.wall:8.3f} s {m.maxrss_kb / 1024:7.1f} MB {status}"
            )
    for saved in template.values():
        shutil.rmtree(saved, ignore_errors=True)
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
    parser.add_argument("--scenario", action="append", help="only these (1-5; repeatable)")
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
    try:
        rows = run_all(chosen, tools, work, args.repeat)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}"
    print(
        f"popvault benchmark {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"{' --quick' if args.quick else ''} --repeat {args.repeat}; {machine}"
    )
    print(f"Dovecot on loopback, plain POP3; latency scenario {ONE_WAY_DELAY * 2000:.0f} ms RTT")
    print(table(rows))
    bad = sorted({row.tool for row in rows if not row.ok})
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
