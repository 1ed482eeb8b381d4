"""Which ledger row each message of a session's listing is: pure functions, no I/O.

RFC 1939 section 7 wants a UIDL to name one message, for ever. Servers that
derive UIDLs from content (mbox-based ones, for example) give two
byte-identical messages the same UIDL, and a few reuse one. popvault must
still archive every listed message exactly once, so the ledger identifies a
message by ``(uidl, occurrence)``: occurrence 1 is the first message archived
under that UIDL, 2 the second, and so on. Message numbers are only stable
within one session (RFC 1939 section 3), so each session matches its listing
to the rows again:

* A UIDL listed once with one row (and no other row ever) is that row — the
  common case — whatever its size now: RFC 1939 section 7 makes the UIDL the
  message's identity, and mailbox servers rewrite status fields (GNU pop3d
  adds ``X-UID`` and ``Status`` at QUIT), which changes the size but not the
  message. Such a message is not certain when its size changed: before its
  server copy is deleted, its content is checked, blind to those fields
  (:class:`StatusBlindDigest`).
* The server's messages under a shared UIDL are paired with its rows still
  on the server (not deleted by popvault) by LIST size, in order.
* A message left without a row is new (the next occurrence) — also after
  popvault deleted the earlier message under its UIDL. A message whose size
  matches no row while rows are left over is fetched and compared by content
  (SHA-256 of the stored form) with those rows: the same content is the
  archived message (its size on the server changed), anything else a new
  one. Nothing is ever stored twice, and nothing listed is skipped.
* Under a *shared* UIDL (listed more than once, or with several rows) a
  pairing by size is no proof: before such a server copy is deleted, its
  content is checked against the row's (see ``Listed.certain``).

Content identity, not position, is the final word; positions and sizes only
spare a download where they cannot be wrong about what to fetch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from popvault.ledger import KnownRow, MessageKey


@dataclass(frozen=True, slots=True)
class Listed:
    """One message of the session's listing, and the ledger key it goes under.

    ``row`` is the ledger row it was paired with (None: a new message).
    ``certain`` is False when the pairing rests on size and order only, so
    its content must be compared before its server copy may be deleted.
    ``candidates`` are rows this message may turn out to be by content: it is
    fetched and compared before it counts as new.
    """

    number: int
    uidl: str
    size: int | None
    key: MessageKey
    row: KnownRow | None = None
    certain: bool = True
    candidates: tuple[KnownRow, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerView:
    """The session's listing matched to the ledger."""

    messages: tuple[Listed, ...]
    # UIDLs the server lists more than once, or that have more than one row.
    shared: frozenset[str] = frozenset()
    by_key: Mapping[MessageKey, Listed] = field(default_factory=dict)
    by_number: Mapping[int, Listed] = field(default_factory=dict)

    @property
    def keys_on_server(self) -> list[MessageKey]:
        """Keys the server may still hold: every listed key and every candidate row's."""
        keys = [message.key for message in self.messages]
        keys += [row_key(row) for message in self.messages for row in message.candidates]
        return list(dict.fromkeys(keys))


def row_key(row: KnownRow) -> MessageKey:
    """The ledger key of a row."""
    return MessageKey(row.uidl, row.occurrence)


def identify(
    listing: Sequence[tuple[int, str]],
    sizes: Mapping[int, int],
    rows: Mapping[str, Sequence[KnownRow]],
    *,
    trust_sizes: bool = True,
) -> ServerView:
    """Match a session's UIDL listing to the ledger's rows (see the module docstring).

    ``listing`` is ``(number, uidl)`` in server order, ``sizes`` the LIST
    sizes by number, ``rows`` the ledger rows of the listed UIDLs by UIDL
    (any state, deleted or not). ``trust_sizes`` False pairs by order alone,
    for servers whose LIST sizes are estimates.
    """
    groups: dict[str, list[int]] = {}
    for number, uidl in listing:
        groups.setdefault(uidl, []).append(number)
    shared = {uidl for uidl, numbers in groups.items() if len(numbers) > 1}
    shared |= {uidl for uidl, known in rows.items() if uidl in groups and len(known) > 1}
    matched: dict[int, Listed] = {}
    for uidl, numbers in groups.items():
        known = rows.get(uidl, ())
        for listed in _match_group(uidl, numbers, sizes, known, trust_sizes=trust_sizes):
            matched[listed.number] = listed
    messages = tuple(matched[number] for number, _ in listing)
    return ServerView(
        messages=messages,
        shared=frozenset(shared),
        by_key={message.key: message for message in messages},
        by_number={message.number: message for message in messages},
    )


