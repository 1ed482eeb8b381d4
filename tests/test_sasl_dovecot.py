"""SASL against a real Dovecot 2.3: every mechanism archives a mailbox, over STLS and TLS.

The Dovecot here is private to this module: ``auth_mechanisms = plain login
apop scram-sha-1 scram-sha-256 xoauth2 oauthbearer``, a passwd-file passdb of
``{PLAIN}`` passwords (from which Dovecot derives the SCRAM keys) and an
``oauth2`` passdb that POSTs every token to the introspection endpoint of
popvault's local authorization server (:class:`FakeOAuthServer`). Which
mechanism logged in is read from Dovecot's own log (``method=...``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dovecot import (
    DovecotMailbox,
    DovecotServer,
    TlsCerts,
    dovecot_binary_or_skip,
    make_private_root,
)
from popvault.errors import AuthError
from popvault.pop3.client import Pop3Client
from popvault.testing import sample_messages
from popvault.testing.fake_oauth import FakeOAuthServer
from workspace import Workspace, maildir_form, wire_form

pytestmark = pytest.mark.dovecot

CLIENT_SECRET = "dovecot-client-secret-7"  # the local test server's


@pytest.fixture(scope="module")
def oauth_server() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer(access_token_lifetime=600) as server:
        yield server


@pytest.fixture(scope="module")
def sasl_dovecot(tls_certs: TlsCerts, oauth_server: FakeOAuthServer) -> Iterator[DovecotServer]:
    binary = dovecot_binary_or_skip()
    root = make_private_root()
    server = DovecotServer(
        binary, root, tls_certs, oauth2_introspection_url=oauth_server.introspection_url
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mailbox(sasl_dovecot: DovecotServer) -> DovecotMailbox:
    box = sasl_dovecot.add_user()
    for raw in sample_messages(4, seed=11):
        box.deliver(raw)
    return box


def methods_in_log(dovecot: DovecotServer, user: str) -> list[str]:
    """The ``method=`` of every login of ``user`` in Dovecot's log, in order."""
    pattern = re.compile(rf"Login: user=<{re.escape(user)}>, method=([A-Z0-9-]+)")
    return pattern.findall(dovecot.log_text())


def account(dovecot: DovecotServer, box: DovecotMailbox, *, tls: bool, **extra: Any) -> dict:
    entry: dict[str, Any] = {
        "name": "main",
        "host": dovecot.host,
        "port": dovecot.tls_port if tls else dovecot.port,
        "security": "tls" if tls else "starttls",
        "ca_file": str(dovecot.ca_file),
        "username": box.username,
        "password_file": "secret",
        "timeout": "20s",
    }
    entry.update(extra)
    return entry


@pytest.mark.parametrize("tls", [False, True], ids=["stls", "tls"])
@pytest.mark.parametrize(
    "case",
    [
        ("auto", "SCRAM-SHA-256"),
        ("scram-sha-256", "SCRAM-SHA-256"),
        ("scram-sha-1", "SCRAM-SHA-1"),
        ("plain", "PLAIN"),
        ("user", "USER"),
    ],
    ids=lambda case: case[0],
)
def test_every_password_mechanism_archives_the_mailbox(
    sasl_dovecot: DovecotServer,
    mailbox: DovecotMailbox,
    tmp_path: Path,
    tls: bool,
    case: tuple[str, str],
) -> None:
    auth, method = case
    ws = Workspace(tmp_path, password=mailbox.password)
    ws.write_config([account(sasl_dovecot, mailbox, tls=tls, auth=auth)])
    result = ws.cli("run")
    assert result.code == 0, result.output + sasl_dovecot.log_text()[-2000:]
    archived = sorted(path.read_bytes() for path in ws.archived_files("main"))
    assert archived == sorted(maildir_form(wire_form(raw)) for raw in mailbox.messages())
    # Dovecot logs USER/PASS as PLAIN: it is the same passdb lookup.
    assert methods_in_log(sasl_dovecot, mailbox.username) == [
        "PLAIN" if method == "USER" else method
    ]


