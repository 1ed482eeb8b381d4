"""Moving in from another POP3 fetcher: what it had already seen, and the archive it wrote.

getmail6, fetchmail and mpop each keep a state file of the UIDLs they have
retrieved (:mod:`popvault.importing.statefiles` reads them), and many users
have a Maildir those tools wrote (:mod:`popvault.importing.maildir` matches
the server's messages to its files by their headers). ``popvault import``
records what they name as *archived elsewhere*: never fetched, and never
deleted from the server unless that import allowed it. This package reads
files only; the ledger and the server are the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SeenUidl:
    """A UIDL another tool has retrieved, and when it first saw it (UTC) if its file says."""

    uidl: str
    seen_at: datetime | None = None
