"""The one redaction point: every secret out, every control character made visible.

Server text is untrusted and secrets travel near it: a server may echo the
password it was sent (in a ``-ERR`` to UIDL, in a reply to PASS that is
neither ``+OK`` nor ``-ERR``), and a password command may print it on its
error output. So every secret an account has is registered here the moment it
is read (:func:`register`), and every text that came from a server or a secret
source passes :func:`redact` before it reaches a log line, an exception
message, the ledger or any output. ``redact`` also renders control characters
visibly (``\\x1b``), so that a server cannot move the cursor, retitle the
terminal or forge log lines.

The registry is process-wide: a secret once read stays registered until the
process ends (a daemon reads the same passwords on every run). Besides each
secret as it is, the forms it takes once quoted (Python's ``repr``, JSON) are
scrubbed too, so a secret inside a quoted server text is still found.

This module imports nothing from popvault, so that every layer may use it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

#: What a secret becomes.
MASK = "***"
# A secret this short (a test's "pw", a careless "1234") would also match inside
# ordinary words and mangle every message: it is masked only where it stands
# alone, between characters that are not letters or digits.
_SHORT_SECRET = 6

# C0 controls, DEL and the C1 controls (ESC-less CSI is 0x9b): none of them
# belongs in a line of text shown to a person.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_KEEP_NEWLINES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class SecretRegistry:
    """The secrets of this process; thread-safe (a daemon runs accounts in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secret: str) -> None:
        """Register ``secret`` (and its quoted forms); an empty string is ignored."""
        if not secret:
            return
        forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
        with self._lock:
            new = self._forms | forms
            if new == self._forms:
                return
            self._forms = frozenset(new)
            # Longest first, so that a secret containing another is masked whole.
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(_pattern(form) for form in ordered))

    def clear(self) -> None:
        """Forget every secret (for tests: each starts with an empty registry)."""
        with self._lock:
            self._forms = frozenset()
            self._pattern = None

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by :data:`MASK`."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)

    def __contains__(self, secret: object) -> bool:
        return isinstance(secret, str) and secret in self._forms


#: The process's secrets.
SECRETS = SecretRegistry()


def _pattern(form: str) -> str:
    if len(form) >= _SHORT_SECRET:
        return re.escape(form)
    return rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])"


def register(secret: str) -> str:
    """Register ``secret`` with the process's registry; returns it (for chaining)."""
    SECRETS.add(secret)
    return secret


def neutralise(text: str, *, keep_newlines: bool = False) -> str:
    r"""Control characters rendered visibly: ``"\x1b[2J"`` becomes ``"\\x1b[2J"``.

    ``keep_newlines`` keeps LF as it is, for multi-line texts of our own (a
    traceback) whose lines are already safe.
    """
    pattern = _CONTROL_KEEP_NEWLINES if keep_newlines else _CONTROL
    return pattern.sub(_visible, text)


def redact(text: str, *, keep_newlines: bool = False) -> str:
    """Secrets masked, then control characters rendered visibly."""
    return neutralise(SECRETS.scrub(text), keep_newlines=keep_newlines)


def install_log_redaction() -> None:
    """Make every log record of the process pass :func:`redact` as it is created.

    A record factory rather than a handler filter: it covers every logger and
    every handler (the CLI's, the daemon's JSON one, a test's capture), and
    the traceback of a logged exception too. Idempotent.
    """
    global _installed  # noqa: PLW0603 - one factory per process, installed once
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


_install_lock = threading.Lock()
_installed = False


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string is for logging itself to report
        return
    record.msg, record.args = redact(message, keep_newlines=True), ()
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text, keep_newlines=True)
    if record.stack_info:
        record.stack_info = redact(record.stack_info, keep_newlines=True)


def _visible(match: re.Match[str]) -> str:
    char = match.group(0)
    return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(char, f"\\x{ord(char):02x}")
