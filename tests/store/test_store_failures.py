"""Failures: OSError mapped once into StoreError, and a failed message leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from popvault.errors import StoreError
from popvault.store import open_store

Runner = Callable[..., dict[str, object]]
TinyFs = Callable[[Path, str], list[str]]

MESSAGE = b"Date: Tue, 01 Mar 2022 10:00:00 +0000\r\nSubject: s\r\n\r\nbody\r\n"


def leftovers(root: Path) -> list[str]:
    """Every file under ``root`` (temp or published), relative."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def failing(err: int) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise OSError(err, os.strerror(err))

    return fail


@pytest.mark.parametrize(
    "failure",
    [
        (errno.ENOSPC, "disk full"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.EDQUOT, "quota exceeded"),
        (errno.EIO, os.strerror(errno.EIO)),
    ],
)
@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_a_failed_write_is_a_store_error_and_leaves_nothing(
    tmp_path: Path,
    received_at: datetime,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    failure: tuple[int, str],
) -> None:
    err, cause = failure
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    monkeypatch.setattr(os, "write", failing(err))
    with pytest.raises(StoreError, match=f"cannot write {tmp_path}/acct/.*: {cause}$") as raised:
        writer.seal()  # the first real write(2) happens when the buffer is flushed
    assert isinstance(raised.value.__cause__, OSError)
    assert leftovers(tmp_path) == []
    writer.abort()  # still safe, and idempotent


