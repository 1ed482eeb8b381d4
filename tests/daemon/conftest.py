"""Fixtures shared by the daemon tests: a workspace with a password file, a small fake mailbox."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from daemon_helpers import PASSWORD, make_workspace

from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return make_workspace(tmp_path)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(3), username="bob", password=PASSWORD) as srv:
        yield srv
