"""Each login flow end to end against the fake authorization server, over real HTTP."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from oauth_helpers import (
    ACCOUNT,
    CLIENT_ID,
    POP_SCOPE,
    SCOPES,
    browse,
    client_for,
    device_login,
    make_certificate,
    provider_for,
)

from popvault.errors import AuthorizationFailed, OAuthError, OAuthUnavailable
from popvault.oauth import ClientCertificate, OAuthClient, custom, pkce_challenge
from popvault.testing.fake_oauth import FakeOAuthServer

# -- device authorization grant (RFC 8628) --


def test_device_login_returns_what_to_show_and_then_tokens(oauth_server: FakeOAuthServer) -> None:
    client = client_for(oauth_server)
    login = client.start_device_login()
    assert login.verification_uri == oauth_server.verification_url
    assert login.user_code in oauth_server.pending_user_codes()
    assert login.user_code in login.instructions()
    assert login.verification_uri in login.instructions()
    assert login.device_code not in repr(login)
    oauth_server.approve(login.user_code)
    result = client.finish_device_login(login, sleep=lambda _: None)
    assert result.warnings == ()
    assert result.tokens.grant == "device_code"
    assert result.tokens.refresh_token
    assert set(result.tokens.scopes) == set(SCOPES)
    assert oauth_server.is_active(result.tokens.access_token)


def test_device_login_polls_while_pending_and_slows_down_by_five_seconds(
    oauth_server: FakeOAuthServer,
) -> None:
    oauth_server.device_interval = 2
    client = client_for(oauth_server)
    login = client.start_device_login()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            oauth_server.slow_down(2)
        if len(waits) == 5:
            oauth_server.approve(login.user_code)

    result = client.finish_device_login(login, sleep=sleep)
    assert result.tokens.access_token
    # pending, pending (then two slow_downs: +5 s each), pending, then approved.
    assert waits == [2.0, 2.0, 7.0, 12.0, 12.0]
    assert oauth_server.counts["urn:ietf:params:oauth:grant-type:device_code"] == 5


def test_device_login_denied(oauth_server: FakeOAuthServer) -> None:
    client = client_for(oauth_server)
    login = client.start_device_login()
    oauth_server.deny(login.user_code)
    with pytest.raises(AuthorizationFailed, match="denied") as caught:
        client.finish_device_login(login, sleep=lambda _: None)
    assert caught.value.error == "access_denied"
    assert caught.value.account == ACCOUNT


def test_device_login_expired_at_the_server(oauth_server: FakeOAuthServer) -> None:
    client = client_for(oauth_server)
    login = client.start_device_login()
    oauth_server.expire(login.user_code)
    with pytest.raises(AuthorizationFailed, match="expired") as caught:
        client.finish_device_login(login, sleep=lambda _: None)
    assert caught.value.error == "expired_token"


def test_device_login_gives_up_when_the_code_expires_locally(
    oauth_server: FakeOAuthServer,
) -> None:
    now = [1000.0]
    client = client_for(oauth_server, monotonic=lambda: now[0])
    login = client.start_device_login()

    def sleep(seconds: float) -> None:
        now[0] += seconds * 100  # a user who never comes back

    with pytest.raises(AuthorizationFailed, match="expired"):
        client.finish_device_login(login, sleep=sleep)


def test_device_login_keeps_polling_through_a_server_failure(
    oauth_server: FakeOAuthServer,
) -> None:
    client = client_for(oauth_server)
    login = client.start_device_login()
    oauth_server.fail("token", status=503, times=2)
    oauth_server.approve(login.user_code)
    result = client.finish_device_login(login, sleep=lambda _: None)
    assert result.tokens.access_token


def test_device_login_without_a_device_endpoint_says_so(oauth_server: FakeOAuthServer) -> None:
    provider = provider_for(oauth_server, device_authorization_endpoint=None)
    with pytest.raises(OAuthError, match="no device login"):
        OAuthClient(provider, CLIENT_ID).start_device_login()


# -- authorization code with PKCE and a loopback redirect (RFC 7636, RFC 8252) --


def _browser_login(client: OAuthClient) -> tuple[object, httpx.Response]:
    login = client.start_loopback_login()
    pages: list[httpx.Response] = []
    browser = threading.Thread(target=lambda: pages.append(browse(login.url)))
    browser.start()
    try:
        result = login.wait(timeout=10)
    finally:
        browser.join(10)
    return result, pages[0]


def test_loopback_login_end_to_end(oauth_server: FakeOAuthServer) -> None:
    client = client_for(oauth_server)
    login = client.start_loopback_login()
    assert login.redirect_uri.startswith("http://127.0.0.1:")
    assert "code_challenge_method=S256" in login.url
    page = browse(login.url)  # the browser, before wait(): the listener is already up
    result = login.wait(timeout=10)
    assert page.status_code == 200
    assert "close this window" in page.text
    assert str(page.url).startswith(login.redirect_uri)
    assert result.tokens.grant == "authorization_code"
    assert result.tokens.refresh_token
    assert result.warnings == ()
    assert oauth_server.is_active(result.tokens.access_token)


def test_loopback_login_with_the_browser_in_another_thread(oauth_server: FakeOAuthServer) -> None:
    result, page = _browser_login(client_for(oauth_server))
    assert page.status_code == 200
    assert result.tokens.access_token  # type: ignore[attr-defined]


def test_loopback_login_refuses_a_redirect_with_the_wrong_state(
    oauth_server: FakeOAuthServer,
) -> None:
    client = client_for(oauth_server)
    login = client.start_loopback_login()
    forged = httpx.get(f"{login.redirect_uri}?code=stolen&state=not-the-state", timeout=5)
    assert "does not belong" in forged.text
    with pytest.raises(AuthorizationFailed, match="wrong state"):
        login.wait(timeout=5)
    assert oauth_server.counts["authorization_code"] == 0  # the code was never exchanged


def test_loopback_login_denied_by_the_user(oauth_server: FakeOAuthServer) -> None:
    oauth_server.deny_authorizations = True
    client = client_for(oauth_server)
    login = client.start_loopback_login()
    browse(login.url)
    with pytest.raises(AuthorizationFailed, match="denied"):
        login.wait(timeout=5)


def test_loopback_login_times_out_without_a_browser(oauth_server: FakeOAuthServer) -> None:
    login = client_for(oauth_server).start_loopback_login()
    with pytest.raises(AuthorizationFailed, match="no answer"):
        login.wait(timeout=0.1)


def test_loopback_listener_ignores_other_paths(oauth_server: FakeOAuthServer) -> None:
    client = client_for(oauth_server)
    login = client.start_loopback_login(path="/callback")
    assert httpx.get(login.redirect_uri.replace("/callback", "/favicon.ico")).status_code == 404
    browse(login.url)
    assert login.wait(timeout=5).tokens.access_token


def test_the_server_enforces_pkce(oauth_server: FakeOAuthServer) -> None:
    # Without a challenge the authorization endpoint refuses...
    redirect = "http://127.0.0.1:9/cb"
    answer = httpx.get(
        oauth_server.authorization_url,
        params={"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect},
    )
    assert answer.status_code == 302
    assert "error=invalid_request" in answer.headers["location"]
    # ...and with one, the token endpoint wants the matching verifier.
    verifier = "v" * 64
    answer = httpx.get(
        oauth_server.authorization_url,
        params={
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": redirect,
            "state": "s",
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        },
    )
    code = httpx.URL(answer.headers["location"]).params["code"]
    form = {
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "code": code,
        "redirect_uri": redirect,
    }
    wrong = httpx.post(oauth_server.token_url, data={**form, "code_verifier": "w" * 64})
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    # The code was used up by the wrong attempt (single use): a new one works.
    answer = httpx.get(answer.request.url)
    code = httpx.URL(answer.headers["location"]).params["code"]
    right = httpx.post(
        oauth_server.token_url, data={**form, "code": code, "code_verifier": verifier}
    )
    assert right.status_code == 200
    assert right.json()["access_token"]


# -- scopes --


def test_a_grant_without_the_pop_scope_warns(oauth_server: FakeOAuthServer) -> None:
    oauth_server.withhold_scopes = {POP_SCOPE}
    result = device_login(oauth_server, client_for(oauth_server))
    assert len(result.warnings) == 1
    assert POP_SCOPE in result.warnings[0]
    assert "POP3 logins will be refused" in result.warnings[0]


def test_a_grant_without_offline_access_warns_that_access_ends(
    oauth_server: FakeOAuthServer,
) -> None:
    oauth_server.withhold_scopes = {"offline_access"}
    oauth_server.access_token_lifetime = 3600
    result = device_login(oauth_server, client_for(oauth_server))
    assert result.tokens.refresh_token is None
    assert len(result.warnings) == 1
    assert "offline_access was not granted" in result.warnings[0]
    assert "60 min" in result.warnings[0]


def test_a_google_like_grant_gets_a_refresh_token_without_offline_access(
    oauth_server: FakeOAuthServer,
) -> None:
    provider = provider_for(oauth_server, scopes=(POP_SCOPE,), offline_scope=None)
    client = OAuthClient(provider, CLIENT_ID)
    result = device_login(oauth_server, client)
    assert result.tokens.refresh_token
    assert result.warnings == ()


# -- client credentials (app-only) --


def test_client_credentials_with_a_secret(oauth_server: FakeOAuthServer) -> None:
    oauth_server.add_client("daemon-app", secret="s3cret-Client-Value")
    provider = provider_for(oauth_server)
    client = OAuthClient(provider, "daemon-app", client_secret="s3cret-Client-Value")
    result = client.client_credentials()
    assert result.tokens.grant == "client_credentials"
    assert result.tokens.refresh_token is None
    assert result.tokens.scopes == ("https://pop.example.test/.default",)
    assert oauth_server.is_active(result.tokens.access_token)
    assert "s3cret" not in repr(client)


def test_client_credentials_with_a_wrong_secret(oauth_server: FakeOAuthServer) -> None:
    oauth_server.add_client("daemon-app", secret="s3cret-Client-Value")
    client = OAuthClient(provider_for(oauth_server), "daemon-app", client_secret="wrong-secret")
    with pytest.raises(OAuthError, match="invalid_client") as caught:
        client.client_credentials()
    assert not isinstance(caught.value, OAuthUnavailable)


def test_client_credentials_with_a_certificate(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    cert_pem, _ = make_certificate(tmp_path)
    oauth_server.add_client("cert-app", certificate_pem=cert_pem)
    certificate = ClientCertificate.from_files(tmp_path / "app.crt", tmp_path / "app.key")
    client = OAuthClient(provider_for(oauth_server), "cert-app", certificate=certificate)
    first = client.client_credentials().tokens
    second = client.client_credentials().tokens  # a fresh assertion (jti) each time
    assert oauth_server.is_active(first.access_token)
    assert oauth_server.is_active(second.access_token)
    assert "PRIVATE KEY" not in repr(certificate)


def test_a_certificate_the_server_does_not_know_is_refused(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    registered, _ = make_certificate(tmp_path / "a")
    oauth_server.add_client("cert-app", certificate_pem=registered)
    make_certificate(tmp_path / "b")
    other = ClientCertificate.from_files(tmp_path / "b" / "app.crt", tmp_path / "b" / "app.key")
    client = OAuthClient(provider_for(oauth_server), "cert-app", certificate=other)
    with pytest.raises(OAuthError, match="x5t#S256"):
        client.client_credentials()


def test_app_only_access_needs_a_real_tenant(oauth_server: FakeOAuthServer) -> None:
    provider = provider_for(oauth_server, tenant="organizations")
    client = OAuthClient(provider, "daemon-app", client_secret="s3cret-Client-Value")
    with pytest.raises(OAuthError, match="tenant"):
        client.client_credentials()


def test_plain_http_endpoints_are_refused_off_loopback() -> None:
    provider = custom("evil", token_endpoint="http://auth.example.test/token")
    with pytest.raises(OAuthError, match="https"):
        OAuthClient(provider, CLIENT_ID)
