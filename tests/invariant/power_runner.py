"""Run ``popvault`` in child processes that log every durable operation and die at the nth.

A power-loss test needs one child per cut point, and a fresh interpreter
spends about a second importing popvault's dependencies. So one helper
process (``python power_runner.py --serve``) imports them once and then
forks a child per request — a new process, whose module state (e.g. the
store's set of synced folders) starts as empty as a fresh one's, since the
helper never runs popvault itself.

Each child records every operation of :mod:`popvault.store.durable` to its
log (see :mod:`power_cut`), then runs its arguments through
:func:`crash_runner.child_main` (whose test settings, e.g. a small batch
size, apply here too). With a ``cut`` K it sends itself SIGKILL when
operation K is reported (logged, marked as the cut, not to be replayed): the
power cut is modelled at the instant operation K would take effect, while
everything the process did before (ledger commits, DELE, QUIT) has happened.
``skip_file_fsync`` breaks the store on purpose — files are closed without
their fsync, and a batch's file-system sync does nothing — for the test's
self-check. A runner makes batches durable with one file-system sync where
:class:`~popvault.store.durable.FileSystemSync` allows it, or with an fsync
per file (``whole_file_system_sync=False``).

:class:`Runner` is the parent's side.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import crash_runner
from power_cut import encode

from popvault.store import durable

SCRIPT = Path(__file__).resolve()
# A child still running after this long is stuck: SIGALRM ends it (its code is
# then -14), so that a test fails instead of waiting forever for the reply.
CHILD_SECONDS = 60


class LogRecorder:
    """Appends each operation to a log; kills the process at operation ``cut``.

    ``os.write`` on an ``O_APPEND`` descriptor, no buffer: what was logged
    before the SIGKILL is in the page cache, which the kill keeps.
    """

    def __init__(self, log: Path, cut: int | None) -> None:
        self._fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._cut = cut
        self._count = 0
        self._lock = threading.Lock()  # a batch's file fsyncs may run on a worker thread

    def __call__(self, op: durable.Operation) -> None:
        with self._lock:
            self._count += 1
            if self._count == self._cut:
                os.write(self._fd, encode(op, cut=True))  # for the report, not the replay
                os.kill(os.getpid(), signal.SIGKILL)
            os.write(self._fd, encode(op))


def _close_without_fsync(fd: int, path: Path) -> None:
    del path
    durable.close_quietly(fd)


def _sync_nothing(self: durable.FileSystemSync) -> None:
    del self


def _child(request: dict[str, Any]) -> int:
    """In the forked child: output to a file, the recorder in place, then popvault."""
    signal.alarm(CHILD_SECONDS)
    out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the child
    sys.stderr = sys.stdout
    os.environ.update(request["env"])  # the helper's environment is the one it started with
    durable.WHOLE_FILE_SYSTEM_SYNC = request["whole_file_system_sync"]
    if request["skip_file_fsync"]:
        durable.sync_and_close = _close_without_fsync  # the Writer's fsync, left out
        durable.FileSystemSync.sync = _sync_nothing  # type: ignore[method-assign]
    with durable.observe(LogRecorder(Path(request["log"]), request["cut"])):
        return crash_runner.child_main(["--", *request["args"]])


def serve() -> None:
    """The helper: import once, then fork a child per request line on stdin."""
    for name in crash_runner._PRELOAD:  # the same modules, loaded once
        importlib.import_module(name)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 70  # EX_SOFTWARE, if popvault itself raised
            try:
                code = _child(request)
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


@dataclass(frozen=True)
class Outcome:
    """How one child ended (a negative code: killed by that signal) and what it printed."""

    returncode: int
    output: str


class Runner:
    """The parent's side: a helper process that forks one recorded ``popvault run`` per call."""

    def __init__(self, *, whole_file_system_sync: bool = True) -> None:
        self.whole_file_system_sync = whole_file_system_sync
        self._helper = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._pipe("stdout").readline() == "ready\n", "the power runner did not start"

    def run(
        self,
        config: Path,
        log: Path,
        *,
        cut: int | None = None,
        skip_file_fsync: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Outcome:
        """``popvault run`` with ``config`` in a child logging to ``log``, cut at ``cut``.

        ``env``: variables set in the child (on top of the helper's environment).
        """
        output = log.with_suffix(".out")
        request = {
            "args": ["--config", str(config), "run"],
            "log": str(log),
            "cut": cut,
            "skip_file_fsync": skip_file_fsync,
            "whole_file_system_sync": self.whole_file_system_sync,
            "env": dict(env or {}),
            "output": str(output),
        }
        self._pipe("stdin").write(json.dumps(request) + "\n")
        self._pipe("stdin").flush()
        reply = self._pipe("stdout").readline()
        assert reply, "the power runner died"
        return Outcome(json.loads(reply)["returncode"], output.read_text(errors="replace"))

    def close(self) -> None:
        self._pipe("stdin").close()
        try:
            self._helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._helper.kill()
            self._helper.wait()
        self._pipe("stdout").close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _pipe(self, name: str) -> IO[str]:
        pipe: IO[str] | None = getattr(self._helper, name)
        assert pipe is not None
        return pipe


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: power_runner.py --serve (requests as JSON lines on stdin)")
    serve()
