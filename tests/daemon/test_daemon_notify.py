"""systemd's Type=notify (issue 12 part 3): READY, STATUS, WATCHDOG, RELOADING and STOPPING.

The test plays systemd: it binds the AF_UNIX datagram socket named in
``$NOTIFY_SOCKET`` (a path, or an abstract "@" address) and reads what a real
``popvault daemon`` process sends it. The watchdog's keep-alive must come from
the dispatcher's own loop: with the loop held up (a PostgreSQL table lock in a
real process, a ledger that blocks in this one) the keep-alives stop, and
resume when it runs again. Then notify.py's rules on their own: the abstract
address, no socket no-op, ``$WATCHDOG_PID`` of another process, a socket that
is gone, one-line STATUS.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from daemon_helpers import PASSWORD, DaemonProcess, account, wait_for

from popvault import config as config_module
from popvault.daemon.core import ArchiveDaemon, _AccountState, status_line
from popvault.daemon.notify import Notifier, Watchdog, socket_address, watchdog_usec
from popvault.ledger import Ledger
from popvault.redaction import temporary_secrets
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace

# WATCHDOG_USEC for the daemons under test: 2 s, so a keep-alive at least every 1 s
# (sd_watchdog_enabled(3): every half of the interval).
WATCHDOG_USEC = 2_000_000
HALF_S = WATCHDOG_USEC / 1e6 / 2


class FakeSystemd:
    """The notification socket: every datagram received, with its arrival time."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._received: list[tuple[float, list[str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._received.append((time.monotonic(), data.decode().split("\n")))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()
        if isinstance(self.address, str):
            Path(self.address).unlink(missing_ok=True)

    def messages(self) -> list[tuple[float, list[str]]]:
        with self._lock:
            return list(self._received)

    def lines(self) -> list[str]:
        """Every assignment received, in order."""
        return [line for _, message in self.messages() for line in message]

    def times(self, assignment: str, since: float = 0.0) -> list[float]:
        return [at for at, message in self.messages() if assignment in message and at >= since]

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for line in self.lines() if line.startswith("STATUS=")]

    def wait(self, predicate: Callable[[FakeSystemd], Any], what: str, timeout: float = 20) -> Any:
        return wait_for(lambda: predicate(self), timeout=timeout, what=what)


def abstract_name() -> str:
    return f"@popvault-test-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture
def systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., FakeSystemd]]:
    """A maker of notification sockets: ``systemd("path" | "abstract", environ=, watchdog=)``.

    ``environ``: set the variables systemd sets (``$NOTIFY_SOCKET``, and
    ``$WATCHDOG_USEC`` with ``watchdog``) for the daemon processes started next.
    """
    made: list[FakeSystemd] = []

    def make(kind: str, *, environ: bool = False, watchdog: bool = False) -> FakeSystemd:
        value = str(tmp_path / "notify.sock") if kind == "path" else abstract_name()
        address = socket_address(value)
        assert address is not None
        made.append(FakeSystemd(address))
        if environ:
            monkeypatch.setenv("NOTIFY_SOCKET", value)
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
            if watchdog:
                monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
            else:
                monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def assert_paced(times: list[float], *, at_least: int) -> None:
    """Keep-alives at least every half of WATCHDOG_USEC (and not a flood)."""
    assert len(times) >= at_least, times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) <= HALF_S, gaps
    assert min(gaps) >= 0.1, gaps  # paced to a quarter of the interval, not every wake-up


# -- a real daemon process ----------------------------------------------------------


def test_a_daemon_under_systemd_reports_ready_status_watchdog_and_stopping(
    ws: Workspace, server, daemons, systemd
):
    with FakePop3Server(sample_messages(1), username="bob", password="not-the-one") as refusing:
        ws.write_config([account("good", server, every="1h"), account("bad", refusing, every="1h")])
        fake = systemd("path", environ=True, watchdog=True)
        daemon = DaemonProcess(ws)
        daemons.append(daemon)
        fake.wait(lambda f: "READY=1" in f.lines(), "READY=1")
        ready = fake.times("READY=1")[0]
        first = fake.messages()[0][1]
        assert first[0] == "READY=1", fake.lines()
        assert first[1].startswith("STATUS=2 accounts: "), first
        assert daemon.logged("daemon started")
        # Both first runs end (one refused login): the STATUS= line follows.
        wait_for(lambda: daemon.runs("good") and daemon.runs("bad"), what="both first runs")
        fake.wait(
            lambda f: any(s.startswith("2 accounts: 1 ok, 1 failing (bad)") for s in f.statuses()),
            "a STATUS= line naming the failing account",
        )
        line = next(s for s in fake.statuses() if "failing (bad)" in s)
        assert "; next run " in line, line
        assert line.endswith(" UTC"), line
        assert len(ws.archived_files("good")) == 3
        # The keep-alives since READY=1, at the pace WATCHDOG_USEC asks for.
        fake.wait(lambda f: len(f.times("WATCHDOG=1", ready)) >= 5, "five keep-alives")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.text()
        assert_paced(fake.times("WATCHDOG=1", ready), at_least=5)
    lines = fake.lines()
    assert "STOPPING=1" in lines
    after = lines[lines.index("STOPPING=1") + 1 :]
    assert not [item for item in after if item.startswith(("READY=", "STATUS=2", "WATCHDOG="))]
    assert all(len(message) <= 2 for _, message in fake.messages()), "one line of STATUS each"
    assert PASSWORD not in "\n".join(lines)


