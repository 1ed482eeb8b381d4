"""popvault.identity: a session's listing matched to the ledger's rows (pure functions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from popvault.identity import StatusBlindDigest, identify, row_key
from popvault.ledger import KnownRow, MessageKey

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(
    uidl: str,
    occurrence: int = 1,
    *,
    server_size: int | None = 100,
    deleted: bool = False,
    gone: bool = False,
    sha: str = "a",
    state: str = "archived",
) -> KnownRow:
    return KnownRow(
        uidl=uidl,
        occurrence=occurrence,
        state=state,
        path=f"acct/new/{uidl}-{occurrence}",
        size=server_size or 0,
        sha256=sha * 64,
        server_size=server_size,
        archived_at=T0,
        deleted=deleted,
        gone=gone,
        hold_reason=None,
    )


def rows_of(*rows: KnownRow) -> dict[str, list[KnownRow]]:
    grouped: dict[str, list[KnownRow]] = {}
    for r in rows:
        grouped.setdefault(r.uidl, []).append(r)
    return grouped


def test_a_unique_uidl_with_its_row_is_that_row_for_certain() -> None:
    view = identify([(1, "a"), (2, "b")], {1: 100, 2: 50}, rows_of(row("a")))
    first, second = view.messages
    assert (first.key, first.row, first.certain) == (MessageKey("a"), row("a"), True)
    assert (second.key, second.row) == (MessageKey("b"), None)
    assert view.shared == frozenset()


def test_two_messages_under_one_uidl_get_two_occurrences() -> None:
    view = identify([(1, "d"), (2, "x"), (3, "d")], {1: 10, 2: 20, 3: 10}, {})
    keys = [message.key for message in view.messages]
    assert keys == [MessageKey("d", 1), MessageKey("x", 1), MessageKey("d", 2)]
    assert view.shared == frozenset({"d"})


def test_known_shared_messages_pair_by_size_and_are_not_certain() -> None:
    rows = rows_of(row("d", 1, server_size=10), row("d", 2, server_size=30))
    view = identify([(1, "d"), (2, "d")], {1: 30, 2: 10}, rows)
    assert [m.key.occurrence for m in view.messages] == [2, 1]
    assert not any(m.certain for m in view.messages)
    assert all(m.candidates == () for m in view.messages)


def test_after_popvault_deleted_a_uidl_a_message_under_it_is_new() -> None:
    view = identify([(1, "r")], {1: 100}, rows_of(row("r", deleted=True)))
    (message,) = view.messages
    assert message.key == MessageKey("r", 2)
    assert message.row is None
    assert message.candidates == ()


def test_after_one_of_two_was_deleted_the_other_is_still_paired() -> None:
    rows = rows_of(row("d", 1, deleted=True), row("d", 2, server_size=70))
    view = identify([(4, "d")], {4: 70}, rows)
    (message,) = view.messages
    assert message.key == MessageKey("d", 2)
    assert message.row is not None
    assert message.row.occurrence == 2


def test_a_lone_uidl_keeps_its_row_when_its_size_changed_but_is_no_longer_certain() -> None:
    # RFC 1939 section 7: the UIDL is the identity; servers rewrite status fields.
    view = identify([(1, "a")], {1: 123}, rows_of(row("a", server_size=100)))
    (message,) = view.messages
    assert message.key == MessageKey("a", 1)
    assert message.row == row("a", server_size=100)
    assert not message.certain
    assert message.candidates == ()


def test_under_a_shared_uidl_a_size_that_matches_no_row_makes_leftovers_candidates() -> None:
    rows = rows_of(row("a", 1, server_size=100), row("a", 2, server_size=200))
    view = identify([(1, "a")], {1: 123}, rows)
    (message,) = view.messages
    assert message.row is None
    assert message.key == MessageKey("a", 3)
    assert [c.occurrence for c in message.candidates] == [1, 2]
    # The candidates count as possibly still on the server (not marked gone yet).
    assert {MessageKey("a", 1), MessageKey("a", 2)} <= set(view.keys_on_server)


def test_untrusted_sizes_pair_by_order() -> None:
    rows = rows_of(row("a", server_size=100))
    view = identify([(1, "a")], {1: 123}, rows, trust_sizes=False)
    (message,) = view.messages
    assert message.key == MessageKey("a", 1)
    assert message.candidates == ()


def test_a_gone_row_listed_again_is_paired_again() -> None:
    view = identify([(1, "g")], {1: 100}, rows_of(row("g", gone=True)))
    (message,) = view.messages
    assert message.key == MessageKey("g", 1)
    assert message.certain


listings = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(min_value=1, max_value=4)),
    max_size=8,
)
ledgers = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        st.integers(min_value=1, max_value=4),
        st.booleans(),
    ),
    max_size=6,
)


def _rows(spec: Sequence[tuple[str, int, bool]]) -> dict[str, list[KnownRow]]:
    occurrences: Counter[str] = Counter()
    made = []
    for uidl, size, deleted in spec:
        occurrences[uidl] += 1
        made.append(row(uidl, occurrences[uidl], server_size=size, deleted=deleted))
    return rows_of(*made)


@given(listings, ledgers)
def test_every_listed_message_gets_its_own_key_and_no_row_is_claimed_twice(
    listing_spec: list[tuple[str, int]], ledger_spec: list[tuple[str, int, bool]]
) -> None:
    listing = [(number, uidl) for number, (uidl, _) in enumerate(listing_spec, start=1)]
    sizes = {number: size for number, (_, size) in enumerate(listing_spec, start=1)}
    rows = _rows(ledger_spec)
    view = identify(listing, sizes, rows)
    keys = [message.key for message in view.messages]
    assert len(keys) == len(set(keys)), "two listed messages under one key"
    assert [m.number for m in view.messages] == [n for n, _ in listing]
    existing = {row_key(r) for group in rows.values() for r in group}
    for message in view.messages:
        assert message.key.uidl == message.uidl
        if message.row is None:
            # A new message never takes the key of a row, deleted or not.
            assert message.key not in existing
        else:
            assert not message.row.deleted
            assert row_key(message.row) == message.key
            if message.row.server_size != sizes[message.number]:
                # Only a lone UIDL keeps its row through a size change, and is then
                # checked by content before any DELE.
                assert message.uidl not in view.shared
                assert not message.certain
        if message.uidl in view.shared and message.row is not None:
            # A pairing under a shared UIDL is checked by content before any DELE.
            assert not message.certain


# -- StatusBlindDigest -------------------------------------------------------------------

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody line\r\n.\r\nlast\r\n"
REWRITTEN = (
    b"From: a@example.org\nX-UIDL: abc\nStatus: OR\nX-Keywords: $Seen\n  folded more\n"
    b"Subject: hello\nX-UID: 7\n\nbody line\n.\nlast\n"
)


def blind(*chunks: bytes) -> str:
    digest = StatusBlindDigest()
    for chunk in chunks:
        digest.write(chunk)
    return digest.hexdigest()


def test_status_fields_and_line_ends_do_not_change_the_digest() -> None:
    assert blind(MESSAGE) == blind(REWRITTEN)


def test_the_body_and_other_fields_do_change_it() -> None:
    assert blind(MESSAGE) != blind(MESSAGE.replace(b"last", b"LAST"))
    assert blind(MESSAGE) != blind(MESSAGE.replace(b"hello", b"hullo"))
    # A status field name inside the body is body text, not a field.
    assert blind(MESSAGE + b"Status: RO\r\n") != blind(MESSAGE)


def test_a_message_without_body_or_without_header() -> None:
    assert blind(b"Subject: x\r\nStatus: O\r\n") == blind(b"Subject: x\n")
    assert blind(b"\r\nonly a body\r\n") == blind(b"\nonly a body\n")


@given(st.data())
def test_any_chunking_gives_the_same_digest(data: st.DataObject) -> None:
    message = data.draw(st.sampled_from([MESSAGE, REWRITTEN, b"a\r\r\n\r\nb\r"]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=8)))
    pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    assert blind(*pieces) == blind(message)
