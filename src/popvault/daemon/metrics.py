"""Prometheus metrics of the daemon and the small HTTP server that serves them.

The metrics live in a registry of their own (not prometheus_client's global
one), served at ``/metrics`` in the Prometheus text format by
prometheus_client itself; ``/healthz`` answers 200 "ok" while the scheduler
runs and 503 otherwise (for systemd watchdogs, load balancers, probes); ``/``
is the read-only status page (:mod:`.statuspage`) when the daemon gives one;
any other path is 404.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

from popvault.daemon.statuspage import PageData, render_page
from popvault.errors import LedgerError

log = logging.getLogger("popvault.daemon")

# A run takes from a second (nothing new) to hours (a first download of a big mailbox).
RUN_BUCKETS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """Every metric of the daemon, per account, in one private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["account"]
        reg = self.registry
        self.archived = Counter(
            "popvault_messages_archived",
            "Messages in the archive: the ledger's count at start-up, then each one archived.",
            labels,
            registry=reg,
        )
        self.archived_bytes = Counter(
            "popvault_bytes_archived",
            "Octets of archived messages as stored (the ledger's sizes, as `status` shows).",
            labels,
            registry=reg,
        )
        self.deleted = Counter(
            "popvault_messages_deleted",
            "Server copies deleted by the retention policy since the daemon started.",
            labels,
            registry=reg,
        )
        self.runs = Counter(
            "popvault_runs",
            "Runs by outcome: ok, partial (some messages failed), failed, interrupted.",
            ["account", "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "popvault_run_duration_seconds",
            "How long each run took.",
            labels,
            buckets=RUN_BUCKETS,
            registry=reg,
        )
        self.last_success = Gauge(
            "popvault_last_success_timestamp_seconds",
            "Unix time at which the latest successful run ended.",
            labels,
            registry=reg,
        )
        self.failures = Gauge(
            "popvault_consecutive_failures",
            "Failed runs in a row (0 after a success).",
            labels,
            registry=reg,
        )
        self.on_server = Gauge(
            "popvault_messages_on_server",
            "Messages the server listed in the latest run that got that far.",
            labels,
            registry=reg,
        )

        self.oauth_expiry = Gauge(
            "popvault_oauth_token_expiry_timestamp_seconds",
            "Unix time at which the account's OAuth 2.0 access token expires (OAuth accounts).",
            labels,
            registry=reg,
        )
        self.oauth_refresh_failures = Counter(
            "popvault_oauth_refresh_failures",
            "OAuth 2.0 token refreshes that failed (a refused grant, or the server unreachable).",
            labels,
            registry=reg,
        )
        self.oauth_login_needed = Gauge(
            "popvault_oauth_login_needed",
            "1 when only `popvault auth login` can renew the account's token, else 0.",
            labels,
            registry=reg,
        )
        # What the alert on a missing success compares with (issue 12): the
        # schedule's longest gap between runs (popvault.daemon.interval).
        self.interval = Gauge(
            "popvault_account_interval_seconds",
            "The longest time the account's schedule leaves between two runs.",
            labels,
            registry=reg,
        )

        # Per daemon, not per account: with several daemons on one PostgreSQL
        # ledger, each one's /metrics shows its share of the runs (issue 11).
        self.daemon_runs = Counter(
            "popvault_daemon_runs",
            "Runs this daemon process did, of every account (its share of the shared schedule).",
            registry=reg,
        )
        self.daemon_running = Gauge(
            "popvault_daemon_running_accounts",
            "Accounts this daemon process is running now (at most [daemon] max_concurrent).",
            registry=reg,
        )
        # An account that has not succeeded since the daemon started has no
        # last-success series yet: the alert counts from this instead.
        self.daemon_start = Gauge(
            "popvault_daemon_start_timestamp_seconds",
            "Unix time at which this daemon process made its metrics (at start-up).",
            registry=reg,
        )
        self.daemon_start.set(time.time())
        self.archive_space = ArchiveSpace()
        reg.register(self.archive_space)

    def watch_archive(self, root: Callable[[], Path]) -> None:
        """Report the free space of the file system of ``root()`` (read at each scrape)."""
        self.archive_space.root = root

    def grow_archive(self, account: str, messages: int, octets: int) -> None:
        """Add newly archived messages (never negative: a counter only grows)."""
        if messages > 0:
            self.archived.labels(account).inc(messages)
        if octets > 0:
            self.archived_bytes.labels(account).inc(octets)

    def forget(self, account: str) -> None:
        """Drop an account's series (it left the configuration)."""
        counters = (self.archived, self.archived_bytes, self.deleted, self.duration)
        for metric in (*counters, self.oauth_refresh_failures):
            _remove(metric, account)
        gauges = (self.last_success, self.failures, self.on_server, self.interval)
        for gauge in (*gauges, self.oauth_expiry, self.oauth_login_needed):
            _remove(gauge, account)
        for outcome in ("ok", "partial", "failed", "interrupted"):
            _remove(self.runs, account, outcome)


class ArchiveSpace:
    """A collector: the archive root's file system, measured with ``statvfs`` at each scrape.

    At scrape time rather than on a timer of the daemon's: always as fresh as
    the scrape, nothing to run between scrapes, and one ``statvfs`` call
    (microseconds) per scrape. The root is read through ``root`` at each
    scrape, so a reload that moves ``[archive] root`` is followed. A root that
    cannot be measured (not there yet, an unmounted share) has no sample.
    """

    def __init__(self) -> None:
        self.root: Callable[[], Path] | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples, for the registry's name check."""
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The free and total octets of the root's file system, labelled with the root."""
        free, size = self._families()
        root = self.root() if self.root is not None else None
        if root is not None:
            try:
                fs = os.statvfs(root)
            except OSError as exc:
                log.debug("no free space metric for %s: %s", root, exc)
            else:
                # f_bavail, not f_bfree: what a process without root's reserve may
                # still write (df's "Avail"); the root-reserved blocks are not ours.
                free.add_metric([str(root)], fs.f_bavail * fs.f_frsize)
                size.add_metric([str(root)], fs.f_blocks * fs.f_frsize)
        yield free
        yield size

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        free = GaugeMetricFamily(
            "popvault_archive_free_bytes",
            "Octets free for the daemon on the archive root's file system (as df's Avail).",
            labels=["path"],
        )
        size = GaugeMetricFamily(
            "popvault_archive_size_bytes",
            "Octets in all of the archive root's file system.",
            labels=["path"],
        )
        return free, size


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # no series for it yet
        metric.remove(*labels)


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request, none of them keeping the process alive."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log on standard error: scrapes every 15 s would drown the run lines."""

    def log_message(self, format: str, *args: Any) -> None:
        return


# The status page's headers. No script, no asset, nothing framed: the policy
# allows only the page's own inline style, so even text that escaped the
# escaping could run nothing. no-store: it shows the state of one moment.
PAGE_HEADERS: Final = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ("X-Content-Type-Options", "nosniff"),
)


