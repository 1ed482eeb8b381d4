"""The daemon's start-up line names a few accounts and counts the rest (10,000 made 180 kB)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from popvault.daemon.core import NAMED_AT_START, _named_accounts


def accounts(count: int) -> list[Any]:
    every = SimpleNamespace(describe=lambda: "every 1h")
    return [SimpleNamespace(name=f"user{n}", schedule=every) for n in range(count)]


def test_a_few_accounts_are_all_named() -> None:
    line = _named_accounts(accounts(3))
    assert line == "user0 (every 1h), user1 (every 1h), user2 (every 1h)"


def test_ten_thousand_accounts_make_a_short_line() -> None:
    line = _named_accounts(accounts(10_000))
    assert line.count("(every 1h)") == NAMED_AT_START
    assert line.endswith(f"and {10_000 - NAMED_AT_START} more (`popvault status` lists them)")
    assert len(line) < 1000
