"""The archive marker's rule (popvault.store.marker), on real folders, without a ledger.

Every branch: a marker with the ledger's id, with another id, none with no
sample, none with a sample file there (also moved by a mail reader to
``cur/``), none with the sample missing, a missing root, a dry run, markers
that are not popvault's, two writers at once, leftovers of a write cut short;
and how the marker is written (0600, fsynced, then linked, folder fsynced).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from popvault.errors import ArchiveMismatch, StoreError
from popvault.store import durable
from popvault.store.marker import (
    MARKER_NAME,
    check_marker,
    marker_text,
    own_storage,
    read_marker,
)

ID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
SAMPLE = ["acct/new/1700000000.M1P1Q1Rab.host,S=10", "acct/new/1700000001.M1P1Q2Rcd.host,S=12"]


def put(root: Path, relpath: str, data: bytes = b"x") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_matching_marker_is_fine_and_left_as_it_is(tmp_path: Path) -> None:
    marker = tmp_path / MARKER_NAME
    marker.write_bytes(marker_text(ID))
    before = marker.stat()
    # Even with the sample missing: the marker says this is the ledger's archive.
    check = check_marker(tmp_path, ID, root=tmp_path, sample=SAMPLE)
    assert check.outcome == "matched"
    assert check.marker == marker
    assert marker.stat().st_mtime_ns == before.st_mtime_ns


def test_another_ledger_s_marker_is_refused_naming_both_ids_and_what_to_do(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).write_bytes(marker_text(OTHER))
    with pytest.raises(ArchiveMismatch) as caught:
        check_marker(tmp_path, ID, root=tmp_path, sample=[], ledger="the ledger /x.sqlite3")
    message = str(caught.value)
    assert f"the archive root {tmp_path} belongs to another popvault ledger" in message
    assert f"holds ledger id {OTHER}, but the ledger /x.sqlite3 has id {ID}" in message
    assert "Nothing was archived" in message
    assert "must see the same shared archive at the same path" in message
    assert "point `[archive] root` at it" in message
    assert f"remove {tmp_path / MARKER_NAME}" in message
    assert isinstance(caught.value, StoreError)
    assert read_marker(tmp_path) == OTHER  # untouched


def test_a_new_archive_gets_a_marker_and_a_missing_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "archive"
    check = check_marker(root, ID, root=root, sample=[])
    assert check.outcome == "created"
    marker = root / MARKER_NAME
    assert read_marker(root) == ID
    lines = marker.read_text(encoding="ascii").splitlines()
    assert lines[0].startswith("popvault archive marker: ")
    assert lines[1] == ID
    assert stat.S_IMODE(marker.stat().st_mode) == 0o600
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert sorted(p.name for p in root.iterdir()) == [MARKER_NAME]  # no temp file left
    # And from now on it matches.
    assert check_marker(root, ID, root=root, sample=SAMPLE).outcome == "matched"


def test_an_archive_from_before_markers_gets_one_when_a_sample_file_is_there(
    tmp_path: Path,
) -> None:
    put(tmp_path, SAMPLE[1])  # the newest is gone (the user deleted it): one is enough
    check = check_marker(tmp_path, ID, root=tmp_path, sample=SAMPLE)
    assert check.outcome == "created"
    assert read_marker(tmp_path) == ID


def test_a_sample_file_a_mail_reader_moved_to_cur_counts(tmp_path: Path) -> None:
    name = SAMPLE[0].rsplit("/", 1)[1]
    put(tmp_path, f"acct/cur/{name}:2,S")
    assert check_marker(tmp_path, ID, root=tmp_path, sample=SAMPLE[:1]).outcome == "created"


def test_eml_paths_are_looked_up_as_they_are(tmp_path: Path) -> None:
    relpath = "work/2026/11/20261128T093012Z-ab.eml"
    put(tmp_path, relpath)
    assert check_marker(tmp_path, ID, root=tmp_path, sample=[relpath]).outcome == "created"


def test_no_marker_and_none_of_the_sample_is_refused_naming_the_files(tmp_path: Path) -> None:
    put(tmp_path, "acct/new/something-else")  # another archive's files do not count
    with pytest.raises(ArchiveMismatch) as caught:
        check_marker(tmp_path, ID, root=tmp_path, sample=SAMPLE, ledger="the ledger L")
    message = str(caught.value)
    assert f"the archive root {tmp_path} has no marker ({MARKER_NAME})" in message
    assert "none of the 2 file(s) the ledger L archived last under it is there" in message
    assert SAMPLE[0] in message
    assert SAMPLE[1] in message
    assert "a share not mounted" in message
    assert "must see the same shared archive at the same path" in message
    assert not (tmp_path / MARKER_NAME).exists()


def test_a_missing_root_with_files_in_the_ledger_is_refused_and_not_created(
    tmp_path: Path,
) -> None:
    root = tmp_path / "mnt" / "archive"
    with pytest.raises(ArchiveMismatch, match=rf"the archive root {root} does not exist, and none"):
        check_marker(root, ID, root=root, sample=SAMPLE)
    assert not root.exists()


def test_paths_that_are_not_ours_never_count_as_present(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    put(tmp_path, "etc/passwd")
    with pytest.raises(ArchiveMismatch):
        check_marker(tmp_path / "etc", ID, root=tmp_path / "etc", sample=["../etc/passwd"])


def test_a_dry_run_checks_without_writing(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    assert check_marker(root, ID, root=root, sample=[], create=False).outcome == "would-create"
    assert not root.exists()
    root.mkdir()
    put(root, SAMPLE[0])
    assert check_marker(root, ID, root=root, sample=SAMPLE, create=False).outcome == "would-create"
    assert not (root / MARKER_NAME).exists()
    with pytest.raises(ArchiveMismatch):
        check_marker(root, ID, root=root, sample=SAMPLE[1:], create=False)
    (root / MARKER_NAME).write_bytes(marker_text(OTHER))
    with pytest.raises(ArchiveMismatch, match="belongs to another popvault ledger"):
        check_marker(root, ID, root=root, sample=[], create=False)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello\n", b"popvault archive marker\nnot-an-id\n", b"x" * 5000, ID.upper().encode()],
)
def test_a_file_that_is_no_popvault_marker_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MARKER_NAME).write_bytes(content)
    with pytest.raises(ArchiveMismatch, match=r"is not a popvault marker .* move it away"):
        check_marker(tmp_path, ID, root=tmp_path, sample=[])


def test_a_folder_or_a_link_in_the_marker_s_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).mkdir()
    with pytest.raises(ArchiveMismatch, match="not a regular file"):
        check_marker(tmp_path, ID, root=tmp_path, sample=[])
    other = tmp_path / "other"
    other.mkdir()
    (other / "real").write_bytes(marker_text(ID))
    (other / MARKER_NAME).symlink_to(other / "real")
    with pytest.raises(ArchiveMismatch, match="not a regular file"):
        check_marker(other, ID, root=other, sample=[])


def test_a_bad_ledger_id_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 hex digits"):
        check_marker(tmp_path, "short", root=tmp_path, sample=[])


def test_a_marker_another_process_wrote_first_is_judged_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between our look (no marker) and our link, another daemon writes its marker.
    real = durable.create_once
    rival = {"id": OTHER}

    def racing(path: Path, data: bytes) -> bool:
        path.write_bytes(marker_text(rival["id"]))
        return real(path, data)

    monkeypatch.setattr(durable, "create_once", racing)
    with pytest.raises(ArchiveMismatch, match=f"holds ledger id {OTHER}"):
        check_marker(tmp_path, ID, root=tmp_path, sample=[])
    assert read_marker(tmp_path) == OTHER
    (tmp_path / MARKER_NAME).unlink()
    rival["id"] = ID  # a daemon of the same ledger: fine
    assert check_marker(tmp_path, ID, root=tmp_path, sample=[]).outcome == "matched"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_NAME]


def test_the_marker_is_fsynced_then_linked_then_its_folder_fsynced(tmp_path: Path) -> None:
    seen: list[durable.Operation] = []
    with durable.observe(seen.append):
        check_marker(tmp_path, ID, root=tmp_path, sample=[])
    kinds = [op.kind for op in seen]
    marker = tmp_path / MARKER_NAME
    link = kinds.index("link")
    assert kinds[:link] == ["create", "write", "file_fsync"]
    assert seen[link].target == marker
    assert seen[link + 1].kind == "folder_fsync"
    assert seen[link + 1].path == tmp_path
    assert b"".join(op.data for op in seen if op.kind == "write") == marker_text(ID)
    assert seen[-1].kind == "unlink"  # the temp name, last
    assert seen[-1].path.name.startswith(".popvault-ledger.")


def test_a_temp_file_left_by_a_cut_short_write_is_removed_once_stale(tmp_path: Path) -> None:
    stale = tmp_path / ".popvault-ledger.123.abcd.tmp"
    fresh = tmp_path / ".popvault-ledger.456.ef01.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    check_marker(tmp_path, ID, root=tmp_path, sample=[])
    assert not stale.exists()
    assert fresh.exists()  # may be another process's write in progress


def test_create_once_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    assert durable.create_once(target, b"first")
    assert not durable.create_once(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def other_file_system(tmp_path: Path) -> Path:
    """A folder on another file system than ``tmp_path`` (tmpfs), as a mounted share is."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system at /dev/shm")
    return Path(tempfile.mkdtemp(prefix="popvault-share-", dir=shm))


def test_own_storage_is_another_file_system_or_a_link_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    (root / "plain").mkdir(parents=True)
    (root / "team" / "carol").mkdir(parents=True)
    (tmp_path / "elsewhere" / "alice").mkdir(parents=True)
    (root / "alice").symlink_to(tmp_path / "elsewhere" / "alice")
    (root / "alias").symlink_to(root / "plain")
    (root / "a-file").write_bytes(b"")
    share = other_file_system(tmp_path)
    try:
        (share / "bob").mkdir()
        (root / "bob").symlink_to(share / "bob")  # a share mounted elsewhere, linked in
        (root / "mnt").symlink_to(share)  # a mount point between the root and the folder
        folders = ["plain", "missing", "alias", "alice", "bob", "mnt/bob", "team/carol", "a-file"]
        assert own_storage(root, folders) == {"alice", "bob", "mnt/bob"}
        assert own_storage(tmp_path / "no-root", folders) == set()
    finally:
        shutil.rmtree(share)
