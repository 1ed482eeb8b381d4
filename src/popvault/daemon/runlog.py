"""The one log line per account run, and the warning about refused credentials."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from popvault.config import format_seconds
from popvault.daemon.backoff import CREDENTIALS, UNSURE_LOGIN
from popvault.humanize import human_size
from popvault.ledger import AccountBusy
from popvault.sync import RunResult

log = logging.getLogger("popvault.daemon")


@dataclass(frozen=True, slots=True)
class RunLine:
    """What one run did, for its log line."""

    account: str
    result: RunResult
    outcome: str
    duration: float

    def fields(self, next_run_at: datetime | None) -> dict[str, Any]:
        """The structured fields of the line (JSON log format)."""
        result = self.result
        return {
            "account": self.account,
            "outcome": self.outcome,
            "messages": result.messages,
            "bytes": result.octets,
            "deleted": result.deleted,
            "on_server": result.left_on_server,
            "sessions": result.sessions,
            "duration_s": round(self.duration, 3),
            "next_run_at": next_run_at.isoformat() if next_run_at is not None else None,
            "error": result.error,
        }

    def text(self, next_run_at: datetime | None, reason: str | None) -> str:
        """The line for people: outcome, counts, duration, next run, error."""
        result = self.result
        # On the server after the run's deletions, as `status` shows it; octets as downloaded.
        left = result.left_on_server
        on_server = "?" if left is None else str(left)
        # A server that hands out a window of the mailbox takes several sessions a run.
        sessions = f"{result.sessions} sessions, " if result.sessions > 1 else ""
        text = (
            f"account {self.account!r}: {self.outcome}: {result.messages} new message(s), "
            f"{human_size(result.octets)} downloaded, {result.deleted} deleted, "
            f"{on_server} on server, {sessions}"
            f"{self.duration:.1f}s"
        )
        if next_run_at is not None:
            text += f"; next run {next_run_at.astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}"
            text += f" ({reason})" if reason else ""
        if result.error:
            text += f": {result.error.removeprefix(f'account {self.account!r}: ')}"
        return text

    @property
    def level(self) -> int:
        """info for a success, a stop, or our own lock held by `popvault run`."""
        if self.outcome in ("ok", "interrupted") or isinstance(self.result.exception, AccountBusy):
            return logging.INFO
        return logging.WARNING if self.outcome == "partial" else logging.ERROR


def log_run(
    line: RunLine, *, next_run_at: datetime | None, reason: str | None, failures: int
) -> None:
    """Log a run's line; after refused credentials, say plainly what happens next."""
    planned = None if line.outcome == "interrupted" else next_run_at
    log.log(line.level, line.text(planned, reason), extra={"run": line.fields(planned)})
    if line.outcome != "failed" or not reason:
        return
    if reason.startswith(CREDENTIALS.reason):
        log.error(
            "account %r: the server refused the credentials (failure %d in a row); popvault "
            "will not log in to this account again for %s, so that it never locks you out by "
            "retrying a wrong password. Fix the password, then reload the daemon (SIGHUP, "
            "`systemctl reload popvault`) to try again at once.",
            line.account,
            failures,
            format_seconds(CREDENTIALS.delay(failures)),
        )
    elif reason.startswith(UNSURE_LOGIN.reason):
        log.error(
            "account %r: the server refused the login and gave no reason (failure %d in a "
            "row); it may be the password or a problem on the server. popvault will not log "
            "in to this account again for %s, so that it never locks you out by retrying a "
            "wrong password. Check the password and the server's message above, then reload "
            "the daemon (SIGHUP, `systemctl reload popvault`) to try again at once.",
            line.account,
            failures,
            format_seconds(UNSURE_LOGIN.delay(failures)),
        )
