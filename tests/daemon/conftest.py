"""Fixtures shared by the daemon tests: a workspace with a password file, a small fake mailbox,
a migrated PostgreSQL ledger database, and daemon processes killed at the end."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from daemon_helpers import PASSWORD, DaemonProcess, make_workspace

import postgres
from popvault.ledger import Ledger
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return make_workspace(tmp_path)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(3), username="bob", password=PASSWORD) as srv:
        yield srv


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL ledger database (dropped at the end), its schema made."""
    with postgres.databases("popvault_daemons") as make:
        url = make()
        Ledger.open(url).close()  # the schema, before the daemons and the test read it
        yield url


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """The test's daemon processes: resumed (if stopped) and killed at the end."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.signal(signal.SIGCONT)
        process.kill()
