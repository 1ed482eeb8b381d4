"""The archive's marker: which ledger the files under a folder are recorded in.

Several daemons on one PostgreSQL ledger must each see the same archive at the
same path (or the same account folders): the ledger names every file
relative to the archive root. A daemon whose root is an empty mount point (the
share not mounted), another machine's local folder or another popvault's
archive would archive there — mail the other daemons never see, or a second
copy of every message. The marker file ``<folder>/.popvault-ledger`` holds the
ledger's id (popvault.ledger's ``ledger_id()``), and :func:`check_marker`
applies one rule before anything is archived:

* a marker with the ledger's id: this is the ledger's archive;
* a marker with another id: refused (another ledger's archive);
* no marker, and the ledger has archived no file under the folder: a new
  archive, the marker is written;
* no marker, and at least one of the files the ledger archived last under the
  folder is there: an archive from before markers existed, the marker is
  written;
* no marker, and none of them is there: refused (the ledger's files are
  elsewhere: an unmounted or wrong share).

Refusals raise :class:`~popvault.errors.ArchiveMismatch`. Only ever written
once per folder, through :func:`popvault.store.durable.create_once` (temp
file, fsync, link, folder fsync: a reader sees the whole marker or none, and
two daemons writing one at the same moment cannot overwrite each other).
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from popvault.errors import ArchiveMismatch, StoreError
from popvault.store import durable
from popvault.store.base import resolve
from popvault.store.maildir import MaildirStore

MARKER_NAME: Final = ".popvault-ledger"
# The first line says what the file is to whoever finds it; the id is on the second.
_FIRST_LINE: Final = (
    "popvault archive marker: the files under this folder are recorded in the "
    "popvault ledger with this id (do not edit; see the README, shared archive storage)"
)
_ID: Final = re.compile(r"[0-9a-f]{32}")
# A marker is two short lines: anything much longer is not one of ours.
_MAX_BYTES: Final = 4096
# A temp file of a marker write cut short (power cut, SIGKILL) is removed by the
# next write once it is this old: an hour, far longer than any write takes.
_STALE_TEMP_S: Final = 3600.0

Outcome = Literal["matched", "created", "would-create"]


@dataclass(frozen=True, slots=True)
class MarkerCheck:
    """What :func:`check_marker` found: ``matched``, ``created``, or ``would-create``
    (a dry run: a marker was due but not written)."""

    folder: Path
    outcome: Outcome

    @property
    def marker(self) -> Path:
        """The marker file's path."""
        return self.folder / MARKER_NAME


def marker_text(ledger_id: str) -> bytes:
    """The marker file's content for ``ledger_id``."""
    return f"{_FIRST_LINE}\n{ledger_id}\n".encode("ascii")


def read_marker(folder: Path) -> str | None:
    """The ledger id in ``folder``'s marker; None when it has none.

    A marker that is not one of popvault's (not two lines ending in a
    32-hex-digit id, or not a regular file) is an :class:`ArchiveMismatch`.
    """
    marker = folder / MARKER_NAME
    size = _marker_size(marker)
    if size is None:
        return None
    if size > _MAX_BYTES:
        raise _not_a_marker(marker, f"it holds {size} bytes")
    with durable.os_errors("read", marker), durable.open_for_reading(marker) as stream:
        data = stream.read(_MAX_BYTES + 1)
    lines = data.decode("ascii", errors="replace").split()
    if not lines or not _ID.fullmatch(lines[-1]):
        raise _not_a_marker(marker, "its last line is no ledger id")
    return lines[-1]


def check_marker(
    folder: Path,
    ledger_id: str,
    *,
    root: Path,
    sample: Sequence[str],
    create: bool = True,
    what: str = "the archive root",
    ledger: str = "the ledger",
    advice: str | None = None,
) -> MarkerCheck:
    """Apply the marker rule (module docstring) to ``folder``; write the marker if due.

    ``sample``: the paths, relative to ``root``, of the files the ledger
    archived last under ``folder`` (newest first; empty: none). ``create``
    false checks without writing (a dry run). ``what`` and ``ledger`` name
    the folder and the ledger in a refusal's message; ``advice`` replaces
    what a refusal for another ledger's marker says about removing it.
    """
    if not _ID.fullmatch(ledger_id):
        raise ValueError(f"a ledger id is 32 hex digits, got {ledger_id!r}")
    other = _Refusal(what, folder, ledger_id, ledger, advice)
    found = read_marker(folder) if _is_dir(folder) else None
    if found == ledger_id:
        return MarkerCheck(folder, "matched")
    if found is not None:
        raise ArchiveMismatch(other.message(found))
    if sample and not any(_present(root, relpath) for relpath in sample):
        raise ArchiveMismatch(_files_missing(what, folder, sample, ledger))
    if not create:
        return MarkerCheck(folder, "would-create")
    return _create(folder, ledger_id, other)


