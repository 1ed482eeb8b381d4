"""OAuth 2.0 from end to end (issue 10): `popvault auth login`, runs with expiring tokens,
a revoked grant, `auth status` and `auth logout` — a local authorization server and a fake
POP3 server that checks each token with it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from popvault.testing import FakePop3Server, sample_messages
from popvault.testing.fake_oauth import FakeOAuthServer
from workspace import Workspace, maildir_form, wire_form

sys.path.insert(0, str(Path(__file__).parent / "oauth"))
from oauth_helpers import make_certificate

CLIENT_ID = "popvault-test-client"
USER = "alice@example.org"


@pytest.fixture
def oauth() -> Iterator[FakeOAuthServer]:
    server = FakeOAuthServer(access_token_lifetime=2.0, device_interval=1, user=USER)
    server.add_client(CLIENT_ID)
    with server:
        yield server


@pytest.fixture
def pop(oauth: FakeOAuthServer) -> Iterator[FakePop3Server]:
    with FakePop3Server(
        sample_messages(6),
        username=USER,
        password="unused-Pa55",
        sasl=("XOAUTH2", "OAUTHBEARER"),
        check_token=lambda user, token: user == USER and oauth.is_active(token),
    ) as srv:
        yield srv


def oauth_account(pop: FakePop3Server, oauth: FakeOAuthServer, **extra: Any) -> dict[str, Any]:
    # The token file in the workspace (relative to the config), never the user's own state.
    entry: dict[str, Any] = {
        "oauth_token_file": "tokens/office.json",
        "name": "office",
        "host": "127.0.0.1",
        "port": pop.port,
        "security": "plain",
        "allow_plaintext": True,
        "username": USER,
        "oauth_client_id": CLIENT_ID,
        "oauth_token_endpoint": oauth.token_url,
        "oauth_device_endpoint": oauth.device_authorization_url,
        "oauth_revocation_endpoint": oauth.revocation_url,
        "oauth_scopes": ["pop", "offline_access"],
    }
    entry.update(extra)
    return entry


def approve_when_asked(oauth: FakeOAuthServer) -> threading.Thread:
    """The user, on another device: approves the first device login that shows up."""

    def user() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            codes = oauth.pending_user_codes()
            if codes:
                oauth.approve(codes[0])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    return thread


def secrets_of(oauth: FakeOAuthServer) -> list[str]:
    token = oauth.refresh_token_of(USER)
    return [token] if token else []


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password="unused-Pa55")


def test_device_login_then_runs_across_token_expiries(
    ws: Workspace, pop: FakePop3Server, oauth: FakeOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every log line of every step, searched for tokens below
    ws.write_config([oauth_account(pop, oauth)])
    user = approve_when_asked(oauth)
    login = ws.cli("auth", "login", "office")
    user.join()
    assert login.code == 0, login.output
    assert "enter the code" in login.out
    assert "signed in (device)" in login.out

    first = ws.cli("run")
    assert first.code == 0, first.output
    expected = sorted(maildir_form(wire_form(raw)) for _, raw in pop.mailbox)
    assert sorted(p.read_bytes() for p in ws.archived_files("office")) == expected
    assert pop.logins[-1][1].upper().startswith("XOAUTH2"), pop.logins

    # Access tokens live 2 s: each later run must refresh first, never fail a login.
    for _ in range(3):
        time.sleep(2.2)
        pop.add_message(b"From: a@example.org\r\nSubject: later\r\n\r\nnew\r\n")
        again = ws.cli("run")
        assert again.code == 0, again.output
    assert oauth.refreshes >= 3
    assert len(ws.archived_files("office")) == 9

    status = ws.cli("auth", "status", "--json")
    assert status.code == 0, status.output
    (row,) = json.loads(status.out)
    assert row["logged_in"] is True
    assert row["has_refresh_token"] is True
    stored = json.loads((ws.folder / "tokens" / "office.json").read_text())
    secrets = [*secrets_of(oauth), *(v for k, v in stored.items() if k.endswith("_token") and v)]
    assert len(secrets) >= 2, stored.keys()
    debug = ws.cli("--log-level", "debug", "run")
    everything = [login.output, first.output, again.output, status.output, debug.output]
    everything += [ws.cli("status", "--json").output, ws.cli("status").output, ws.ledger_dump()]
    everything.append(caplog.text)
    assert "C: AUTH XOAUTH2" in caplog.text, "the debug log was captured"
    for secret in secrets:
        for text in everything:
            assert secret not in text


def test_a_revoked_grant_fails_once_clearly_and_says_what_to_do(
    ws: Workspace, pop: FakePop3Server, oauth: FakeOAuthServer
) -> None:
    ws.write_config([oauth_account(pop, oauth)])
    user = approve_when_asked(oauth)
    assert ws.cli("auth", "login", "office").code == 0
    user.join()
    assert ws.cli("run").code == 0
    assert oauth.revoke_user(USER) == 1
    time.sleep(2.2)  # the access token expires too: the next run must refresh, and cannot
    failed = ws.cli("run")
    assert failed.code == 1
    assert "popvault auth login office" in failed.output
    assert ws.cli("auth", "status").code == 1


def test_a_run_without_a_login_says_to_log_in(
    ws: Workspace, pop: FakePop3Server, oauth: FakeOAuthServer
) -> None:
    ws.write_config([oauth_account(pop, oauth)])
    result = ws.cli("run")
    assert result.code == 1
    assert "popvault auth login office" in result.output
    assert pop.sessions == 0, "no token: the server must not even be contacted"
    status = ws.cli("auth", "status")
    assert "not signed in" in status.out
    assert status.code == 1


def test_logout_revokes_and_forgets(
    ws: Workspace, pop: FakePop3Server, oauth: FakeOAuthServer
) -> None:
    ws.write_config([oauth_account(pop, oauth)])
    user = approve_when_asked(oauth)
    assert ws.cli("auth", "login", "office").code == 0
    user.join()
    refresh = oauth.refresh_token_of(USER)
    out = ws.cli("auth", "logout", "office")
    assert out.code == 0, out.output
    assert "revoked" in out.out
    assert oauth.refresh_token_of(USER) is None
    assert refresh is not None
    assert "not signed in" in ws.cli("auth", "status").out


def test_auth_refuses_a_password_account(ws: Workspace, pop: FakePop3Server) -> None:
    ws.write_config(
        [
            {
                "name": "plain",
                "host": "127.0.0.1",
                "port": pop.port,
                "security": "plain",
                "allow_plaintext": True,
                "username": USER,
                "password_file": "secret",
            }
        ]
    )
    result = ws.cli("auth", "login", "plain")
    assert result.code == 2
    assert "password, not OAuth" in result.output


def app_only_server(oauth: FakeOAuthServer, messages: int) -> FakePop3Server:
    """A mailbox that takes any live token of the authorization server (app-only access)."""
    return FakePop3Server(
        sample_messages(messages),
        username=USER,
        password="unused-Pa55",
        sasl=("XOAUTH2",),
        check_token=lambda user, token: oauth.is_active(token),
    )


def test_app_only_access_needs_no_login(
    ws: Workspace, oauth: FakeOAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    oauth.add_client("app-client", secret="app-Secr3t-value")
    with app_only_server(oauth, 3) as pop:
        entry = oauth_account(
            pop,
            oauth,
            oauth_client_id="app-client",
            oauth_grant="client-credentials",
            oauth_client_secret_env="APP_SECRET",
        )
        ws.write_config([entry])
        monkeypatch.setenv("APP_SECRET", "app-Secr3t-value")
        result = ws.cli("run")
        assert result.code == 0, result.output
        assert len(ws.archived_files("office")) == 3
        assert "app-Secr3t-value" not in result.output


def test_app_only_access_with_a_certificate(
    ws: Workspace, oauth: FakeOAuthServer, tmp_path: Path
) -> None:
    certificate, key = make_certificate(tmp_path)
    (ws.folder / "app.pem").write_bytes(certificate)
    (ws.folder / "app.key").write_bytes(key)
    (ws.folder / "app.key").chmod(0o600)
    oauth.add_client("cert-client", certificate_pem=certificate)
    with app_only_server(oauth, 2) as pop:
        entry = oauth_account(
            pop,
            oauth,
            oauth_client_id="cert-client",
            oauth_grant="client-credentials",
            oauth_certificate_file="app.pem",
            oauth_private_key_file="app.key",
        )
        ws.write_config([entry])
        result = ws.cli("run")
        assert result.code == 0, result.output
        assert len(ws.archived_files("office")) == 2
        assert oauth.counts["client_credentials"] >= 1


def test_auth_status_needs_no_client_secret(
    ws: Workspace, pop: FakePop3Server, oauth: FakeOAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret set only in the daemon's environment: `auth status` still reads the token file."""
    monkeypatch.delenv("DAEMON_ONLY_SECRET", raising=False)
    ws.write_config([oauth_account(pop, oauth, oauth_client_secret_env="DAEMON_ONLY_SECRET")])
    status = ws.cli("auth", "status")
    assert status.code == 1, status.output
    assert "not signed in" in status.out
    assert "DAEMON_ONLY_SECRET" not in status.output
