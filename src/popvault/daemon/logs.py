"""The daemon's log lines: plain text for people, one JSON object a line for shippers.

A run's line carries its counts as structured fields (``extra={"run": {...}}``);
the text format has them in the message already, the JSON format adds them as
keys. Nothing here ever formats a config value: secrets stay out of logs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The structured fields a run's line may carry, in this order.
RUN_FIELDS: Final = (
    "account",
    "outcome",
    "messages",
    "bytes",
    "deleted",
    "on_server",
    "sessions",
    "duration_s",
    "next_run_at",
    "error",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, and a run's fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (no newline inside)."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "run", None)
        if isinstance(fields, dict):
            entry.update((key, fields[key]) for key in RUN_FIELDS if key in fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, log_format: LogFormat) -> None:
    """Send every log record to standard error, in ``log_format``, from ``level`` up."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    quiet_scheduler(level)


class _DropSkippedRuns(logging.Filter):
    """APScheduler warns when a run is still going at its next tick; for us that is normal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


def quiet_scheduler(level: str) -> None:
    """APScheduler logs every job start, Alembic every schema check, at INFO: keep
    them to warnings unless debugging, so that info shows the daemon's own lines."""
    for name in ("apscheduler", "alembic"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    logging.getLogger("apscheduler.scheduler").addFilter(_DropSkippedRuns())
