"""``popvault daemon``'s main loop: lock, metrics endpoint, scheduler, signals, systemd."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Final

from popvault import config as config_module
from popvault.archive_root import check_archive_root
from popvault.config import Config
from popvault.daemon.core import ArchiveDaemon
from popvault.daemon.metrics import Metrics, MetricsServer
from popvault.daemon.notify import Notifier
from popvault.daemon.signals import SignalRequests
from popvault.errors import ConfigError, LedgerError, StoreError
from popvault.ledger import Ledger

log = logging.getLogger("popvault.daemon")

# How often the schedule rows are marked live for `status` (it calls a row
# stale after 10 minutes without this).
HEARTBEAT_S: Final = 60.0
# The main loop also wakes this often, so a missed wake-up costs at most this.
TICK_S: Final = 1.0


def run_daemon(config: Config) -> int:
    """Run until SIGTERM/SIGINT; 0 after a clean stop.

    Raises DaemonRunning, ConfigError, and ArchiveMismatch for an archive root
    (or an account's own folder) that is not the one the ledger's files live in.
    Under systemd (``$NOTIFY_SOCKET``), the dispatcher's first step sends
    ``READY=1``, so a start-up check that fails never does: the unit fails;
    ``daemon.stop`` sends ``STOPPING=1``.
    """
    notifier = Notifier.from_environment()
    with Ledger.open(config.ledger_url, upgrade=True) as ledger, ledger.daemon_lock():
        check_archive_root(config, ledger)
        metrics = Metrics()
        daemon = ArchiveDaemon(config, ledger, metrics=metrics, notifier=notifier)
        server = _start_metrics(config, metrics, daemon)
        signals = SignalRequests()
        signals.install()
        daemon.start()
        try:
            _loop(daemon, ledger, signals, notifier)
        finally:
            log.info("stopping: no new runs; waiting for the runs in progress")
            finished = daemon.stop(daemon.config.daemon.shutdown_timeout)
            if server is not None:
                server.stop()
    if not finished:
        _exit_now(daemon.config.daemon.shutdown_timeout)
    log.info("daemon stopped")
    return 0


def _loop(
    daemon: ArchiveDaemon, ledger: Ledger, signals: SignalRequests, notifier: Notifier
) -> None:
    beat = time.monotonic()
    while not signals.stop_requested:
        signals.wait(TICK_S)
        if signals.take_reload() and not signals.stop_requested:
            # sd_notify(3): RELOADING=1 ... READY=1 brackets the reload, so that
            # `systemctl reload` (systemd 253 and later) returns once it is done;
            # READY=1 again after a refused config too: the old one runs on.
            notifier.reloading()
            _reload(daemon, ledger)
            notifier.ready(daemon.status_line())
        if time.monotonic() - beat >= HEARTBEAT_S:
            daemon.heartbeat()
            beat = time.monotonic()


def _reload(daemon: ArchiveDaemon, ledger: Ledger) -> None:
    """Read the config file again; an invalid one is reported and the old one kept.

    So is one whose archive root (or a new account's own folder) is not the one
    the ledger's files live in: the check made at start-up, made again.
    """
    log.info("SIGHUP: reloading %s", daemon.config.file)
    try:
        new = config_module.load(daemon.config.file)
        check_archive_root(new, ledger)
    except (ConfigError, StoreError, LedgerError) as exc:  # the ledger unreachable, too
        log.error("configuration not reloaded, keeping the previous one: %s", exc)
        return
    daemon.reload(new)


def _start_metrics(config: Config, metrics: Metrics, daemon: ArchiveDaemon) -> MetricsServer | None:
    if config.daemon.metrics is None:
        return None
    host, port = config.daemon.metrics
    try:
        server = MetricsServer(
            metrics, host, port, lambda: daemon.healthy, status_page=daemon.status_page
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = f"cannot serve metrics on {host}:{port}: {reason}"
        raise ConfigError(message, file=str(config.file), key="daemon.metrics") from None
    server.start()
    log.info(
        "metrics on http://%s:%d/metrics, health on /healthz, status page on /", host, server.port
    )
    return server


def _exit_now(timeout: float) -> None:
    """Runs still going after the bound: leave without waiting for their threads."""
    log.warning(
        "runs still in progress after %gs; exiting anyway (what they archived is durable,"
        " the rest is fetched by the next run)",
        timeout,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)
