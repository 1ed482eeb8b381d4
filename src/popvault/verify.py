"""``popvault verify``: re-read every archived file and compare it with the ledger.

Finds files that are missing, files whose content changed (size or SHA-256),
and files in an account's folder that the ledger does not know. Files are read
in blocks, so verifying a large archive uses little memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from popvault.config import Account, Config
from popvault.errors import StoreError
from popvault.held import describe as describe_hold
from popvault.ledger import Ledger
from popvault.store import Store, open_store

# 1 MiB reads: large enough to keep the hashing fast, small enough to keep memory flat.
_BLOCK = 1 << 20

ProblemKind = Literal["missing", "changed", "unknown", "unreadable"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""

    kind: ProblemKind
    path: str
    detail: str


@dataclass
class AccountReport:
    """What verifying one account found."""

    account: str
    checked: int = 0
    checked_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    # Archived messages whose server copies are held (`popvault held`): the file
    # is what the server sent, which may not be the message it listed. Not a
    # problem of the archive, so they do not fail verify, but they are named.
    held: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every recorded file is present and intact, and none is unknown."""
        return not self.problems


def verify_account(config: Config, account: Account, ledger: Ledger) -> AccountReport:
    """Check one account's archive against its ledger rows."""
    store = open_store(account.format, config.archive_root, account.path)
    report = AccountReport(account.name)
    known: set[str] = {pending.path for pending in ledger.pending(account.name)}
    known |= {store.canonical(path) for path in _adopted(config, account, ledger)}
    for message in ledger.archived(account.name):
        known.add(message.path)
        report.checked += 1
        problem = _check_file(store, message.path, message.size, message.sha256)
        if problem is None:
            report.checked_bytes += message.size
        else:
            report.problems.append(problem)
    report.problems += [
        Problem("unknown", path, "in the account's folder but not in the ledger")
        for path in _unknown(store, known)
    ]
    report.held = [describe_hold(message) for message in ledger.held(account.name)]
    return report


def _adopted(config: Config, account: Account, ledger: Ledger) -> set[str]:
    """The folder's files that ``popvault import maildir`` adopted, named as the store names them.

    They are known, not unknown; popvault recorded no size or digest of
    them to check (their messages are archived elsewhere: here, in place).
    """
    root = config.archive_root.resolve()
    folder = root.joinpath(*account.path.split("/"))
    return {
        Path(path).relative_to(root).as_posix()
        for path in ledger.imported_files(account.name, under=str(folder))
    }


def _unknown(store: Store, known: set[str]) -> list[str]:
    # A message a mail reader moved (Maildir new/ -> cur/) is still the known one.
    return sorted(path for path in store.iter_files() if store.canonical(path) not in known)


def _check_file(store: Store, path: str, size: int, sha256: str) -> Problem | None:
    try:
        actual_size, actual_sha = _digest(store, path)
    except FileNotFoundError:
        return Problem("missing", path, "recorded in the ledger but not on disk")
    except (OSError, StoreError) as exc:
        return Problem("unreadable", path, str(exc))
    if actual_size != size:
        return Problem("changed", path, f"size {actual_size}, ledger says {size}")
    if actual_sha != sha256:
        return Problem("changed", path, f"sha256 {actual_sha}, ledger says {sha256}")
    return None


def _digest(store: Store, path: str) -> tuple[int, str]:
    if store.stat(path) is None:
        raise FileNotFoundError(path)
    digest = hashlib.sha256()
    size = 0
    with store.open(path) as stream:
        while block := stream.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def report_dict(report: AccountReport) -> dict[str, object]:
    """The JSON shape of one account's report."""
    return {
        "name": report.account,
        "ok": report.ok,
        "checked": report.checked,
        "checked_bytes": report.checked_bytes,
        "problems": [asdict(problem) for problem in report.problems],
        "held": report.held,
    }