def test_auto_logs_in_by_scram_sha_256_and_the_debug_log_shows_no_secret(
    sasl_dovecot: DovecotServer,
    mailbox: DovecotMailbox,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    ws = Workspace(tmp_path, password=mailbox.password)
    ws.write_config([account(sasl_dovecot, mailbox, tls=False)])
    result = ws.cli("run", "--log-level", "debug")
    assert result.code == 0, result.output
    assert "C: AUTH SCRAM-SHA-256 ***" in caplog.text
    assert mailbox.password not in caplog.text + result.output
    assert methods_in_log(sasl_dovecot, mailbox.username) == ["SCRAM-SHA-256"]


# -- OAuth 2.0: XOAUTH2 and OAUTHBEARER through Dovecot's oauth2 passdb ------------------


def access_token(oauth_server: FakeOAuthServer, username: str) -> str:
    """An access token whose introspection names ``username`` (a client credentials grant)."""
    oauth_server.add_client(username, secret=CLIENT_SECRET)
    answer = httpx.post(
        oauth_server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": username,
            "client_secret": CLIENT_SECRET,
            "scope": "pop",
        },
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def archive_with_token(
    dovecot: DovecotServer, box: DovecotMailbox, *, tls: bool, method: str, form: str, token: str
) -> list[bytes]:
    client = Pop3Client(
        dovecot.host,
        dovecot.tls_port if tls else dovecot.port,
        security="tls" if tls else "starttls",
        timeout=20,
        ca_file=dovecot.ca_file,
        account="oauth",
    )
    with client:
        client.connect()
        client.login(box.username, method=method, token=lambda: token, xoauth2_form=form)  # type: ignore[arg-type]
        bodies = []
        for number, _ in client.list():
            sink = _Sink()
            client.retr_into(number, sink)
            bodies.append(bytes(sink.data))
        client.quit()
    return bodies


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk


@pytest.mark.parametrize("tls", [False, True], ids=["stls", "tls"])
@pytest.mark.parametrize(
    "case",
    [
        ("xoauth2", "one-line", "XOAUTH2"),
        ("xoauth2", "two-step", "XOAUTH2"),
        ("oauthbearer", "one-line", "OAUTHBEARER"),
    ],
    ids=lambda case: "-".join(case[:2]),
)
def test_oauth_mechanisms_archive_the_mailbox(
    sasl_dovecot: DovecotServer,
    oauth_server: FakeOAuthServer,
    mailbox: DovecotMailbox,
    tls: bool,
    case: tuple[str, str, str],
) -> None:
    method, form, logged = case
    token = access_token(oauth_server, mailbox.username)
    before = oauth_server.introspections
    bodies = archive_with_token(
        sasl_dovecot, mailbox, tls=tls, method=method, form=form, token=token
    )
    assert sorted(bodies) == sorted(wire_form(raw) for raw in mailbox.messages())
    assert oauth_server.introspections > before, "Dovecot asked the authorization server"
    assert methods_in_log(sasl_dovecot, mailbox.username) == [logged]


def test_auto_with_a_token_takes_oauthbearer_from_dovecot(
    sasl_dovecot: DovecotServer, oauth_server: FakeOAuthServer, mailbox: DovecotMailbox
) -> None:
    token = access_token(oauth_server, mailbox.username)
    bodies = archive_with_token(
        sasl_dovecot, mailbox, tls=True, method="auto", form="one-line", token=token
    )
    assert len(bodies) == len(mailbox.messages())
    assert methods_in_log(sasl_dovecot, mailbox.username) == ["OAUTHBEARER"]


# -- refusals, last: Dovecot delays every login from an address after a failed one ---------
# (anvil's auth penalty: 2 s after the first failure, doubling up to 15 s; no setting
# turns it off), so the two failures of this module come after everything else. The
# fake-server tests cover the other refusals.


def test_auth_login_by_device_code_then_runs_across_token_expiries(
    tmp_path: Path,
    sasl_dovecot: DovecotServer,
    oauth_server: FakeOAuthServer,
    mailbox: DovecotMailbox,
) -> None:
    """`popvault auth login` (device code) and `popvault run`, Dovecot checking each token."""
    oauth_server.add_client("device-client")
    ws = Workspace(tmp_path)
    entry = account(sasl_dovecot, mailbox, tls=True)
    del entry["password_file"]
    entry.update(
        {
            "oauth_client_id": "device-client",
            "oauth_token_endpoint": oauth_server.token_url,
            "oauth_device_endpoint": oauth_server.device_authorization_url,
            "oauth_scopes": ["pop", "offline_access"],
            "oauth_token_file": "tokens/main.json",
        }
    )
    ws.write_config([entry])
    lifetime, oauth_server.access_token_lifetime = oauth_server.access_token_lifetime, 3.0
    oauth_server.device_interval = 1
    try:

        def user() -> None:  # on another device: approves the code as the mailbox's owner
            for _ in range(400):
                codes = oauth_server.pending_user_codes()
                if codes:
                    oauth_server.approve(codes[0], username=mailbox.username)
                    return
                time.sleep(0.05)

        approver = threading.Thread(target=user, daemon=True)
        approver.start()
        login = ws.cli("auth", "login", "main")
        approver.join()
        assert login.code == 0, login.output
        assert ws.cli("run").code == 0
        refreshes = oauth_server.refreshes
        for number in range(3):  # each run after the 3 s token expired: refreshed first
            time.sleep(3.2)
            mailbox.deliver(f"Subject: later {number}\r\n\r\nnew mail\r\n".encode())
            again = ws.cli("run")
            assert again.code == 0, again.output
        assert oauth_server.refreshes >= refreshes + 3
    finally:
        oauth_server.access_token_lifetime = lifetime
    assert len(ws.archived_files("main")) == 7
    methods = methods_in_log(sasl_dovecot, mailbox.username)
    assert methods == ["XOAUTH2"] * 4, methods


def test_a_wrong_password_fails_cleanly(
    sasl_dovecot: DovecotServer, mailbox: DovecotMailbox, tmp_path: Path
) -> None:
    wrong = "Wrong-Secret-for-SASL-42"
    ws = Workspace(tmp_path, password=wrong)
    ws.write_config([account(sasl_dovecot, mailbox, tls=True, auth="scram-sha-256")])
    result = ws.cli("run")
    assert result.code == 1
    assert "FAILED" in result.out
    assert "the server refused the credentials" in result.out
    assert ws.archived_files("main") == []
    status = json.loads(ws.cli("status", "--json").out)
    assert status[0]["last_outcome"] == "failed"
    everything = result.output + ws.cli("status").output + ws.ledger_dump()
    assert wrong not in everything
    assert methods_in_log(sasl_dovecot, mailbox.username) == []


def test_a_revoked_token_fails_cleanly(
    sasl_dovecot: DovecotServer,
    oauth_server: FakeOAuthServer,
    mailbox: DovecotMailbox,
) -> None:
    token = access_token(oauth_server, mailbox.username)
    oauth_server.revoke_user(mailbox.username)
    assert not oauth_server.is_active(token)
    with pytest.raises(AuthError) as info:
        archive_with_token(
            sasl_dovecot, mailbox, tls=True, method="xoauth2", form="two-step", token=token
        )
    message = str(info.value)
    assert message.startswith("account 'oauth': the server refused the credentials")
    assert token not in message
    assert methods_in_log(sasl_dovecot, mailbox.username) == []
