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


# -- a password that cannot be read is a configuration error: exit 2 ---------------------


@pytest.mark.parametrize(
    "case",
    [
        ({"password_env": "POPVAULT_TEST_UNSET_PASSWORD"}, "password_env", "is not set"),
        ({"password_file": "no-such-secret"}, "password_file", "No such file"),
        ({"password_command": "no-such-password-tool --get"}, "password_command", "status 127"),
    ],
    ids=["env", "file", "command"],
)
def test_a_password_that_cannot_be_read_exits_2_naming_file_account_and_key(
    ws: Workspace,
    server: FakePop3Server,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[dict[str, str], str, str],
) -> None:
    source, key, detail = case
    monkeypatch.delenv("POPVAULT_TEST_UNSET_PASSWORD", raising=False)
    broken = account(server, "broken", path="broken", **{"password_file": None, **source})
    ws.write_config([broken, account(server, "good")])
    result = ws.cli("run")
    assert result.code == 2, result.output
    [line] = [line for line in result.out.splitlines() if line.startswith("broken:")]
    assert "configuration error" in line
    assert str(ws.config) in line
    assert "account 'broken'" in line
    assert f"key {key!r}" in line
    assert detail in line
    # The other accounts still ran.
    assert len(ws.archived_files("good")) == len(server.mailbox)
    assert dict(ws.ledger_rows("SELECT account, outcome FROM runs")) == {
        "broken": "failed",
        "good": "ok",
    }


def test_a_failed_account_without_a_config_problem_still_exits_1(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_secret("wrong-password", "wrong")
    ws.write_config([account(server, "bad", password_file="wrong", path="bad")])
    assert ws.cli("run").code == 1
