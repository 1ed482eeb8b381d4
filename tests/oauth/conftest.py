"""Fixtures of the OAuth tests: a fake authorization server per test, secrets registered."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oauth_helpers import CLIENT_ID

from popvault.testing.fake_oauth import FakeOAuthServer


@pytest.fixture
def oauth_server() -> Iterator[FakeOAuthServer]:
    """A running fake server with the public client ``CLIENT_ID``."""
    with FakeOAuthServer() as server:
        server.add_client(CLIENT_ID)
        yield server
