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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from popvault.config import Account, Config
from popvault.errors import ImportFileError, PopvaultError
from popvault.importing import SeenUidl
from popvault.ledger import ImportedUidl, ImportOutcome, Ledger
from popvault.redaction import redact
from popvault.signin import credentials
from popvault.sync import account_client, log_in

if TYPE_CHECKING:
    from popvault.importing.maildir import AdoptPlan, ServerMessage
    from popvault.pop3.client import Pop3Client

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


def run_import(
    config: Config,
    account: Account,
    ledger: Ledger,
    tool: str,
    path: Path,
    *,
    allow_delete: bool,
    dry_run: bool,
    now: Callable[[], datetime],
) -> list[str]:
    """``popvault import TOOL PATH``: a state file's or a Maildir's import; the lines to print."""
    if tool == "maildir":
        adopted = import_maildir(
            config, account, ledger, path, allow_delete=allow_delete, dry_run=dry_run, now=now
        )
        return render_maildir_report(adopted)
    report = import_state_file(
        config, account, ledger, tool, path, allow_delete=allow_delete, dry_run=dry_run, now=now
    )
    return render_report(report)


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


def _known(ledger: Ledger, account: str, uidls: Sequence[str]) -> tuple[set[str], set[str]]:
    """Which of ``uidls`` popvault archived itself, and which others were imported before."""
    archived = set(ledger.known_rows(account, uidls)) & set(uidls)
    return archived, set(ledger.imported_among(account, uidls)) - archived


def _would_record(ledger: Ledger, account: str, uidls: Sequence[str]) -> ImportOutcome:
    """What :meth:`Ledger.record_imported` would answer for ``uidls``, recording nothing."""
    archived, imported = _known(ledger, account, uidls)
    return ImportOutcome(
        recorded=len(set(uidls) - archived - imported),
        already_imported=len(imported),
        already_archived=len(archived),
    )


@contextmanager
def _looking_session(config: Config, account: Account) -> Iterator[Pop3Client]:
    """A logged-in session with the account's server, ended with QUIT after the block.

    The imports only list and read headers: nothing is retrieved or deleted,
    so QUIT changes nothing on the server. A block that raises drops the
    connection without QUIT.
    """
    signin = credentials(config, account)
    with account_client(account) as client:
        client.connect()
        log_in(client, account, signin, prefetch_listings=False)
        yield client
        client.quit()


def listed_uidls(config: Config, account: Account) -> list[tuple[int, str]]:
    """The server's UIDL listing for ``account`` now (one session, see _looking_session)."""
    with _looking_session(config, account) as client:
        return client.uidl()


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
        f"{report.account}: {report.tool} state file {redact(report.path)} names {report.found:,} "
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


# -- adopting a Maildir ------------------------------------------------------------

# Ambiguous messages `popvault import maildir` names one by one; the count says the rest.
SHOWN_AMBIGUOUS = 20


@dataclass(frozen=True)
class MaildirReport:
    """What ``popvault import maildir`` matched (and recorded, unless a dry run)."""

    account: str
    path: str
    files: int
    plan: AdoptPlan
    # The ledger's answer; None in a dry run.
    outcome: ImportOutcome | None
    # Listed messages the ledger already had (archived by popvault, or imported).
    known: int
    allow_delete: bool


def import_maildir(
    config: Config,
    account: Account,
    ledger: Ledger,
    path: Path,
    *,
    allow_delete: bool,
    dry_run: bool,
    now: Callable[[], datetime],
) -> MaildirReport:
    """Match the server's messages to the files of the Maildir at ``path``; record the matched.

    The Maildir is read first (a path that is none fails before any
    connection); then one session lists the server and asks ``TOP n 0`` of
    each message the ledger does not know yet (pipelined where the server
    allows), and ends with QUIT: nothing is retrieved or deleted. A matched
    message is recorded as archived elsewhere at its file (``source_file``),
    seen when the file's name says it was delivered; the files stay where
    they are. Ambiguous and unmatched messages are left for the next run to
    download.
    """
    from popvault.importing.maildir import adopt_plan, scan_maildir  # noqa: PLC0415

    scan = scan_maildir(path)
    server, known = _server_headers(config, account, ledger)
    plan = adopt_plan(
        server,
        scan.files,
        check_sizes=account.trust_list_sizes,
        unreadable=scan.unreadable,
    )
    outcome = None
    if not dry_run:
        entries = [
            ImportedUidl(match.uidl, match.delivered_at, str(match.path.resolve()))
            for match in plan.matched
        ]
        outcome = ledger.record_imported(
            account.name, entries, source="maildir", allow_delete=allow_delete, at=now()
        )
    return MaildirReport(
        account=account.name,
        path=str(path),
        files=len(scan.files),
        plan=plan,
        outcome=outcome,
        known=known,
        allow_delete=allow_delete,
    )


