"""What `popvault run` and `popvault --help` load, module by module (issue 9).

tests/test_import_budget.py holds the heavy libraries out of the fast commands;
this file holds out what they load of popvault's own code and of the standard
library only for some other command or for an error: the config's error
messages (and difflib, which they use) are loaded only when a config is
wrong, the other commands' modules never by a run, and logging and datetime
not by ``--help``. The other side of each rule is tested too, so that a
check cannot pass because the code it guards stopped running. Each command
runs in a fresh interpreter that reports ``sys.modules`` at its end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "run-path-Pa55word"

# Needed only to explain a config that failed validation.
ERROR_ONLY = ("popvault.config._messages", "difflib")
# Popvault's modules for the other commands, and its test server.
OTHER_COMMANDS = (
    "popvault.status",
    "popvault.verify",
    "popvault.held",
    "popvault.demo",
    "popvault.init_config",
    "popvault.daemon",
    "popvault.progress",
    "popvault.testing",
)
# A SQLite ledger's run needs no PostgreSQL dialect or driver (the ledger imports
# each dialect's upsert where it is used).
POSTGRESQL_ONLY = ("sqlalchemy.dialects.postgresql", "psycopg")
# A password account's run needs no OAuth flow, token store or HTTP client (the
# config reads only the provider presets, plain data).
OAUTH_ONLY = ("popvault.oauth.flows", "popvault.oauth.tokens", "authlib", "httpx")
# `--help` and `--version` exit inside argument parsing, before any logging or clock.
NOT_FOR_HELP = ("logging", "datetime", "popvault.redaction", "popvault.errors")

_REPORT = """
import json, sys
from popvault.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=open(sys.argv[1], "w"))
"""


def _run(tmp_path: Path, *args: str) -> tuple[int, set[str], str]:
    """``popvault ARGS`` in a fresh interpreter: exit code, modules loaded, standard error."""
    report = tmp_path / "modules.json"
    report.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", _REPORT, str(report), *args],
        check=False,
        capture_output=True,
        stdin=subprocess.DEVNULL,  # not a terminal: no progress bar
        timeout=120,
    )
    stderr = done.stderr.decode(errors="replace")
    assert report.exists(), stderr
    result = json.loads(report.read_text())
    return result["code"], set(result["modules"]), stderr


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(
        name for name in names if any(m == name or m.startswith(name + ".") for m in modules)
    )


def _workspace(tmp_path: Path) -> Workspace:
    folder = tmp_path / "ws"
    folder.mkdir()
    return Workspace(folder, password=PASSWORD)


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"]])
def test_a_run_loads_neither_error_messages_nor_other_commands(
    tmp_path: Path, command: list[str]
) -> None:
    ws = _workspace(tmp_path)
    with FakePop3Server(sample_messages(3), username="alice", password=PASSWORD) as server:
        ws.write_config([fake_account(server, "fake")])
        assert ws.cli("run").code == 0  # creates the ledger: the next run migrates nothing
        code, modules, stderr = _run(tmp_path, "--config", str(ws.config), *command)
    assert code == 0, stderr
    assert _loaded(modules, ERROR_ONLY + OTHER_COMMANDS + POSTGRESQL_ONLY + OAUTH_ONLY) == []
    # It did run: the config was validated and the session's modules are there.
    assert {"popvault.config._schema", "popvault.sync", "popvault.pop3.client"} <= modules


def test_a_config_error_is_still_explained(tmp_path: Path) -> None:
    # The other side: the messages, loaded late, still name the account and the key.
    ws = _workspace(tmp_path)
    ws.write_config([{"name": "work", "host": "pop.example.org", "port": "x", "username": "a"}])
    code, modules, stderr = _run(tmp_path, "--config", str(ws.config), "run")
    assert code == 2
    assert "configuration error" in stderr
    assert "'work'" in stderr
    assert "port" in stderr
    assert "popvault.config._messages" in modules


def test_an_unknown_variable_still_gets_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # difflib, loaded late, still finds the closest name of a misspelt variable.
    ws = _workspace(tmp_path)
    ws.write_config([])
    monkeypatch.setenv("POPVAULT_ARCHIVE_ROOT", str(tmp_path / "elsewhere"))
    code, modules, stderr = _run(tmp_path, "--config", str(ws.config), "status")
    assert code == 0, stderr
    assert "POPVAULT_ARCHIVE__ROOT" in stderr
    assert "difflib" in modules


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_load_no_logging(tmp_path: Path, flag: str) -> None:
    code, modules, stderr = _run(tmp_path, flag)
    assert code == 0, stderr
    assert _loaded(modules, NOT_FOR_HELP + ERROR_ONLY + OTHER_COMMANDS) == []
