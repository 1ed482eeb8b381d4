"""The store contract: open_store, the writer's life cycle, stat/open, cleanup_tmp."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from popvault.errors import StoreError
from popvault.store import SealedMessage, Writer, open_store

KINDS = ["maildir", "eml"]
TMP = {"maildir": "tmp", "eml": ".tmp"}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("kind", KINDS)
def test_the_writer_life_cycle(tmp_path: Path, received_at: datetime, kind: str) -> None:
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    writer = store.begin(received_at=received_at)
    assert isinstance(writer, Writer)
    writer.write(b"Subject: s\r\n\r\nx\r\n")
    sealed = writer.seal()
    assert isinstance(sealed, SealedMessage)
    with pytest.raises(RuntimeError, match="cannot write: the message writer is sealed"):
        writer.write(b"late")
    with pytest.raises(RuntimeError, match="cannot seal: the message writer is sealed"):
        writer.seal()
    writer.commit()
    with pytest.raises(RuntimeError, match="cannot commit: the message writer is committed"):
        writer.commit()
    writer.abort()  # after commit: nothing happens
    assert store.stat(sealed.relpath) == sealed.size


@pytest.mark.parametrize("kind", KINDS)
def test_commit_needs_a_seal(tmp_path: Path, received_at: datetime, kind: str) -> None:
    writer = open_store(kind, tmp_path, "acct").begin(received_at=received_at)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="cannot commit: the message writer is open"):
        writer.commit()
    writer.abort()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("when", ["open", "sealed"])
def test_abort_leaves_nothing_and_is_idempotent(
    tmp_path: Path, received_at: datetime, kind: str, when: str
) -> None:
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    writer = store.begin(received_at=received_at)
    writer.write(b"Subject: s\r\n\r\n" + b"x" * 200_000)
    assert files_in(tmp_path / "acct" / TMP[kind]) != []
    if when == "sealed":
        writer.seal()
    writer.abort()
    writer.abort()
    assert files_in(tmp_path / "acct" / TMP[kind]) == []
    assert list(store.iter_files()) == []
    with pytest.raises(RuntimeError, match="cannot commit: the message writer is aborted"):
        writer.commit()


@pytest.mark.parametrize("kind", KINDS)
def test_an_exception_in_the_with_block_aborts(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]

    def interrupted_retr() -> None:
        with store.begin(received_at=received_at) as writer:
            writer.write(b"half a message")
            raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        interrupted_retr()
    assert files_in(tmp_path / "acct" / TMP[kind]) == []
    assert list(store.iter_files()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_naive_received_at_is_refused_before_touching_the_disk(tmp_path: Path, kind: str) -> None:
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        store.begin(received_at=datetime(2024, 1, 1))  # naive on purpose
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("folder", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a/", "x\0y"])
def test_open_store_refuses_a_bad_folder(tmp_path: Path, folder: str) -> None:
    with pytest.raises(ValueError, match="invalid archive folder"):
        open_store("maildir", tmp_path, folder)


def test_open_store_refuses_a_relative_root_and_an_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be absolute"):
        open_store("eml", Path("relative"), "acct")
    with pytest.raises(ValueError, match="unknown archive format 'mbox'"):
        open_store("mbox", tmp_path, "acct")  # type: ignore[arg-type]


@pytest.mark.usefixtures("umask_zero")
@pytest.mark.parametrize("kind", KINDS)
def test_the_first_message_creates_a_missing_root_privately(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    root = tmp_path / "new" / "archive"
    store = open_store(kind, root, "acct")  # type: ignore[arg-type]
    assert not root.exists()  # nothing is created before the first message
    assert list(store.iter_files()) == []
    assert store.cleanup_tmp() == 0
    assert not root.exists()
    store.begin(received_at=received_at).abort()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(root.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("kind", KINDS)
def test_without_create_root_a_missing_root_is_an_error(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    root = tmp_path / "unmounted"
    store = open_store(kind, root, "acct", create_root=False)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"archive root .*/unmounted does not exist"):
        store.begin(received_at=received_at)
    assert not root.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_stat_on_a_missing_root_is_an_error_not_an_absent_file(tmp_path: Path, kind: str) -> None:
    # A pending row's file must never be judged absent because a disk is not mounted.
    store = open_store(kind, tmp_path / "unmounted", "acct")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"archive root .*/unmounted does not exist"):
        store.stat("acct/new/x")


def test_a_root_that_is_a_file(tmp_path: Path, received_at: datetime) -> None:
    (tmp_path / "root").write_bytes(b"")
    store = open_store("maildir", tmp_path / "root", "acct", create_root=False)
    with pytest.raises(StoreError, match="not a folder"):
        store.begin(received_at=received_at)


def test_stat_and_open(tmp_path: Path, received_at: datetime) -> None:
    store = open_store("eml", tmp_path, "acct")
    with store.begin(received_at=received_at) as writer:
        writer.write(b"Subject: s\r\n\r\nbody\r\n")
        sealed = writer.seal()
        writer.commit()
    assert store.stat(sealed.relpath) == sealed.size == 20
    assert store.stat("acct/2001/01/missing.eml") is None
    assert store.stat("acct/nothing/here/at/all.eml") is None
    with store.open(sealed.relpath) as handle:
        assert handle.read(7) == b"Subject"
        assert handle.read() == b": s\r\n\r\nbody\r\n"
    with pytest.raises(StoreError, match="not a regular file"):
        store.stat("acct/.tmp")
    with pytest.raises(StoreError, match=r"cannot open .*missing\.eml: No such file"):
        store.open("acct/2001/01/missing.eml")


@pytest.mark.parametrize("relpath", ["", "/etc/passwd", "acct/../../etc/passwd", "a\0b"])
def test_relpaths_must_stay_under_the_root(tmp_path: Path, relpath: str) -> None:
    store = open_store("maildir", tmp_path, "acct")
    with pytest.raises(StoreError, match="invalid archive path"):
        store.stat(relpath)
    with pytest.raises(StoreError, match="invalid archive path"):
        store.open(relpath)


def test_a_symlink_is_not_a_published_file(tmp_path: Path) -> None:
    (tmp_path / "acct").mkdir()
    (tmp_path / "outside").write_bytes(b"secret")
    (tmp_path / "acct" / "link").symlink_to(tmp_path / "outside")
    store = open_store("maildir", tmp_path, "acct")
    with pytest.raises(StoreError, match="not a regular file"):
        store.stat("acct/link")
    with pytest.raises(StoreError, match="cannot open"):
        store.open("acct/link")


@pytest.mark.parametrize("kind", KINDS)
def test_cleanup_tmp_removes_only_stale_temp_files(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    with store.begin(received_at=received_at) as done:
        done.write(b"Subject: kept\r\n\r\n")
        sealed = done.seal()
        done.commit()
    stale, fresh = (store.begin(received_at=received_at) for _ in range(2))
    tmp = tmp_path / "acct" / TMP[kind]
    stale_name, fresh_name = files_in(tmp)[0], files_in(tmp)[1]
    long_ago = time.time() - 37 * 3600
    os.utime(tmp / stale_name, (long_ago, long_ago))
    (tmp / "subfolder").mkdir()
    os.utime(tmp / "subfolder", (long_ago, long_ago))
    assert store.cleanup_tmp() == 1
    assert files_in(tmp) == sorted([fresh_name, "subfolder"])
    assert store.cleanup_tmp() == 0
    assert store.cleanup_tmp(older_than=timedelta(0)) == 1
    assert files_in(tmp) == ["subfolder"]
    assert list(store.iter_files()) == [sealed.relpath]
    stale.abort()
    fresh.abort()  # their files are gone already: still fine


def test_cleanup_tmp_before_first_use_and_with_a_negative_age(tmp_path: Path) -> None:
    store = open_store("maildir", tmp_path, "acct")
    assert store.cleanup_tmp() == 0
    with pytest.raises(ValueError, match="negative"):
        store.cleanup_tmp(older_than=timedelta(seconds=-1))


def test_store_exposes_root_and_folder(tmp_path: Path) -> None:
    store = open_store("eml", tmp_path, "a/b")
    assert (store.root, store.folder) == (tmp_path, "a/b")


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
@pytest.mark.parametrize(
    ("body", "found"),
    [
        (b"+OK at the very start\r\nrest\r\n", True),
        (b"line\r\n-ERR after a line end\r\n", True),
        (b"line\r\nnot +OK mid-line\r\n", False),
        (b"x" * ((1 << 20) - 2) + b"\r\n+OK across a block edge\r\n", True),
        (b"x" * ((1 << 20) + 5) + b"\r\n", False),
    ],
)
def test_a_finished_message_can_be_scanned_for_line_starts(
    tmp_path: Path, fmt: str, body: bytes, found: bool
) -> None:
    store = open_store(fmt, tmp_path / "archive", "acct")  # type: ignore[arg-type]
    writer = store.begin(received_at=datetime(2026, 12, 1, tzinfo=UTC))
    for start in range(0, len(body), 70_000):
        writer.write(body[start : start + 70_000])
    writer.finish()
    assert writer.holds_line_starting(b"+OK", b"-ERR") is found
    writer.abort()
