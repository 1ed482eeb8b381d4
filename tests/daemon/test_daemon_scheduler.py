"""ArchiveDaemon in this process, against fake servers, with schedules of a second."""

from __future__ import annotations

import itertools
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from daemon_helpers import PASSWORD, account, ledger_state, wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from popvault import config as config_module
from popvault.daemon.backoff import NETWORK, policy_for
from popvault.daemon.core import ArchiveDaemon
from popvault.daemon.metrics import Metrics, MetricsServer
from popvault.errors import LoginRefused
from popvault.ledger import Ledger
from popvault.sync import utc_now
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, maildir_form, wire_form


def fast(error: BaseException):
    """The real policy's choice, but in fractions of a second (for the tests' clock)."""
    return replace(policy_for(error), first=0.3, cap=1.0)


class Running:
    """A started ArchiveDaemon over the workspace's config; stopped at the end."""

    def __init__(self, ws: Workspace, **options) -> None:
        self.config = config_module.load(ws.config)
        self.ledger = Ledger.open(self.config.ledger_url)
        self.metrics = Metrics()
        self.daemon = ArchiveDaemon(self.config, self.ledger, metrics=self.metrics, **options)

    def __enter__(self) -> Running:
        self.daemon.start()
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            assert self.daemon.stop(10.0), "runs did not stop in time"
        finally:
            self.ledger.close()


def future_run(running: Running, name: str):
    """The account's next run once it is in the future (its first run has been done)."""
    planned = running.daemon.next_run(name)
    return planned if planned is not None and planned > utc_now() else None


def backed_off(running: Running, name: str) -> bool:
    """Whether the account waits at least 29 minutes (the refused-credentials backoff)."""
    planned = running.daemon.next_run(name)
    return planned is not None and planned >= utc_now() + timedelta(minutes=29)


def run_rows(ws: Workspace, name: str) -> list[tuple[str, str | None]]:
    return ws.ledger_rows("SELECT outcome, error FROM runs WHERE account = ? ORDER BY id", name)


def passes(srv: FakePop3Server) -> int:
    return sum(1 for command in srv.commands if command.startswith("PASS"))


def test_new_messages_are_archived_on_the_next_tick(ws, server):
    ws.write_config([account("acct", server)])
    with Running(ws, backoff=fast):
        wait_for(lambda: len(ws.archived_files("acct")) == 3, what="the first run")
        raw = b"From: a@example.org\r\nSubject: new\r\n\r\nnew mail\r\n"
        server.add_message(raw)
        wait_for(lambda: len(ws.archived_files("acct")) == 4, timeout=5, what="the next tick")
    stored = sorted(path.read_bytes() for path in ws.archived_files("acct"))
    assert maildir_form(wire_form(raw)) in stored
    assert ledger_state(ws, "acct") == (4, 0)
    # The daemon's schedule rows are gone once it stopped: status shows no next run.
    assert ws.ledger_rows("SELECT count(*) FROM schedules") == [(0,)]


def test_a_refused_password_backs_off_while_another_account_is_archived(ws, server, caplog):
    caplog.set_level(logging.INFO, logger="popvault.daemon")
    with FakePop3Server(sample_messages(2), username="bob", password="not-this") as wrong:
        ws.write_config([account("good", server), account("bad", wrong)])
        with Running(ws) as running:  # the real policy: 30 minutes after a refused login
            wait_for(lambda: run_rows(ws, "bad"), what="the bad account's first run")
            for number in range(3):
                server.add_message(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode())
                wait_for(lambda n=number: len(ws.archived_files("good")) == 4 + n, timeout=5)
            assert passes(wrong) == 1, "a refused password must not be retried within minutes"
            wait_for(lambda: backed_off(running, "bad"), timeout=1)
            status = json.loads(ws.cli("status", "--json").out)
            bad = next(row for row in status if row["name"] == "bad")
            good = next(row for row in status if row["name"] == "good")
            assert bad["consecutive_failures"] == 1
            assert good["consecutive_failures"] == 0
            assert good["next_run_at"] is not None
            assert bad["next_run_at"] is not None
    assert [outcome for outcome, _ in run_rows(ws, "bad")] == ["failed"]
    refused = [
        r.getMessage() for r in caplog.records if "refused the credentials" in r.getMessage()
    ]
    assert refused
    assert "will not log in to this account again for 30m" in refused[-1]
    assert PASSWORD not in caplog.text
    assert "not-this" not in caplog.text


