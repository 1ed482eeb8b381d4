"""Run ``popvault`` in a child process and kill it with SIGKILL at a chosen point.

As a script (the child)::

    python crash_runner.py [--point NAME --nth N --when before|after] [--ready] -- ARGS...

installs a test-only wrapper around one method, then calls
``popvault.cli.main(ARGS)``. On the ``nth`` call of that method (counted over
the whole process) it sends itself SIGKILL, either just ``before`` the call or
just ``after`` it returned: no ``finally``, no ``atexit``, no flush — the
closest a test gets to pulling the plug on the process. ``--ready`` prints
``ready`` once the heavy modules are imported, so that a parent killing after a
random delay spends that delay on real work, not on imports.

As a module (the parent), :func:`run_crashing` and :func:`spawn` start it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from popvault.cli import main

# Each crash point: the module, class and method to wrap. The names are the
# steps of the archive protocol (popvault.fetch's module docstring); a step
# done per batch is killed at its nth batch, and the child's batches hold
# BATCH_MESSAGES messages (see child_main) so that a small mailbox has several.
POINTS: dict[str, tuple[str, str, str]] = {
    # Reading one message's body (of a pipelined RETR reply).
    "retr_into": ("popvault.pop3.client", "Retrieval", "read_into"),
    "write": ("popvault.store.base", "Writer", "write"),
    # A batch's files made durable (one syncfs, or each file's fsync on the worker).
    "seal": ("popvault.fetch", "Fetcher", "_synced"),
    # A batch's pending rows (one transaction).
    "record_pending": ("popvault.ledger.facade", "Ledger", "record_pending_many"),
    # One message's link to its final name (its folder fsynced per batch after).
    "commit": ("popvault.store.base", "Writer", "link"),
    # A batch's archived rows (one transaction).
    "mark_archived": ("popvault.ledger.facade", "Ledger", "mark_archived_many"),
    # The reply to one DELE of a pipelined batch: "before" is DELEs sent, not acknowledged.
    "dele": ("popvault.pop3.client", "Pop3Client", "_one_line_reply"),
    "mark_delete_requested": ("popvault.ledger.facade", "Ledger", "mark_delete_requested"),
    "quit": ("popvault.pop3.client", "Pop3Client", "quit"),
    "mark_deleted": ("popvault.ledger.facade", "Ledger", "mark_deleted"),
    # Inside the first run's creation of the ledger (one table made, the next not yet):
    # a new ledger is made from the models' metadata, without Alembic (issue 9).
    "create_table": ("sqlalchemy.sql.ddl", "SchemaGenerator", "visit_table"),
}

# Messages per durable batch in the child: 2, so that the 5-message mailboxes of
# the crash tests make several batches and every batch boundary is a crash point.
CHILD_BATCH_MESSAGES = 2

# Modules a run imports lazily; imported before "ready" (see the module docstring).
_PRELOAD = (
    "popvault.cli",
    "popvault.sync",
    "popvault.config",
    "popvault.ledger",
    "popvault.ledger.migrate",
    "popvault.store",
    "popvault.pop3.client",
)

SCRIPT = Path(__file__).resolve()


def _kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, nth: int, when: str) -> None:
    """Wrap the method named by ``point`` so that its ``nth`` call kills the process."""
    module_name, class_name, method_name = POINTS[point]
    owner = getattr(importlib.import_module(module_name), class_name)
    original: Callable[..., Any] = getattr(owner, method_name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == nth and when == "before":
            _kill_now()
        result = original(*args, **kwargs)
        if calls == nth and when == "after":
            _kill_now()
        return result

    setattr(owner, method_name, wrapper)


def install_linked(nth: int) -> None:
    """Kill on the ``nth`` publish right after its link, before the folder's fsync.

    Not a method wrapper: the point is ``durable.link``, which a batch's
    publish calls for each message before it syncs the folder once. The name
    then exists in the page cache only; a process kill keeps it, a power cut
    after the kill may not.
    """
    from popvault.store import durable  # noqa: PLC0415 - after the preload, like the points

    calls = 0

    original = durable.link

    def link(source: Path, target: Path) -> None:
        nonlocal calls
        calls += 1
        original(source, target)
        if calls == nth:
            _kill_now()

    durable.link = link


def child_main(argv: Sequence[str]) -> int:
    """The child's entry point: patch, signal readiness, run popvault."""
    parser = argparse.ArgumentParser(prog="crash_runner")
    parser.add_argument("--point", choices=[*sorted(POINTS), "linked"])
    parser.add_argument("--nth", type=int, default=1)
    parser.add_argument("--when", choices=["before", "after"], default="after")
    parser.add_argument("--ready", action="store_true")
    parser.add_argument("popvault_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    for name in _PRELOAD:
        importlib.import_module(name)
    # Final in popvault.fetch; rebound here on purpose, in the test child only.
    setattr(importlib.import_module("popvault.fetch"), "BATCH_MESSAGES", CHILD_BATCH_MESSAGES)  # noqa: B010
    if args.point == "linked":
        install_linked(args.nth)
    elif args.point is not None:
        install(args.point, args.nth, args.when)
    if args.ready:
        print("ready", flush=True)
    rest = args.popvault_args
    return main(rest[1:] if rest[:1] == ["--"] else rest)


def command(config: Path, *popvault_args: str, **options: object) -> list[str]:
    """The child's command line; ``options`` become ``--point``/``--nth``/``--when``/``--ready``."""
    line = [sys.executable, str(SCRIPT)]
    for key, value in options.items():
        if value is True:
            line.append(f"--{key}")
        elif value not in (None, False):
            line += [f"--{key}", str(value)]
    return [*line, "--", "--config", str(config), *popvault_args]


def run_crashing(
    config: Path, point: str, nth: int, when: str, *, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``popvault run`` in a child killed at ``point``'s ``nth`` call; waits for it to end."""
    return subprocess.run(
        command(config, "run", point=point, nth=nth, when=when),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(config: Path, *popvault_args: str, ready: bool = False) -> subprocess.Popen[str]:
    """Start ``popvault ARGS`` in a child (no crash point) and return at once."""
    return subprocess.Popen(
        command(config, *popvault_args, ready=ready),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
