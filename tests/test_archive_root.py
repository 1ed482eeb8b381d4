"""check_archive_root: the marker rule with a real ledger (SQLite and PostgreSQL) and config.

The archive root's sample is the ledger's newest archived files of every
account whose folder is not storage of its own; such a folder (here: a
symbolic link out of the root, as a share mounted elsewhere would be) keeps
its own marker, sampled from its account's files only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import postgres
from popvault import config as config_module
from popvault.archive_root import SAMPLE_FILES, check_archive_root
from popvault.config import Config
from popvault.errors import ArchiveMismatch
from popvault.ledger import Ledger
from popvault.store.marker import MARKER_NAME, marker_text, read_marker
from workspace import Workspace

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield "sqlite:///ledger.sqlite3"  # relative to the config file's folder
        return
    with postgres.databases("popvault_root") as make:
        yield make()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def entry(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "username": "u", "password": "p", **extra}


def configure(ws: Workspace, ledger_url: str, *names: str) -> Config:
    ws.write_config([entry(name) for name in names or ("acct",)], ledger_url=ledger_url)
    return config_module.load(ws.config)


def archived(ledger: Ledger, account: str, uidl: str, root: Path | None) -> str:
    """Record an archived message of ``account``; write its file under ``root`` if given."""
    relpath = f"{account}/new/{uidl},S=3"
    ledger.record_pending(
        account,
        uidl,
        path=relpath,
        size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
        server_size=5,
        first_seen_at=T0,
    )
    ledger.mark_archived(account, uidl, archived_at=T0)
    if root is not None:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(b"abc")
    return relpath


def test_a_new_archive_is_marked_and_then_matches(ws: Workspace, ledger_url: str) -> None:
    cfg = configure(ws, ledger_url)
    with Ledger.open(cfg.ledger_url) as ledger:
        assert not cfg.archive_root.exists()
        [check] = check_archive_root(cfg, ledger)
        assert check.outcome == "created"
        assert read_marker(cfg.archive_root) == ledger.ledger_id()
        [again] = check_archive_root(cfg, ledger)
        assert again.outcome == "matched"


def test_an_archive_from_before_markers_is_marked(ws: Workspace, ledger_url: str) -> None:
    cfg = configure(ws, ledger_url)
    with Ledger.open(cfg.ledger_url) as ledger:
        for n in range(SAMPLE_FILES + 3):
            archived(ledger, "acct", f"m{n}", cfg.archive_root)
        [check] = check_archive_root(cfg, ledger)
        assert check.outcome == "created"
        assert read_marker(cfg.archive_root) == ledger.ledger_id()


def test_the_ledger_s_files_elsewhere_refuse_naming_the_newest(
    ws: Workspace, ledger_url: str
) -> None:
    cfg = configure(ws, ledger_url)
    cfg.archive_root.mkdir()  # an empty mount point: the share is not mounted
    with Ledger.open(cfg.ledger_url) as ledger:
        paths = [archived(ledger, "acct", f"m{n}", None) for n in range(SAMPLE_FILES + 2)]
        with pytest.raises(ArchiveMismatch) as caught:
            check_archive_root(cfg, ledger)
    message = str(caught.value)
    assert f"the archive root {cfg.archive_root} has no marker" in message
    assert f"none of the {SAMPLE_FILES} file(s) the ledger" in message
    assert all(path in message for path in paths[-SAMPLE_FILES:])
    assert paths[0] not in message  # only the newest are looked for
    if ledger_url.startswith("sqlite"):
        assert f"the ledger {ws.ledger_file} archived last" in message
    else:
        assert "postgresql://postgres@127.0.0.1:5432/popvault_root_" in message
    assert not (cfg.archive_root / MARKER_NAME).exists()


def test_another_ledger_s_marker_refuses_and_a_new_ledger_says_it_is_new(
    ws: Workspace, ledger_url: str
) -> None:
    cfg = configure(ws, ledger_url)
    cfg.archive_root.mkdir()
    (cfg.archive_root / MARKER_NAME).write_bytes(marker_text(OTHER))
    with Ledger.open(cfg.ledger_url) as ledger:
        mine = ledger.ledger_id()
        with pytest.raises(ArchiveMismatch) as new:
            check_archive_root(cfg, ledger)
        archived(ledger, "acct", "m1", cfg.archive_root)
        with pytest.raises(ArchiveMismatch) as used:
            check_archive_root(cfg, ledger, create=False)
    for caught in (new, used):
        assert f"holds ledger id {OTHER}" in str(caught.value)
        assert f"has id {mine}" in str(caught.value)
    assert "which knows no archived message yet" in str(new.value)
    assert "which knows no archived message yet" not in str(used.value)
    assert read_marker(cfg.archive_root) == OTHER


def test_a_dry_run_writes_no_marker(ws: Workspace, ledger_url: str) -> None:
    cfg = configure(ws, ledger_url)
    with Ledger.open(cfg.ledger_url) as ledger:
        [check] = check_archive_root(cfg, ledger, create=False)
        assert check.outcome == "would-create"
        assert not cfg.archive_root.exists()
        archived(ledger, "acct", "m1", None)
        with pytest.raises(ArchiveMismatch, match="does not exist"):
            check_archive_root(cfg, ledger, create=False)


def test_an_account_folder_of_its_own_keeps_its_own_marker(
    ws: Workspace, ledger_url: str, tmp_path: Path
) -> None:
    cfg = configure(ws, ledger_url, "acct", "shared")
    share = tmp_path / "share" / "shared"
    share.mkdir(parents=True)
    cfg.archive_root.mkdir()
    (cfg.archive_root / "shared").symlink_to(share)  # mounted elsewhere, linked in
    with Ledger.open(cfg.ledger_url) as ledger:
        archived(ledger, "acct", "a1", cfg.archive_root)
        archived(ledger, "shared", "s1", cfg.archive_root)  # lands in the share
        checks = check_archive_root(cfg, ledger)
        ledger_id = ledger.ledger_id()
        assert [(c.folder, c.outcome) for c in checks] == [
            (cfg.archive_root, "created"),
            (cfg.archive_root / "shared", "created"),
        ]
        assert read_marker(share) == ledger_id
        # Only the accounts being run have their own folders checked.
        assert len(check_archive_root(cfg, ledger, [cfg.account("acct")])) == 1
        # The share replaced by an empty one (another machine's folder, a wrong mount):
        # the root is fine, the account's own folder is refused.
        empty = tmp_path / "elsewhere"
        empty.mkdir()
        (cfg.archive_root / "shared").unlink()
        (cfg.archive_root / "shared").symlink_to(empty)
        with pytest.raises(ArchiveMismatch) as caught:
            check_archive_root(cfg, ledger)
    message = str(caught.value)
    assert f"account 'shared''s folder (storage of its own, own marker) {cfg.archive_root}" in (
        message
    )
    assert "shared/new/s1,S=3" in message
    assert "acct/new/a1" not in message  # the root's files are not this folder's


def test_the_root_s_sample_leaves_out_accounts_with_folders_of_their_own(
    ws: Workspace, ledger_url: str, tmp_path: Path
) -> None:
    # Every account on its own share: the local root holds none of the files, and is fine.
    cfg = configure(ws, ledger_url, "shared")
    share = tmp_path / "share"
    share.mkdir()
    cfg.archive_root.mkdir()
    (cfg.archive_root / "shared").symlink_to(share)
    with Ledger.open(cfg.ledger_url) as ledger:
        archived(ledger, "shared", "s1", cfg.archive_root)
        outcomes = [check.outcome for check in check_archive_root(cfg, ledger)]
    assert outcomes == ["created", "created"]


@pytest.mark.postgres
def test_a_postgres_ledger_is_named_by_its_url_with_the_password_masked(ws: Workspace) -> None:
    with postgres.databases("popvault_root") as make:
        url = make().replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
        cfg = configure(ws, url)
        cfg.archive_root.mkdir()
        (cfg.archive_root / MARKER_NAME).write_bytes(marker_text(OTHER))
        with Ledger.open(cfg.ledger_url) as ledger, pytest.raises(ArchiveMismatch) as caught:
            check_archive_root(cfg, ledger)
    message = str(caught.value)
    assert "s3cret-pw" not in message
    assert "but the ledger postgresql://postgres:***@127.0.0.1:5432/popvault_root_" in message
