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

The registry is process-wide: a secret stays registered until the process
ends or (in a long-running daemon) until thousands of newer ones have pushed
it out; a daemon reads its passwords again on every run, which keeps them. Besides each
secret as it is, the forms it takes once quoted (Python's ``repr``, JSON) are
scrubbed too, so a secret inside a quoted server text is still found.

This module imports nothing from popvault, so that every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: What a secret becomes.
MASK = "***"
# Secrets kept at once (see SecretRegistry): far more than one process has at a
# time (a daemon of 500 accounts: 500 passwords, a few forms of each login).
MAX_SECRETS = 4096
# A secret this short (a test's "pw", a careless "1234") would also match inside
# ordinary words and mangle every message: it is masked only where it stands
# alone, between characters that are not letters or digits.
_SHORT_SECRET = 6

# C0 controls, DEL and the C1 controls (ESC-less CSI is 0x9b): none of them
# belongs in a line of text shown to a person.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_KEEP_NEWLINES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class SecretRegistry:
    """The secrets of this process; thread-safe (a daemon runs accounts in threads).

    Bounded: at most :data:`MAX_SECRETS` secrets, the one registered longest
    ago dropped first. A daemon registers its passwords again on every run, so
    they stay; what a long-running daemon adds all the time — each SASL
    exchange's messages, each refreshed access token — would otherwise grow
    the registry, and the pattern compiled from it, for as long as it runs.
    The pattern is compiled when it is next needed, not on every registration.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Each secret with its quoted forms, oldest registration first.
        self._secrets: dict[str, frozenset[str]] = {}
        self._forms: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._stale = False
        # Forms registered for the length of one exchange (temporary), with how
        # many exchanges hold each: scrubbed by plain replacement, no pattern.
        self._passing: dict[str, int] = {}

    @contextmanager
    def temporarily(self) -> Iterator[Callable[[str], None]]:
        """Register secrets for the block only: yields the function that registers one.

        For what one exchange sends and never again (a SASL login's messages:
        SCRAM's nonces and proofs, the base64 of each line), which only that
        exchange's replies could echo. Registered for good they would grow the
        registry with every login of a daemon.
        """
        mine: list[str] = []

        def add(secret: str) -> None:
            if not secret:
                return
            forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
            with self._lock:
                for form in forms:
                    self._passing[form] = self._passing.get(form, 0) + 1
                    mine.append(form)

        try:
            yield add
        finally:
            with self._lock:
                for form in mine:
                    left = self._passing[form] - 1
                    if left:
                        self._passing[form] = left
                    else:
                        del self._passing[form]

    def add(self, secret: str) -> None:
        """Register ``secret`` (and its quoted forms); an empty string is ignored."""
        if not secret:
            return
        with self._lock:
            known = self._secrets.pop(secret, None)
            self._secrets[secret] = known or frozenset(
                {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}
            )
            if known is not None:
                return  # only its place in the order changed
            while len(self._secrets) > MAX_SECRETS:
                del self._secrets[next(iter(self._secrets))]
            self._forms = frozenset().union(*self._secrets.values())
            self._stale = True

    def clear(self) -> None:
        """Forget every secret (for tests: each starts with an empty registry)."""
        with self._lock:
            self._secrets.clear()
            self._forms = frozenset()
            self._pattern = None
            self._stale = False

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by :data:`MASK`."""
        pattern = self._current_pattern()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        if self._passing:
            with self._lock:
                passing = sorted(self._passing, key=len, reverse=True)
            for form in passing:
                if form in text:
                    text = text.replace(form, MASK)
        return text

    def __contains__(self, secret: object) -> bool:
        return isinstance(secret, str) and (secret in self._forms or secret in self._passing)

    def __len__(self) -> int:
        return len(self._secrets)

    def _current_pattern(self) -> re.Pattern[str] | None:
        if not self._stale:
            return self._pattern
        with self._lock:
            if self._stale:
                # Longest first, so that a secret containing another is masked whole.
                ordered = sorted(self._forms, key=len, reverse=True)
                self._pattern = (
                    re.compile("|".join(_pattern(form) for form in ordered)) if ordered else None
                )
                self._stale = False
            return self._pattern


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


def temporary_secrets() -> contextlib.AbstractContextManager[Callable[[str], None]]:
    """:meth:`SecretRegistry.temporarily` of the process's registry."""
    return SECRETS.temporarily()


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
