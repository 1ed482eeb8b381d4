"""The daemon's scheduler: one APScheduler job per account, run in a thread pool.

* One job per account, ``max_instances=1`` and ``coalesce=True``: never two
  sessions on one account (RFC 1939 section 4: the server locks the maildrop);
  a run still going at its next tick makes that tick coalesce into the next.
* Accounts run concurrently up to ``[daemon] max_concurrent`` (the pool size).
* A failed run moves the account's job by the backoff of :mod:`.backoff`; a
  success returns it to its schedule. One account's trouble never touches the
  other jobs: :func:`~popvault.sync.sync_account` never raises for it.
* Each (re)scheduling is written to the ledger's ``schedules`` table, so that
  ``popvault status`` can show the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from popvault.config import Account, Config, Schedule, crontab_fields, format_seconds
from popvault.daemon.backoff import (
    Policy,
    expires_at_once,
    login_delay,
    plan_next,
    policy_for,
    waits_for_login_fix,
)
from popvault.daemon.metrics import Metrics
from popvault.daemon.runlog import RunLine, log_run
from popvault.errors import LedgerError, PopvaultError
from popvault.ledger import Ledger, ScheduleEntry
from popvault.signin import token_source
from popvault.sync import RunResult, sync_account, utc_now

log = logging.getLogger("popvault.daemon")

# Jitter (APScheduler adds 0..jitter seconds to each tick): a tenth of the
# interval, at most a minute, so that accounts on one server spread out.
JITTER_SHARE: Final = 0.1
JITTER_CAP_S: Final = 60.0
# Crontab lines have minute granularity: up to half a minute late is unnoticed.
CRON_JITTER_S: Final = 30.0
# The first runs (start-up, new accounts after SIGHUP) spread over this much.
START_SPREAD_S: Final = 2.0
# A run still going after this long is logged (again after each further stretch):
# half an hour is long for an incremental run, and its end may be far (the
# session deadline, default 24 h).
LONG_RUN_S: Final = 30 * 60.0


def jitter_for(schedule: Schedule) -> float:
    """The largest random delay added to each of the schedule's ticks."""
    if schedule.every is None:
        return CRON_JITTER_S
    return min(schedule.every * JITTER_SHARE, JITTER_CAP_S)


def make_trigger(schedule: Schedule, start: datetime) -> Any:
    """The APScheduler trigger for a schedule (cron in the machine's local time)."""
    jitter = jitter_for(schedule)
    if schedule.cron is not None:
        return CronTrigger(**crontab_fields(schedule.cron), jitter=jitter)
    every = schedule.every or 0.0
    return IntervalTrigger(seconds=every, start_date=start, timezone=UTC, jitter=jitter)


@dataclass
class _AccountState:
    """What the daemon remembers of one account between its runs."""

    account: Account
    failures: int = 0
    reason: str | None = None
    next_run_at: datetime | None = None
    # RFC 2449 section 6.5: the server's minimum seconds between logins.
    login_delay: float | None = None
    last_login: datetime | None = None
    expire_warned: bool = False
    # The ledger's archived (messages, octets) as last counted into the metrics.
    totals: tuple[int, int] = (0, 0)
    # time.monotonic() when the run in progress began (None: none is), and how
    # many long-run warnings it got (one per LONG_RUN_S it has been going).
    running_since: float | None = None
    long_run_warnings: int = 0
    # The OAuth token source's refresh failures already counted into the metrics.
    oauth_failures: int = 0