class MetricsServer:
    """The HTTP endpoint on ``host:port``, in a thread: ``/metrics``, ``/healthz``, ``/``.

    ``status_page``: called per request of ``/`` (in that request's thread),
    it returns what the page shows; None: ``/`` is 404.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        status_page: Callable[[], PageData] | None = None,
    ):
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._healthy = healthy
        self._status_page = status_page
        # One page read at a time: at 10,000 accounts a read is seconds of ledger
        # queries, and many open tabs reloading at once must not multiply them.
        self._page_lock = threading.Lock()
        # Raises OSError when the address is taken or not ours.
        self._server = make_server(
            host, port, self._route, server_class=_Server, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="popvault-metrics", daemon=True
        )

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _route(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path == "/healthz":
            return self._health(start_response)
        provider = self._status_page
        if path == "/" and provider is not None:
            return self._page(provider, start_response)
        return _plain(start_response, "404 Not Found", b"not found: see /metrics, /healthz or /\n")

    def _health(self, start_response: StartResponse) -> list[bytes]:
        ok = self._healthy()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [b"ok\n" if ok else b"not running\n"]

    def _page(self, provider: Callable[[], PageData], start_response: StartResponse) -> list[bytes]:
        """The status page; unreadable, a 500 with a fixed text (no secret, no server text)."""
        try:
            with self._page_lock:
                body = render_page(provider())
        except LedgerError as exc:  # its text names the database with the password masked
            log.warning("status page: could not read the ledger: %s", exc)
            return _plain(
                start_response, _ERROR, b"status page unavailable: the ledger could not be read\n"
            )
        except Exception:  # a bug: logged (redacted), never shown
            log.exception("status page: unexpected error")
            return _plain(
                start_response, _ERROR, b"status page unavailable: see the daemon's log\n"
            )
        start_response("200 OK", [*PAGE_HEADERS, ("Content-Length", str(len(body)))])
        return [body]


_ERROR: Final = "500 Internal Server Error"


def _plain(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    start_response(status, headers)
    return [body]
