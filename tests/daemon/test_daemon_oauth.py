"""The daemon with an OAuth 2.0 account (issue 10): archiving across many access-token
expiries without a failed login, the token metrics, and a revoked grant backed off slowly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from popvault import config as config_module
from popvault.daemon.backoff import OAUTH_SIGN_IN
from popvault.daemon.core import ArchiveDaemon
from popvault.daemon.metrics import Metrics
from popvault.ledger import Ledger
from popvault.oauth import OAuthClient, TokenSource, custom
from popvault.testing import FakePop3Server, sample_messages
from popvault.testing.fake_oauth import FakeOAuthServer
from workspace import Workspace

CLIENT_ID = "daemon-oauth-client"
USER = "carol@example.org"
LIFETIME = 1.5  # seconds: a run every second meets a new access token every other run


@pytest.fixture
def oauth() -> Iterator[FakeOAuthServer]:
    server = FakeOAuthServer(access_token_lifetime=LIFETIME, user=USER)
    server.add_client(CLIENT_ID)
    with server:
        yield server


def signed_in(oauth: FakeOAuthServer, token_file: Path) -> None:
    """What `popvault auth login` leaves: a token file (from the device flow, approved)."""
    provider = custom(
        "local",
        token_endpoint=oauth.token_url,
        device_authorization_endpoint=oauth.device_authorization_url,
        scopes=("pop", "offline_access"),
    )
    client = OAuthClient(provider, CLIENT_ID, account="office")
    login = client.start_device_login()
    oauth.approve(login.user_code)
    result = client.finish_device_login(login)
    TokenSource("office", client, path=token_file).store(result.tokens)


def metric(metrics: Metrics, name: str) -> float | None:
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("account") == "office":
                return float(sample.value)
    return None


def test_the_daemon_archives_across_token_expiries_and_backs_off_a_revoked_grant(
    tmp_path: Path, oauth: FakeOAuthServer
) -> None:
    refused: list[str] = []

    def check(user: str, token: str) -> bool:
        good = user == USER and oauth.is_active(token)
        if not good:
            refused.append(user)
        return good

    ws = Workspace(tmp_path)
    token_file = tmp_path / "tokens" / "office.json"
    signed_in(oauth, token_file)
    with FakePop3Server(
        sample_messages(2), username=USER, password="unused", sasl=("XOAUTH2",), check_token=check
    ) as pop:
        entry: dict[str, Any] = {
            "name": "office",
            "host": "127.0.0.1",
            "port": pop.port,
            "security": "plain",
            "allow_plaintext": True,
            "username": USER,
            "every": "1s",
            "oauth_client_id": CLIENT_ID,
            "oauth_token_endpoint": oauth.token_url,
            "oauth_device_endpoint": oauth.device_authorization_url,
            "oauth_token_file": str(token_file),
        }
        ws.write_config([entry])
        config = config_module.load(ws.config)
        metrics = Metrics()
        with Ledger.open(config.ledger_url) as ledger:
            daemon = ArchiveDaemon(config, ledger, metrics=metrics)
            daemon.start()
            try:
                # New mail over several access-token lifetimes, every message archived.
                deadline = time.monotonic() + 4 * LIFETIME
                added = 0
                while time.monotonic() < deadline:
                    pop.add_message(f"Subject: m{added}\r\n\r\nbody {added}\r\n".encode())
                    added += 1
                    time.sleep(0.5)
                wait_for(lambda: len(ws.archived_files("office")) == 2 + added, what="all mail")
                assert refused == [], "a login was refused: a token was offered after expiry"
                assert oauth.refreshes >= 2
                expiry = metric(metrics, "popvault_oauth_token_expiry_timestamp_seconds")
                assert expiry is not None
                assert expiry > time.time() - 2 * LIFETIME
                # At 0, not absent: Prometheus's increase() (the refresh alert's) sees
                # no rise in a series that first appears at 1.
                assert metric(metrics, "popvault_oauth_refresh_failures_total") == 0
                assert metric(metrics, "popvault_oauth_login_needed") == 0

                # The grant is revoked: the next refresh fails, the account backs off
                # slowly (a person must sign in again), and the failure is counted.
                oauth.revoke_user(USER)
                wait_for(
                    lambda: (metric(metrics, "popvault_oauth_refresh_failures_total") or 0) >= 1,
                    timeout=4 * LIFETIME + 10,
                    what="a counted refresh failure",
                )
                wait_for(
                    lambda: metric(metrics, "popvault_oauth_login_needed") == 1,
                    what="the login needed, for the alert",
                )

                def reason() -> str | None:
                    rows = [e for e in ledger.schedules() if e.account == "office"]
                    return rows[0].backoff_reason if rows else None

                assert (wait_for(reason, what="a backoff reason") or "").startswith(
                    OAUTH_SIGN_IN.reason
                )
            finally:
                assert daemon.stop(10.0)
