"""Shared fixtures: TLS certificates, a private Dovecot and other private POP3 servers.

* ``tls_certs`` (session): a throwaway CA and a server certificate for
  127.0.0.1/localhost; ``tls_certs.server_context()`` suits FakePop3Server.
* ``dovecot`` (session): a private Dovecot (see ``tests/dovecot.py``).
  Skipped where Dovecot is missing, except under CI=true, where that fails.
* ``dovecot_mailbox``: a fresh, empty Dovecot user per test.
* ``gnu_pop3d``, ``popa3d`` (session): private POP3 servers of other
  implementations (see ``tests/peers.py``), same skip/fail rule; ``peer`` is
  each of them in turn, ``peer_mailbox`` a fresh mbox user on it per test.

Tests that use a Dovecot fixture get the ``dovecot`` marker automatically, so
``-m "not dovecot"`` deselects them; tests on a peer get the ``peers`` marker.
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
from peers import (
    GnuPop3dServer,
    MboxMailbox,
    PeerServer,
    Popa3dServer,
    gnu_pop3d_binary_or_skip,
    popa3d_binary_or_skip,
)
from peers import make_private_root as make_peer_root
from popvault.redaction import SECRETS

_DOVECOT_FIXTURES = frozenset({"dovecot", "dovecot_mailbox"})
# Free ports are picked before Dovecot binds them; another process may win the race.
_START_ATTEMPTS = 3


@pytest.fixture(autouse=True)
def _fresh_secrets() -> Iterator[None]:
    """Each test starts with no registered secret: one test's password is no other's."""
    SECRETS.clear()
    yield
    SECRETS.clear()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _DOVECOT_FIXTURES & fixtures:
            item.add_marker(pytest.mark.dovecot)
        if _PEER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.peers)


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


# -- peers: POP3 servers of other implementations (tests/peers.py) -------------

_PEER_FIXTURES = frozenset({"gnu_pop3d", "popa3d", "peer", "peer_mailbox"})
PEER_NAMES = ("gnu-pop3d", "popa3d")


def _start_peer(server: GnuPop3dServer | Popa3dServer) -> None:
    for attempt in range(_START_ATTEMPTS):
        try:
            server.start()
            return
        except RuntimeError as error:
            server.stop()
            lost_race = "in use" in str(error)
            if not lost_race or attempt == _START_ATTEMPTS - 1:
                raise


@pytest.fixture(scope="session")
def gnu_pop3d(tls_certs: TlsCerts) -> Iterator[GnuPop3dServer]:
    """A private GNU Mailutils pop3d: STLS on ``.port``, implicit TLS on ``.tls_port``.

    mbox mailboxes (``mailbox.deliver``); users from a private virtual-domain
    password file. Stopped, and its folder removed, at session end.
    """
    server = GnuPop3dServer(gnu_pop3d_binary_or_skip(), make_peer_root("gnu-pop3d"), tls_certs)
    try:
        _start_peer(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def popa3d() -> Iterator[Popa3dServer]:
    """A private popa3d (plain POP3 on ``.port``) in a private mount namespace."""
    server = Popa3dServer(popa3d_binary_or_skip(), make_peer_root("popa3d"))
    try:
        _start_peer(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(params=PEER_NAMES)
def peer(request: pytest.FixtureRequest) -> PeerServer:
    """Each peer server in turn (session-scoped servers)."""
    server: PeerServer = request.getfixturevalue(str(request.param).replace("-", "_"))
    return server


@pytest.fixture
def peer_mailbox(peer: PeerServer) -> MboxMailbox:
    """A fresh user with an empty mbox on ``peer``."""
    return peer.add_user()