def _match_group(
    uidl: str,
    numbers: Sequence[int],
    sizes: Mapping[int, int],
    known: Sequence[KnownRow],
    *,
    trust_sizes: bool,
) -> list[Listed]:
    """Pair the server's messages under one UIDL with its rows still on the server."""
    if len(numbers) == 1 and len(known) == 1 and not known[0].deleted:
        return [_lone(uidl, numbers[0], sizes.get(numbers[0]), known[0])]
    live = sorted((row for row in known if not row.deleted), key=lambda row: row.occurrence)
    pairs = _pair(numbers, sizes, live, trust_sizes=trust_sizes)
    leftover = tuple(row for row in live if all(row is not paired for paired in pairs.values()))
    next_occurrence = max((row.occurrence for row in known), default=0) + 1
    listed: list[Listed] = []
    for number in numbers:
        row = pairs.get(number)
        size = sizes.get(number)
        if row is not None:
            key = MessageKey(uidl, row.occurrence)
            # A shared UIDL: sure only once the content was seen.
            listed.append(Listed(number, uidl, size, key, row, certain=False))
            continue
        key = MessageKey(uidl, next_occurrence)
        next_occurrence += 1
        candidates = tuple(row for row in leftover if row.state == "archived")
        listed.append(Listed(number, uidl, size, key, None, candidates=candidates))
    return listed


def _lone(uidl: str, number: int, size: int | None, row: KnownRow) -> Listed:
    """A UIDL listed once with its one row: that row; certain unless its size changed."""
    same_size = row.server_size is None or row.server_size == size
    return Listed(number, uidl, size, MessageKey(uidl, row.occurrence), row, certain=same_size)


def _pair(
    numbers: Sequence[int],
    sizes: Mapping[int, int],
    live: Sequence[KnownRow],
    *,
    trust_sizes: bool,
) -> dict[int, KnownRow]:
    """Message number -> row: by equal size in order, or by order alone."""
    if not trust_sizes:
        return dict(zip(numbers, live, strict=False))
    pairs: dict[int, KnownRow] = {}
    free = list(live)
    for number in numbers:
        size = sizes.get(number)
        row = next((r for r in free if r.server_size is None or r.server_size == size), None)
        if row is not None:
            pairs[number] = row
            free.remove(row)
    return pairs


# Header fields that mailbox servers write into a stored message as its state
# changes (mbox "Status"/"X-Status", Dovecot's and GNU's "X-UID"/"X-IMAPbase",
# "X-Keywords", Mozilla's status, "Content-Length"/"Lines" kept by some mbox
# writers, GNU pop3d's "X-UIDL"): the message is the same with or without them.
STATUS_FIELDS: Final = frozenset(
    {
        b"status",
        b"x-status",
        b"x-uid",
        b"x-uidl",
        b"x-imap",
        b"x-imapbase",
        b"x-keywords",
        b"x-mozilla-status",
        b"x-mozilla-status2",
        b"content-length",
        b"lines",
    }
)
# A header block longer than this is compared as it is (a real one is a few KiB;
# the bound keeps the digest's memory flat whatever a server sends).
MAX_HEADER_OCTETS: Final = 1 << 20


class StatusBlindDigest:
    """A SHA-256 of a message that ignores line ends and the STATUS_FIELDS.

    Fed the message in chunks (as the server sent it, or as a store kept
    it: CRLF and LF line ends hash alike), it buffers only the header block,
    drops the status fields (with their continuation lines) from it, and
    streams the body into the hash.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._header = bytearray()
        self._in_body = False
        self._held_cr = False

    def write(self, chunk: bytes) -> None:
        """Take the next chunk of the message."""
        if self._held_cr:
            chunk, self._held_cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):  # its LF may come in the next chunk
            chunk, self._held_cr = chunk[:-1], True
        self._add(chunk.replace(b"\r\n", b"\n"))

    def hexdigest(self) -> str:
        """The digest; call once, after the last chunk."""
        if self._held_cr:
            self._held_cr = False
            self._add(b"\r")
        if not self._in_body:  # a message that is all header
            self._end_header(len(self._header))
        return self._hash.hexdigest()

    def _add(self, data: bytes) -> None:
        if self._in_body:
            self._hash.update(data)
            return
        self._header += data
        if self._header.startswith(b"\n"):
            self._end_header(0)  # RFC 5322 section 2.1: an empty header
        elif (blank := self._header.find(b"\n\n")) >= 0:
            self._end_header(blank + 1)
        elif len(self._header) > MAX_HEADER_OCTETS:
            self._hash.update(self._header)  # no header block of any mail server
            self._header.clear()
            self._in_body = True

    def _end_header(self, split: int) -> None:
        self._hash.update(_without_status_fields(bytes(self._header[:split])))
        self._hash.update(self._header[split:])
        self._header.clear()
        self._in_body = True


def _without_status_fields(header: bytes) -> bytes:
    """The header block without the STATUS_FIELDS and their continuation lines."""
    kept: list[bytes] = []
    dropping = False
    for line in header.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # RFC 5322 section 2.2.3: folded into the field above
            if not dropping:
                kept.append(line)
            continue
        name, colon, _ = line.partition(b":")
        dropping = bool(colon) and name.strip().lower() in STATUS_FIELDS
        if not dropping:
            kept.append(line)
    return b"\n".join(kept)