def test_an_abstract_socket_gets_ready_reloading_and_stopping(ws, server, daemons, systemd):
    ws.write_config([account("acct", server, every="1h")])
    fake = systemd("abstract", environ=True)
    daemon = DaemonProcess(ws)
    daemons.append(daemon)
    fake.wait(lambda f: "READY=1" in f.lines(), "READY=1")
    wait_for(lambda: daemon.runs("acct"), what="the first run")

    daemon.signal(signal.SIGHUP)
    fake.wait(lambda f: f.lines().count("READY=1") == 2, "READY=1 after the reload")
    lines = fake.lines()
    reloading = lines.index("RELOADING=1")
    assert lines[reloading + 1].startswith("MONOTONIC_USEC="), lines
    assert int(lines[reloading + 1].split("=")[1]) > 0
    assert reloading < max(n for n, line in enumerate(lines) if line == "READY=1")
    assert "WATCHDOG=1" not in lines, "no WATCHDOG_USEC: no keep-alives"

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0, daemon.text()
    assert fake.lines()[-2:] == ["STOPPING=1", "STATUS=stopping: waiting for the runs in progress"]


@pytest.mark.postgres
def test_the_keep_alives_stop_while_the_dispatcher_hangs_on_a_locked_ledger(
    ws, server, daemons, systemd, database
):
    ws.write_config([account("acct", server, every="1h")], ledger_url=database)
    fake = systemd("path", environ=True, watchdog=True)
    daemon = DaemonProcess(ws)
    daemons.append(daemon)
    fake.wait(lambda f: "READY=1" in f.lines(), "READY=1")
    wait_for(lambda: daemon.runs("acct"), what="the first run")
    with psycopg.connect(database) as lock:
        # Every dispatcher step reads the schedules table: its next step waits for the lock.
        lock.execute("LOCK TABLE schedules IN ACCESS EXCLUSIVE MODE")
        locked = time.monotonic()
        time.sleep(2.3)  # longer than WATCHDOG_USEC: systemd would restart this daemon
        pings = fake.times("WATCHDOG=1", since=locked)
        # At most the one of a step that passed the table before the lock came.
        assert len(pings) <= 1, pings
        assert daemon.process.poll() is None
        lock.rollback()
    released = time.monotonic()
    fake.wait(lambda f: f.times("WATCHDOG=1", since=released), "the keep-alives again", timeout=5)
    assert fake.times("WATCHDOG=1", since=released)[0] - released < HALF_S
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0, daemon.text()


# -- the dispatcher loop in this process --------------------------------------------