class ArchiveDaemon:
    """Schedules every configured account and runs them; see the module docstring.

    ``start()`` schedules each account's first run within a couple of seconds;
    ``reload(config)`` applies a new configuration; ``stop(timeout)`` stops
    starting runs, asks the running ones to end after their current message,
    and waits for them.
    """

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        backoff: Callable[[BaseException], Policy] = policy_for,
        long_run_after: float = LONG_RUN_S,
    ) -> None:
        self.config = config
        self._long_run_after = long_run_after
        self._backoff = backoff
        self._ledger = ledger
        self._metrics = metrics
        # Only spreads start times; nothing secret depends on it.
        self._rng = rng or random.Random()  # noqa: S311
        self.pid = os.getpid()
        self.host = platform.node()
        self._states: dict[str, _AccountState] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._stopping = threading.Event()
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(config.daemon.max_concurrent)},
            # misfire_grace_time None: a run that is late (the pool was busy) still runs.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler; every account runs once within a few seconds."""
        self._scheduler.start()
        for account in self.config.accounts:
            self._add(account)
        names = ", ".join(f"{a.name} ({a.schedule.describe()})" for a in self.config.accounts)
        log.info(
            "daemon started (pid %d): %d account(s): %s; at most %d at once",
            self.pid,
            len(self.config.accounts),
            names,
            self.config.daemon.max_concurrent,
        )

    @property
    def healthy(self) -> bool:
        """True while the scheduler runs and no shutdown was asked for."""
        return bool(self._scheduler.running) and not self._stopping.is_set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (the ``stop`` hook of running syncs)."""
        return self._stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Start no run, end the running ones cleanly, wait up to ``timeout`` seconds.

        Returns True when every run ended in time. The ledger's schedule rows of
        this daemon are removed: ``status`` shows no next run without a daemon.
        """
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        with self._lock:
            finished = self._idle.wait_for(lambda: self._active == 0, timeout)
        self._forget_schedules(None)
        return finished

    def heartbeat(self) -> None:
        """Tell ``status`` readers that this daemon's schedule rows are still live.

        Also say which runs have been going for long: a run ends at its
        session deadline at the latest (``session_timeout``), and until then
        the log shows it is still under way, once per ``long_run_after``.
        """
        try:
            self._ledger.touch_schedules(pid=self.pid, host=self.host, at=utc_now())
        except LedgerError as exc:
            log.warning("could not refresh the schedules in the ledger: %s", exc)
        self._warn_long_runs(time.monotonic())

    def _warn_long_runs(self, now: float) -> None:
        with self._lock:
            running = [state for state in self._states.values() if state.running_since is not None]
        for state in running:
            since = state.running_since
            if since is None:  # it ended meanwhile
                continue
            due = int((now - since) // self._long_run_after)
            if due > state.long_run_warnings:
                state.long_run_warnings = due
                log.warning(
                    "account %r: its run has been going for %s; it ends at the session "
                    "deadline (session_timeout = %s) at the latest",
                    state.account.name,
                    format_seconds(round(now - since)),
                    format_seconds(state.account.session_timeout),
                )

    def next_run(self, name: str) -> datetime | None:
        """When the account's next run is planned (None: unknown account)."""
        with self._lock:
            state = self._states.get(name)
        return None if state is None else state.next_run_at

    # -- accounts -----------------------------------------------------------

    def _add(self, account: Account) -> None:
        now = utc_now()
        state = _AccountState(account)
        first = now + timedelta(seconds=self._rng.uniform(0, START_SPREAD_S))
        with self._lock:
            self._states[account.name] = state
        self._seed_metrics(state)
        self._scheduler.add_job(
            self._run_job,
            trigger=make_trigger(account.schedule, now),
            args=[account.name],
            id=account.name,
            name=f"account {account.name}",
            next_run_time=first,
            replace_existing=True,
        )
        self._save(state, first)

    def _remove(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)
        with contextlib.suppress(JobLookupError):  # already gone
            self._scheduler.remove_job(name)
        if self._metrics is not None:
            self._metrics.forget(name)
        self._forget_schedules([name])

    def _run_soon(self, state: _AccountState, trigger: Any | None = None) -> None:
        """Move the account's next run to within a few seconds (never before LOGIN-DELAY)."""
        at = utc_now() + timedelta(seconds=self._rng.uniform(0, START_SPREAD_S))
        floor = _not_before(state)
        if floor is not None and floor > at:
            at = floor
        changes: dict[str, Any] = {"next_run_time": at}
        if trigger is not None:
            changes["trigger"] = trigger
        try:
            self._scheduler.modify_job(state.account.name, **changes)
        except JobLookupError:
            return
        self._save(state, at)

    # -- reload -------------------------------------------------------------

    def reload(self, new: Config) -> None:
        """Apply a new configuration: added, removed and changed accounts at once.

        The ledger and the ``[daemon]`` pool size and metrics address stay as
        they were until a restart (they are in use); everything else applies to
        the next run. A changed account, and one waiting after its credentials
        were refused, run again within seconds: the fix is usually in the reload.
        """
        old = self.config
        new = self._keep_fixed_settings(old, new)
        self.config = new
        before = {account.name: account for account in old.accounts}
        after = {account.name: account for account in new.accounts}
        for name in before.keys() - after.keys():
            self._remove(name)
        for name, account in after.items():
            if name not in before:
                self._add(account)
            else:
                self._update(account, changed=account != before[name])
        log.info(
            "configuration reloaded from %s: %d account(s), %d added, %d removed",
            new.file,
            len(after),
            len(after.keys() - before.keys()),
            len(before.keys() - after.keys()),
        )

    def _keep_fixed_settings(self, old: Config, new: Config) -> Config:
        if new.ledger_url != old.ledger_url:
            log.warning("the ledger URL changed: it takes effect when the daemon restarts")
            new = replace(new, ledger_url=old.ledger_url)
        fixed = ("max_concurrent", "metrics")
        if any(getattr(new.daemon, key) != getattr(old.daemon, key) for key in fixed):
            log.warning("[daemon] max_concurrent and metrics take effect when the daemon restarts")
        return new

    def _update(self, account: Account, *, changed: bool) -> None:
        with self._lock:
            state = self._states.get(account.name)
        if state is None:
            return
        schedule_changed = state.account.schedule != account.schedule
        state.account = account
        trigger = make_trigger(account.schedule, utc_now()) if schedule_changed else None
        refused = waits_for_login_fix(state.reason)
        if changed or refused:
            self._run_soon(state, trigger)

    # -- one run ------------------------------------------------------------

    def _run_job(self, name: str) -> None:
        """The job's body: one run of one account, unless the daemon is stopping."""
        with self._lock:
            state = self._states.get(name)
            if state is None or self._stopping.is_set():
                return
            self._active += 1
        try:
            self._run(state)
        except Exception:  # a bug here must not kill the pool thread's later jobs
            log.exception("account %r: unexpected error in the daemon", name)
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    def _run(self, state: _AccountState) -> None:
        account = state.account
        began = time.monotonic()
        state.running_since, state.long_run_warnings = began, 0
        try:
            result = sync_account(self.config, account, self._ledger, stop=self._stopping.is_set)
        finally:
            state.running_since = None
        duration = time.monotonic() - began
        now = utc_now()
        self._note_server(state, result, now)
        outcome = run_outcome(result, stopping=self._stopping.is_set())
        if outcome != "interrupted":
            self._reschedule(state, result, now)
        self._count(state, result, outcome, duration, now)
        log_run(
            RunLine(state.account.name, result, outcome, duration),
            next_run_at=state.next_run_at,
            reason=state.reason,
            failures=state.failures,
        )

    def _note_server(self, state: _AccountState, result: RunResult, now: datetime) -> None:
        """Remember what the server said about itself (RFC 2449 CAPA after login)."""
        capabilities = result.capabilities
        if capabilities or result.listed:
            state.last_login = now
        delay = login_delay(capabilities)
        if delay is not None:
            state.login_delay = delay
        keep = state.account.retention.mode == "keep"
        if keep and expires_at_once(capabilities) and not state.expire_warned:
            state.expire_warned = True
            log.warning(
                "account %r: the server announces EXPIRE 0: it deletes each message once it "
                'is retrieved, whatever retention = "keep" says (RFC 2449 section 6.7)',
                state.account.name,
            )

    def _reschedule(self, state: _AccountState, result: RunResult, now: datetime) -> None:
        name = state.account.name
        job = self._scheduler.get_job(name)
        if job is None or self.stopping:
            return  # removed by a reload, or shutting down
        error = None if result.exception is None or result.ok else result.exception
        plan = plan_next(
            now=now,
            scheduled=job.next_run_time,
            error=error,
            failures=state.failures,
            not_before=_not_before(state),
            choose=self._backoff,
        )
        state.failures, state.reason = plan.failures, plan.reason
        if plan.at is not None and plan.at != job.next_run_time:
            try:
                self._scheduler.modify_job(name, next_run_time=plan.at)
            except JobLookupError:
                return
        self._save(state, plan.at)

    # -- ledger and metrics -------------------------------------------------

    def _save(self, state: _AccountState, at: datetime | None) -> None:
        state.next_run_at = at
        with self._lock:
            current = self._states.get(state.account.name) is state
        if not current or self.stopping:
            return
        entry = ScheduleEntry(
            account=state.account.name,
            next_run_at=at,
            consecutive_failures=state.failures,
            backoff_reason=state.reason,
            daemon_pid=self.pid,
            daemon_host=self.host,
            updated_at=utc_now(),
        )
        try:
            self._ledger.save_schedule(entry)
        except LedgerError as exc:
            log.warning("account %r: could not record the next run: %s", entry.account, exc)

    def _forget_schedules(self, names: list[str] | None) -> None:
        try:
            self._ledger.drop_schedules(pid=self.pid, host=self.host, accounts=names)
        except LedgerError as exc:
            log.warning("could not remove the schedules from the ledger: %s", exc)

    def _seed_metrics(self, state: _AccountState) -> None:
        """Start the archive counters at what the ledger holds, so they agree with it."""
        if self._metrics is None:
            return
        name = state.account.name
        state.totals = self._archive_totals(name, (0, 0))
        self._metrics.grow_archive(name, *state.totals)
        self._metrics.failures.labels(name).set(0)
        for outcome in OUTCOMES:
            self._metrics.runs.labels(name, outcome)

    def _archive_totals(self, name: str, fallback: tuple[int, int]) -> tuple[int, int]:
        try:
            return self._ledger.archived_totals(name)
        except LedgerError as exc:
            log.warning("account %r: could not count the archive: %s", name, exc)
            return fallback

    def _count(
        self, state: _AccountState, result: RunResult, outcome: str, duration: float, now: datetime
    ) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        name = state.account.name
        totals = self._archive_totals(name, state.totals)
        metrics.grow_archive(name, totals[0] - state.totals[0], totals[1] - state.totals[1])
        state.totals = max(totals, state.totals)
        metrics.deleted.labels(name).inc(result.deleted)
        metrics.runs.labels(name, outcome).inc()
        metrics.duration.labels(name).observe(duration)
        metrics.failures.labels(name).set(state.failures)
        if result.ok:
            metrics.last_success.labels(name).set(now.timestamp())
        # After the run's deletions, as `status` shows it.
        if result.left_on_server is not None:
            metrics.on_server.labels(name).set(result.left_on_server)
        if state.account.oauth is not None:
            self._count_oauth(state)

    def _count_oauth(self, state: _AccountState) -> None:
        """The token's expiry and the refresh failures since the last run (no secret)."""
        metrics, name = self._metrics, state.account.name
        assert metrics is not None  # noqa: S101 - _count checked it
        try:
            source = token_source(self.config, state.account)
            status = source.status()
        except PopvaultError as exc:  # a client secret that cannot be read: the run said so
            log.debug("account %r: no OAuth status for the metrics: %s", name, exc)
            return
        if status.expires_at is not None:
            metrics.oauth_expiry.labels(name).set(status.expires_at)
        new_failures = source.refresh_failures - state.oauth_failures
        if new_failures > 0:
            metrics.oauth_refresh_failures.labels(name).inc(new_failures)
        state.oauth_failures = source.refresh_failures


OUTCOMES: Final = ("ok", "partial", "failed", "interrupted")


def run_outcome(result: RunResult, *, stopping: bool) -> str:
    """``ok``; ``partial`` (some messages failed on their own); ``failed``; ``interrupted``."""
    if result.interrupted or (stopping and result.exception is not None):
        return "interrupted"
    if result.ok:
        return "ok"
    return "partial" if result.exception is None else "failed"


def _not_before(state: _AccountState) -> datetime | None:
    if state.login_delay is None or state.last_login is None:
        return None
    return state.last_login + timedelta(seconds=state.login_delay)
