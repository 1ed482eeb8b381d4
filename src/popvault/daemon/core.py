"""The daemon's scheduler: the ledger is the schedule, a dispatcher claims due accounts.

* The ledger's ``schedules`` table holds every account's next run; the
  daemon keeps no timer per account (issue 11: 10,000 accounts are 10,000
  rows, not 10,000 timers). A dispatcher thread asks the ledger for due
  accounts whenever a slot of the pool is free (at least every second), and
  runs them on a pool of ``[daemon] max_concurrent`` threads.
* On PostgreSQL several daemons share the table: a claim is a lease
  (:mod:`popvault.ledger.dispatch`), so whichever daemon has a free slot runs
  a due account, each account runs once per tick whatever the number of
  daemons, and ``[daemon] max_per_host`` bounds the sessions to one server
  across all of them. A daemon that joins or leaves needs no
  reconfiguration. Per-account APScheduler jobs went with that: a job per
  account in every daemon would fire N times per tick, and 10,000 of them
  cost memory and wake-ups for nothing; APScheduler's cron trigger still
  computes the crontab schedules' next times.
* Never two sessions on one account (RFC 1939 section 4: the server locks
  the maildrop): the claim (a lease, or on SQLite the run's file lock) is
  held for the whole run.
* A failed run moves the account's next run by the backoff of
  :mod:`.backoff`; a success returns it to its schedule. The next run is
  written while the claim is still held (so no other daemon runs the
  account again in between); a run that is interrupted, or a holder that
  dies, leaves the account due, and another daemon (or this one's next
  start) takes it at once.
* One account's trouble never touches the others:
  :func:`~popvault.sync.sync_account` never raises for it.
* Under systemd (``Type=notify``), the dispatcher tells it ``READY=1`` after
  its first step, a ``STATUS=`` line (:func:`status_line`) when runs start or
  end, and ``WATCHDOG=1`` from its own loop (:mod:`.notify`).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

from popvault.config import Account, Config, Schedule, crontab_fields, format_seconds
from popvault.daemon.backoff import (
    Policy,
    expires_at_once,
    login_delay,
    plan_next,
    policy_for,
    waits_for_login_fix,
)
from popvault.daemon.interval import schedule_interval
from popvault.daemon.metrics import Metrics
from popvault.daemon.notify import Notifier, Watchdog
from popvault.daemon.runlog import RunLine, log_run
from popvault.daemon.statuspage import PageData
from popvault.errors import LeaseLost, LedgerError, PopvaultError
from popvault.ledger import DueRun, LeaseTerms, Ledger, ScheduleEntry, server_key
from popvault.signin import token_source
from popvault.status import STALE_AFTER, account_statuses, pid_alive
from popvault.sync import RunResult, sync_account, utc_now

log = logging.getLogger("popvault.daemon")

# Jitter: a tenth of the interval, at most a minute, so that accounts on one
# server spread out. Interval ticks get -jitter/2..+jitter/2 (centred: the next
# tick is counted from the jittered one, and a one-sided jitter would make the
# interval drift longer); crontab ticks get 0..CRON_JITTER_S after the minute.
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
# The dispatcher asks the ledger for due accounts at least this often while a
# slot is free (and at once when a run ends): one indexed query per second
# per daemon, and a due account waits at most about this long.
DISPATCH_POLL_S: Final = 1.0
# Schedule rows not refreshed for this long (three of the daemons' one-minute
# heartbeats, daemon.main.HEARTBEAT_S) belong to a daemon that stopped or
# died: a live daemon configured with those accounts adopts them.
ADOPT_AFTER: Final = timedelta(minutes=3)
# STATUS= goes to systemd when the summary may have changed (a run started or
# ended, a reload, a heartbeat), at most this often: a daemon of 10,000
# accounts ends runs many times a second, and one line a second is plenty
# for a person reading `systemctl status`.
STATUS_MIN_GAP_S: Final = 1.0
# At most this many failing accounts are named in the STATUS= line.
STATUS_NAMES: Final = 3


def jitter_for(schedule: Schedule) -> float:
    """The width of the random spread of the schedule's ticks, in seconds."""
    if schedule.every is None:
        return CRON_JITTER_S
    return min(schedule.every * JITTER_SHARE, JITTER_CAP_S)


