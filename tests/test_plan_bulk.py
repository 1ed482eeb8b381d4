"""The plan's bulk helpers: the collector pause, listings parsed in batches."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popvault.gcpause import cyclic_gc_paused
from popvault.plan import Session, _listing
from popvault.pop3.listing import list_entries, uidl_entries
from popvault.pop3.parsing import parse_list_line, parse_uidl_entry


def test_collection_is_paused_and_turned_back_on() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collection_is_turned_back_on_after_an_error() -> None:
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_held_off_elsewhere_stays_off() -> None:
    gc.disable()
    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # another thread's pause (or the user's) still holds
    finally:
        gc.enable()


# -- listings: batches taken in bulk, the rest line by line -----------------------

numbers = st.integers(min_value=0, max_value=30)
good_uidl = st.builds(lambda n, uid: b"%d %s" % (n, uid), numbers, st.sampled_from([b"a", b"b~"]))
bad_uidl = st.sampled_from([b"", b"x y", b"-1 a", b"3", b"4 a b", b"5 a\t", b"6 \x00"])
good_list = st.builds(lambda n, size: b"%d %d" % (n, size), numbers, numbers)
bad_list = st.sampled_from([b"", b"1", b"2 -3", b"x 4", b"5 6 (seen)", b"7\t8"])


def _run_listing(
    lines: list[bytes], bulk: Any, parse: Any, verb: str
) -> tuple[list[Any], list[str]]:
    session = Session()
    account = SimpleNamespace(name="acct")
    entries = _listing(
        iter(lines), bulk=bulk, parse=parse, verb=verb, account=account, session=session
    )
    return entries, session.problems


@given(st.lists(good_uidl | bad_uidl, max_size=25), st.integers(min_value=1, max_value=6))
def test_uidl_listing_in_batches_is_the_line_by_line_one(lines: list[bytes], batch: int) -> None:
    with patch("popvault.plan.BATCH_LINES", batch):
        bulk = _run_listing(lines, uidl_entries, parse_uidl_entry, "UIDL")
    assert bulk == _run_listing(lines, lambda _: None, parse_uidl_entry, "UIDL")


@given(st.lists(good_list | bad_list, max_size=25), st.integers(min_value=1, max_value=6))
def test_list_listing_in_batches_is_the_line_by_line_one(lines: list[bytes], batch: int) -> None:
    with patch("popvault.plan.BATCH_LINES", batch):
        bulk = _run_listing(lines, list_entries, parse_list_line, "LIST")
    assert bulk == _run_listing(lines, lambda _: None, parse_list_line, "LIST")


def test_a_number_listed_twice_across_batches_is_skipped() -> None:
    lines = [b"1 a", b"2 b", b"2 c", b"3 d"]
    with patch("popvault.plan.BATCH_LINES", 2):
        entries, problems = _run_listing(lines, uidl_entries, parse_uidl_entry, "UIDL")
    assert entries == [(1, "a"), (2, "b"), (3, "d")]
    assert problems == [
        "a line of the server's UIDL listing was skipped: message number 2 listed twice"
    ]
