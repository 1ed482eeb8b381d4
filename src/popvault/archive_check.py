"""Before a run fetches anything: does the ledger know the account's archive folder?

A ledger that was deleted, replaced by another one or pointed elsewhere (or an
account renamed in the config) knows no message of the account, while its
archive folder still holds every message archived so far. A run would then
fetch the whole mailbox again and store each message a second time, and say
"ok". :func:`refuse_unknown_archive` stops that run first.

The rule: when the ledger knows no message of the account (no archived and no
pending row), any message file in the account's folder — a file the store
lists as a message (Maildir ``new/`` and ``cur/``, EML ``YYYY/MM/*.eml``; never
its temp folder) — refuses the run. Cheap: one count in the ledger, and the
folder is listed only then. A ledger that knows some of the account's
messages (restored from an older copy) is not second-guessed here:
``popvault verify`` names the files it does not know.
"""

from __future__ import annotations

from popvault.config import Account, Config, sqlite_path
from popvault.errors import ArchiveNotInLedger
from popvault.ledger import BACKUP_INFIX, Ledger
from popvault.store import Store

# Files named in the refusal: enough to recognise the folder, not a listing.
_EXAMPLES = 3


def refuse_unknown_archive(config: Config, account: Account, ledger: Ledger, store: Store) -> None:
    """Raise :class:`ArchiveNotInLedger` if the ledger knows none of the folder's message files."""
    archived, _ = ledger.archived_totals(account.name)
    if archived or ledger.pending(account.name):
        return
    folder = config.archive_root.joinpath(*account.path.split("/"))
    if ledger.imported_files(account.name, under=str(folder.resolve())):
        return  # adopted by `popvault import maildir`: the ledger knows the folder's files
    files = store.iter_files()
    examples = [path for _, path in zip(range(_EXAMPLES), files, strict=False)]
    if not examples:
        return
    count = len(examples) + sum(1 for _ in files)
    raise ArchiveNotInLedger(_message(config, account, count, examples))


def _message(config: Config, account: Account, count: int, examples: list[str]) -> str:
    folder = config.archive_root.joinpath(*account.path.split("/"))
    shown = ", ".join(examples) + (", ..." if count > len(examples) else "")
    return (
        f"account {account.name!r}: its archive folder {folder} already holds {count} message "
        f"file(s) ({shown}), but {_ledger_words(config.ledger_url)} knows no message of this "
        "account: the ledger was deleted, replaced or pointed elsewhere, or the account was "
        "renamed. Nothing was fetched: archiving now would store every message still on the "
        f"server a second time. Ways out: (1) {restore_hint(config.ledger_url)}; "
        "(2) `popvault run --archive-again` archives anyway, accepting those duplicates; "
        f"(3) adopt the existing files, `popvault import maildir {folder} --account "
        f"{account.name}`: the server's messages that match a file are not downloaded again"
    )


def _ledger_words(url: str) -> str:
    path = sqlite_path(url)
    if path is None:
        return "the ledger"
    if not path.exists():
        return f"the ledger (its file {path} is missing)"
    return f"the ledger {path}"


def restore_hint(url: str) -> str:
    """How to put the ledger at ``url`` back from its backup (also for popvault.archive_root)."""
    path = sqlite_path(url)
    if path is None:
        return "restore the ledger database from its backup"
    return (
        f"restore the ledger from its backup: popvault copies it next to itself before each "
        f"schema upgrade, as {path}{BACKUP_INFIX}<revision>-<UTC time>; stop any popvault "
        f"daemon, then copy the newest over {path}"
    )