def own_storage(root: Path, folders: Iterable[str]) -> set[str]:
    """Which of the account ``folders`` (relative to ``root``) are storage of their own.

    Such a folder keeps a marker of its own, since it can be missing or wrong
    while the root is fine: one on another file system than the root (a mount
    point, at the folder or between it and the root, or a link to another
    file system), or one that is a symbolic link out of the root. A folder
    that does not exist has nothing of its own yet. One ``stat`` a folder
    (a link costs a ``realpath`` more): cheap for thousands of accounts.
    """
    with durable.os_errors("inspect", root):
        try:
            device = os.stat(root).st_dev
        except FileNotFoundError:
            return set()  # no root, no folder under it
    real_root: Path | None = None
    found: set[str] = set()
    for folder in folders:
        path = root.joinpath(*folder.split("/"))
        with durable.os_errors("inspect", path):
            try:
                info, link = os.stat(path), path.is_symlink()
            except (FileNotFoundError, NotADirectoryError):
                continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        if info.st_dev != device:
            found.add(folder)
        elif link:
            real_root = real_root or root.resolve()
            if not path.resolve().is_relative_to(real_root):
                found.add(folder)
    return found


# -- the rule's parts ------------------------------------------------------------------


def _marker_size(marker: Path) -> int | None:
    with durable.os_errors("inspect", marker):
        try:
            info = os.lstat(marker)  # a symbolic link is no marker: never followed
        except FileNotFoundError:
            return None
    if not stat.S_ISREG(info.st_mode):
        raise _not_a_marker(marker, "it is not a regular file")
    return info.st_size


def _is_dir(folder: Path) -> bool:
    with durable.os_errors("inspect", folder):
        return folder.is_dir()


def _present(root: Path, relpath: str) -> bool:
    """Whether the file the ledger recorded at ``relpath`` is there.

    A Maildir message published in ``new/`` counts in ``cur/`` too, where a
    mail reader moves what it has shown (``MaildirStore.locate``).
    """
    try:
        path = resolve(root, relpath)
    except StoreError:
        return False  # no path of ours
    if durable.file_size(path) is not None:
        return True
    head, sep, _ = relpath.rpartition("/new/")
    if not sep:
        return False
    try:
        maildir = MaildirStore(root, head)
    except ValueError:
        return False
    moved = maildir.locate(relpath)
    return moved != relpath and durable.file_size(resolve(root, moved)) is not None


def _create(folder: Path, ledger_id: str, other: _Refusal) -> MarkerCheck:
    durable.ensure_root(folder)  # a new archive's root may not exist yet
    _remove_stale_temps(folder)
    if durable.create_once(folder / MARKER_NAME, marker_text(ledger_id)):
        return MarkerCheck(folder, "created")
    # Another process wrote one first, between our look and our write: judge it.
    found = read_marker(folder)
    if found == ledger_id:
        return MarkerCheck(folder, "matched")
    raise ArchiveMismatch(other.message(found or "(none)"))


def _remove_stale_temps(folder: Path) -> None:
    prefix = f".{MARKER_NAME.lstrip('.')}."
    with durable.os_errors("list", folder), os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    cutoff = time.time() - _STALE_TEMP_S
    for name in names:
        durable.remove_if_stale(folder / name, cutoff)


# -- the messages ------------------------------------------------------------------------

# What every refusal says to do.
_SHARED = (
    "Nothing was archived. Every popvault daemon (and `popvault run`) that uses one ledger "
    "must see the same shared archive at the same path (or the same account folders): "
    "mount it there and point `[archive] root` at it"
)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """What a refusal for another ledger's marker says, but for the id it found."""

    what: str
    folder: Path
    ledger_id: str
    ledger: str
    advice: str | None

    def message(self, found: str) -> str:
        marker = self.folder / MARKER_NAME
        advice = self.advice or (
            "Only if this ledger is to keep this archive from now on (its own ledger is gone "
            "for good, or this one was restored from a backup made before popvault kept "
            f"ledger ids), remove {marker}: popvault then checks the folder again and writes "
            "this ledger's id"
        )
        return (
            f"{self.what} {self.folder} belongs to another popvault ledger: its marker "
            f"{marker} holds ledger id {found}, but {self.ledger} has id {self.ledger_id}. "
            f"{_SHARED}, or point `[ledger] url` at the ledger this archive belongs to (a "
            "ledger moved with `popvault db copy` or restored from its own backup keeps its "
            f"id). {advice}"
        )


def _files_missing(what: str, folder: Path, sample: Sequence[str], ledger: str) -> str:
    shown = ", ".join(sample)
    state = f"has no marker ({MARKER_NAME})" if _is_dir(folder) else "does not exist"
    return (
        f"{what} {folder} {state}, and none of the {len(sample)} file(s) {ledger} archived "
        f"last under it is there ({shown}, relative to the archive root): the ledger's files "
        "are not in this folder (a share not mounted, another machine's folder, a wrong "
        f"path?). {_SHARED}"
    )


def _not_a_marker(marker: Path, why: str) -> ArchiveMismatch:
    return ArchiveMismatch(
        f"{marker} is not a popvault marker ({why}; popvault writes a line saying what it is "
        "and a ledger id of 32 hex digits). Nothing was archived. If it is not popvault's, "
        "move it away: popvault then checks the folder as one without a marker"
    )
