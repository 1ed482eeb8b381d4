"""`popvault run` against the bundled fake server: faults a real server won't produce on demand."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from popvault.errors import StoreError
from popvault.store import durable, open_store
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "fake-Pa55word-never-shown"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server():
    with FakePop3Server(sample_messages(12), username="alice", password=PASSWORD) as srv:
        yield srv


def account(srv: FakePop3Server, name: str = "fake", **extra: Any) -> dict[str, Any]:
    return fake_account(srv, name, **extra)


def stored_set(ws: Workspace, folder: str) -> list[bytes]:
    return sorted(path.read_bytes() for path in ws.archived_files(folder))


def test_first_run_archives_everything_second_run_nothing(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    first = ws.cli("run")
    assert first.code == 0, first.output
    expected = sorted(maildir_form(wire_form(raw)) for _, raw in server.mailbox)
    assert stored_set(ws, "fake") == expected
    files_before = {p: p.stat().st_mtime_ns for p in ws.archived_files("fake")}

    second = ws.cli("run")
    assert second.code == 0, second.output
    assert "0 new message" in second.out
    assert {p: p.stat().st_mtime_ns for p in ws.archived_files("fake")} == files_before
    retrs = [c for c in server.commands if c.upper().startswith("RETR")]
    assert len(retrs) == len(server.mailbox), "the second run must not RETR anything"
    assert server.commands[-1].upper() == "QUIT"


def test_only_new_messages_are_fetched(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    new = b"From: a@example.org\r\nSubject: late\r\n\r\nlate arrival\r\n"
    server.add_message(new)
    before = len([c for c in server.commands if c.upper().startswith("RETR")])
    assert ws.cli("run").code == 0
    retrs = [c for c in server.commands if c.upper().startswith("RETR")][before:]
    assert retrs == [f"RETR {len(server.mailbox)}"]
    assert maildir_form(new) in stored_set(ws, "fake")


def test_eml_keeps_crlf_bytes_exactly(ws: Workspace, server) -> None:
    ws.write_config([account(server, format="eml")])
    assert ws.cli("run").code == 0
    assert stored_set(ws, "fake") == sorted(wire_form(raw) for _, raw in server.mailbox)


def test_status_json_counts_and_never_shows_the_password(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    status = ws.cli("status", "--json")
    assert status.code == 0
    (row,) = json.loads(status.out)
    assert row["name"] == "fake"
    assert row["archived_messages"] == len(server.mailbox)
    total = sum(len(maildir_form(wire_form(raw))) for _, raw in server.mailbox)
    assert row["archived_bytes"] == total
    assert row["last_outcome"] == "ok"
    assert row["last_error"] is None
    assert row["last_run_at"] is not None
    table = ws.cli("status")
    assert "fake" in table.out
    for text in (status.output, table.output, ws.ledger_dump()):
        assert PASSWORD not in text


def test_wrong_password_fails_only_that_account(ws: Workspace, server, tmp_path: Path) -> None:
    (tmp_path / "wrong").write_text("not-the-password\n", encoding="utf-8")
    ws.write_config(
        [account(server, "bad", password_file="wrong", path="bad"), account(server, "good")]
    )
    result = ws.cli("run")
    assert result.code == 1
    assert "bad" in result.out
    assert "FAILED" in result.out
    assert "invalid login" in result.out or "AUTH" in result.out
    assert len(ws.archived_files("good")) == len(server.mailbox)
    assert ws.archived_files("bad") == []
    rows = dict(ws.ledger_rows("SELECT account, outcome FROM runs"))
    assert rows == {"bad": "failed", "good": "ok"}
    assert "not-the-password" not in result.output + ws.ledger_dump()


def test_dry_run_changes_nothing(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    ws.cli("db", "upgrade")
    before = ws.ledger_dump()
    result = ws.cli("run", "--dry-run")
    assert result.code == 0, result.output
    assert f"would download {len(server.mailbox)}" in result.out
    assert ws.archived_files("fake") == []
    assert ws.ledger_dump() == before
    assert not any(c.upper().startswith(("RETR", "DELE")) for c in server.commands)


def test_dry_run_and_status_on_a_new_setup_create_no_file(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    result = ws.cli("run", "--dry-run")
    assert result.code == 0, result.output
    assert f"would download {len(server.mailbox)}" in result.out
    status = ws.cli("status", "--json")
    assert status.code == 0
    assert json.loads(status.out)[0]["archived_messages"] == 0
    assert sorted(p.name for p in ws.folder.iterdir()) == ["config.toml", "secret"]


def test_server_without_uidl_fails_clearly(ws: Workspace, server) -> None:
    server.no_uidl = True
    ws.write_config([account(server)])
    result = ws.cli("run")
    assert result.code == 1
    assert "UIDL" in result.out
    assert ws.archived_files("fake") == []


def test_err_on_one_retr_archives_the_rest_and_fails_the_run(ws: Workspace, server) -> None:
    server.fail_command("RETR", "-ERR [SYS/TEMP] message is being stored", arg="3")
    ws.write_config([account(server)])
    result = ws.cli("run")
    assert result.code == 1
    assert "message is being stored" in result.out
    assert len(ws.archived_files("fake")) == len(server.mailbox) - 1
    server.clear_faults()
    assert ws.cli("run").code == 0
    assert stored_set(ws, "fake") == sorted(
        maildir_form(wire_form(raw)) for _, raw in server.mailbox
    )


def test_connection_cut_mid_retr_records_nothing_half_and_next_run_completes(
    ws: Workspace, server
) -> None:
    ws.write_config([account(server)])
    # Cut somewhere inside the message bodies: after greeting, login, UIDL and LIST.
    server.cut_after(2500)
    result = ws.cli("run")
    assert result.code == 1
    archived = ws.ledger_rows("SELECT count(*) FROM messages WHERE state = 'archived'")[0][0]
    assert archived == len(ws.archived_files("fake"))
    assert ws.ledger_rows("SELECT count(*) FROM messages WHERE state = 'pending'")[0][0] == 0
    server.clear_faults()
    assert ws.cli("run").code == 0
    assert stored_set(ws, "fake") == sorted(
        maildir_form(wire_form(raw)) for _, raw in server.mailbox
    )


# finish: writing out the file's last bytes (the fetching thread); sync: its
# fsync (the fetch worker thread, seen at the batch's commit, with the batch
# sync of the whole file system switched off); filesystem: that batch sync.
@pytest.mark.parametrize("step", ["finish", "sync", "filesystem"])
def test_a_store_failure_after_retr_ends_the_session_without_quit(
    ws: Workspace, server, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    ws.write_config([account(server)])
    store_probe = open_store("maildir", ws.archive, "fake")
    writer_class = type(store_probe.begin(received_at=datetime.now(UTC)))

    def full_disk(self: Any) -> Any:
        raise StoreError("disk full (ENOSPC) writing test")

    if step == "filesystem":
        if store_probe.filesystem_sync() is None:
            pytest.skip("the test's file system gets an fsync per file, no batch sync")
        monkeypatch.setattr(durable.FileSystemSync, "sync", full_disk)
    else:
        monkeypatch.setattr(durable, "WHOLE_FILE_SYSTEM_SYNC", step == "finish")
        monkeypatch.setattr(writer_class, step, full_disk)
    result = ws.cli("run")
    assert result.code == 1
    assert "disk full" in result.out
    assert "QUIT" not in [c.upper() for c in server.commands]
    assert ws.archived_files("fake") == []
    assert ws.ledger_rows("SELECT count(*) FROM messages")[0][0] == 0


def test_a_missing_archive_root_is_created_only_on_the_first_run(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    assert not ws.archive.exists()
    assert ws.cli("run").code == 0
    assert len(ws.archived_files("fake")) == len(server.mailbox)
    # Later the root vanishes (say, an external disk not mounted): popvault must
    # not recreate it and quietly file new mail into the bare mount point.
    shutil.rmtree(ws.archive)
    server.add_message(b"From: a@example.org\r\nSubject: new\r\n\r\nnew\r\n")
    result = ws.cli("run")
    assert result.code == 1
    # Refused before any account by the archive root's check (popvault.store.marker).
    assert f"the archive root {ws.archive} does not exist" in result.err
    assert "a share not mounted" in result.err
    assert not ws.archive.exists()


def test_bad_config_key_exits_2_naming_it(ws: Workspace, server) -> None:
    ws.write_config([account(server, usernmae="typo")])
    result = ws.cli("run")
    assert result.code == 2
    assert "usernmae" in result.err
    assert "fake" in result.err
    assert str(ws.config) in result.err


def test_verify_finds_altered_missing_and_unknown_files(ws: Workspace, server) -> None:
    ws.write_config([account(server)])
    assert ws.cli("run").code == 0
    clean = ws.cli("verify", "--json")
    assert clean.code == 0, clean.output
    (report,) = json.loads(clean.out)
    assert report["ok"] is True
    assert report["checked"] == len(server.mailbox)

    files = ws.archived_files("fake")
    altered, removed = files[0], files[1]
    altered.write_bytes(altered.read_bytes().replace(b"Subject", b"Subjekt", 1))
    removed.unlink()
    stray = files[2].parent / "1700000000.stray.host,S=5"
    stray.write_bytes(b"hello")

    broken = ws.cli("verify", "--json")
    assert broken.code == 1
    (report,) = json.loads(broken.out)
    kinds = {(p["kind"], Path(p["path"]).name) for p in report["problems"]}
    assert kinds == {
        ("changed", altered.name),
        ("missing", removed.name),
        ("unknown", stray.name),
    }
    text = ws.cli("verify")
    assert text.code == 1
    assert "3 problem(s)" in text.out
