"""What ``popvault status`` shows: the configured accounts joined with the ledger.

Nothing here reads a secret: status works without any password being
available, and prints none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from popvault.config import Config
from popvault.humanize import human_size
from popvault.ledger import AccountStatus, Ledger


@dataclass(frozen=True)
class StatusRow:
    """One account as ``status`` shows it (the JSON object has these keys)."""

    name: str
    configured: bool
    archived_messages: int
    archived_bytes: int
    last_run_at: datetime | None
    last_outcome: str | None
    last_error: str | None
    last_success_at: datetime | None


def account_statuses(config: Config, ledger: Ledger) -> list[StatusRow]:
    """Configured accounts in config order, then accounts only the ledger knows."""
    known = {status.name: status for status in ledger.status()}
    rows = [_row(account.name, known.pop(account.name, None), True) for account in config.accounts]
    rows += [_row(name, status, False) for name, status in sorted(known.items())]
    return rows


def _row(name: str, status: AccountStatus | None, configured: bool) -> StatusRow:
    if status is None:
        return StatusRow(name, configured, 0, 0, None, None, None, None)
    return StatusRow(
        name=name,
        configured=configured,
        archived_messages=status.archived_messages,
        archived_bytes=status.archived_bytes,
        last_run_at=status.last_run_at,
        last_outcome=status.last_outcome,
        last_error=status.last_error,
        last_success_at=status.last_success_at,
    )


def render_json(rows: list[StatusRow]) -> str:
    """A JSON list of objects; times are ISO 8601 in UTC, absent values null."""
    return json.dumps([asdict(row) for row in rows], indent=2, default=_iso)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def render_table(rows: list[StatusRow]) -> str:
    """A plain-text table for people; the last error goes on its own line."""
    if not rows:
        return "no accounts configured and none in the ledger"
    header = ("ACCOUNT", "MESSAGES", "SIZE", "LAST RUN (UTC)", "OUTCOME")
    lines = [header] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    for row in rows:
        if row.last_error:
            out.append(f"{row.name}: last error: {row.last_error}")
    return "\n".join(out)


def _cells(row: StatusRow) -> tuple[str, str, str, str, str]:
    last_run = row.last_run_at.strftime("%Y-%m-%d %H:%M:%S") if row.last_run_at else "never"
    outcome = row.last_outcome or "-"
    name = row.name if row.configured else f"{row.name} (not in config)"
    return (name, str(row.archived_messages), human_size(row.archived_bytes), last_run, outcome)
