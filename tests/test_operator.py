"""Careless operators (issue 8, "The operator"): a lost ledger, killed runs, closed pipes,
missing secrets, unknown environment variables, a damaged ledger file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "operator-Pa55word-never-shown"
CLI = "from popvault.cli import main; raise SystemExit(main())"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server():
    with FakePop3Server(sample_messages(40), username="alice", password=PASSWORD) as srv:
        yield srv


def account(srv: FakePop3Server, name: str = "acct", **extra: Any) -> dict[str, Any]:
    return fake_account(srv, name, **extra)


def popvault_process(ws: Workspace, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``popvault --config ws.config ARGS`` in a child process (its own stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPVAULT_")}
    return subprocess.run(
        [sys.executable, "-c", CLI, "--config", str(ws.config), *args],
        env=env,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


# -- standard output closed early ------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["status"], ["--help"]])
def test_a_closed_stdout_ends_quietly_without_a_traceback(
    ws: Workspace, server: FakePop3Server, command: list[str]
) -> None:
    ws.write_config([account(server)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before popvault writes a line (`| head`, early)
    try:
        done = popvault_process(ws, *command, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert "Exception ignored" not in done.stderr
    if command != ["--help"]:  # argparse exits on its own; the rest is popvault's
        assert done.returncode == 141, done.stderr  # 128 + SIGPIPE, as `yes | head` gives


def test_a_pipe_to_head_reads_the_first_line(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([account(server)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPVAULT_")}
    shell = (
        f"{sys.executable} -c '{CLI}' --config {ws.config} run --dry-run | head -n 1; "
        "echo status=${PIPESTATUS[0]}"
    )
    done = subprocess.run(
        ["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.startswith("acct: would download 40 of 40 message(s)")
    assert "Traceback" not in done.stderr
    assert done.stderr == ""
    assert done.stdout.rstrip().rsplit("status=", 1)[1] in ("0", "141")
