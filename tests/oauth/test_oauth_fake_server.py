"""The fake authorization server itself: Dovecot's introspection form, revocation, faults."""

from __future__ import annotations

import httpx
import pytest
from oauth_helpers import CLIENT_ID, client_for, device_login

from popvault.oauth import PRESETS, preset
from popvault.testing.fake_oauth import FakeOAuthServer


def _introspect(server: FakeOAuthServer, token: str, **extra: str) -> dict[str, object]:
    # What Dovecot 2.3 sends with introspection_mode = post (lib-oauth2/oauth2-request.c).
    form = {"token": token, "client_id": "", "client_secret": "", **extra}
    answer = httpx.post(server.introspection_url, data=form)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert isinstance(body, dict)
    return body


def test_introspection_answers_what_dovecot_reads(oauth_server: FakeOAuthServer) -> None:
    tokens = device_login(oauth_server, client_for(oauth_server), username="bob").tokens
    body = _introspect(oauth_server, tokens.access_token)
    assert body["active"] is True
    assert body["username"] == "bob"
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int)
    assert body["expires_in"] >= 1
    # Dovecot keeps only scalar fields: no nested objects or arrays.
    assert all(not isinstance(value, dict | list) for value in body.values())
    assert oauth_server.introspections == 1
    assert _introspect(oauth_server, "at-unknown") == {"active": False}
    assert oauth_server.introspections == 2


def test_introspection_checks_client_credentials_when_sent(
    oauth_server: FakeOAuthServer,
) -> None:
    oauth_server.add_client("dovecot", secret="dovecot-secret-value")
    answer = httpx.post(
        oauth_server.introspection_url,
        data={"token": "x", "client_id": "dovecot", "client_secret": "wrong"},
    )
    assert answer.status_code == 401
    body = _introspect(oauth_server, "x", client_id="dovecot", client_secret="dovecot-secret-value")
    assert body == {"active": False}


def test_expired_and_revoked_tokens_are_inactive(oauth_server: FakeOAuthServer) -> None:
    oauth_server.access_token_lifetime = 0.0
    expired = device_login(oauth_server, client_for(oauth_server)).tokens
    assert _introspect(oauth_server, expired.access_token) == {"active": False}
    oauth_server.access_token_lifetime = 60
    tokens = device_login(oauth_server, client_for(oauth_server)).tokens
    assert tokens.refresh_token is not None
    assert oauth_server.revoke_user() == 2
    assert _introspect(oauth_server, tokens.access_token) == {"active": False}
    refresh = httpx.post(
        oauth_server.token_url,
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens.refresh_token,
            "client_id": CLIENT_ID,
        },
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"


def test_the_revocation_endpoint(oauth_server: FakeOAuthServer) -> None:
    tokens = device_login(oauth_server, client_for(oauth_server)).tokens
    answer = httpx.post(
        oauth_server.revocation_url,
        data={"token": tokens.refresh_token or "", "client_id": CLIENT_ID},
    )
    assert answer.status_code == 200
    assert not oauth_server.is_active(tokens.access_token)
    unknown = httpx.post(
        oauth_server.revocation_url, data={"token": "nothing", "client_id": CLIENT_ID}
    )
    assert unknown.status_code == 200  # RFC 7009 section 2.2


def test_rotation_can_be_switched_off(oauth_server: FakeOAuthServer) -> None:
    oauth_server.rotate_refresh_tokens = False
    tokens = device_login(oauth_server, client_for(oauth_server)).tokens
    form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token or ""}
    for _ in range(2):
        answer = httpx.post(oauth_server.token_url, data={**form, "client_id": CLIENT_ID})
        assert answer.json()["refresh_token"] == tokens.refresh_token
    assert oauth_server.refreshes == 2


def test_faults_are_served_then_cleared(oauth_server: FakeOAuthServer) -> None:
    oauth_server.fail("introspect", status=502, times=2)
    statuses = [
        httpx.post(oauth_server.introspection_url, data={"token": "x"}).status_code
        for _ in range(3)
    ]
    assert statuses == [502, 502, 200]


def test_long_access_tokens(oauth_server: FakeOAuthServer) -> None:
    oauth_server.access_token_length = 3200  # bytes of randomness: over 4 KB of text
    tokens = device_login(oauth_server, client_for(oauth_server)).tokens
    assert len(tokens.access_token) > 4096
    assert _introspect(oauth_server, tokens.access_token)["active"] is True


def test_the_dovecot_config_points_at_the_server(oauth_server: FakeOAuthServer) -> None:
    config = oauth_server.dovecot_config()
    assert f"introspection_url = {oauth_server.introspection_url}\n" in config
    assert "introspection_mode = post\n" in config
    assert "username_attribute = username\n" in config


def test_a_server_thread_error_is_raised_by_stop() -> None:
    server = FakeOAuthServer().start()
    server.errors.append(ValueError("boom"))
    with pytest.raises(RuntimeError, match="fake OAuth server failed"):
        server.stop()


# -- the presets --


def test_the_microsoft_presets() -> None:
    outlook, m365 = preset("outlook"), preset("m365", tenant="contoso.com")
    assert outlook.token_endpoint == "https://login.microsoftonline.com/consumers/oauth2/v2.0/token"
    assert m365.device_authorization_endpoint == (
        "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode"
    )
    for provider in (outlook, m365):
        assert provider.scopes == (
            "https://outlook.office.com/POP.AccessAsUser.All",
            "offline_access",
        )
        assert provider.app_scopes == ("https://outlook.office365.com/.default",)
        assert (provider.pop3_host, provider.pop3_port, provider.security) == (
            "outlook.office365.com",
            995,
            "tls",
        )
        assert provider.mechanism == "XOAUTH2"
        assert provider.xoauth2_two_step
        assert provider.revocation_endpoint is None
    assert preset("m365").tenant == "organizations"


def test_the_gmail_preset() -> None:
    gmail = preset("gmail")
    assert gmail.scopes == ("https://mail.google.com/",)
    assert gmail.pop3_host == "pop.gmail.com"
    assert gmail.device_authorization_endpoint is None  # Gmail's scope is not a device scope
    assert ("access_type", "offline") in gmail.authorization_params
    assert not gmail.xoauth2_two_step


def test_every_preset_value_can_be_overridden() -> None:
    assert set(PRESETS) == {"gmail", "outlook", "m365"}
    changed = preset("gmail").with_overrides(pop3_host="pop.example.test", scopes=["a", "b"])
    assert changed.pop3_host == "pop.example.test"
    assert changed.scopes == ("a", "b")
    assert preset("gmail").pop3_host == "pop.gmail.com"  # frozen: the preset is unchanged
    with pytest.raises(TypeError):
        preset("gmail").with_overrides(no_such_key=1)
    with pytest.raises(ValueError, match="unknown OAuth provider"):
        preset("yahoo")
