"""One syncfs per batch (durable.FileSystemSync): where it is used, what it reports, failures."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from popvault import fetch
from popvault.errors import StoreError
from popvault.store import durable, open_store
from popvault.store.durable import FileSystemSync, Operation
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account, maildir_form, wire_form

PASSWORD = "fs-sync-Pa55word"


def trusted(path: Path) -> FileSystemSync:
    """A syncer for ``path``'s file system, or a skip where it has no trusted syncfs."""
    syncer = FileSystemSync.open_for(path)
    if syncer is None:
        pytest.skip(f"{path} is on a file system without a trusted syncfs (ext4, XFS, btrfs)")
    return syncer


def test_a_trusted_file_system_gets_a_syncer_that_reports_its_sync(tmp_path: Path) -> None:
    seen: list[Operation] = []
    with trusted(tmp_path) as syncer, durable.observe(seen.append):
        syncer.sync()
    assert seen == [Operation("filesystem_sync", tmp_path)]
    with pytest.raises(RuntimeError, match="closed"):
        syncer.sync()


def test_a_missing_folder_is_looked_up_on_its_nearest_existing_ancestor(tmp_path: Path) -> None:
    trusted(tmp_path).close()
    with trusted(tmp_path / "not" / "made" / "yet") as syncer:
        assert syncer.path == tmp_path / "not" / "made" / "yet"


@pytest.mark.parametrize("folder", ["/dev/shm", "/proc/self"])
def test_untrusted_file_systems_fall_back_to_an_fsync_per_file(folder: str) -> None:
    if not Path(folder).is_dir():
        pytest.skip(f"no {folder} here")
    assert FileSystemSync.open_for(Path(folder)) is None


def test_switched_off_it_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trusted(tmp_path).close()
    monkeypatch.setattr(durable, "WHOLE_FILE_SYSTEM_SYNC", False)
    assert FileSystemSync.open_for(tmp_path) is None


@pytest.mark.parametrize(
    ("release", "usable"),
    [("5.7.19", False), ("5.8.0", True), ("6.18.0-13-amd64", True), ("4.19", False), ("x", False)],
)
def test_kernels_before_5_8_do_not_report_writeback_errors_so_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str, usable: bool
) -> None:
    trusted(tmp_path).close()
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, release, real.version, real.machine))
    monkeypatch.setattr(durable.os, "uname", lambda: fake)
    syncer = FileSystemSync.open_for(tmp_path)
    assert (syncer is not None) is usable
    if syncer is not None:
        syncer.close()


def test_the_file_system_type_comes_from_mountinfo(tmp_path: Path) -> None:
    assert durable._file_system_type(os.stat("/proc").st_dev) == "proc"
    assert durable._file_system_type(os.makedev(4095, 1048575)) is None


def failing_syncfs(code: int) -> Callable[[int], int]:
    def syncfs(fd: int) -> int:
        del fd
        ctypes.set_errno(code)
        return -1

    return syncfs


def test_a_failed_sync_is_a_store_error_naming_the_folder_and_cause(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    seen: list[Operation] = []
    syncer = FileSystemSync(fd, tmp_path, failing_syncfs(errno.ENOSPC))
    with syncer, durable.observe(seen.append), pytest.raises(StoreError) as raised:
        syncer.sync()
    assert str(tmp_path) in str(raised.value)
    assert "disk full" in str(raised.value)
    assert seen == [], "a failed sync must not be reported as one"


# -- a run whose batch sync fails ------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(6), username="alice", password=PASSWORD) as srv:
        yield srv


def test_a_failed_batch_sync_keeps_nothing_deletes_nothing_and_the_next_run_archives_once(
    tmp_path: Path, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted(tmp_path).close()
    ws = Workspace(tmp_path, password=PASSWORD)
    account: dict[str, Any] = fake_account(server, "fake", retention="delete")
    ws.write_config([account])
    monkeypatch.setattr(durable, "_libc_syncfs", lambda: failing_syncfs(errno.EIO))
    failed = ws.cli("run")
    assert failed.code != 0
    assert "cannot sync the file system of" in failed.output
    assert ws.archived_files("fake") == []
    assert not [c for c in server.commands if c.upper().startswith("DELE")]
    assert len(server.mailbox) == 6
    store = open_store("maildir", ws.archive, "fake")
    assert list(store.tmp_dir.iterdir()) == [], "the failed batch's temp files stay behind"

    monkeypatch.undo()
    again = ws.cli("run")
    assert again.code == 0, again.output
    expected = sorted(maildir_form(wire_form(raw)) for raw in sample_messages(6))
    assert sorted(p.read_bytes() for p in ws.archived_files("fake")) == expected
    assert len(server.mailbox) == 0


def test_a_batch_is_synced_on_the_worker_while_the_next_one_arrives(
    tmp_path: Path, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of a run's operations: batch 1's syncfs on the worker, batch 2 being written
    meanwhile, batch 1 published only after its sync, and every file synced before its link."""
    trusted(tmp_path).close()
    monkeypatch.setattr(fetch, "BATCH_MESSAGES", 2)
    ws = Workspace(tmp_path, password=PASSWORD)
    ws.write_config([fake_account(server, "fake")])
    ws.mark_archive()  # so that every operation recorded below is a message's
    seen: list[tuple[Operation, str]] = []

    def record(operation: Operation) -> None:
        seen.append((operation, threading.current_thread().name))

    with durable.observe(record):
        result = ws.cli("run")
    assert result.code == 0, result.output
    assert len(ws.archived_files("fake")) == 6
    kinds = [op.kind for op, _ in seen]
    syncs = [i for i, kind in enumerate(kinds) if kind == "filesystem_sync"]
    assert len(syncs) == 3
    assert all(seen[i][1].startswith("popvault-fsync") for i in syncs[:-1]), "not on the worker"
    creates = [i for i, kind in enumerate(kinds) if kind == "create"]
    links = [i for i, kind in enumerate(kinds) if kind == "link"]
    # Batch 2's files were created before batch 1 was published: the sync overlapped.
    assert creates[2] < links[0]
    # Safety: a file's link comes after a syncfs that came after its last write.
    last_write: dict[Path, int] = {}
    for index, (op, _) in enumerate(seen):
        if op.kind == "write":
            last_write[op.path] = index
        if op.kind == "link":
            written = last_write[op.path]
            assert any(written < sync < index for sync in syncs), op


def test_a_writer_closed_before_its_batch_sync_publishes_and_aborts_cleanly(
    tmp_path: Path,
) -> None:
    store = open_store("maildir", tmp_path / "archive", "acct")
    now = datetime.now(UTC)
    kept, dropped = store.begin(received_at=now), store.begin(received_at=now)
    for writer in (kept, dropped):
        writer.write(b"Subject: s\r\n\r\nbody\r\n")
        writer.finish()
        writer.close_file()  # no descriptor held until the batch's sync
    with trusted(tmp_path) as syncer:
        syncer.sync()
    kept.seal_synced()
    kept.commit()
    dropped.abort()
    assert [p.read_bytes() for p in (tmp_path / "archive" / "acct" / "new").iterdir()] == [
        b"Subject: s\n\nbody\n"
    ]
    assert list(store.tmp_dir.iterdir()) == []
    with pytest.raises(RuntimeError, match="cannot close"):
        kept.close_file()
