"""SASL in the sans-IO core (RFC 5034): framing of AUTH exchanges, mechanisms, the choice.

The core's events for continuations and final replies are fed whole, byte by
byte and with trailing bytes, and under any chunking (hypothesis); the SCRAM
mechanism is run against scramp's server side, an independent peer.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable
from typing import get_args

import pytest
import scramp
from hypothesis import given
from hypothesis import strategies as st
from pop3_helpers import greeted, three_ways

from popvault.config._model import AuthMethod as ConfigAuthMethod
from popvault.errors import LocalProtocolError, RemoteProtocolError, SecurityPolicyError
from popvault.pop3 import (
    NEED_DATA,
    AuthResponse,
    Command,
    Continuation,
    Err,
    Event,
    Ok,
    Pop3Connection,
    State,
)
from popvault.pop3.commands import MAX_COMMAND_LINE, fits_command_line
from popvault.pop3.sasl import (
    OAUTH_ORDER,
    PASSWORD_ORDER,
    AuthMethod,
    OAuthBearer,
    Plain,
    SaslExchange,
    Scram,
    XOAuth2,
    choose_mechanism,
    describe_oauth_error,
    make_mechanism,
)

b64 = base64.b64encode


def _line(challenge: bytes) -> bytes:
    return b"+ " + b64(challenge) + b"\r\n"


def _drive(conn: Pop3Connection, pieces: Iterable[bytes]) -> list[Event]:
    """Feed the pieces as a client would: every challenge is answered before reading on."""
    events: list[Event] = []
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Continuation):
                conn.send(AuthResponse.of(b"answer"))
    return events


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


# -- framing ---------------------------------------------------------------------------


@pytest.mark.parametrize("way", range(3))
def test_scram_like_exchange_three_ways(way: int) -> None:
    conn = greeted()
    auth = Command("AUTH", "SCRAM-SHA-256", b64(b"n,,n=bob,r=abc").decode())
    conn.send(auth)
    server = _line(b"r=abcdef,s=c2FsdA==,i=4096") + _line(b"v=c2lnbmF0dXJl") + b"+OK Logged in.\r\n"
    events = _drive(conn, three_ways(server)[way])
    assert events == [
        Continuation(
            auth, b64(b"r=abcdef,s=c2FsdA==,i=4096").decode(), b"r=abcdef,s=c2FsdA==,i=4096"
        ),
        Continuation(auth, b64(b"v=c2lnbmF0dXJl").decode(), b"v=c2lnbmF0dXJl"),
        Ok(auth, "Logged in."),
    ]
    assert conn.state is State.TRANSACTION


@given(
    challenges=st.lists(st.binary(max_size=300), max_size=4),
    final=st.sampled_from(
        [b"+OK welcome", b"-ERR [AUTH] no", b"-ERR", b"+ok", b"-err [SYS/TEMP] x"]
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    bare_lf=st.booleans(),
)
def test_any_exchange_under_any_chunking(
    challenges: list[bytes], final: bytes, cuts: list[int], bare_lf: bool
) -> None:
    end = b"\n" if bare_lf else b"\r\n"
    server = b"".join(b"+ " + b64(c) + end for c in challenges) + final + end
    conn = greeted()
    auth = Command("AUTH", "X-TEST")
    conn.send(auth)
    events = _drive(conn, _chunked(server, cuts))
    assert [e.challenge for e in events[:-1] if isinstance(e, Continuation)] == challenges
    assert len(events) == len(challenges) + 1
    last = events[-1]
    if final.upper().startswith(b"+OK"):
        assert isinstance(last, Ok)
        assert conn.state is State.TRANSACTION
    else:
        assert isinstance(last, Err)
        assert conn.state is State.AUTHORIZATION
    assert conn.outstanding == ()


@pytest.mark.parametrize("line", [b"+", b"+ ", b"+  \t"])
def test_empty_challenges(line: bytes) -> None:
    conn = greeted()
    auth = Command("AUTH", "XOAUTH2")
    conn.send(auth)
    [event] = _drive(conn, [line + b"\r\n"])
    assert isinstance(event, Continuation)
    assert event.challenge == b""


@pytest.mark.parametrize(
    "text", [b"not base64!", b"YWJj=", b"YWJjZA", b"YW Jj", b"\xff\xfe", b"YWJj\x00", b"====", b"*"]
)
def test_malformed_challenge_is_a_remote_error_and_sticks(text: bytes) -> None:
    conn = greeted()
    conn.send(Command("AUTH", "PLAIN"))
    conn.receive_data(b"+ " + text + b"\r\n")
    with pytest.raises(RemoteProtocolError, match="not base64"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send(AuthResponse.cancel())


@given(text=st.binary(max_size=200))
def test_any_challenge_text_is_an_event_or_a_remote_error(text: bytes) -> None:
    conn = greeted()
    conn.send(Command("AUTH", "PLAIN"))
    conn.receive_data(b"+ " + text.replace(b"\n", b"") + b"\r\n")
    try:
        event = conn.next_event()
    except RemoteProtocolError:
        return
    assert isinstance(event, Continuation)
    assert b64(event.challenge).decode() == event.text.rstrip(" \t")


def test_a_second_challenge_before_the_answer_is_a_remote_error() -> None:
    conn = greeted()
    conn.send(Command("AUTH", "PLAIN"))
    conn.receive_data(b"+ \r\n+ \r\n")
    assert isinstance(conn.next_event(), Continuation)
    with pytest.raises(RemoteProtocolError, match="second AUTH challenge"):
        conn.next_event()


def test_nothing_else_may_be_sent_during_the_exchange() -> None:
    conn = greeted()
    conn.send(Command("AUTH", "PLAIN"))
    with pytest.raises(LocalProtocolError, match="AUTH exchange"):
        conn.send(Command("USER", "bob"))
    with pytest.raises(LocalProtocolError, match="without a server challenge"):
        conn.send(AuthResponse(""))


def test_cancel_and_empty_responses_on_the_wire() -> None:
    conn = greeted()
    conn.send(Command("AUTH", "PLAIN"))
    _drive_one(conn, b"+ \r\n")
    assert conn.send(AuthResponse.cancel()) == b"*\r\n"
    conn.receive_data(b"-ERR cancelled\r\n")
    assert isinstance(conn.next_event(), Err)
    conn.send(Command("AUTH", "XOAUTH2"))
    _drive_one(conn, b"+ \r\n")
    assert conn.send(AuthResponse.of(b"")) == b"\r\n"


def _drive_one(conn: Pop3Connection, data: bytes) -> None:
    conn.receive_data(data)
    assert isinstance(conn.next_event(), Continuation)


@pytest.mark.parametrize("bad", ["abc", "a=bc", "YWJj\t", "**", "YW Jj"])
def test_an_auth_response_must_be_base64_or_a_star(bad: str) -> None:
    with pytest.raises(LocalProtocolError, match="base64"):
        AuthResponse(bad)


# -- line lengths ----------------------------------------------------------------------


def test_the_auth_line_is_held_to_255_octets_and_responses_are_not() -> None:
    fits = "A" * (MAX_COMMAND_LINE - len("AUTH PLAIN \r\n"))
    assert len(Command("AUTH", "PLAIN", fits).encode()) == MAX_COMMAND_LINE
    assert fits_command_line("AUTH", "PLAIN", fits)
    assert not fits_command_line("AUTH", "PLAIN", fits + "A")
    with pytest.raises(LocalProtocolError, match="255"):
        Command("AUTH", "PLAIN", fits + "AAAA")
    token = AuthResponse.of(b"t" * 20_000)
    assert len(token.encode()) > 26_000


@given(size=st.integers(min_value=0, max_value=6000))
def test_the_initial_response_goes_on_the_line_exactly_when_it_fits(size: int) -> None:
    mechanism = XOAuth2("bob@example.org", "t" * max(size, 1))
    exchange = SaslExchange(mechanism)
    command = exchange.command()
    expected = b64(mechanism.initial()).decode()
    assert len(command.encode()) <= MAX_COMMAND_LINE
    if fits_command_line("AUTH", "XOAUTH2", expected):
        assert command.args == ("XOAUTH2", expected)
    else:
        assert command.args == ("XOAUTH2",)
        assert exchange.answer(b"").data == expected


def test_an_empty_initial_response_is_an_equals_sign() -> None:
    class Empty(Plain):
        def initial(self) -> bytes:
            return b""

    assert SaslExchange(Empty("bob", "pw")).command() == Command("AUTH", "PLAIN", "=")


# -- the exchange ----------------------------------------------------------------------


def test_two_step_form_waits_for_an_empty_challenge() -> None:
    mechanism = XOAuth2("bob@example.org", "ya29.token")
    exchange = SaslExchange(mechanism, initial_response=False)
    assert exchange.command() == Command("AUTH", "XOAUTH2")
    assert base64.b64decode(exchange.answer(b"").data) == (
        b"user=bob@example.org\x01auth=Bearer ya29.token\x01\x01"
    )
    exchange.succeeded()


def test_a_non_empty_first_challenge_for_a_client_first_mechanism_is_refused() -> None:
    exchange = SaslExchange(Plain("bob", "pw"), initial_response=False)
    exchange.command()
    with pytest.raises(RemoteProtocolError, match="should be empty"):
        exchange.answer(b"Username:")


def test_plain_takes_no_challenge_after_its_message() -> None:
    exchange = SaslExchange(Plain("bob", "pw"))
    assert exchange.command() == Command("AUTH", "PLAIN", b64(b"\0bob\0pw").decode())
    with pytest.raises(RemoteProtocolError, match="exchange had ended"):
        exchange.answer(b"more?")


def test_every_secret_is_handed_over_before_it_is_sent() -> None:
    seen: list[str] = []
    exchange = SaslExchange(Plain("bob", "hunter2-pw"), on_secret=seen.append)
    assert "hunter2-pw" in seen
    command = exchange.command()
    assert command.args[1] in seen
    token = "ya29." + "x" * 5000
    seen.clear()
    exchange = SaslExchange(XOAuth2("bob", token), initial_response=False, on_secret=seen.append)
    exchange.command()
    response = exchange.answer(b"")
    assert token in seen
    assert response.data in seen


def test_xoauth2_error_challenge_is_answered_empty_and_described() -> None:
    mechanism = XOAuth2("bob", "tok")
    exchange = SaslExchange(mechanism)
    exchange.command()
    error = json.dumps({"status": "401", "schemes": "Bearer", "scope": "https://mail.google.com/"})
    assert exchange.answer(error.encode()).data == ""
    assert mechanism.server_error == "status=401, scope=https://mail.google.com/, schemes=Bearer"
    with pytest.raises(RemoteProtocolError):
        exchange.answer(b"again")


def test_oauthbearer_message_and_error_answer() -> None:
    mechanism = OAuthBearer("b,o=b@example.org", "tok")
    assert mechanism.initial() == b"n,a=b=2Co=3Db@example.org,\x01auth=Bearer tok\x01\x01"
    exchange = SaslExchange(mechanism)
    exchange.command()
    answer = exchange.answer(b'{"status":"invalid_token"}')
    assert base64.b64decode(answer.data) == b"\x01"
    assert mechanism.server_error == "status=invalid_token"


@pytest.mark.parametrize("token", ["", "a b", "a\x01b", "a\r\nb"])
def test_a_malformed_token_is_refused_before_anything_is_sent(token: str) -> None:
    for cls in (XOAuth2, OAuthBearer):
        with pytest.raises(LocalProtocolError, match="token"):
            cls("bob", token)


@given(challenge=st.binary(max_size=300))
def test_oauth_error_descriptions_never_fail(challenge: bytes) -> None:
    text = describe_oauth_error(challenge)
    assert "\n" not in text or text.count("\n") < 10


# -- SCRAM against scramp's server -----------------------------------------------------


def _scram_server(mechanism: str, password: str) -> scramp.ScramServer:
    m = scramp.ScramMechanism(mechanism)
    info = m.make_auth_info(password, iteration_count=4096)
    return m.make_server(lambda username: info)


@pytest.mark.parametrize("name", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_logs_in_against_scramp_and_verifies_the_server(name: str) -> None:
    server = _scram_server(name, "pencil-pw")
    exchange = SaslExchange(make_mechanism(name, "bob", password="pencil-pw"))  # type: ignore[arg-type]
    command = exchange.command()
    server.set_client_first(base64.b64decode(command.args[1]).decode())
    final = exchange.answer(server.get_server_first().encode())
    server.set_client_final(base64.b64decode(final.data).decode())
    assert exchange.answer(server.get_server_final().encode()).data == ""
    exchange.succeeded()


def _scram_to_final(name: str = "SCRAM-SHA-256") -> tuple[SaslExchange, scramp.ScramServer]:
    server = _scram_server(name, "pencil-pw")
    exchange = SaslExchange(Scram(name, "bob", "pencil-pw"))  # type: ignore[arg-type]
    server.set_client_first(base64.b64decode(exchange.command().args[1]).decode())
    final = exchange.answer(server.get_server_first().encode())
    server.set_client_final(base64.b64decode(final.data).decode())
    return exchange, server


def test_a_wrong_server_signature_is_refused() -> None:
    exchange, _ = _scram_to_final()
    with pytest.raises(SecurityPolicyError, match="signature is wrong"):
        exchange.answer(b"v=" + b64(b"\0" * 32))


def test_ok_without_the_server_signature_is_refused() -> None:
    exchange, _ = _scram_to_final()
    with pytest.raises(SecurityPolicyError, match="without proving"):
        exchange.succeeded()


def test_a_server_that_does_not_know_the_password_cannot_sign() -> None:
    # The server holds keys for another password: its signature cannot match.
    impostor = _scram_server("SCRAM-SHA-256", "not-the-password")
    exchange = SaslExchange(Scram("SCRAM-SHA-256", "bob", "pencil-pw"))
    impostor.set_client_first(base64.b64decode(exchange.command().args[1]).decode())
    exchange.answer(impostor.get_server_first().encode())
    forged = b"v=" + b64(b"x" * 32)
    with pytest.raises(SecurityPolicyError):
        exchange.answer(forged)


def test_scram_server_error_is_kept_for_the_refusal() -> None:
    exchange, _ = _scram_to_final()
    assert exchange.answer(b"e=invalid-proof").data == ""
    assert exchange.mechanism.server_error == "invalid-proof"
    with pytest.raises(SecurityPolicyError):
        exchange.succeeded()


@given(first=st.binary(max_size=200))
def test_any_server_first_message_is_a_response_or_a_remote_error(first: bytes) -> None:
    exchange = SaslExchange(Scram("SCRAM-SHA-256", "bob", "pw-pw-pw"))
    exchange.command()
    try:
        response = exchange.answer(first)
    except RemoteProtocolError:
        return
    assert response.data


# -- the choice ------------------------------------------------------------------------

_ALL = ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"]


@given(offered=st.lists(st.sampled_from(_ALL), unique=True), lower=st.booleans())
def test_auto_takes_the_strongest_offered_for_a_password(offered: list[str], lower: bool) -> None:
    capabilities = {"SASL": [m.lower() if lower else m for m in offered], "USER": []}
    plan = choose_mechanism("auto", capabilities, has_password=True, has_token=False)
    expected = next((m for m in PASSWORD_ORDER if m in offered), "user")
    assert plan == expected


@given(offered=st.lists(st.sampled_from(_ALL), unique=True))
def test_auto_takes_oauth_for_a_token_and_nothing_else(offered: list[str]) -> None:
    capabilities = {"SASL": offered}
    wanted = next((m for m in OAUTH_ORDER if m in offered), None)
    if wanted is None:
        with pytest.raises(SecurityPolicyError, match="OAuth"):
            choose_mechanism("auto", capabilities, has_password=False, has_token=True)
    else:
        assert choose_mechanism("auto", capabilities, has_password=False, has_token=True) == wanted


@given(
    method=st.sampled_from(["plain", "scram-sha-256", "scram-sha-1", "xoauth2", "oauthbearer"]),
    offered=st.lists(st.sampled_from(_ALL), unique=True),
)
def test_a_named_mechanism_is_that_one_or_a_refusal(method: str, offered: list[str]) -> None:
    oauth = method in ("xoauth2", "oauthbearer")
    capabilities = {"SASL": offered, "USER": []}
    kwargs = {"has_password": not oauth, "has_token": oauth}
    if method.upper() in offered:
        assert choose_mechanism(method, capabilities, **kwargs) == method.upper()  # type: ignore[arg-type]
        return
    with pytest.raises(SecurityPolicyError) as info:
        choose_mechanism(method, capabilities, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert method.upper() in message
    assert "refusing" in message
    for name in offered:
        assert name in message


def test_a_mechanism_withdrawn_after_stls_is_called_a_downgrade() -> None:
    before = {"SASL": ["SCRAM-SHA-256", "PLAIN"], "STLS": []}
    after = {"SASL": ["PLAIN"], "USER": []}
    with pytest.raises(SecurityPolicyError, match="withdrew it after") as info:
        choose_mechanism(
            "scram-sha-256", after, has_password=True, has_token=False, before_tls=before
        )
    assert "offers SASL PLAIN and USER" in str(info.value)


def test_missing_credentials_for_a_named_method() -> None:
    with pytest.raises(LocalProtocolError, match="token"):
        choose_mechanism("xoauth2", {"SASL": ["XOAUTH2"]}, has_password=True, has_token=False)
    with pytest.raises(LocalProtocolError, match="password"):
        choose_mechanism("plain", {"SASL": ["PLAIN"]}, has_password=False, has_token=True)
    assert choose_mechanism("apop", {}, has_password=True, has_token=False) == "apop"


def test_the_configs_auth_values_are_the_clients() -> None:
    assert get_args(ConfigAuthMethod) == get_args(AuthMethod)
