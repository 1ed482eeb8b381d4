"""``popvault daemon`` as a child process: signals, reload, the daemon lock, status, metrics."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest
from daemon_helpers import (
    PASSWORD,
    DaemonProcess,
    account,
    free_port,
    ledger_state,
    wait_for,
)

from popvault.daemon.logs import RUN_FIELDS
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace


@pytest.fixture
def spawn() -> Iterator:
    started: list[DaemonProcess] = []

    def _spawn(ws: Workspace, **options) -> DaemonProcess:
        process = DaemonProcess(ws, **options)
        started.append(process)
        return process

    yield _spawn
    for process in started:
        process.kill()


def tmp_files(ws: Workspace, name: str) -> list:
    return [path for path in (ws.archive / name / "tmp").glob("*") if path.is_file()]


def test_sigterm_during_a_large_download_exits_0_with_nothing_half_recorded(ws, spawn):
    big = [b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200 for _ in range(40)]
    with FakePop3Server(big, username="bob", password=PASSWORD) as slow:
        slow.delay = 0.05  # each reply: the download takes seconds
        # A window of 4: a stop lets the RETRs already sent finish, no more.
        ws.write_config([account("acct", slow, every="1h", pipeline_depth=4)])
        ws.config.write_text(
            ws.config.read_text() + '\n[daemon]\nshutdown_timeout = "10s"\n', encoding="utf-8"
        )
        daemon = spawn(ws)
        wait_for(lambda: len(ws.archived_files("acct")) >= 2, what="the download to be going")
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.text()
        assert time.monotonic() - began < 10
        assert slow.commands[-1] == "QUIT", "the session ended cleanly"
        archived, pending = ledger_state(ws, "acct")
        assert pending == 0
        assert 2 <= archived < 40, "it stopped early, after the message in flight"
        assert archived == len(ws.archived_files("acct"))
        assert not tmp_files(ws, "acct")
        runs = daemon.runs("acct")
        assert runs
        assert runs[-1]["outcome"] == "interrupted"
        assert ws.ledger_rows("SELECT outcome FROM runs") == [("ok",)]
        # The next run takes up where this one stopped: each message archived once.
        slow.delay = 0
        result = ws.cli("run")
        assert result.code == 0, result.output
    assert ledger_state(ws, "acct") == (40, 0)
    assert len(ws.archived_files("acct")) == 40


def test_a_second_sigterm_exits_at_once(ws, spawn, server):
    server.hang_on("RETR", after_octets=30)
    ws.write_config([account("acct", server, timeout="60s")])
    ws.config.write_text(
        ws.config.read_text() + '\n[daemon]\nshutdown_timeout = "60s"\n', encoding="utf-8"
    )
    daemon = spawn(ws)
    wait_for(lambda: any(c.startswith("RETR") for c in server.commands), what="the hung RETR")
    daemon.signal(signal.SIGTERM)
    wait_for(lambda: daemon.logged("stopping"), what="the first signal to be noticed")
    assert daemon.process.poll() is None, "the first signal waits for the run in progress"
    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 128 + signal.SIGTERM
    assert time.monotonic() - began < 3
    assert "second signal" in daemon.text()
    # Nothing half-recorded: the next run archives everything, each message once.
    server.clear_faults()
    assert ledger_state(ws, "acct") == (0, 0)
    result = ws.cli("run")
    assert result.code == 0, result.output
    assert ledger_state(ws, "acct") == (3, 0)
    assert len(ws.archived_files("acct")) == 3


def test_sighup_adds_an_account_and_keeps_the_old_config_when_the_new_is_invalid(ws, spawn, server):
    with FakePop3Server(sample_messages(2), username="bob", password=PASSWORD) as other:
        ws.write_config([account("acct", server)])
        daemon = spawn(ws)
        wait_for(lambda: len(ws.archived_files("acct")) == 3)

        # status while the daemon runs: the next run is known.
        def next_runs():
            rows = json.loads(ws.cli("status", "--json").out)
            return rows if all(row["next_run_at"] for row in rows) else None

        (row,) = wait_for(next_runs, what="status to show the next run")
        # The run line comes once the run has ended, after its files are archived.
        first_run = wait_for(lambda: daemon.runs("acct"), what="the first run's line")[0]
        for key in ("ts", "level", "logger", "message", *RUN_FIELDS):
            assert key in first_run, key
        assert (first_run["outcome"], first_run["messages"], first_run["error"]) == ("ok", 3, None)
        assert row["consecutive_failures"] == 0

        ws.write_config([account("acct", server), account("other", other)])
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: len(ws.archived_files("other")) == 2, what="the new account")

        ws.config.write_text(ws.config.read_text() + "\nusernmae = 'x'\n", encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.logged("configuration not reloaded"), what="the refusal")
        refusal = next(r for r in daemon.records() if "not reloaded" in r["message"])
        assert str(ws.config) in refusal["message"]
        assert "usernmae" in refusal["message"]
        server.add_message(b"Subject: later\r\n\r\nlater\r\n")
        wait_for(lambda: len(ws.archived_files("acct")) == 4, what="the old config at work")

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0, daemon.text()
        ws.write_config([account("acct", server), account("other", other)])
    rows = json.loads(ws.cli("status", "--json").out)
    assert all(row["next_run_at"] is None for row in rows)
    assert PASSWORD not in daemon.text()


def test_a_second_daemon_on_the_same_ledger_refuses(ws, spawn, server):
    ws.write_config([account("acct", server)])
    first = spawn(ws)
    wait_for(lambda: first.logged("daemon started"))
    second = spawn(ws, log_name="second.log")
    assert second.wait(15) == 1
    assert "another popvault daemon is already running" in second.text()
    assert first.process.poll() is None
    first.signal(signal.SIGINT)
    assert first.wait(15) == 0


def test_the_metrics_endpoint_reports_the_counts(ws, spawn, server):
    port = free_port()
    ws.write_config([account("acct", server)])
    ws.config.write_text(
        ws.config.read_text() + f'\n[daemon]\nmetrics = "127.0.0.1:{port}"\n', encoding="utf-8"
    )
    daemon = spawn(ws)
    wait_for(lambda: len(daemon.runs("acct")) >= 1)

    def get(path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return str(reply.read().decode())

    assert get("/healthz") == "ok\n"
    text = get("/metrics")
    archived_bytes = json.loads(ws.cli("status", "--json").out)[0]["archived_bytes"]
    assert 'popvault_messages_archived_total{account="acct"} 3.0' in text
    assert f'popvault_bytes_archived_total{{account="acct"}} {float(archived_bytes)}' in text
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
