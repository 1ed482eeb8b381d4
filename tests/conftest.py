"""Shared fixtures: TLS certificates and a private Dovecot POP3 server.

* ``tls_certs`` (session): a throwaway CA and a server certificate for
  127.0.0.1/localhost; ``tls_certs.server_context()`` suits FakePop3Server.
* ``dovecot`` (session): a private Dovecot (see ``tests/dovecot.py``).
  Skipped where Dovecot is missing, except under CI=true, where that fails.
* ``dovecot_mailbox``: a fresh, empty Dovecot user per test.

Tests that use a Dovecot fixture get the ``dovecot`` marker automatically, so
``-m "not dovecot"`` deselects them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from dovecot import (
    DovecotMailbox,
    DovecotServer,
    TlsCerts,
    dovecot_binary_or_skip,
    make_private_root,
    make_tls_certs,
)

_DOVECOT_FIXTURES = frozenset({"dovecot", "dovecot_mailbox"})
# Free ports are picked before Dovecot binds them; another process may win the race.
_START_ATTEMPTS = 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _DOVECOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dovecot)


def _start(server: DovecotServer) -> None:
    for attempt in range(_START_ATTEMPTS):
        try:
            server.start()
            return
        except RuntimeError as error:
            lost_race = "Address already in use" in str(error)
            if not lost_race or attempt == _START_ATTEMPTS - 1:
                raise


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A test CA and a server certificate for 127.0.0.1 and localhost."""
    return make_tls_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def dovecot(tls_certs: TlsCerts) -> Iterator[DovecotServer]:
    """A private Dovecot: plain POP3 with STLS on ``.port``, implicit TLS on ``.tls_port``.

    Messages are delivered as Maildir files with LF line endings (Dovecot's
    own format); Dovecot sends them with CRLF, so RETR returns the CRLF bytes
    that were delivered. Stopped, and its folder removed, at session end.
    """
    binary = dovecot_binary_or_skip()
    root = make_private_root()
    server = DovecotServer(binary, root, tls_certs)
    try:
        _start(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot_mailbox(dovecot: DovecotServer) -> DovecotMailbox:
    """A fresh, empty Dovecot user for one test (password ``dovecot-test-pw``)."""
    return dovecot.add_user()