def test_a_login_refused_for_a_damaged_mailbox_is_retried_soon_and_not_blamed_on_the_password(
    ws, server, caplog
):
    # The fake server announces RESP-CODES and AUTH-RESP-CODE; without [AUTH] the
    # refusal is the server's trouble (RFC 3206 section 6), not a wrong password.
    caplog.set_level(logging.INFO, logger="popvault.daemon")
    server.fail_command("PASS", "-ERR message is damaged", times=1)
    ws.write_config([account("acct", server, every="1h")])
    with Running(ws, backoff=fast):
        wait_for(lambda: len(ws.archived_files("acct")) == 3, what="archiving after the refusal")
    outcomes = run_rows(ws, "acct")
    assert [outcome for outcome, _ in outcomes] == ["failed", "ok"]
    assert "'-ERR message is damaged'" in (outcomes[0][1] or "")
    assert "refused the credentials" not in caplog.text
    assert "Fix the password" not in caplog.text
    assert policy_for(LoginRefused("message is damaged")).reason == NETWORK.reason


def test_a_run_still_going_is_logged_and_ends_at_its_session_deadline(ws, caplog):
    caplog.set_level(logging.INFO, logger="popvault.daemon")
    with FakePop3Server(sample_messages(40), username="alice", password=PASSWORD) as slow:
        slow.delay = 0.1  # each reply a little late: a run of several seconds
        ws.write_config([account("slow", slow, every="1h", session_timeout="3s")])
        with Running(ws, backoff=fast, long_run_after=0.5) as running:
            wait_for(lambda: slow.sessions >= 1, what="the first session")
            time.sleep(1.2)
            running.daemon.heartbeat()
            wait_for(
                lambda: [o for o, _ in run_rows(ws, "slow") if o != "running"],
                timeout=10,
                what="the run's end",
            )
    going = [r.getMessage() for r in caplog.records if "has been going for" in r.getMessage()]
    assert going, caplog.text
    assert "session_timeout = 3s" in going[0]
    (outcome, error), *_ = run_rows(ws, "slow")
    assert outcome == "failed"
    assert "the session took longer than 3s" in (error or "")


def test_in_use_is_retried(ws, server):
    server.fail_command("PASS", "-ERR [IN-USE] mailbox in use by another session", times=2)
    ws.write_config([account("acct", server, every="1h")])
    with Running(ws, backoff=fast):
        wait_for(lambda: len(ws.archived_files("acct")) == 3, what="archiving after [IN-USE]")
    outcomes = run_rows(ws, "acct")
    assert [outcome for outcome, _ in outcomes] == ["failed", "failed", "ok"]
    assert "IN-USE" in (outcomes[0][1] or "")
    assert passes(server) == 3


def test_a_server_hanging_mid_retr_is_timed_out_and_retried_with_nothing_lost(ws, server):
    originals = [raw for _, raw in server.mailbox]
    server.hang_on("RETR", after_octets=40)
    ws.write_config([account("acct", server, timeout="1s", every="1h")])
    with Running(ws, backoff=fast):
        # Wait for the hung run to have failed (not merely started), or the
        # fault could be cleared before its RETR ever reached the server.
        wait_for(
            lambda: [o for o, _ in run_rows(ws, "acct")][:1] == ["failed"],
            what="the hung run to fail",
        )
        assert ledger_state(ws, "acct") == (0, 0)
        server.clear_faults()
        wait_for(lambda: len(ws.archived_files("acct")) == 3, what="the retry")
    (first_outcome, first_error), *_ = run_rows(ws, "acct")
    assert first_outcome == "failed"
    assert "no answer" in (first_error or "")
    assert "within 1.0s" in (first_error or "")
    stored = sorted(path.read_bytes() for path in ws.archived_files("acct"))
    assert stored == sorted(maildir_form(wire_form(raw)) for raw in originals)
    assert ledger_state(ws, "acct") == (3, 0)


def test_a_run_longer_than_the_interval_never_overlaps_itself(ws):
    with FakePop3Server(sample_messages(8), username="bob", password=PASSWORD) as slow:
        slow.delay = 0.1  # about 2.5 s per run, with a 1 s schedule
        ws.write_config([account("acct", slow)])
        with Running(ws):
            wait_for(lambda: len(run_rows(ws, "acct")) >= 2, timeout=15, what="two runs")
        errors = [error or "" for _, error in run_rows(ws, "acct")]
        assert not any("IN-USE" in error or "another popvault" in error for error in errors)
        assert len(ws.archived_files("acct")) == 8


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_agree_with_the_archive_and_the_ledger(ws, server):
    ws.write_config([account("acct", server, retention="delete")])
    with Running(ws) as running:
        endpoint = MetricsServer(running.metrics, "127.0.0.1", 0, lambda: running.daemon.healthy)
        endpoint.start()
        try:
            wait_for(lambda: len(ws.archived_files("acct")) == 3)
            # The metrics of a run are set once it has ended: wait for them, not for its row.
            ok = ("popvault_runs_total", (("account", "acct"), ("outcome", "ok")))
            wait_for(lambda: samples(scrape(endpoint.port)[1]).get(ok, 0) >= 2, what="two runs")
            code, text = scrape(endpoint.port)
            assert code == 200
            assert scrape(endpoint.port, "/healthz") == (200, "ok\n")
            values = samples(text)
            label = (("account", "acct"),)
            (status,) = json.loads(ws.cli("status", "--json").out)
            assert values[("popvault_messages_archived_total", label)] == 3
            assert values[("popvault_bytes_archived_total", label)] == status["archived_bytes"]
            assert values[("popvault_messages_deleted_total", label)] == 3
            assert values[("popvault_messages_on_server", label)] == 0
            assert values[("popvault_consecutive_failures", label)] == 0
            ok_runs = values[("popvault_runs_total", (("account", "acct"), ("outcome", "ok")))]
            assert ok_runs >= 2
            assert values[("popvault_run_duration_seconds_count", label)] >= ok_runs
            assert values[("popvault_last_success_timestamp_seconds", label)] > 0
            running.daemon.stop(5.0)
            assert scrape(endpoint.port, "/healthz")[0] == 503
        finally:
            endpoint.stop()


