"""Which ledger row each message of a session's listing is: pure functions, no I/O.

RFC 1939 section 7 wants a UIDL to name one message, for ever. Servers that
derive UIDLs from content (mbox-based ones, for example) give two
byte-identical messages the same UIDL, and a few reuse one. popvault must
still archive every listed message exactly once, so the ledger identifies a
message by ``(uidl, occurrence)``: occurrence 1 is the first message archived
under that UIDL, 2 the second, and so on. Message numbers are only stable
within one session (RFC 1939 section 3), so each session matches its listing
to the rows again:

* The server's messages under one UIDL are paired with its rows still on
  the server (not deleted by popvault) by LIST size, in order. A UIDL listed
  once with one such row of the same size is that row — the common case.
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
            # Only a UIDL that is not shared (one message, one row ever) is sure
            # without looking at the content.
            alone = len(numbers) == 1 and len(known) == 1
            listed.append(Listed(number, uidl, size, key, row, certain=alone))
            continue
        key = MessageKey(uidl, next_occurrence)
        next_occurrence += 1
        candidates = tuple(row for row in leftover if row.state == "archived")
        listed.append(Listed(number, uidl, size, key, None, candidates=candidates))
    return listed


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
