"""Before anything is archived: is the archive root the one the ledger's files live in?

Every daemon on one ledger (and every ``popvault run``) must see the same
archive at the same path: the ledger names each file relative to the archive
root. :func:`check_archive_root` applies the marker rule of
:mod:`popvault.store.marker` to the archive root, with the files the ledger
archived last as the sample; and to each account folder that is storage of
its own (on another file system than the root: a mount point; or a link out
of the root), which keeps a marker of its own, with that account's files as
its sample. ``popvault daemon`` calls
it once the ledger is open, before its scheduler starts; ``popvault run``
before its first account (a dry run checks without writing a marker). A
refusal is an :class:`~popvault.errors.ArchiveMismatch`: nothing was fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from popvault.archive_check import restore_hint
from popvault.config import Account, Config, redact_url, sqlite_path
from popvault.ledger import Ledger
from popvault.store.marker import MARKER_NAME, MarkerCheck, check_marker, own_storage

log = logging.getLogger("popvault.archive")

# Files the ledger archived last that a folder without a marker is checked for:
# one of them there is an archive from before markers; none, the wrong folder.
# Five: a user who deleted a message file or two is not refused, and a look-up
# costs a stat each.
SAMPLE_FILES: Final = 5


def check_archive_root(
    config: Config,
    ledger: Ledger,
    accounts: Sequence[Account] | None = None,
    *,
    create: bool = True,
) -> list[MarkerCheck]:
    """Check (and on first use mark) the archive root and the accounts' own folders.

    ``accounts``: whose own folders to check (default: every configured
    account; the root is checked whatever it says). ``create`` false writes
    no marker (a dry run). Raises :class:`~popvault.errors.ArchiveMismatch`.
    """
    root = config.archive_root
    ledger_id = ledger.ledger_id()
    new = not ledger.archived_sample(1)
    words = _ledger_words(config, new=new)

    def check(folder: Path, sample: list[str], what: str = "the archive root") -> MarkerCheck:
        advice = _new_ledger_advice(config, folder) if new else None
        return check_marker(
            folder, ledger_id, root=root, sample=sample, create=create, what=what,
            ledger=words, advice=advice,
        )  # fmt: skip

    own_folders = own_storage(root, [account.path for account in config.accounts])
    own = {account.name for account in config.accounts if account.path in own_folders}
    checks = [check(root, ledger.archived_sample(SAMPLE_FILES, exclude=own))]
    for account in config.accounts if accounts is None else accounts:
        if account.name in own:
            checks.append(
                check(
                    root.joinpath(*account.path.split("/")),
                    ledger.archived_sample(SAMPLE_FILES, accounts=[account.name]),
                    f"account {account.name!r}'s folder (storage of its own, own marker)",
                )
            )
    for done in checks:
        if done.outcome == "created":
            log.info("wrote %s: ledger %s keeps its files here", done.marker, ledger_id)
    return checks


def _ledger_words(config: Config, *, new: bool) -> str:
    """The ledger as a refusal names it; a ledger that knows no file yet says so."""
    path = sqlite_path(config.ledger_url)
    name = _location(path) if path is not None else f"the ledger {redact_url(config.ledger_url)}"
    if not new:
        return name
    return f"{name}, which knows no archived message yet (new, replaced or pointed elsewhere?),"


def _location(path: Path) -> str:
    if not path.exists():
        return f"the ledger (its file {path} does not exist)"
    return f"the ledger {path}"


def _new_ledger_advice(config: Config, folder: Path) -> str:
    """For a ledger that knows nothing and an archive that is another's: a lost ledger."""
    return (
        "If this ledger took the place of the archive's own (that one deleted, replaced, or "
        f"`[ledger] url` pointed elsewhere), {restore_hint(config.ledger_url)}. To archive into "
        "this folder with this new ledger anyway, accepting a second copy of every message "
        f"still on the server, remove {folder / MARKER_NAME}, then run "
        "`popvault run --archive-again`"
    )