def test_metrics_start_from_what_the_ledger_holds(ws, server):
    ws.write_config([account("acct", server)])
    assert ws.cli("run").code == 0
    with Running(ws) as running:
        wait_for(lambda: run_rows(ws, "acct")[1:], what="the daemon's first run")
        values = samples(_exposition(running.metrics))
        assert values[("popvault_messages_archived_total", (("account", "acct"),))] == 3


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_reload_adds_removes_and_changes_accounts(ws, server):
    with FakePop3Server(sample_messages(2), username="bob", password=PASSWORD) as other:
        ws.write_config([account("acct", server, every="1h")])
        with Running(ws) as running:
            wait_for(lambda: len(ws.archived_files("acct")) == 3)
            ws.write_config([account("other", other, every="1h")])
            running.daemon.reload(config_module.load(ws.config))
            wait_for(lambda: len(ws.archived_files("other")) == 2, what="the added account")
            assert running.daemon.next_run("acct") is None  # removed
            server.add_message(b"Subject: x\r\n\r\nx\r\n")
            other.add_message(b"Subject: y\r\n\r\ny\r\n")
            # A changed account runs again within seconds, although its schedule says 1h.
            ws.write_config([account("other", other, every="2h")])
            running.daemon.reload(config_module.load(ws.config))
            wait_for(lambda: len(ws.archived_files("other")) == 3, what="the changed account")
        assert len(ws.archived_files("acct")) == 3


def test_a_reload_after_fixing_a_refused_password_tries_again_at_once(ws, server):
    (ws.folder / "secret").write_text("wrong\n", encoding="utf-8")
    ws.write_config([account("acct", server)])
    with Running(ws) as running:
        wait_for(lambda: backed_off(running, "acct"), what="the refused login's backoff")
        (ws.folder / "secret").write_text(PASSWORD + "\n", encoding="utf-8")
        running.daemon.reload(config_module.load(ws.config))
        wait_for(lambda: len(ws.archived_files("acct")) == 3, what="the retry after reload")
        wait_for(lambda: running.daemon.next_run("acct") < utc_now() + timedelta(seconds=5))
    assert passes(server) >= 2


def test_a_cron_schedule_runs_at_start_up_then_on_the_minute(ws, server):
    ws.write_config([account("acct", server, every=None, cron="* * * * *")])
    with Running(ws) as running:
        wait_for(lambda: len(ws.archived_files("acct")) == 3, what="the start-up run")
        planned = wait_for(lambda: future_run(running, "acct"), what="the next minute's run")
        # The next whole minute, plus at most the cron jitter of 30 s.
        assert utc_now() < planned <= utc_now() + timedelta(seconds=91)
        assert planned.second <= 30


@pytest.mark.parametrize(
    "limits",
    ["max_concurrent = 1", "max_concurrent = 3\nmax_per_host = 1"],
    ids=["max_concurrent", "max_per_host"],
)
def test_max_concurrent_caps_how_many_accounts_run_at_once(ws, limits):
    # Every fake server listens on 127.0.0.1: one host for max_per_host.
    servers = [
        FakePop3Server(sample_messages(6), username="bob", password=PASSWORD).start()
        for _ in range(3)
    ]
    try:
        for srv in servers:
            srv.delay = 0.1  # about 2 s per run: without the cap, start-up runs overlap
        ws.write_config([account(f"acct{i}", srv, every="1h") for i, srv in enumerate(servers)])
        with ws.config.open("a", encoding="utf-8") as config:
            config.write(f"\n[daemon]\n{limits}\n")
        with Running(ws):
            wait_for(
                lambda: len(ws.ledger_rows("SELECT 1 FROM runs WHERE outcome = 'ok'")) == 3,
                timeout=30,
                what="one run of each account",
            )
        spans = sorted(
            (datetime.fromisoformat(start), datetime.fromisoformat(end))
            for start, end in ws.ledger_rows("SELECT started_at, ended_at FROM runs")
        )
        assert len(spans) == 3
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert end <= next_start, f"runs overlapped with {limits}: {spans}"
    finally:
        for srv in servers:
            srv.stop()
