"""TokenSource against the fake server: refresh ahead, rotation saved first, one refresh at once."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from oauth_helpers import ACCOUNT, CLIENT_ID, browse, client_for, device_login, provider_for

from popvault.errors import OAuthUnavailable, ReauthorizationRequired
from popvault.oauth import OAuthClient, TokenSource
from popvault.testing.fake_oauth import FakeOAuthServer

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from popvault.oauth import OAuthClient, TokenSource, custom
    from popvault.oauth.tokens import TokenFile

    token_url, path, go, mode = sys.argv[1:5]
    client = OAuthClient(custom("fake", token_endpoint=token_url), "popvault-test", account="work")
    source = TokenSource("work", client, path=Path(path))
    if mode == "crash":
        save = TokenFile.save

        def save_then_die(self, tokens):
            save(self, tokens)
            os._exit(17)  # popvault dies right after the refresh: before the token is used

        TokenFile.save = save_then_die
    while not os.path.exists(go):
        time.sleep(0.002)
    print(source.access_token(), flush=True)
    """
)


def _logged_in(server: FakeOAuthServer, path: Path, *, expired: bool = False) -> TokenSource:
    client = client_for(server)
    source = TokenSource(ACCOUNT, client, path=path)
    tokens = device_login(server, client).tokens
    if expired:  # issued two hours ago, expired an hour ago
        tokens = dataclasses.replace(
            tokens, obtained_at=time.time() - 7200, expires_at=time.time() - 3600
        )
    source.store(tokens)
    return source


