"""The first five minutes of a new user (issue 8): labels that agree, defaults out of the config
folder, a config written by `popvault init`."""

from __future__ import annotations

import contextlib
import io
import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from popvault.cli import main
from popvault.config import load
from popvault.status import render_locations
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "first-Minutes-pw-4"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server():
    with FakePop3Server(sample_messages(200, seed=3), username="amy", password=PASSWORD) as srv:
        yield srv


def account(srv: FakePop3Server, name: str = "acct", **extra: Any) -> dict[str, Any]:
    return fake_account(srv, name, **extra)


# -- labels -------------------------------------------------------------------------------


def test_run_labels_bytes_downloaded_and_status_labels_bytes_stored(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([account(server)])
    run = ws.cli("run")
    assert run.code == 0, run.output
    wire = sum(len(wire_form(raw)) for _, raw in server.mailbox)
    stored = sum(len(maildir_form(wire_form(raw))) for _, raw in server.mailbox)
    assert wire != stored  # Maildir keeps LF line ends: the two numbers differ
    assert re.search(r"200 new message\(s\), \d+\.\d [KM]iB downloaded, 200 on server", run.out)
    table = ws.cli("status").out
    header = next(line for line in table.splitlines() if line.startswith("ACCOUNT")).split()
    assert "STORED" in header
    assert "SIZE" not in header
    [row] = json.loads(ws.cli("status", "--json").out)
    assert row["archived_bytes"] == stored


@pytest.mark.parametrize(
    ("written", "shown"),
    [("14d", "after 14d"), ("2w", "after 2w"), ("36h", "after 36h"), ("90m", "after 90m")],
)
def test_retention_is_shown_as_written(
    ws: Workspace, server: FakePop3Server, written: str, shown: str
) -> None:
    ws.write_config([account(server, retention=written)])
    [row] = json.loads(ws.cli("status", "--json").out)
    assert row["retention"] == shown
    assert shown in ws.cli("status").out


def test_status_shows_what_is_left_on_the_server_after_a_run_that_deleted_everything(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([account(server, retention="delete")])
    run = ws.cli("run")
    assert run.code == 0, run.output
    assert server.mailbox == []
    assert "0 on server, 200 deleted from server" in run.out
    [row] = json.loads(ws.cli("status", "--json").out)
    assert row["on_server"] == 0
    line = next(line for line in ws.cli("status").out.splitlines() if line.startswith("acct"))
    assert line.split()[1:5] == ["200", *line.split()[2:4], "0"]  # ARCHIVED, STORED, ON SERVER


# -- defaults: the XDG data and state folders ------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    for variable in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "POPVAULT_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    return folder


def test_a_config_without_paths_archives_into_the_xdg_folders_shown_by_status(
    home: Path, server: FakePop3Server
) -> None:
    config_dir = home / ".config" / "popvault"
    config_dir.mkdir(parents=True)
    ws = Workspace(config_dir, password=PASSWORD)
    entry = account(server)
    ws.config.write_text(
        "[[accounts]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items()),
        encoding="utf-8",
    )
    archive = home / ".local" / "share" / "popvault" / "archive"
    ledger = home / ".local" / "state" / "popvault" / "popvault.sqlite3"

    before = ws.cli("status")
    assert before.code == 0, before.output
    assert f"archive: {archive} (not created yet" in before.out
    assert f"ledger:  {ledger} (not created yet)" in before.out
    assert not ledger.exists()

    run = ws.cli("run")
    assert run.code == 0, run.output
    assert len(list((archive / "acct" / "new").iterdir())) == len(server.mailbox)
    assert ledger.is_file()
    # Nothing but the config and its secret in the config folder: no mail, no ledger.
    assert sorted(path.name for path in config_dir.iterdir()) == ["config.toml", "secret"]
    after = ws.cli("status").out.splitlines()
    assert after[:2] == [f"archive: {archive}", f"ledger:  {ledger}"]
    # --json stays a list of accounts.
    assert isinstance(json.loads(ws.cli("status", "--json").out), list)


def test_status_names_a_postgresql_ledger_without_its_password(ws: Workspace) -> None:
    ws.write_config([], ledger_url="postgresql://popvault:Secret-pg-9@127.0.0.1:1/none")
    text = render_locations(load(ws.config, environ={}))
    assert "ledger:  postgresql://popvault:***@127.0.0.1:1/none" in text
    assert "Secret-pg-9" not in text


# -- popvault init ------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_init_writes_the_commented_example_with_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "new" / "popvault" / "config.toml"
    ws = Workspace(tmp_path)
    ws.config = target
    result = ws.cli("init")
    assert result.code == 0, result.output
    assert f"wrote {target} (mode 0600)" in result.out
    assert target.read_bytes() == EXAMPLE.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    # It is a config popvault reads: status works on it without any secret.
    status = ws.cli("status")
    assert status.code == 0, status.output
    assert "personal" in status.out


def test_init_never_overwrites(ws: Workspace) -> None:
    ws.config.write_text("# mine\n", encoding="utf-8")
    result = ws.cli("init")
    assert result.code == 1
    assert f"{ws.config} already exists; not overwriting it" in result.err
    assert ws.config.read_text(encoding="utf-8") == "# mine\n"


def test_init_without_config_writes_where_popvault_looks(home: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["init"])
    assert code == 0, err.getvalue()
    written = home / ".config" / "popvault" / "config.toml"
    assert written.read_bytes() == EXAMPLE.read_bytes()
    assert "popvault run --dry-run" in out.getvalue()


def test_the_no_config_error_names_popvault_init(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    result = ws.cli("status")
    assert result.code == 2
    assert f"no config file at {ws.config}" in result.err
    assert f"`popvault init --config {ws.config}`" in result.err
