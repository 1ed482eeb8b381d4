"""Log lines: the JSON formatter and the text of a run's line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from popvault.daemon.logs import JsonFormatter
from popvault.daemon.runlog import RunLine
from popvault.errors import AuthError
from popvault.ledger import AccountBusy
from popvault.sync import RunResult

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(message: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("popvault.daemon", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_the_run_fields_and_nothing_else():
    fields = {"account": "a", "outcome": "ok", "messages": 2, "bytes": 10, "secret": "no"}
    line = JsonFormatter().format(record("account 'a': ok", run=fields))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "popvault.daemon"
    assert entry["message"] == "account 'a': ok"
    assert datetime.fromisoformat(entry["ts"]).tzinfo is not None
    assert (entry["account"], entry["messages"], entry["bytes"]) == ("a", 2, 10)
    assert "secret" not in entry


def test_json_lines_carry_a_traceback_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"]


def test_a_run_line_names_counts_next_run_and_error_once():
    result = RunResult(account="a", started_at=T0, messages=3, octets=2048, on_server=7)
    result.error = "account 'a': server said -ERR [AUTH] invalid login"
    result.exception = AuthError("invalid login", code="AUTH")
    line = RunLine("a", result, "failed", 1.25)
    text = line.text(T0, "the server refused the credentials")
    assert text.startswith(
        "account 'a': failed: 3 new message(s), 2.0 KiB downloaded, 0 deleted, 7 on server"
    )
    assert "next run 2026-03-01" in text
    assert "(the server refused the credentials)" in text
    assert text.count("account 'a'") == 1
    assert line.level == logging.ERROR
    fields = line.fields(T0)
    assert (fields["duration_s"], fields["next_run_at"]) == (1.25, T0.isoformat())


def test_our_own_lock_is_only_info():
    result = RunResult(account="a", started_at=T0)
    result.error = "busy"
    result.exception = AccountBusy("a", 1)
    assert RunLine("a", result, "failed", 0.0).level == logging.INFO
    result = RunResult(account="a", started_at=T0)
    assert RunLine("a", result, "ok", 0.0).fields(None)["on_server"] is None