def test_a_failed_write_of_a_large_chunk_aborts_at_once(
    tmp_path: Path, received_at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("eml", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    monkeypatch.setattr(os, "write", failing(errno.ENOSPC))
    with pytest.raises(StoreError, match="disk full"):
        writer.write(b"x" * (1024 * 1024))
    assert leftovers(tmp_path) == []
    with pytest.raises(RuntimeError, match="aborted"):
        writer.write(b"more")


def test_a_short_write_is_continued(
    tmp_path: Path, received_at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    store = open_store("eml", tmp_path, "acct")
    with store.begin(received_at=received_at) as writer:
        writer.write(MESSAGE)
        sealed = writer.seal()
        writer.commit()
    assert (tmp_path / sealed.relpath).read_bytes() == MESSAGE


def test_a_failed_fsync_at_seal_leaves_nothing(
    tmp_path: Path, received_at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("maildir", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(StoreError, match=r"cannot sync .*Input/output error"):
        writer.seal()
    assert leftovers(tmp_path) == []


def test_a_failed_folder_fsync_at_commit_takes_the_new_name_back(
    tmp_path: Path, received_at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("maildir", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    sealed = writer.seal()
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(StoreError, match=r"cannot sync folder .*/acct/new"):
        writer.commit()
    assert leftovers(tmp_path) == []
    assert store.stat(sealed.relpath) is None


def test_a_failed_link_at_commit_leaves_nothing(
    tmp_path: Path, received_at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("eml", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    writer.seal()
    monkeypatch.setattr(os, "link", failing(errno.EDQUOT))
    with pytest.raises(StoreError, match=r"cannot publish .*: quota exceeded"):
        writer.commit()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_a_name_taken_at_commit_raises_instead_of_overwriting(
    tmp_path: Path, received_at: datetime, kind: str
) -> None:
    store = open_store(kind, tmp_path, "acct")  # type: ignore[arg-type]
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    sealed = writer.seal()
    squatter = tmp_path / sealed.relpath
    squatter.parent.mkdir(parents=True, exist_ok=True)
    squatter.write_bytes(b"someone else's file")
    with pytest.raises(StoreError, match="name is taken; not overwriting"):
        writer.commit()
    assert squatter.read_bytes() == b"someone else's file"
    assert leftovers(tmp_path) == [sealed.relpath]


def test_an_unlink_failure_after_publish_is_logged_not_raised(
    tmp_path: Path,
    received_at: datetime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = open_store("maildir", tmp_path, "acct")
    writer = store.begin(received_at=received_at)
    writer.write(MESSAGE)
    sealed = writer.seal()
    monkeypatch.setattr(os, "unlink", failing(errno.EIO))
    writer.commit()  # published: raising now would make the caller fetch it twice
    assert store.stat(sealed.relpath) == sealed.size
    assert "could not remove temp file" in caplog.text
    writer.abort()  # a no-op after commit
    assert store.stat(sealed.relpath) == sealed.size


def test_a_failed_abort_is_logged_not_raised(
    tmp_path: Path,
    received_at: datetime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = open_store("maildir", tmp_path, "acct").begin(received_at=received_at)
    monkeypatch.setattr(os, "unlink", failing(errno.EROFS))
    writer.abort()
    assert "abort left a temp file behind" in caplog.text
    assert "read-only file system" in caplog.text


def test_creating_the_temp_file_maps_errors(
    tmp_path: Path, received_at: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("maildir", tmp_path, "acct")
    store.begin(received_at=received_at).abort()  # the folders exist now
    real_open = os.open

    def open_no_create(path: object, flags: int, *args: int, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_no_create)
    with pytest.raises(StoreError, match=r"cannot create .*/acct/tmp/.*: permission denied"):
        store.begin(received_at=received_at)


def test_a_file_where_a_folder_belongs(tmp_path: Path, received_at: datetime) -> None:
    (tmp_path / "acct").write_bytes(b"in the way")
    with pytest.raises(StoreError, match="a file is in the way"):
        open_store("maildir", tmp_path, "acct").begin(received_at=received_at)


REAL_FS_SCRIPT = """
    import json, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from popvault.errors import StoreError
    from popvault.store import open_store

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path({root!r})
    store = open_store({kind!r}, root, "acct")
    outcome = {{}}
    {body}
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    outcome["files"] = files
    print(json.dumps(outcome))
"""

WRITE_BIG = """
    try:
        with store.begin(received_at=datetime.now(UTC)) as writer:
            writer.write(b"Subject: big\\r\\n\\r\\n")
            for _ in range(64):
                writer.write(b"x" * 16384 + b"\\r\\n")
            writer.seal()
            writer.commit()
        outcome["error"] = None
    except StoreError as exc:
        outcome["error"] = str(exc)
"""


@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_a_real_full_disk(kind: str, run_python: Runner, tiny_fs: TinyFs) -> None:
    mount = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        prefix = tiny_fs(mount, "256k")  # a 1 MiB message cannot fit
        script = REAL_FS_SCRIPT.format(root=str(mount), kind=kind, body=WRITE_BIG)
        outcome = run_python(script, prefix=prefix)
    finally:
        mount.rmdir()
    assert outcome["error"] is not None
    assert "disk full" in str(outcome["error"])
    assert str(mount) in str(outcome["error"])
    assert outcome["files"] == []


READ_ONLY_BODY = (
    """
    with store.begin(received_at=datetime.now(UTC)) as writer:
        writer.write(b"Subject: first\\r\\n\\r\\nbody\\r\\n")
        first = writer.seal()
        writer.commit()
    import subprocess
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
"""
    + WRITE_BIG
    + """
    outcome["first"] = first.relpath
    outcome["stat"] = store.stat(first.relpath)
    outcome["listed"] = list(store.iter_files())
    with store.open(first.relpath) as handle:
        outcome["read"] = handle.read().decode()
"""
)


@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_a_real_read_only_file_system(kind: str, run_python: Runner, tiny_fs: TinyFs) -> None:
    mount = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        prefix = tiny_fs(mount, "1m")
        script = REAL_FS_SCRIPT.format(root=str(mount), kind=kind, body=READ_ONLY_BODY)
        outcome = run_python(script, prefix=prefix)
    finally:
        mount.rmdir()
    assert "read-only file system" in str(outcome["error"])
    assert outcome["files"] == [outcome["first"]]  # the earlier message is intact, nothing else
    assert outcome["listed"] == [outcome["first"]]
    assert outcome["stat"] == len(str(outcome["read"]))
    assert "first" in str(outcome["read"])


PERMISSION_BODY = (
    """
    (root / "acct").mkdir(mode=0o500)
"""
    + WRITE_BIG
)


@pytest.mark.parametrize("kind", ["maildir", "eml"])
def test_a_read_only_folder(tmp_path: Path, kind: str, run_python: Runner) -> None:
    """chmod 0500 blocks writes only without CAP_DAC_OVERRIDE, which root has.

    As root the scenario runs in a child process stripped of the capabilities
    that bypass file modes (setpriv); otherwise in a plain child process.
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv(1) is missing: chmod 0500 would not bind")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    script = REAL_FS_SCRIPT.format(root=str(tmp_path), kind=kind, body=PERMISSION_BODY)
    outcome = run_python(script, prefix=prefix)
    assert "permission denied" in str(outcome["error"])
    assert f"{tmp_path}/acct" in str(outcome["error"])
    assert outcome["files"] == []