def _child(server: FakeOAuthServer, path: Path, go: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, server.token_url, str(path), str(go), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_fresh_token_is_handed_out_without_a_request(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json")
    requests = sum(oauth_server.counts.values())
    token = source()  # a Callable[[], str] for the SASL side
    assert token == source.access_token()
    assert sum(oauth_server.counts.values()) == requests
    assert oauth_server.is_active(token)


def test_short_tokens_are_refreshed_ahead_of_expiry_in_a_real_session(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    oauth_server.access_token_lifetime = 1.0
    source = _logged_in(oauth_server, tmp_path / "work.json")
    seen = set()
    deadline = time.monotonic() + 2.6
    while time.monotonic() < deadline:
        token = source.access_token()
        assert oauth_server.is_active(token), "a token was handed out expired"
        seen.add(token)
        time.sleep(0.05)
    assert oauth_server.refreshes >= 2
    assert len(seen) == oauth_server.refreshes + 1
    status = source.status()
    assert status.last_refresh is not None
    assert status.refresh_failures == 0


def test_a_rotated_refresh_token_is_on_disk_before_the_access_token_is_used(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "work.json"
    source = _logged_in(oauth_server, path, expired=True)
    old = source.file.load()
    assert old is not None
    go = tmp_path / "go"
    go.touch()
    with _child(oauth_server, path, go, "crash") as child:
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 17
    assert out == ""  # it died before handing out the access token
    assert oauth_server.refreshes == 1
    saved = source.file.load()
    assert saved is not None
    assert saved.refresh_token != old.refresh_token  # rotated...
    assert saved.refresh_token == oauth_server.refresh_token_of()  # ...and saved
    # The next process carries on with what was saved: no new login needed.
    again = TokenSource(ACCOUNT, client_for(oauth_server), path=path)
    again.invalidate(saved.access_token)
    assert oauth_server.is_active(again.access_token())
    assert oauth_server.refreshes == 2


def test_two_processes_refreshing_at_once_make_one_refresh(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "work.json"
    _logged_in(oauth_server, path, expired=True)
    oauth_server.token_delay = 0.3  # the second process arrives while the first refreshes
    go = tmp_path / "go"
    children = [_child(oauth_server, path, go, "plain") for _ in range(2)]
    time.sleep(0.3)  # both started and waiting
    go.touch()
    tokens = []
    for child in children:
        with child:
            out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        tokens.append(out.strip())
    assert oauth_server.refreshes == 1
    assert tokens[0] == tokens[1]
    assert oauth_server.is_active(tokens[0])


def test_a_revoked_grant_says_to_log_in_again(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json", expired=True)
    oauth_server.revoke_user()
    with pytest.raises(ReauthorizationRequired) as caught:
        source.access_token()
    message = str(caught.value)
    assert "popvault auth login work" in message
    assert "invalid_grant" in message
    assert caught.value.account == ACCOUNT
    status = source.status()
    assert status.refresh_failures == 1
    assert status.last_failure == message
    # It does not hammer: the dead refresh token is dropped from the file, so the
    # next try (in this process or any other) asks for a login without a request.
    assert not status.has_refresh_token
    assert status.needs_login(time.time())
    with pytest.raises(ReauthorizationRequired, match="popvault auth login work"):
        source.access_token()
    again = TokenSource(ACCOUNT, client_for(oauth_server), path=tmp_path / "work.json")
    with pytest.raises(ReauthorizationRequired, match="popvault auth login work"):
        again.access_token()
    assert oauth_server.counts["refresh_token"] == 1


def test_no_token_file_says_to_log_in(oauth_server: FakeOAuthServer, tmp_path: Path) -> None:
    source = TokenSource("home", client_for(oauth_server), path=tmp_path / "home.json")
    with pytest.raises(ReauthorizationRequired, match="popvault auth login home"):
        source.access_token()
    assert not source.status().logged_in


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_failing_server_is_a_retryable_error(
    oauth_server: FakeOAuthServer, tmp_path: Path, status: int
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json", expired=True)
    oauth_server.fail("token", status=status)
    with pytest.raises(OAuthUnavailable, match=str(status)):
        source.access_token()
    assert oauth_server.is_active(source.access_token())  # the next try works


def test_an_unreachable_server_is_a_retryable_error(tmp_path: Path) -> None:
    with FakeOAuthServer() as server:
        server.add_client(CLIENT_ID)
        source = _logged_in(server, tmp_path / "work.json", expired=True)
    with pytest.raises(OAuthUnavailable, match="cannot reach"):
        source.access_token()


def test_temporarily_unavailable_is_retryable(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json", expired=True)
    oauth_server.fail("token", status=400, body={"error": "temporarily_unavailable"})
    with pytest.raises(OAuthUnavailable, match="temporarily_unavailable"):
        source.access_token()


def test_client_credentials_tokens_are_renewed_by_client_credentials(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    oauth_server.add_client("daemon-app", secret="s3cret-Client-Value")
    oauth_server.access_token_lifetime = 0.5
    client = OAuthClient(
        provider_for(oauth_server), "daemon-app", client_secret="s3cret-Client-Value"
    )
    source = TokenSource("org", client, path=tmp_path / "org.json")
    source.store(client.client_credentials().tokens)
    time.sleep(0.5)
    token = source.access_token()
    assert oauth_server.is_active(token)
    assert oauth_server.counts["client_credentials"] == 2
    assert source.status().grant == "client_credentials"


def test_status_shows_times_and_scopes_and_no_secret(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json")
    tokens = source.file.load()
    assert tokens is not None
    status = source.status()
    assert status.logged_in
    assert status.grant == "device_code"
    assert status.has_refresh_token
    assert status.expires_at == tokens.expires_at
    assert "offline_access" in status.scopes
    text = json.dumps(status.to_json()) + repr(status) + repr(source)
    assert tokens.access_token not in text
    assert tokens.refresh_token is not None
    assert tokens.refresh_token not in text


def test_logout_revokes_at_the_provider_and_deletes_the_file(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json")
    token = source.access_token()
    result = source.logout()
    assert result.revoked
    assert result.deleted
    assert not source.file.exists()
    assert not oauth_server.is_active(token)  # the grant and its access tokens are gone
    assert oauth_server.refresh_token_of() is None
    with pytest.raises(ReauthorizationRequired):
        source.access_token()


def test_logout_without_a_revocation_endpoint_only_deletes(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    client = OAuthClient(provider_for(oauth_server, revocation_endpoint=None), CLIENT_ID)
    source = TokenSource(ACCOUNT, client, path=tmp_path / "work.json")
    source.store(device_login(oauth_server, client).tokens)
    result = source.logout()
    assert (result.deleted, result.revoked, result.warning) == (True, False, None)


def test_logout_when_the_provider_fails_still_forgets_the_tokens(
    oauth_server: FakeOAuthServer, tmp_path: Path
) -> None:
    source = _logged_in(oauth_server, tmp_path / "work.json")
    oauth_server.fail("revoke", status=503)
    result = source.logout()
    assert result.deleted
    assert not result.revoked
    assert result.warning is not None
    assert "did not confirm" in result.warning


def test_no_secret_reaches_a_log_an_error_or_a_repr(
    oauth_server: FakeOAuthServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-Client-Value-never-logged"
    oauth_server.add_client("confidential", secret=secret)
    client = OAuthClient(
        provider_for(oauth_server), "confidential", client_secret=secret, account=ACCOUNT
    )
    oauth_server.access_token_lifetime = 0.3
    texts: list[str] = [repr(client)]
    tokens: list[str] = [secret]

    # A device login, a browser login, refreshes, a revoked grant, a failing server.
    login = client.start_device_login()
    texts += [repr(login), login.instructions()]
    tokens.append(login.device_code)
    oauth_server.approve(login.user_code)
    result = client.finish_device_login(login, sleep=lambda _: None)
    loopback = client.start_loopback_login()
    browse(loopback.url)
    second = loopback.wait(timeout=10)
    source = TokenSource(ACCOUNT, client, path=tmp_path / "work.json")
    source.store(result.tokens)
    for _ in range(3):
        time.sleep(0.3)
        source.access_token()
    current = source.file.load()
    assert current is not None
    for tokens_set in (result.tokens, second.tokens, current):
        texts.append(repr(tokens_set))
        tokens.append(tokens_set.access_token)
        assert tokens_set.refresh_token is not None
        tokens.append(tokens_set.refresh_token)
    oauth_server.fail("token", status=503)
    time.sleep(0.3)
    with pytest.raises(OAuthUnavailable) as unavailable:
        source.access_token()
    oauth_server.revoke_user()
    with pytest.raises(ReauthorizationRequired) as gone:
        source.access_token()
    texts += [
        str(unavailable.value),
        str(gone.value),
        repr(source),
        json.dumps(source.status().to_json()),
    ]
    texts.append(caplog.text)

    everything = "\n".join(texts)
    assert "HTTP Request" in caplog.text  # httpx did log, at INFO: without secrets
    for token in tokens:
        assert token not in everything, "a secret leaked"
