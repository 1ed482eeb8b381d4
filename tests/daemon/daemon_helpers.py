"""Helpers for the daemon tests: accounts on fake servers, waiting, a daemon subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from popvault.testing import FakePop3Server
from workspace import Workspace, fake_account

PASSWORD = "daemon-Secret-77"
# Every wait in these tests is bounded; a run against the fake server takes milliseconds.
WAIT_S = 20.0


def account(name: str, srv: FakePop3Server, **extra: Any) -> dict[str, Any]:
    """A config entry for an account on a fake server, run every second."""
    return fake_account(srv, name, **{"every": "1s", **extra})


def make_workspace(folder: Path) -> Workspace:
    return Workspace(folder, password=PASSWORD)


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class DaemonProcess:
    """``popvault daemon`` as a child process, logging JSON lines into a file."""

    def __init__(self, ws: Workspace, *, log_name: str = "daemon.log") -> None:
        self.ws = ws
        self.log_file = ws.folder / log_name
        command = [
            sys.executable,
            "-c",
            "from popvault.cli import main; raise SystemExit(main())",
            "--config",
            str(ws.config),
            "daemon",
            "--log-format",
            "json",
        ]
        env = {key: value for key, value in os.environ.items() if not key.startswith("POPVAULT")}
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(command, stderr=log, stdout=log, env=env)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT_S) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT_S)

    def text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def runs(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("account") == name and "outcome" in r]

    def logged(self, fragment: str) -> bool:
        return any(fragment in r.get("message", "") for r in self.records())


def ledger_state(ws: Workspace, name: str) -> tuple[int, int]:
    """(archived rows, pending rows) of one account."""
    rows = ws.ledger_rows(
        "SELECT state, count(*) FROM messages WHERE account = ? GROUP BY state", name
    )
    counts = dict(rows)
    return counts.get("archived", 0), counts.get("pending", 0)