def _server_headers(
    config: Config, account: Account, ledger: Ledger
) -> tuple[list[ServerMessage], int]:
    """The listed messages the ledger does not know, each with its ``TOP n 0``.

    And how many listed messages it knows. One session ended by QUIT,
    which changes nothing: no RETR, no DELE.
    """
    from popvault.importing.maildir import ServerMessage, header_facts  # noqa: PLC0415

    with _looking_session(config, account) as client:
        listing = client.uidl()
        sizes = dict(client.list())
        archived, imported = _known(ledger, account.name, [uidl for _, uidl in listing])
        known = archived | imported
        wanted = [(number, uidl) for number, uidl in listing if uidl not in known]
        numbers = [number for number, _ in wanted]
        uidl_of = dict(wanted)
        messages = []
        # Each header section is reduced to its facts as it arrives: none is held.
        for reply in client.top_headers_many(numbers, depth=max(account.pipeline_depth, 1)):
            refusal = None if reply.error is None else redact(reply.error.text)
            facts = None if reply.headers is None else header_facts(reply.headers)
            size = sizes.get(reply.number, -1)
            messages.append(
                ServerMessage(reply.number, uidl_of[reply.number], size, None, refusal, facts)
            )
    return messages, len(listing) - len(wanted)


def render_maildir_report(report: MaildirReport) -> list[str]:
    """The lines ``popvault import maildir`` prints."""
    plan, name = report.plan, report.account
    lines = [
        f"{name}: {redact(report.path)}: {report.files:,} message file(s); of the server's "
        f"messages the ledger did not know, {len(plan.matched):,} match a file, "
        f"{len(plan.ambiguous):,} are ambiguous, {len(plan.unmatched):,} match none"
        + (f" ({report.known:,} listed messages already known)" if report.known else "")
    ]
    for ambiguous in plan.ambiguous[:SHOWN_AMBIGUOUS]:
        # File names are anyone's: control characters made visible (popvault.redaction).
        candidates = ", ".join(redact(str(candidate)) for candidate in ambiguous.candidates[:3])
        more = len(ambiguous.candidates) - 3
        shown = candidates + (f" and {more} more" if more > 0 else "")
        lines.append(
            f"  ambiguous: message {ambiguous.number} (UIDL {ambiguous.uidl!r}): "
            f"{redact(ambiguous.reason)}" + (f"; candidates: {shown}" if shown else "")
        )
    if len(plan.ambiguous) > SHOWN_AMBIGUOUS:
        lines.append(f"  ... and {len(plan.ambiguous) - SHOWN_AMBIGUOUS:,} more ambiguous")
    for unreadable in plan.unreadable[:SHOWN_AMBIGUOUS]:
        lines.append(f"  unreadable: {redact(str(unreadable.path))}: {redact(unreadable.reason)}")
    if plan.files_unmatched:
        lines.append(
            f"{name}: {plan.files_unmatched:,} file(s) match no message on the server "
            "(mail the server no longer has, or from elsewhere): left as they are"
        )
    outcome = report.outcome
    if outcome is None:
        lines.append(f"{name}: dry run: nothing recorded")
    else:
        lines.append(
            f"{name}: recorded {outcome.recorded:,} as archived elsewhere at their files "
            "(the files stay where they are)"
        )
    left = len(plan.ambiguous) + len(plan.unmatched)
    if left:
        lines.append(
            f"{name}: the next `popvault run` downloads the {left:,} message(s) not matched"
        )
    if report.allow_delete:
        lines.append(
            f"{name}: retention will delete the matched messages' server copies by the "
            "account's policy (--allow-delete): keep the Maildir, it is their only copy"
        )
    return lines
