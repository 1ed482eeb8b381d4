"""The shipped systemd unit, the README and the command line agree with the code."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from popvault.cli import build_parser
from popvault.config import load
from popvault.daemon.core import DISPATCH_POLL_S
from popvault.daemon.metrics import Metrics
from popvault.daemon.notify import WATCHDOG_SHARE
from popvault.ledger.engine import SQLITE_BUSY_TIMEOUT_MS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def unit_text() -> str:
    return resources.files("popvault").joinpath("systemd/popvault.service").read_text("utf-8")


def test_the_readme_shows_the_shipped_unit_verbatim():
    blocks = re.findall(r"```ini\n(.*?)```", README, re.DOTALL)
    assert blocks == [unit_text()]


def test_the_unit_runs_the_daemon_and_reloads_with_sighup():
    unit = unit_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ):
        assert line in unit.splitlines()
    assert re.search(r"^ExecStart=\S*popvault daemon --config \S+$", unit, re.MULTILINE)
    assert re.search(r"^ReadWritePaths=\S+", unit, re.MULTILINE)
    stop = int(re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)[1])
    assert stop > load(ROOT / "config.example.toml", environ={}).daemon.shutdown_timeout
    # A keep-alive every quarter of the interval, a dispatcher step at least every
    # DISPATCH_POLL_S: the rest of the interval is what one step may take before systemd
    # restarts the daemon, and it must hold a step that waits out SQLite's busy timeout twice.
    watchdog = int(re.search(r"^WatchdogSec=(\d+)s$", unit, re.MULTILINE)[1])
    budget = watchdog * (1 - WATCHDOG_SHARE) - DISPATCH_POLL_S
    assert budget > 2 * SQLITE_BUSY_TIMEOUT_MS / 1000


def test_the_daemon_command_and_its_flags_are_documented():
    args = build_parser().parse_args(["daemon", "--log-format", "json", "--log-level", "debug"])
    assert (args.log_format, args.log_level) == ("json", "debug")
    assert "popvault daemon [--log-format text|json]" in README
    for key in ("max_concurrent", "shutdown_timeout", "metrics", "every", "cron"):
        assert f"`{key}`" in README


def test_every_metric_is_documented():
    names = {metric.name for metric in Metrics().registry.collect()}
    assert names
    for name in names:
        # Counters are collected without their "_total" suffix.
        assert re.search(rf"`{re.escape(name)}(_total)?`", README), name


def test_the_example_config_documents_the_daemon():
    config = load(ROOT / "config.example.toml", environ={})
    personal, work, _office = config.accounts
    assert personal.schedule.every == 900
    assert work.schedule.cron == "0 * * * *"
    assert config.daemon.metrics is None
