"""What the fast commands import: the structural guard of the no-op run's budget (issue 9).

A no-op `popvault run` must stay cheap, so its process must not load what it
does not use: Alembic (and Mako) when no migration is pending (a new ledger is
created without them), APScheduler and
the daemon, SQLAlchemy's ORM (the ledger uses Core only), the progress bar off
a terminal. `popvault --help` loads none of the heavy libraries at all. Each
command runs in a fresh interpreter and reports ``sys.modules`` at its end; no
timing is asserted (timings belong to benchmarks/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command

from popvault.ledger.engine import create_ledger_engine, parse_url
from popvault.ledger.migrate import alembic_config
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "budget-Pa55word"

# Loaded by no command that only reads and writes the ledger at its current schema.
NEVER_IN_A_RUN = (
    "alembic",
    "mako",
    "apscheduler",
    "prometheus_client",
    "sqlalchemy.orm",
    "popvault.daemon",
    "popvault.progress",
)
# Loaded by nothing `popvault --help` needs: only argparse and popvault's own small modules.
NEVER_FOR_HELP = (
    *NEVER_IN_A_RUN,
    "sqlalchemy",
    "pydantic",
    "pydantic_settings",
    "ssl",
    "popvault.config",
    "popvault.ledger",
    "popvault.sync",
    "popvault.pop3",
    "popvault.store",
)

_REPORT = """
import json, sys
from popvault.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=open(sys.argv[1], "w"))
"""


def _modules_after(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """Run ``popvault ARGS`` in a fresh interpreter: its exit code and every module it loaded."""
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _REPORT, str(report), *args],
        check=False,
        capture_output=True,
        stdin=subprocess.DEVNULL,  # not a terminal: no progress bar
        timeout=120,
    )
    assert report.exists(), done.stderr.decode(errors="replace")
    result = json.loads(report.read_text())
    return result["code"], set(result["modules"])


def _workspace(tmp_path: Path) -> Workspace:
    folder = tmp_path / "ws"
    folder.mkdir()
    return Workspace(folder, password=PASSWORD)


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(
        name for name in names if any(m == name or m.startswith(name + ".") for m in modules)
    )


def test_help_loads_no_heavy_library(tmp_path: Path) -> None:
    code, modules = _modules_after(tmp_path, "--help")
    assert code == 0
    assert _loaded(modules, NEVER_FOR_HELP) == []


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["status"]])
def test_a_run_at_the_current_schema_loads_only_what_it_needs(
    tmp_path: Path, command: list[str]
) -> None:
    ws = _workspace(tmp_path)
    with FakePop3Server(sample_messages(5), username="alice", password=PASSWORD) as server:
        ws.write_config([fake_account(server, "fake")])
        first = ws.cli("run")  # creates the ledger: the one run that migrates
        assert first.code == 0, first.output
        code, modules = _modules_after(tmp_path, "--config", str(ws.config), *command)
    assert code == 0
    assert _loaded(modules, NEVER_IN_A_RUN) == []
    # The modules a run does need are there: the check would notice a run that did nothing.
    assert {"sqlalchemy", "popvault.ledger", "popvault.config"} <= modules


@pytest.mark.parametrize("command", [["run"], ["db", "upgrade"]])
def test_creating_a_new_ledger_loads_no_alembic(tmp_path: Path, command: list[str]) -> None:
    # A new ledger is made from the models and stamped at the head (issue 9):
    # the first run of a new install pays for no migration machinery.
    ws = _workspace(tmp_path)
    with FakePop3Server(sample_messages(5), username="alice", password=PASSWORD) as server:
        ws.write_config([fake_account(server, "fake")])
        code, modules = _modules_after(tmp_path, "--config", str(ws.config), *command)
    assert code == 0
    assert ws.ledger_file.stat().st_size > 0  # it did create the ledger
    assert _loaded(modules, NEVER_IN_A_RUN) == []


def _ledger_at(url: str, revision: str) -> None:
    """A ledger migrated by Alembic to ``revision`` (behind the head)."""
    engine = create_ledger_engine(parse_url(url))
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def test_a_pending_migration_still_loads_alembic(tmp_path: Path) -> None:
    # The other side of the rule: a ledger behind the head is upgraded by Alembic.
    ws = _workspace(tmp_path)
    ws.write_config([])
    _ledger_at(f"sqlite:///{ws.ledger_file}", "0003")
    code, modules = _modules_after(tmp_path, "--config", str(ws.config), "db", "upgrade")
    assert code == 0
    assert "alembic" in modules
