"""``popvault import``: move in from getmail6, fetchmail or mpop without downloading again.

Another fetcher's state file names the UIDLs it retrieved
(:mod:`popvault.importing.statefiles` reads them); the ledger records them as
*archived elsewhere* (:meth:`~popvault.ledger.Ledger.record_imported`), so
that no run downloads them, and retention deletes their server copies only if
this import says ``allow_delete`` (popvault holds no copy of its own: the
other tool's archive is the only one). A dry run records nothing and asks the
server which of those UIDLs it lists now. A malformed file raises
:class:`~popvault.errors.ImportFileError` before anything is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from popvault.config import Account, Config
from popvault.errors import ImportFileError, PopvaultError
from popvault.importing import SeenUidl
from popvault.ledger import ImportedUidl, ImportOutcome, Ledger
from popvault.signin import credentials
from popvault.sync import account_client, log_in

# The tools whose state files `popvault import TOOL FILE` reads.
STATE_FILE_TOOLS = ("getmail6", "fetchmail", "mpop")


@dataclass(frozen=True)
class ImportReport:
    """What an import of one file found and did (or, in a dry run, would do)."""

    account: str
    tool: str
    path: str
    # UIDLs the file names, each once.
    found: int
    # The ledger's answer; in a dry run, what it would be.
    outcome: ImportOutcome
    dry_run: bool
    allow_delete: bool
    # Dry run: how many of the file's UIDLs the server lists now (None: not asked).
    on_server: int | None = None


def read_state_file(tool: str, path: Path, account: Account) -> list[SeenUidl]:
    """The UIDLs ``tool``'s state file at ``path`` names for ``account``.

    fetchmail's and mpop's files hold every user@host they fetched from:
    the account's entry is the one of its username and server.
    """
    from popvault.importing import statefiles  # noqa: PLC0415 - only `popvault import` reads them

    if tool == "getmail6":
        return statefiles.read_getmail6(path)
    if tool == "fetchmail":
        return statefiles.read_fetchmail(
            path, user=account.username, host=account.host, port=account.port
        )
    if tool == "mpop":
        return statefiles.read_mpop(path, user=account.username, host=account.host)
    raise ValueError(f"unknown tool {tool!r}; one of {STATE_FILE_TOOLS}")


def import_state_file(
    config: Config,
    account: Account,
    ledger: Ledger,
    tool: str,
    path: Path,
    *,
    allow_delete: bool,
    dry_run: bool,
    now: Callable[[], datetime],
) -> ImportReport:
    """Record (or, with ``dry_run``, only count) the UIDLs of ``tool``'s state file."""
    seen = read_state_file(tool, path, account)
    source_file = str(path.resolve())
    found = len(seen)
    listing: set[str] | None = None
    if dry_run or (tool == "getmail6" and any("-" in item.uidl for item in seen)):
        listing = _server_uidls(config, account, path, dry_run=dry_run)
    if tool == "getmail6" and listing is not None:
        seen = _as_server_uidls(seen, listing)
    entries = [ImportedUidl(item.uidl, item.seen_at, source_file) for item in seen]
    uidls = [entry.uidl for entry in entries]
    if dry_run:
        assert listing is not None  # noqa: S101 - a dry run always asks the server
        return ImportReport(
            account=account.name,
            tool=tool,
            path=str(path),
            found=found,
            outcome=_would_record(ledger, account.name, uidls),
            dry_run=True,
            allow_delete=allow_delete,
            on_server=sum(1 for uidl in uidls if uidl in listing),
        )
    outcome = ledger.record_imported(
        account.name, entries, source=tool, allow_delete=allow_delete, at=now()
    )
    return ImportReport(
        account=account.name,
        tool=tool,
        path=str(path),
        found=found,
        outcome=outcome,
        dry_run=False,
        allow_delete=allow_delete,
    )


def _would_record(ledger: Ledger, account: str, uidls: Sequence[str]) -> ImportOutcome:
    """What :meth:`Ledger.record_imported` would answer for ``uidls``, recording nothing."""
    archived = set(ledger.known_rows(account, uidls)) & set(uidls)
    imported = set(ledger.imported_among(account, uidls)) - archived
    return ImportOutcome(
        recorded=len(set(uidls) - archived - imported),
        already_imported=len(imported),
        already_archived=len(archived),
    )


def listed_uidls(config: Config, account: Account) -> list[tuple[int, str]]:
    """The server's UIDL listing for ``account`` now: one session, ended with QUIT.

    Nothing is retrieved or deleted, so QUIT changes nothing on the server.
    """
    signin = credentials(config, account)
    with account_client(account) as client:
        client.connect()
        log_in(client, account, signin, prefetch_listings=False)
        listing = client.uidl()
        client.quit()
    return listing


def _server_uidls(config: Config, account: Account, path: Path, *, dry_run: bool) -> set[str]:
    """The UIDLs the server lists now, for a dry run's count or getmail6's ``-``."""
    try:
        return {uidl for _, uidl in listed_uidls(config, account)}
    except PopvaultError as exc:
        if dry_run:
            raise
        raise ImportFileError(
            f"{path}: getmail6 writes each '/' of a UIDL as '-', and UIDLs of this file have "
            f"a '-': popvault needs account {account.name!r}'s server listing to tell which "
            f"UIDLs they are, and could not get it ({exc}); nothing was imported: try again "
            "when the server answers",
            path=str(path),
        ) from exc


def _as_server_uidls(seen: Sequence[SeenUidl], listing: set[str]) -> list[SeenUidl]:
    """getmail6's UIDLs as the server's: each one the server lists in getmail6's form.

    getmail6 records a UIDL's ``/`` as ``-`` (popvault.importing.statefiles),
    and takes any server UIDL of that form as one it has: so does this. A
    UIDL the server no longer lists stays as it is (nothing can tell).
    """
    from popvault.importing.statefiles import getmail6_uidl_form  # noqa: PLC0415

    by_form: dict[str, list[str]] = {}
    for uidl in sorted(listing):
        by_form.setdefault(getmail6_uidl_form(uidl), []).append(uidl)
    return [
        SeenUidl(uidl, item.seen_at)
        for item in seen
        for uidl in by_form.get(item.uidl, [item.uidl])
    ]


def render_report(report: ImportReport) -> list[str]:
    """The lines ``popvault import`` prints for one file."""
    outcome = report.outcome
    left = []
    if outcome.already_imported:
        left.append(f"{outcome.already_imported:,} imported before")
    if outcome.already_archived:
        left.append(f"{outcome.already_archived:,} archived by popvault itself")
    skipped = f" ({'; '.join(left)}: left as they are)" if left else ""
    verb = "would import" if report.dry_run else "imported"
    lines = [
        f"{report.account}: {report.tool} state file {report.path} names {report.found:,} "
        f"UIDL(s); {verb} {outcome.recorded:,} as archived elsewhere{skipped}"
    ]
    if report.on_server is not None:
        lines.append(f"{report.account}: the server lists {report.on_server:,} of them now")
    if report.allow_delete:
        lines.append(
            f"{report.account}: retention will delete their server copies by the account's "
            "policy (--allow-delete): the other tool's archive must hold them"
        )
    else:
        lines.append(
            f"{report.account}: popvault will not download them, and will not delete them "
            "from the server (it holds no copy; see --allow-delete)"
        )
    if report.dry_run:
        lines.append(f"{report.account}: dry run: nothing recorded")
    return lines