def next_tick(schedule: Schedule, due_at: datetime, now: datetime, rng: random.Random) -> datetime:
    """The schedule's first tick after ``now``, for a run that was due at ``due_at``.

    Interval schedules count from the tick that was due, so a run that takes
    longer than the interval skips the ticks it covered (never two runs to
    catch up) and a late start does not shift the grid. Crontab lines are
    read in the machine's local time, as cron does.
    """
    jitter = jitter_for(schedule)
    if schedule.cron is not None:
        # Imported here: only a daemon with a crontab schedule pays for APScheduler.
        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415

        trigger = CronTrigger(**crontab_fields(schedule.cron))
        after = now + timedelta(seconds=1)  # strictly after: never the minute just run
        at: datetime = trigger.get_next_fire_time(None, after)
        return at + timedelta(seconds=rng.uniform(0, jitter))
    every = timedelta(seconds=schedule.every or 0.0)
    periods = max((now - due_at) // every + 1, 1)
    at = due_at + periods * every + timedelta(seconds=rng.uniform(-jitter / 2, jitter / 2))
    return at if at > now else at + every


def tick_anchor(schedule: Schedule, due_at: datetime, started_at: datetime) -> datetime:
    """What the next interval tick counts from: the tick that was due, or a late start.

    On time (within the jitter, or a dispatch poll), the grid stays put. A run
    that started later than that (the pool was busy: a start-up with more
    accounts than slots, a backlog after an outage) counts from its start:
    else every account that came due together stays due together, tick
    after tick, and they all wait for the same slots again (issue 11's
    benchmark: 1,000 accounts 9 s late at the median for ever).
    """
    allowance = timedelta(seconds=max(jitter_for(schedule), DISPATCH_POLL_S))
    return started_at if started_at - due_at > allowance else due_at


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
    """Runs every configured account when the shared schedule says; see the module docstring.

    ``start()`` plans each account's first run within a couple of seconds
    (or, joining other live daemons on a PostgreSQL ledger, keeps their
    plan); ``reload(config)`` applies a new configuration; ``stop(timeout)``
    stops claiming runs, asks the running ones to end after their current
    message, and waits for them.
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
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._notifier = notifier or Notifier(None)
        self._watchdog = Watchdog(self._notifier)
        # Held while the dispatcher notifies systemd, and by stop() while it sends
        # STOPPING=1: no READY or STATUS can follow it.
        self._notify_lock = threading.Lock()
        self._ready = False
        # Whether the STATUS= line may have changed since it was sent (under _lock).
        self._status_stale = True
        self._status_sent_at: float | None = None
        self._long_run_after = long_run_after
        self._backoff = backoff
        self._ledger = ledger
        self._metrics = metrics
        if metrics is not None:  # the config's root at each scrape: a reload may move it
            metrics.watch_archive(lambda: self.config.archive_root)
        # Only spreads start times; nothing secret depends on it.
        self._rng = rng or random.Random()  # noqa: S311
        self.pid = os.getpid()
        self.host = platform.node()
        self._states: dict[str, _AccountState] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._running: set[str] = set()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(
            config.daemon.max_concurrent, thread_name_prefix="popvault run"
        )
        self._dispatcher: threading.Thread | None = None
        self._claim_error: str | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Plan the first runs and start the dispatcher; see the class docstring."""
        now = utc_now()
        states = [_AccountState(account) for account in self.config.accounts]
        with self._lock:
            self._states = {state.account.name: state for state in states}
        self._seed_all_metrics(states)
        others = self._other_daemons(now)
        self._plan_first_runs(states, now, replace=not others)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="popvault dispatcher", daemon=True
        )
        self._dispatcher.start()
        names = _named_accounts(self.config.accounts)
        joined = ""
        if others:
            joined = "; sharing the schedule with " + ", ".join(
                f"{host} pid {pid}" for host, pid in others
            )
        log.info(
            "daemon started (pid %d): %d account(s): %s; at most %d at once%s",
            self.pid,
            len(self.config.accounts),
            names,
            self.config.daemon.max_concurrent,
            joined,
        )

    @property
    def healthy(self) -> bool:
        """True while the dispatcher runs and no shutdown was asked for."""
        dispatcher = self._dispatcher
        return dispatcher is not None and dispatcher.is_alive() and not self._stopping.is_set()

    def status_page(self) -> PageData:
        """What the status page shows now: ``popvault status``'s rows, read from the ledger.

        Called by the metrics endpoint's request thread; the Ledger may be
        shared by threads (each call takes its own pooled connection). Raises
        LedgerError when the ledger cannot be read.
        """
        now = utc_now()
        with self._lock:
            running = frozenset(self._running)
        rows = account_statuses(self.config, self._ledger, now=now, settle_dead_runs=False)
        return PageData(rows, now, served_by=f"{self.host} pid {self.pid}", running_here=running)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (the ``stop`` hook of running syncs)."""
        return self._stopping.is_set()

    def stop(self, timeout: float) -> bool:
        """Claim no run, end the running ones cleanly, wait up to ``timeout`` seconds.

        Tells systemd ``STOPPING=1`` first. Returns True when every run ended
        in time. The ledger's schedule rows stop being this daemon's: on
        SQLite they are removed (``status`` shows no next run without a
        daemon); on a shared PostgreSQL ledger they stay, marked stale, for
        the other daemons to adopt.
        """
        with self._notify_lock:
            self._stopping.set()
            self._notifier.stopping("stopping: waiting for the runs in progress")
        self._wake.set()
        with self._lock:
            finished = self._idle.wait_for(lambda: self._active == 0, timeout)
        self._pool.shutdown(wait=False)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=DISPATCH_POLL_S * 5)
        self._leave_schedules()
        return finished

    def heartbeat(self) -> None:
        """Tell ``status`` readers that this daemon's schedule rows are still live.

        On a shared ledger, also adopt the stale rows of this daemon's
        accounts (their daemon left) and give any account without a row one.
        And say which runs have been going for long: a run ends at its
        session deadline at the latest (``session_timeout``), and until then
        the log shows it is still under way, once per ``long_run_after``.
        """
        now = utc_now()
        with self._lock:
            names = list(self._states)
        shared = self._ledger.shared
        try:
            self._ledger.touch_schedules(
                pid=self.pid,
                host=self.host,
                at=now,
                adopt=names if shared else (),
                stale_before=now - ADOPT_AFTER,
            )
            if shared:
                with self._lock:
                    states = list(self._states.values())
                self._plan_first_runs(states, now, replace=False)
        except LedgerError as exc:
            log.warning("could not refresh the schedules in the ledger: %s", exc)
        self._warn_long_runs(time.monotonic())
        self._status_changed()

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

    def status_line(self) -> str:
        """The daemon's state in one line, for ``systemctl status`` (see :func:`status_line`)."""
        with self._lock:
            states = list(self._states.values())
            running = set(self._running)
        return status_line(states, running, utc_now())

    def next_run(self, name: str) -> datetime | None:
        """When the account's next run is planned, as this daemon last knew (None: unknown)."""
        with self._lock:
            state = self._states.get(name)
        return None if state is None else state.next_run_at

    # -- the shared schedule ------------------------------------------------

    def _other_daemons(self, now: datetime) -> list[tuple[str, int]]:
        """The other live daemons of a shared ledger (none on SQLite: one daemon per file)."""
        if not self._ledger.shared:
            return []
        try:
            found = self._ledger.other_daemons(
                pid=self.pid, host=self.host, fresh_after=now - ADOPT_AFTER
            )
        except LedgerError as exc:
            log.warning("could not read the other daemons' schedules: %s", exc)
            return []
        # A daemon of this host whose process is gone is not live, however fresh its rows.
        return [(host, pid) for host, pid in found if host != self.host or pid_alive(pid)]

    def _plan_first_runs(
        self, states: list[_AccountState], now: datetime, *, replace: bool
    ) -> None:
        """Give the accounts a first run within a few seconds: all of them, or those without a row.

        ``replace``: this daemon is alone (SQLite, or no other live daemon on
        PostgreSQL), so every account runs at start-up as it always did; a
        daemon joining others keeps their plan.
        """
        try:
            planned = {} if replace else {row.account: row for row in self._ledger.schedules()}
            missing = [state for state in states if state.account.name not in planned]
            if missing:
                entries = [self._entry(state, self._soon(now)) for state in missing]
                # Without replace, a row another daemon added meanwhile stays.
                self._ledger.ensure_schedules(entries, replace=replace)
                planned = {row.account: row for row in self._ledger.schedules()}
        except LedgerError as exc:
            log.warning("could not plan the first runs in the ledger: %s", exc)
            return
        with self._lock:
            running = set(self._running)
        for state in states:
            row = planned.get(state.account.name)
            if row is not None:
                state.next_run_at = row.next_run_at
                if state.account.name not in running:
                    # The row's count: on a shared ledger another daemon may have run
                    # the account (STATUS= then counts it right). A run in progress
                    # keeps its own: it took the row's count when it began.
                    state.failures, state.reason = row.consecutive_failures, row.backoff_reason
                    if self._metrics is not None:  # the alert's count follows the shared row
                        self._metrics.failures.labels(state.account.name).set(state.failures)

    def _soon(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._rng.uniform(0, START_SPREAD_S))

    def _leave_schedules(self) -> None:
        try:
            if self._ledger.shared:
                # Stale at once for `status` and `db copy`, adopted by the next heartbeat
                # of another daemon.
                stale = utc_now() - STALE_AFTER - timedelta(minutes=1)
                self._ledger.touch_schedules(pid=self.pid, host=self.host, at=stale)
            else:
                self._ledger.drop_schedules(pid=self.pid, host=self.host)
        except LedgerError as exc:
            log.warning("could not hand over the schedules in the ledger: %s", exc)

    # -- dispatch -----------------------------------------------------------

    def _dispatch_loop(self) -> None:
        # Waits at most a second, less when systemd's watchdog needs a faster pace.
        poll = self._watchdog.poll_s(DISPATCH_POLL_S)
        while not self._stopping.is_set():
            self._dispatch_step()
            self._wake.wait(poll)
            self._wake.clear()

    def _dispatch_step(self) -> None:
        """Claim and start the due runs, then tell systemd (READY, WATCHDOG, STATUS)."""
        try:
            self._dispatch_once()
        except Exception:  # a bug here must not stop every later run
            log.exception("unexpected error in the dispatcher")
        if not self._notifier.enabled:
            return  # not under systemd: no summary to make
        try:
            self._notify_systemd()
        except Exception:  # nor a bug in the summary
            log.exception("unexpected error in the notifications to systemd")

    def _notify_systemd(self) -> None:
        """READY=1 after the first step; the watchdog's keep-alive; STATUS= when it changed.

        The keep-alive (``WATCHDOG=1``) is sent here, by the loop that claims
        the due accounts, and not by a timer thread of its own: a timer would
        go on pinging while this loop hangs (a ledger query that never
        returns, a lock never released), and systemd would keep a daemon that
        starts no run alive for ever. From here, a hung loop stops the
        keep-alives and systemd restarts the daemon after ``WatchdogSec=``.
        """
        with self._notify_lock:
            if not self._stopping.is_set():  # else STOPPING=1 was sent: nothing after it
                self._notify_running()

    def _notify_running(self) -> None:
        if not self._ready:
            self._ready = True
            self._take_status_change()
            self._notifier.ready(self.status_line())
            self._status_sent_at = time.monotonic()
        self._watchdog.beat()
        now = time.monotonic()
        if self._status_sent_at is not None and now - self._status_sent_at < STATUS_MIN_GAP_S:
            return
        if self._take_status_change():
            self._notifier.status(self.status_line())
            self._status_sent_at = now

    def _status_changed(self) -> None:
        with self._lock:
            self._status_stale = True

    def _take_status_change(self) -> bool:
        with self._lock:
            stale, self._status_stale = self._status_stale, False
        return stale

    def _dispatch_once(self) -> None:
        """Claim as many due accounts as there are free slots, and start their runs."""
        with self._lock:
            free = self.config.daemon.max_concurrent - self._active
            busy = set(self._running)
            servers = {name: state.account.host for name, state in self._states.items()}
        if free <= 0 or self._stopping.is_set():
            return
        max_per_host = self.config.daemon.max_per_host
        try:
            runs = self._ledger.claim_due(
                servers,
                limit=free,
                terms=self._lease_terms(),
                max_per_host=max_per_host,
                busy=busy,
            )
        except LedgerError as exc:
            text = str(exc)
            if text != self._claim_error:  # once per distinct trouble, not every second
                log.warning("could not read the due accounts from the ledger: %s", exc)
            self._claim_error = text
            return
        self._claim_error = None
        if not self._ledger.shared and max_per_host is not None:
            runs = self._within_host_bound(runs, max_per_host)
        for run in runs:
            self._start(run)

    def _within_host_bound(self, runs: list[DueRun], max_per_host: int) -> list[DueRun]:
        """SQLite (one daemon): the bound counted over this daemon's own runs."""
        with self._lock:
            hosts = {name: server_key(state.account.host) for name, state in self._states.items()}
            count: dict[str | None, int] = {}
            for name in self._running:
                host = hosts.get(name)  # None: removed by a reload while it runs
                count[host] = count.get(host, 0) + 1
            kept = []
            for run in runs:
                host = hosts.get(run.account)
                if count.get(host, 0) < max_per_host:
                    count[host] = count.get(host, 0) + 1
                    kept.append(run)
        return kept

    def _start(self, run: DueRun) -> None:
        with self._lock:
            state = self._states.get(run.account)
            start = state is not None and not self._stopping.is_set()
            if start:
                self._active += 1
                self._running.add(run.account)
                self._gauge_running()
                self._status_stale = True
        if not start or state is None:
            self._release(run)
            return
        try:
            self._pool.submit(self._run_claim, state, run)
        except RuntimeError:  # the pool was shut down meanwhile
            self._ended(run.account)
            self._release(run)

    def _lease_terms(self) -> LeaseTerms:
        return LeaseTerms(
            ttl=timedelta(seconds=self.config.lease_ttl),
            heartbeat=timedelta(seconds=self.config.lease_heartbeat),
        )

    def _release(self, run: DueRun) -> None:
        try:
            self._ledger.release_claim(run)
        except LedgerError as exc:  # it expires on its own
            log.warning("account %r: could not release its claim: %s", run.account, exc)

    def _ended(self, name: str) -> None:
        with self._lock:
            self._active -= 1
            self._running.discard(name)
            self._gauge_running()
            self._status_stale = True
            self._idle.notify_all()
        self._wake.set()  # a slot is free: claim the next due account now

    def _gauge_running(self) -> None:
        if self._metrics is not None:
            self._metrics.daemon_running.set(len(self._running))

    # -- accounts -----------------------------------------------------------

    def _entry(self, state: _AccountState, at: datetime | None) -> ScheduleEntry:
        return ScheduleEntry(
            account=state.account.name,
            next_run_at=at,
            consecutive_failures=state.failures,
            backoff_reason=state.reason,
            daemon_pid=self.pid,
            daemon_host=self.host,
            updated_at=utc_now(),
        )

    def _add(self, account: Account) -> None:
        state = _AccountState(account)
        with self._lock:
            self._states[account.name] = state
        self._seed_metrics(state)
        self._plan_first_runs([state], utc_now(), replace=False)
        self._wake.set()

    def _remove(self, name: str) -> None:
        with self._lock:
            self._states.pop(name, None)
        if self._metrics is not None:
            self._metrics.forget(name)
        try:
            self._ledger.drop_schedules(pid=self.pid, host=self.host, accounts=[name])
        except LedgerError as exc:
            log.warning("could not remove the schedules from the ledger: %s", exc)

    def _run_soon(self, state: _AccountState) -> None:
        """Move the account's next run to within a few seconds (never before LOGIN-DELAY)."""
        at = self._soon(utc_now())
        floor = _not_before(state)
        if floor is not None and floor > at:
            at = floor
        self._save(state, at)
        self._wake.set()

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
        self._status_changed()

    def _keep_fixed_settings(self, old: Config, new: Config) -> Config:
        if new.ledger_url != old.ledger_url:
            log.warning("the ledger URL changed: it takes effect when the daemon restarts")
            new = replace(new, ledger_url=old.ledger_url)
        fixed = ("max_concurrent", "metrics")
        if any(getattr(new.daemon, key) != getattr(old.daemon, key) for key in fixed):
            log.warning("[daemon] max_concurrent and metrics take effect when the daemon restarts")
            daemon = replace(
                new.daemon, max_concurrent=old.daemon.max_concurrent, metrics=old.daemon.metrics
            )
            new = replace(new, daemon=daemon)
        return new

    def _update(self, account: Account, *, changed: bool) -> None:
        with self._lock:
            state = self._states.get(account.name)
        if state is None:
            return
        state.account = account
        if self._metrics is not None:  # the schedule may have changed
            self._metrics.interval.labels(account.name).set(schedule_interval(account.schedule))
        if changed or waits_for_login_fix(state.reason):
            self._run_soon(state)

    # -- one run ------------------------------------------------------------

    def _run_claim(self, state: _AccountState, run: DueRun) -> None:
        """A pool thread's job: one run of one claimed account, unless the daemon is stopping."""
        try:
            if self._stopping.is_set():
                self._release(run)
            else:
                self._run(state, run)
        except Exception:  # a bug here must not kill the pool thread's later jobs
            log.exception("account %r: unexpected error in the daemon", run.account)
        finally:
            self._ended(run.account)

    def _run(self, state: _AccountState, run: DueRun) -> None:
        account = state.account
        # The shared row's count: the last run may have been another daemon's.
        state.failures, state.reason = run.consecutive_failures, run.backoff_reason
        began = time.monotonic()
        state.running_since, state.long_run_warnings = began, 0
        try:
            result = sync_account(
                self.config, account, self._ledger, stop=self._stopping.is_set, claimed=run.hold
            )
        finally:
            state.running_since = None
        duration = time.monotonic() - began
        now = utc_now()
        self._note_server(state, result, now)
        outcome = run_outcome(result, stopping=self._stopping.is_set())
        if outcome == "interrupted" or isinstance(result.exception, LeaseLost):
            # Left due: another daemon (or this one's next start) runs it; a lost
            # lease's new holder plans it.
            self._release(run)
        else:
            self._reschedule(state, run, result, now)
        if self._metrics is not None:
            self._metrics.daemon_runs.inc()
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

    def _reschedule(
        self, state: _AccountState, run: DueRun, result: RunResult, now: datetime
    ) -> None:
        """Plan the next run (schedule or backoff) and give the claim up, in one write."""
        error = None if result.exception is None or result.ok else result.exception
        plan = plan_next(
            now=now,
            scheduled=next_tick(
                state.account.schedule,
                tick_anchor(state.account.schedule, run.due_at, result.started_at),
                now,
                self._rng,
            ),
            error=error,
            failures=state.failures,
            not_before=_not_before(state),
            choose=self._backoff,
        )
        state.failures, state.reason = plan.failures, plan.reason
        try:
            self._ledger.finish_claim(run, self._entry(state, plan.at))
        except LeaseLost as exc:
            log.warning("%s; its new holder plans its next run", exc)
            return
        except LedgerError as exc:
            log.warning("account %r: could not record the next run: %s", run.account, exc)
            self._release(run)
            return
        state.next_run_at = plan.at

    # -- ledger and metrics -------------------------------------------------

    def _save(self, state: _AccountState, at: datetime | None) -> None:
        state.next_run_at = at
        with self._lock:
            current = self._states.get(state.account.name) is state
        if not current or self.stopping:
            return
        try:
            self._ledger.save_schedule(self._entry(state, at))
        except LedgerError as exc:
            log.warning("account %r: could not record the next run: %s", state.account.name, exc)

    def _seed_all_metrics(self, states: list[_AccountState]) -> None:
        """:meth:`_seed_metrics` of every account, from one query of the ledger."""
        if self._metrics is None:
            return
        try:
            totals = self._ledger.archived_totals_by_account()
        except LedgerError as exc:
            log.warning("could not count the archive: %s", exc)
            totals = {}
        for state in states:
            self._seed_metrics(state, totals.get(state.account.name, (0, 0)))

    def _seed_metrics(self, state: _AccountState, totals: tuple[int, int] | None = None) -> None:
        """Start the archive counters at what the ledger holds, so they agree with it."""
        if self._metrics is None:
            return
        name = state.account.name
        state.totals = self._archive_totals(name, (0, 0)) if totals is None else totals
        self._metrics.grow_archive(name, *state.totals)
        self._metrics.failures.labels(name).set(0)
        self._metrics.interval.labels(name).set(schedule_interval(state.account.schedule))
        for outcome in OUTCOMES:
            self._metrics.runs.labels(name, outcome)
        if state.account.oauth is not None:
            # At 0 from the start: Prometheus's increase() sees no rise in a series
            # whose first sample is already 1, and the refresh alert uses increase().
            self._metrics.oauth_refresh_failures.labels(name)

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
        # Asked of the time the current access token expires, not of now: the run
        # whose refresh was refused (the grant gone) ends with a token still valid
        # for a few minutes of margin, and the next run is a slow backoff away.
        will_need_login = status.needs_login(math.inf)
        metrics.oauth_login_needed.labels(name).set(int(will_need_login))
        new_failures = source.refresh_failures - state.oauth_failures
        if new_failures > 0:
            metrics.oauth_refresh_failures.labels(name).inc(new_failures)
        state.oauth_failures = source.refresh_failures


