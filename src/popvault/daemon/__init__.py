"""``popvault daemon``: archive every account on its schedule, for months, unattended.

Modules: ``core`` (APScheduler wiring, one job per account, rescheduling),
``backoff`` (pure backoff policy chosen from the error), ``metrics``
(Prometheus registry and HTTP endpoint), ``logs`` (text and JSON log lines),
``signals`` (SIGTERM/SIGINT/SIGHUP), ``main`` (the main loop).
"""

from popvault.daemon.main import run_daemon

__all__ = ["run_daemon"]
