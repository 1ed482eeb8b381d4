"""SASL logins against the fake server: what Dovecot will not do on demand.

Microsoft's two-step XOAUTH2 (and its -ERR to the one-line form), a server
that withdraws SCRAM after STLS, a lying SCRAM signature, tokens over 4 KB,
servers echoing the credentials in their refusals, revoked tokens. Every
refusal names the account and quotes the server, control characters
neutralised, secrets masked.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dovecot import TlsCerts
from popvault.errors import (
    AuthError,
    LocalProtocolError,
    Pop3Error,
    RemoteProtocolError,
    SecurityPolicyError,
    ServerError,
)
from popvault.pop3.client import Pop3Client
from popvault.testing import PROFILES, FakePop3Server, sample_messages
from workspace import Workspace, fake_account

ACCOUNT = "acct"
PASSWORD = "sasl-Pa55word-never-shown"
TOKEN = "ya29.a0-fake-access-token-" + "Q" * 40
ALL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "XOAUTH2", "OAUTHBEARER")
MESSAGES = sample_messages(3, seed=3)


@pytest.fixture
def make_server(tls_certs: TlsCerts) -> Iterator[Callable[..., FakePop3Server]]:
    servers: list[FakePop3Server] = []

    def make(**kwargs: Any) -> FakePop3Server:
        kwargs.setdefault("stls_context", tls_certs.server_context())
        kwargs.setdefault("sasl", ALL)
        kwargs.setdefault("token", TOKEN)
        srv = FakePop3Server(MESSAGES, username="alice@example.org", password=PASSWORD, **kwargs)
        servers.append(srv.start())
        return srv

    yield make
    for srv in servers:
        srv.stop()


def client_for(srv: FakePop3Server, tls_certs: TlsCerts, **kwargs: Any) -> Pop3Client:
    security = kwargs.pop("security", "starttls" if srv.tls_context is None else "tls")
    client = Pop3Client(
        srv.host,
        srv.port,
        security=security,
        timeout=5,
        account=ACCOUNT,
        ca_file=tls_certs.ca_file,
        **kwargs,
    )
    client.connect()
    return client


def login(client: Pop3Client, method: str, **kwargs: Any) -> None:
    oauth = method in ("xoauth2", "oauthbearer") or kwargs.pop("oauth", False)
    if oauth:
        kwargs.setdefault("token", lambda: TOKEN)
    else:
        kwargs.setdefault("password", PASSWORD)
    client.login("alice@example.org", method=method, **kwargs)  # type: ignore[arg-type]


def auth_lines(srv: FakePop3Server) -> list[str]:
    return [line for line in srv.commands if line.upper().startswith("AUTH")]


def assert_no_secret(*texts: str) -> None:
    encoded = base64.b64encode(f"\0alice@example.org\0{PASSWORD}".encode()).decode()
    for text in texts:
        for secret in (PASSWORD, TOKEN, encoded):
            assert secret not in text


# -- every mechanism -------------------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "tls"])
@pytest.mark.parametrize(
    "case",
    [
        ("plain", "one-line", "PLAIN"),
        ("scram-sha-256", "one-line", "SCRAM-SHA-256"),
        ("scram-sha-1", "one-line", "SCRAM-SHA-1"),
        ("xoauth2", "one-line", "XOAUTH2"),
        ("xoauth2", "two-step", "XOAUTH2"),
        ("oauthbearer", "one-line", "OAUTHBEARER"),
    ],
    ids=lambda case: "-".join(case[:2]),
)
def test_every_mechanism_logs_in(
    make_server: Callable[..., FakePop3Server],
    tls_certs: TlsCerts,
    case: tuple[str, str, str],
    implicit: bool,
) -> None:
    method, form, mechanism = case
    tls = {"tls_context": tls_certs.server_context(), "stls_context": None} if implicit else {}
    srv = make_server(**tls)
    client = client_for(srv, tls_certs)
    login(client, method, xoauth2_form=form)
    assert client.login_method == mechanism
    assert client.stat()[0] == len(MESSAGES)
    client.quit()
    assert srv.logins == [(1, mechanism)]
    [line] = auth_lines(srv)
    # The initial response goes on the AUTH line, except in the two-step form.
    assert (line == f"AUTH {mechanism}") == (form == "two-step")


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        (ALL, "SCRAM-SHA-256"),
        (("PLAIN", "SCRAM-SHA-1", "XOAUTH2"), "SCRAM-SHA-1"),
        (("PLAIN", "XOAUTH2"), "PLAIN"),
        ((), "USER"),
    ],
)
def test_auto_takes_the_strongest_for_a_password(
    make_server: Callable[..., FakePop3Server],
    tls_certs: TlsCerts,
    offered: tuple[str, ...],
    expected: str,
) -> None:
    srv = make_server(sasl=offered)
    client = client_for(srv, tls_certs)
    login(client, "auto")
    assert srv.logins == [(1, expected)]
    assert client.login_method == (expected if expected != "USER" else "user")
    client.close()


@pytest.mark.parametrize(("offered", "expected"), [(ALL, "OAUTHBEARER"), (("XOAUTH2",), "XOAUTH2")])
def test_auto_takes_oauth_for_a_token(
    make_server: Callable[..., FakePop3Server],
    tls_certs: TlsCerts,
    offered: tuple[str, ...],
    expected: str,
) -> None:
    srv = make_server(sasl=offered)
    client = client_for(srv, tls_certs)
    login(client, "auto", oauth=True)
    assert srv.logins == [(1, expected)]
    client.close()


def test_auto_with_a_token_and_no_oauth_offered_is_refused(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server(sasl=("PLAIN", "SCRAM-SHA-256"))
    client = client_for(srv, tls_certs)
    with pytest.raises(SecurityPolicyError, match="neither OAUTHBEARER nor XOAUTH2") as info:
        login(client, "auto", oauth=True)
    assert info.value.account == ACCOUNT
    assert auth_lines(srv) == []
    client.close()


# -- Microsoft's XOAUTH2 ---------------------------------------------------------------


def test_microsofts_two_step_xoauth2_and_its_error_to_the_one_line_form(
    tls_certs: TlsCerts,
) -> None:
    profile = PROFILES["outlook"]
    with profile.server(
        MESSAGES, username="alice@example.org", token=TOKEN, tls_context=tls_certs.server_context()
    ) as srv:
        client = client_for(srv, tls_certs)
        with pytest.raises(AuthError) as info:
            login(client, "xoauth2", xoauth2_form="one-line")
        message = str(info.value)
        assert "'-ERR Protocol error'" in message
        assert "two-step" in message
        assert f"account {ACCOUNT!r}" in message
        assert_no_secret(message)
        client.close()

        client = client_for(srv, tls_certs)
        login(client, "xoauth2", xoauth2_form="two-step")
        assert client.stat()[0] == len(MESSAGES)
        client.quit()
        assert auth_lines(srv)[-1] == "AUTH XOAUTH2"
        assert srv.logins == [(2, "XOAUTH2")]


# -- what the server offers after STLS -------------------------------------------------


def test_a_server_offering_only_plain_after_stls(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server(sasl=("PLAIN",), sasl_before_stls=("SCRAM-SHA-256", "PLAIN"))
    client = client_for(srv, tls_certs)
    assert client.capabilities["SASL"] == ["PLAIN"]
    login(client, "auto")  # auto trusts what TLS vouches for
    assert srv.logins == [(1, "PLAIN")]
    client.close()


@pytest.mark.parametrize("method", ["scram-sha-256", "scram-sha-1", "xoauth2", "oauthbearer"])
def test_a_named_mechanism_withdrawn_after_stls_is_refused_as_a_downgrade(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts, method: str
) -> None:
    srv = make_server(sasl=("PLAIN",), sasl_before_stls=ALL)
    client = client_for(srv, tls_certs)
    with pytest.raises(SecurityPolicyError) as info:
        login(client, method)
    message = str(info.value)
    assert message.startswith(f"account {ACCOUNT!r}: auth = {method!r}")
    assert f"does not offer SASL {method.upper()}" in message
    assert "it offers SASL PLAIN and USER" in message
    assert "withdrew it after" in message
    assert auth_lines(srv) == [], "nothing was tried instead"
    assert srv.logins == []
    login(client, "plain")  # the session is still usable
    client.close()


def test_a_named_mechanism_never_offered_is_refused_without_the_downgrade_note(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server(sasl=("PLAIN",))
    client = client_for(srv, tls_certs)
    with pytest.raises(SecurityPolicyError, match="does not offer SASL SCRAM-SHA-256") as info:
        login(client, "scram-sha-256")
    assert "withdrew" not in str(info.value)
    client.close()


# -- SCRAM's proof of the server -------------------------------------------------------


@pytest.mark.parametrize("method", ["scram-sha-256", "scram-sha-1"])
def test_a_lying_scram_server_signature_is_refused(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts, method: str
) -> None:
    srv = make_server()
    srv.wrong_scram_signature = True
    client = client_for(srv, tls_certs)
    with pytest.raises(SecurityPolicyError, match="signature is wrong") as info:
        login(client, method)
    assert info.value.account == ACCOUNT
    with pytest.raises(LocalProtocolError):
        client.stat()  # the connection was dropped
    srv.stop()  # the session has read all the client sent
    assert srv.commands[-1] == "*", "the exchange was cancelled"
    assert srv.logins == []


def test_a_scram_server_that_says_ok_without_a_signature_is_refused(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server()
    # +OK at once: no server-final message, so no signature.
    srv.fail_command("AUTH", "+OK logged in", times=1)
    client = client_for(srv, tls_certs)
    with pytest.raises(SecurityPolicyError, match="without proving it knows the password"):
        login(client, "scram-sha-256")
    with pytest.raises(LocalProtocolError):
        client.stat()


def test_a_wrong_password_with_scram_is_an_auth_error(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server()
    client = client_for(srv, tls_certs)
    with pytest.raises(AuthError, match="invalid login"):
        login(client, "scram-sha-256", password="not-the-Password-9")
    login(client, "scram-sha-256")  # -ERR leaves the session usable
    client.close()


# -- tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4097, 20_000])
@pytest.mark.parametrize("method", ["xoauth2", "oauthbearer"])
def test_tokens_over_4_kb(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts, size: int, method: str
) -> None:
    token = "eyJ0eXAiOiJKV1Qi." + "x" * (size - 17)
    srv = make_server(token=token)
    client = client_for(srv, tls_certs)
    login(client, method, token=lambda: token)
    assert client.stat()[0] == len(MESSAGES)
    client.close()
    assert auth_lines(srv) == [f"AUTH {method.upper()}"], "too long for the AUTH line"
    assert len(srv.commands[srv.commands.index(f"AUTH {method.upper()}") + 1]) > size


@pytest.mark.parametrize("method", ["xoauth2", "oauthbearer"])
def test_a_revoked_token_fails_cleanly_with_the_servers_error(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts, method: str
) -> None:
    valid = {TOKEN}
    srv = make_server(token=None, check_token=lambda user, token: token in valid)
    client = client_for(srv, tls_certs)
    login(client, method)
    client.quit()
    valid.clear()  # revoked
    client = client_for(srv, tls_certs)
    with pytest.raises(AuthError) as info:
        login(client, method)
    message = str(info.value)
    assert f"its {method.upper()} error: status=" in message
    assert_no_secret(message)
    client.close()


def test_the_token_provider_is_called_once_per_login_and_its_error_passes(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server()
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return TOKEN

    client = client_for(srv, tls_certs)
    client.login("alice@example.org", method="xoauth2", token=provider)
    client.close()
    assert calls == [1]

    class Expired(Exception):
        pass

    def failing() -> str:
        raise Expired

    client = client_for(srv, tls_certs)
    with pytest.raises(Expired):
        client.login("alice@example.org", method="oauthbearer", token=failing)
    assert len(auth_lines(srv)) == 1, "nothing was sent without a token"


# -- no secret in clear ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "plain", "scram-sha-256", "xoauth2", "oauthbearer"])
def test_no_login_method_without_tls_unless_allowed(method: str) -> None:
    with FakePop3Server(MESSAGES, password=PASSWORD, sasl=ALL, token=TOKEN) as srv:
        client = Pop3Client(srv.host, srv.port, security="plain", timeout=5, account=ACCOUNT)
        client.connect()
        kwargs: dict[str, Any] = (
            {"token": lambda: TOKEN} if method in ("xoauth2", "oauthbearer") else {}
        )
        password = None if kwargs else PASSWORD
        with pytest.raises(SecurityPolicyError, match="without TLS"):
            client.login("user", password, method=method, **kwargs)  # type: ignore[arg-type]
        assert auth_lines(srv) == []
        client.login("user", password, method=method, allow_plaintext=True, **kwargs)  # type: ignore[arg-type]
        client.close()


# -- refusals: the account, the server's words, no secret ------------------------------

ECHO = "[AUTH] refused {response} ({decoded}) \x1b[2J\x07"


@pytest.mark.parametrize(
    ("method", "form"),
    [
        ("plain", "one-line"),
        ("scram-sha-256", "one-line"),
        ("xoauth2", "one-line"),
        ("xoauth2", "two-step"),
        ("oauthbearer", "one-line"),
    ],
)
def test_a_server_echoing_the_credentials_in_its_refusal(
    make_server: Callable[..., FakePop3Server],
    tls_certs: TlsCerts,
    caplog: pytest.LogCaptureFixture,
    method: str,
    form: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    srv = make_server(login_refusal=ECHO, token="another-token-entirely")
    client = client_for(srv, tls_certs)
    wrong = {"password": PASSWORD + "-wrong"} if method in ("plain", "scram-sha-256") else {}
    with pytest.raises(AuthError) as info:
        login(client, method, xoauth2_form=form, **wrong)
    message = str(info.value)
    assert message.startswith(f"account {ACCOUNT!r}: the server refused the credentials")
    assert "x1b[2J" in message, "control characters are shown, not sent"
    assert "\x1b" not in message
    assert "***" in message
    for secret in (PASSWORD, PASSWORD + "-wrong", TOKEN):
        assert secret not in message
        assert secret not in caplog.text
    for line in srv.commands:  # nothing the client sent appears anywhere
        if line.startswith("AUTH ") and len(line.split()) == 3:
            assert line.split()[2] not in message + caplog.text
        elif not line.startswith(("AUTH", "CAPA", "STLS", "UTF8")) and len(line) > 8:
            assert line not in message + caplog.text
    assert "C: AUTH" in caplog.text, "the debug log shows the (redacted) exchange"
    client.close()


def test_a_malformed_challenge_is_a_protocol_error_naming_the_account(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts
) -> None:
    srv = make_server()
    srv.fail_command("AUTH", "+ this is not base64 \x1b]0;pwned\x07")
    client = client_for(srv, tls_certs)
    with pytest.raises(RemoteProtocolError, match="not base64") as info:
        login(client, "plain")
    assert info.value.account == ACCOUNT
    assert "\x1b" not in str(info.value)
    with pytest.raises(LocalProtocolError):
        client.stat()


@pytest.mark.parametrize(
    "reply",
    ["-ERR [AUTH] no such user", "-ERR [SYS/TEMP] auth backend down", "-ERR [IN-USE] locked"],
)
def test_every_refusal_names_the_account_and_quotes_the_server(
    make_server: Callable[..., FakePop3Server], tls_certs: TlsCerts, reply: str
) -> None:
    srv = make_server()
    srv.fail_command("AUTH", reply + " \x1b[31m")
    client = client_for(srv, tls_certs)
    with pytest.raises(ServerError) as info:
        login(client, "scram-sha-256")
    message = str(info.value)
    assert message.startswith(f"account {ACCOUNT!r}:")
    assert "AUTH SCRAM-SHA-256" in message
    assert reply.split(" ", 2)[2] in message
    assert "\\x1b[31m" in message
    client.close()


# -- a whole run ----------------------------------------------------------------------


def test_a_run_with_an_echoing_server_keeps_the_password_out_of_everything(
    tmp_path: Path, tls_certs: TlsCerts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ws = Workspace(tmp_path, password=PASSWORD)
    with FakePop3Server(
        MESSAGES,
        password="the-server-knows-another",
        sasl=("PLAIN", "SCRAM-SHA-256"),
        stls_context=tls_certs.server_context(),
        login_refusal=ECHO,
    ) as srv:
        ws.write_config(
            [
                fake_account(
                    srv,
                    security="starttls",
                    allow_plaintext=False,
                    ca_file=str(tls_certs.ca_file),
                    auth="plain",
                )
            ]
        )
        result = ws.cli("run", "--log-level", "debug")
        assert result.code == 1
        status = ws.cli("status")
        everything = result.output + status.output + ws.ledger_dump() + caplog.text
        assert "FAILED" in result.out
        assert_no_secret(everything)
        encoded = base64.b64encode(f"\0user\0{PASSWORD}".encode()).decode()
        assert encoded not in everything


def test_the_dovecot_like_profile_archives_by_scram(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    with PROFILES["dovecot-like"].server(MESSAGES, password=PASSWORD) as srv:
        ws.write_config([fake_account(srv)])
        result = ws.cli("run")
        assert result.code == 0, result.output
        assert srv.logins == [(1, "SCRAM-SHA-256")]
    assert len(ws.archived_files("acct")) == len(MESSAGES)


def test_pop3_errors_are_the_tree() -> None:
    assert issubclass(SecurityPolicyError, Pop3Error)