OUTCOMES: Final = ("ok", "partial", "failed", "interrupted")


# Accounts the start-up line names one by one: past this many it counts the
# rest (10,000 names made a line of 180,000 characters, which log pipelines
# cut or split; `popvault status` lists them all).
NAMED_AT_START: Final = 20


def _named_accounts(accounts: Sequence[Account]) -> str:
    """The first accounts with their schedules, and how many more, for the start-up line."""
    shown = ", ".join(f"{a.name} ({a.schedule.describe()})" for a in accounts[:NAMED_AT_START])
    more = len(accounts) - NAMED_AT_START
    return shown if more <= 0 else f"{shown} and {more} more (`popvault status` lists them)"


def run_outcome(result: RunResult, *, stopping: bool) -> str:
    """``ok``; ``partial`` (some messages failed on their own); ``failed``; ``interrupted``."""
    if result.interrupted or (stopping and result.exception is not None):
        return "interrupted"
    if result.ok:
        return "ok"
    return "partial" if result.exception is None else "failed"


def status_line(states: Collection[_AccountState], running: Collection[str], now: datetime) -> str:
    """One short line: ``3 accounts: 2 ok, 1 failing (work), 1 running; next run 12:05:00 UTC``.

    Failing: the accounts with failures in a row (``popvault status``'s
    ``consecutive_failures``), the first few named. The next run: the
    earliest of the accounts not running now. Account names are plain
    (config allows ``[A-Za-z0-9_.-]``); no server text, no secret.
    """
    failing = sorted(state.account.name for state in states if state.failures > 0)
    total = len(states)
    head = f"{total} account{'' if total == 1 else 's'}: {total - len(failing)} ok"
    head += f", {len(failing)} failing"
    if failing:
        shown = failing[:STATUS_NAMES] + (["..."] if len(failing) > STATUS_NAMES else [])
        head += f" ({', '.join(shown)})"
    busy = sum(1 for state in states if state.account.name in running)
    if busy:
        head += f", {busy} running"
    upcoming = [
        state.next_run_at
        for state in states
        if state.next_run_at is not None and state.account.name not in running
    ]
    if not upcoming:
        return head
    return f"{head}; next run {_clock(min(upcoming), now)}"


def _clock(at: datetime, now: datetime) -> str:
    """``12:05:00 UTC`` today, ``2026-12-04 12:05 UTC`` on another day, ``due now`` if past."""
    if at <= now:
        return "due now"
    at, now = at.astimezone(UTC), now.astimezone(UTC)
    if at.date() == now.date():
        return at.strftime("%H:%M:%S UTC")
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _not_before(state: _AccountState) -> datetime | None:
    if state.login_delay is None or state.last_login is None:
        return None
    return state.last_login + timedelta(seconds=state.login_delay)
