"""Account names and archive folders unique (config._check_unique), for any set of accounts.

The check runs in linear time (a pair-by-pair comparison of 10,000 accounts
was 25 s of every command's start, issue 11); the rule tested is the
pairwise one it replaced: a name given twice, or a folder that is another's
or holds it, parts compared case-folded.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popvault.config._load import _check_unique
from popvault.errors import ConfigError

PART = st.sampled_from(["a", "A", "b", "mail", "Mail"])
PATH = st.lists(PART, min_size=1, max_size=3).map("/".join)
ACCOUNTS = st.lists(st.tuples(st.sampled_from(["x", "y", "z", "w", "v"]), PATH), max_size=6)


def pairwise_problem(accounts: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(account, key) the first problem is reported for, by comparing every pair."""
    names: set[str] = set()
    for index, (name, path) in enumerate(accounts):
        if name in names:
            return name, "name"
        names.add(name)
        parts = tuple(part.casefold() for part in PurePosixPath(path).parts)
        for _, other_path in accounts[:index]:
            other = tuple(part.casefold() for part in PurePosixPath(other_path).parts)
            common = min(len(parts), len(other))
            if parts[:common] == other[:common]:
                return name, "path"
    return None


def check(accounts: list[tuple[str, str]]) -> tuple[str, str] | None:
    made: list[Any] = [SimpleNamespace(name=name, path=path) for name, path in accounts]
    try:
        _check_unique(made, "config.toml")
    except ConfigError as error:
        return error.account or "", error.key or ""
    return None


@given(ACCOUNTS)
def test_the_same_problem_as_comparing_every_pair(accounts: list[tuple[str, str]]) -> None:
    assert check(accounts) == pairwise_problem(accounts)


@pytest.mark.parametrize(
    ("accounts", "problem"),
    [
        ([("x", "mail"), ("y", "mail/work")], ("y", "path")),
        ([("x", "mail/work"), ("y", "mail")], ("y", "path")),
        ([("x", "Mail"), ("y", "mail")], ("y", "path")),
        ([("x", "mail"), ("y", "mailbox")], None),
        ([("x", "a"), ("x", "b")], ("x", "name")),
    ],
)
def test_examples(accounts: list[tuple[str, str]], problem: tuple[str, str] | None) -> None:
    assert check(accounts) == problem


def test_ten_thousand_accounts_in_their_own_folders_pass() -> None:
    accounts = [(f"user{n:05d}", f"archive/user{n:05d}") for n in range(10_000)]
    assert check(accounts) is None
    assert check([*accounts, ("late", "archive")]) == ("late", "path")
