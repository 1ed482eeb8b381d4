"""POP3 for popvault: a sans-IO protocol core, and (in :mod:`.client`) a blocking client.

The core (this package without ``client`` and ``tls``) imports no socket, ssl,
os or time: it only turns bytes into events and commands into bytes.
"""

from __future__ import annotations

from popvault.pop3.body import ListingBounds
from popvault.pop3.commands import AuthResponse, Command, redact
from popvault.pop3.core import (
    DEFAULT_LISTING_BOUNDS,
    LEGAL_COMMANDS,
    MAX_LISTING_LINE,
    MAX_STATUS_LINE,
    OTHER_LISTING_BOUNDS,
    Pop3Connection,
    State,
)
from popvault.pop3.events import (
    NEED_DATA,
    ConnectionClosed,
    Continuation,
    Data,
    Err,
    Event,
    Greeting,
    ListingLine,
    MultilineBegin,
    MultilineEnd,
    Ok,
    Sentinel,
)
from popvault.pop3.parsing import (
    apop_digest,
    apop_timestamp,
    code_matches,
    parse_capa,
    parse_list_line,
    parse_response_code,
    parse_stat,
    parse_uidl_line,
)

__all__ = [
    "DEFAULT_LISTING_BOUNDS",
    "LEGAL_COMMANDS",
    "MAX_LISTING_LINE",
    "MAX_STATUS_LINE",
    "NEED_DATA",
    "OTHER_LISTING_BOUNDS",
    "AuthResponse",
    "Command",
    "ConnectionClosed",
    "Continuation",
    "Data",
    "Err",
    "Event",
    "Greeting",
    "ListingBounds",
    "ListingLine",
    "MultilineBegin",
    "MultilineEnd",
    "Ok",
    "Pop3Connection",
    "Sentinel",
    "State",
    "apop_digest",
    "apop_timestamp",
    "code_matches",
    "parse_capa",
    "parse_list_line",
    "parse_response_code",
    "parse_stat",
    "parse_uidl_line",
    "redact",
]
