"""The issue's acceptance check: the daemon on a real Dovecot, one account with a wrong password."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest
from daemon_helpers import DaemonProcess, free_port, wait_for

from popvault.testing import sample_messages
from workspace import Workspace, dovecot_account, maildir_form, wire_form

pytestmark = pytest.mark.dovecot


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def test_good_account_is_archived_while_the_bad_one_backs_off(
    dovecot, dovecot_mailbox, tmp_path, monkeypatch, daemons
):
    ws = Workspace(tmp_path)
    victim = dovecot.add_user()
    monkeypatch.setenv("PW_GOOD", dovecot_mailbox.password)
    monkeypatch.setenv("PW_BAD", "certainly-not-the-password")
    port = free_port()
    ws.write_config(
        [
            dovecot_account(dovecot, dovecot_mailbox.username, "good", every="1s"),
            dovecot_account(dovecot, victim.username, "bad", every="1s"),
        ]
    )
    ws.config.write_text(
        ws.config.read_text() + f'\n[daemon]\nmetrics = "127.0.0.1:{port}"\n', encoding="utf-8"
    )
    raws = sample_messages(5, seed=11)
    for raw in raws[:3]:
        dovecot_mailbox.deliver(raw)
    victim.deliver(raws[4])
    daemon = DaemonProcess(ws)
    daemons.append(daemon)
    wait_for(lambda: len(ws.archived_files("good")) == 3, what="the first messages")
    for raw in raws[3:]:
        dovecot_mailbox.deliver(raw)
    wait_for(lambda: len(ws.archived_files("good")) == 5, timeout=10, what="later deliveries")

    # Dovecot answers a failed login late (auth_failure_delay, more after repeated failures).
    def bad_outcomes():
        return ws.ledger_rows("SELECT outcome FROM runs WHERE account = 'bad'")

    wait_for(lambda: ("failed",) in bad_outcomes(), what="the refused login's run to end")
    time.sleep(2)  # a few more ticks of the 1 s schedule

    stored = sorted(path.read_bytes() for path in ws.archived_files("good"))
    assert stored == sorted(maildir_form(wire_form(raw)) for raw in raws)
    assert bad_outcomes() == [("failed",)], "a refused password is not retried within minutes"
    assert len(ws.ledger_rows("SELECT id FROM runs WHERE account = 'good'")) >= 3
    assert daemon.logged("refused the credentials")

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        metrics = reply.read().decode()
    status = {row["name"]: row for row in json.loads(ws.cli("status", "--json").out)}
    good = status["good"]
    assert good["archived_messages"] == 5
    assert 'popvault_messages_archived_total{account="good"} 5.0' in metrics
    assert (
        f'popvault_bytes_archived_total{{account="good"}} {float(good["archived_bytes"])}'
        in metrics
    )
    assert 'popvault_consecutive_failures{account="bad"} 1.0' in metrics
    assert status["bad"]["consecutive_failures"] == 1
    assert good["next_run_at"] is not None

    began = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(35) == 0, daemon.text()
    assert time.monotonic() - began < 30
    assert "certainly-not-the-password" not in daemon.text()
    assert dovecot_mailbox.password not in daemon.text()