class BlockingLedger:
    """A Ledger whose claim_due waits while ``hold`` is set (the dispatcher's one query)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.hold = threading.Event()
        self.waiting = threading.Event()
        self.release = threading.Event()

    def claim_due(self, *args: Any, **kwargs: Any) -> Any:
        if self.hold.is_set():
            self.waiting.set()
            self.release.wait(20)
        return self._ledger.claim_due(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def test_the_keep_alive_is_the_dispatcher_loops_own(ws, server, systemd):
    fake = systemd("path")
    ws.write_config([account("acct", server, every="1h")])
    cfg = config_module.load(ws.config)
    notifier = Notifier(fake.address, watchdog_usec=1_000_000)  # a ping every 0.25 s
    threads = threading.active_count()
    Watchdog(notifier).beat()
    assert threading.active_count() == threads, "the watchdog starts no thread of its own"
    with Ledger.open(cfg.ledger_url, upgrade=True) as real:
        ledger = BlockingLedger(real)
        daemon = ArchiveDaemon(cfg, ledger, notifier=notifier)  # type: ignore[arg-type]
        daemon.start()
        try:
            fake.wait(lambda f: len(f.times("WATCHDOG=1")) >= 3, "keep-alives")
            ledger.hold.set()
            assert ledger.waiting.wait(5), "the dispatcher reached the ledger"
            stuck = time.monotonic()
            time.sleep(1.2)
            assert fake.times("WATCHDOG=1", since=stuck + 0.3) == []  # one in flight
            ledger.hold.clear()
            ledger.release.set()
            resumed = time.monotonic()
            fake.wait(lambda f: f.times("WATCHDOG=1", since=resumed), "keep-alives again", 2)
        finally:
            ledger.release.set()
            daemon.stop(5)
    assert "STOPPING=1" in fake.lines()


# -- the STATUS= line ---------------------------------------------------------------


def states(*failures: int, next_runs: list[datetime] | None = None) -> list[_AccountState]:
    """Accounts acct0, acct1, ... with these failures in a row (only the name is read)."""
    out = []
    for n, count in enumerate(failures):
        state = _AccountState(SimpleNamespace(name=f"acct{n}"))  # type: ignore[arg-type]
        state.failures = count
        state.next_run_at = None if next_runs is None else next_runs[n]
        out.append(state)
    return out


NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_the_status_line_counts_ok_failing_running_and_names_the_next_run():
    at = [NOW + timedelta(minutes=5), NOW + timedelta(minutes=1), NOW - timedelta(seconds=1)]
    line = status_line(states(0, 2, 0, next_runs=at), {"acct2"}, NOW)
    assert line == "3 accounts: 2 ok, 1 failing (acct1), 1 running; next run 12:01:00 UTC"
    line = status_line(states(1, 1, 1, 1, 0), set(), NOW)
    assert line == "5 accounts: 1 ok, 4 failing (acct0, acct1, acct2, ...)"
    tomorrow = [NOW + timedelta(days=1)]
    assert status_line(states(0, next_runs=tomorrow), (), NOW) == (
        "1 account: 1 ok, 0 failing; next run 2026-12-04 12:00 UTC"
    )
    overdue = [NOW - timedelta(seconds=3)]
    assert status_line(states(0, next_runs=overdue), (), NOW).endswith("next run due now")


# -- notify.py on its own -----------------------------------------------------------


def test_the_notify_socket_address_forms():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/42") == (
        b"\0/org/freedesktop/systemd1/notify/42"
    )
    for unusable in ("vsock:2:1234", "relative/path", "@"):
        assert socket_address(unusable) is None


def test_an_abstract_socket_receives_the_datagram(systemd):
    fake = systemd("abstract")
    assert isinstance(fake.address, bytes)
    assert fake.address.startswith(b"\0")
    environ = {"NOTIFY_SOCKET": "@" + fake.address[1:].decode()}
    notifier = Notifier.from_environment(environ)
    assert notifier.ready("1 account: 1 ok")
    fake.wait(lambda f: f.lines() == ["READY=1", "STATUS=1 account: 1 ok"], "the datagram")
    assert environ == {}, "unset, as sd_notify(3)'s unset_environment does"


def test_without_notify_socket_nothing_is_sent():
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled
    assert notifier.watchdog_usec is None
    assert not notifier.ready("x")
    assert not notifier.stopping()
    assert not notifier.watchdog()
    watchdog = Watchdog(notifier)
    assert not watchdog.enabled
    assert not watchdog.beat()
    assert watchdog.poll_s(1.0) == 1.0


def test_the_watchdog_is_ours_only_when_watchdog_pid_names_us():
    usec = {"WATCHDOG_USEC": "2000000"}
    assert watchdog_usec(usec, pid=100) == 2_000_000
    assert watchdog_usec({**usec, "WATCHDOG_PID": "100"}, pid=100) == 2_000_000
    assert watchdog_usec({**usec, "WATCHDOG_PID": "101"}, pid=100) is None
    for bad in ("", "0", "-5", "2s"):
        assert watchdog_usec({"WATCHDOG_USEC": bad}, pid=100) is None
    environ = {"NOTIFY_SOCKET": "/nonexistent/notify", **usec, "WATCHDOG_PID": "1"}
    assert Notifier.from_environment(environ, pid=os.getpid()).watchdog_usec is None


def test_the_watchdog_paces_its_keep_alives(systemd):
    fake = systemd("path")
    watchdog = Watchdog(Notifier(fake.address, watchdog_usec=2_000_000))
    assert watchdog.every == 0.5
    assert watchdog.poll_s(1.0) == 0.25, "the loop steps at least twice per keep-alive"
    sent = [watchdog.beat(now) for now in (10.0, 10.2, 10.49, 10.5, 10.9, 11.0)]
    assert sent == [True, False, False, True, False, True]
    fake.wait(lambda f: f.lines() == ["WATCHDOG=1"] * 3, "three keep-alives")


def test_a_socket_that_is_gone_raises_nothing_and_warns_once(tmp_path, caplog):
    path = tmp_path / "gone.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
    path.unlink()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000"})
    with caplog.at_level(logging.DEBUG, logger="popvault.daemon"):
        assert not notifier.ready("x")
        assert not notifier.watchdog()
        assert not notifier.stopping()
    levels = [record.levelno for record in caplog.records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG], caplog.text
    assert "could not notify systemd (READY=1)" in caplog.records[0].getMessage()


def test_a_notify_socket_that_is_no_socket_address_is_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="popvault.daemon"):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:9"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "not a socket path" in caplog.text


def test_status_is_one_line_without_secrets(systemd):
    fake = systemd("path")
    notifier = Notifier(fake.address)
    with temporary_secrets() as secret:
        secret("hunter2-Secret")
        assert notifier.status("a\nREADY=1\rMAINPID=1 hunter2-Secret \x1b[2J")
    fake.wait(lambda f: f.lines(), "the status")
    assert fake.lines() == ["STATUS=a\\nREADY=1\\rMAINPID=1 *** \\x1b[2J"]
