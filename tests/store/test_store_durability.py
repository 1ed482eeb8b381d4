"""Durability: private modes whatever the umask, fsync of file and folders, flat memory."""

from __future__ import annotations

import os
import stat
import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from popvault.store import durable, open_store

MESSAGE = b"Date: Tue, 01 Mar 2022 10:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def publish(root: Path, kind: str, received_at: datetime, folder: str = "acct") -> str:
    store = open_store(kind, root, folder)  # type: ignore[arg-type]
    with store.begin(received_at=received_at) as writer:
        writer.write(MESSAGE)
        sealed = writer.seal()
        writer.commit()
    return sealed.relpath


@pytest.mark.usefixtures("umask_zero")
@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_files_are_0600_and_folders_0700_with_umask_zero(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    relpath = publish(tmp_path, kind, received_at, folder="a/b")
    assert mode(tmp_path / relpath) == 0o600
    created = [p for p in (tmp_path / "a").rglob("*") if p.is_dir()] + [tmp_path / "a"]
    assert len(created) >= 4
    assert {str(p): mode(p) for p in created} == {str(p): 0o700 for p in created}


@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_modes_hold_even_when_the_umask_takes_owner_bits(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    old = os.umask(0o377)  # would leave files 0400 and folders 0400 without a chmod
    try:
        relpath = publish(tmp_path, kind, received_at)
    finally:
        os.umask(old)
    assert mode(tmp_path / relpath) == 0o600
    assert mode((tmp_path / relpath).parent) == 0o700


def test_existing_folders_keep_their_mode(tmp_path: Path, received_at: datetime) -> None:
    (tmp_path / "acct").mkdir()
    os.chmod(tmp_path / "acct", 0o710)  # noqa: S103 - a user's own looser mode, on purpose
    publish(tmp_path, "maildir", received_at)
    assert mode(tmp_path / "acct") == 0o710  # the user's choice, not ours to change


def test_maildir_fsyncs_file_then_new_after_link_then_tmp(
    tmp_path: Path, received_at: datetime, fsync_spy: Any
) -> None:
    store = open_store("maildir", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    before_seal = len(fsync_spy.calls)
    sealed = writer.seal()
    name = sealed.relpath.rsplit("/", 1)[1]
    tmp_file = tmp_path / "acct" / "tmp" / name.split(",S=")[0]
    assert fsync_spy.files()[-1:] == [str(tmp_file)]
    assert len(fsync_spy.calls) == before_seal + 1
    writer.commit()
    new, tmp = tmp_path / "acct" / "new", tmp_path / "acct" / "tmp"
    assert name in fsync_spy.listing_when_synced(new)
    assert fsync_spy.listing_when_synced(tmp) == frozenset()  # synced after the unlink
    assert fsync_spy.paths().index(str(new)) < len(fsync_spy.calls) - 1


def test_first_use_fsyncs_every_created_folder_and_its_parent(
    tmp_path: Path, received_at: datetime, fsync_spy: Any
) -> None:
    store = open_store("maildir", tmp_path, "a/b")
    store.begin(received_at=received_at).abort()
    box = tmp_path / "a" / "b"
    for folder in (tmp_path, tmp_path / "a", box, box / "tmp", box / "new", box / "cur"):
        assert str(folder) in fsync_spy.dirs()
    assert fsync_spy.listing_when_synced(tmp_path) >= {"a"}
    assert fsync_spy.listing_when_synced(box) >= {"tmp", "new", "cur"}


def test_eml_commit_fsyncs_new_month_year_and_their_parent(
    tmp_path: Path, received_at: datetime, fsync_spy: Any
) -> None:
    store = open_store("eml", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    sealed = writer.seal()
    assert fsync_spy.files() == [str(tmp_path / "acct" / ".tmp" / f"{sealed.relpath[-36:-4]}.tmp")]
    fsync_spy.calls.clear()
    writer.commit()
    acct = tmp_path / "acct"
    name = sealed.relpath.rsplit("/", 1)[1]
    assert fsync_spy.listing_when_synced(acct / "2022" / "03") == {name}
    assert "03" in fsync_spy.listing_when_synced(acct / "2022")
    assert "2022" in fsync_spy.listing_when_synced(acct)
    assert fsync_spy.listing_when_synced(acct / ".tmp") == frozenset()
    # Month and year are synced before the link makes the message visible in them.
    dirs = fsync_spy.dirs()
    assert dirs.index(str(acct / "2022")) < dirs.index(str(acct)) < len(dirs) - 2


def test_eml_commit_into_an_existing_month_syncs_only_what_changed(
    tmp_path: Path, received_at: datetime, fsync_spy: Any
) -> None:
    publish(tmp_path, "eml", received_at)
    fsync_spy.calls.clear()
    relpath = publish(tmp_path, "eml", received_at)
    month = (tmp_path / relpath).parent
    assert fsync_spy.dirs() == [str(month), str(tmp_path / "acct" / ".tmp")]
    assert len(fsync_spy.files()) == 1


def test_folders_left_by_a_crashed_process_are_synced_before_first_use(
    tmp_path: Path, received_at: datetime, fsync_spy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier process made the folders and died before syncing their parents.
    for sub in ("tmp", "new", "cur"):
        (tmp_path / "acct" / sub).mkdir(parents=True)
    monkeypatch.setattr(durable, "_synced_chains", set())  # this is a new process
    publish(tmp_path, "maildir", received_at)
    acct = tmp_path / "acct"
    for folder in (tmp_path, acct, acct / "tmp", acct / "new", acct / "cur"):
        assert str(folder) in fsync_spy.dirs(), f"{folder} was trusted without a sync"
    fsync_spy.calls.clear()
    publish(tmp_path, "maildir", received_at)
    assert str(acct) not in fsync_spy.dirs(), "synced once per process is enough"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_memory_stays_flat_for_a_50_mb_message(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    line = b"x" * 76 + b"\r\n"
    chunk = (line * (64 * 1024 // len(line) + 1))[: 64 * 1024]
    total = 50 * 1024 * 1024
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        with store.begin(received_at=received_at) as writer:
            writer.write(b"Subject: big\r\n\r\n")
            for _ in range(total // len(chunk)):
                writer.write(chunk)
            sealed = writer.seal()
            writer.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes for a {total} byte message"
    assert sealed.size == (tmp_path / sealed.relpath).stat().st_size > 49 * 1024 * 1024
