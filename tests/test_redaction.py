"""The one redaction point: no secret in output, logs or ledger; controls made visible."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from popvault import redaction
from popvault.pop3.client import Pop3Client
from popvault.redaction import MASK, SecretRegistry, neutralise, redact, register
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

# Quotes and a backslash: the secret must be found in quoted (repr, JSON) forms too.
PASSWORD = "pw-\"Qu'ote\\Z9-never-shown"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m"


def test_a_registered_secret_is_masked_in_every_quoted_form() -> None:
    registry = SecretRegistry()
    registry.add(PASSWORD)
    for text in (PASSWORD, repr(PASSWORD), json.dumps(PASSWORD), f"x{PASSWORD}y{PASSWORD}"):
        scrubbed = registry.scrub(text)
        assert PASSWORD not in scrubbed
        assert MASK in scrubbed
    assert registry.scrub("nothing here") == "nothing here"


def test_the_longest_secret_is_masked_whole() -> None:
    registry = SecretRegistry()
    registry.add("abc")
    registry.add("abcdef")
    assert registry.scrub("abcdef abc") == f"{MASK} {MASK}"


def test_control_characters_are_rendered_visibly() -> None:
    assert neutralise(ESCAPES) == "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m"
    assert neutralise("a\tb\r\nc") == "a\\tb\\r\\nc"
    assert neutralise("line\nnext", keep_newlines=True) == "line\nnext"
    assert neutralise("Grüße, 日本") == "Grüße, 日本"


def test_redact_masks_then_neutralises() -> None:
    register(PASSWORD)
    assert redact(f"\x1b[2J{PASSWORD}") == f"\\x1b[2J{MASK}"


# -- every server reply and every secret source, every channel ---------------------------

# (verb, reply): the server echoes the password, or sends escape sequences, in each.
HOSTILE_REPLIES = [
    ("GREETING", f"+OK ready {PASSWORD} {ESCAPES}"),
    ("CAPA", f"-ERR no capa for {PASSWORD} {ESCAPES}"),
    ("USER", f"-ERR unknown user {PASSWORD} {ESCAPES}"),
    ("PASS", f"-ERR [AUTH] bad password {PASSWORD} {ESCAPES}"),
    ("PASS", f"-ERR damaged mailbox {PASSWORD} {ESCAPES}"),
    ("PASS", f"PASSWORD-WAS {PASSWORD} {ESCAPES}"),
    ("STAT", f"-ERR {PASSWORD} {ESCAPES}"),
    ("UIDL", f"-ERR cannot open mailbox for user:{PASSWORD} {ESCAPES}"),
    ("UIDL", f"+OK but not a listing {PASSWORD}\r\n1 {PASSWORD}\r\n."),
    ("LIST", f"-ERR cannot list {PASSWORD} {ESCAPES}"),
    ("RETR", f"-ERR cannot read {PASSWORD} {ESCAPES}"),
    ("RETR", f"{PASSWORD} {ESCAPES}"),
    ("DELE", f"-ERR cannot delete {PASSWORD} {ESCAPES}"),
    ("QUIT", f"-ERR cannot expunge {PASSWORD} {ESCAPES}"),
]


def _channels(ws: Workspace, caplog: pytest.LogCaptureFixture, *outputs: str) -> list[str]:
    status = ws.cli("status")
    status_json = ws.cli("status", "--json")
    verify = ws.cli("verify")
    held = ws.cli("held")
    texts = [*outputs, status.output, status_json.output, verify.output, held.output]
    texts.append(caplog.text)
    if ws.ledger_file.exists():
        texts.append(ws.ledger_dump())
    json.loads(status_json.out)  # still valid JSON
    return texts


@pytest.mark.parametrize(("verb", "reply"), HOSTILE_REPLIES, ids=lambda v: str(v)[:12])
def test_a_secret_a_server_echoes_appears_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, verb: str, reply: str
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    caplog.set_level(logging.DEBUG)
    with FakePop3Server(sample_messages(2), username="alice", password=PASSWORD) as srv:
        srv.fail_command(verb, reply, times=None)
        ws.write_config([fake_account(srv, "acct", retention="delete")])
        run = ws.cli("--log-level", "debug", "run")
    for text in _channels(ws, caplog, run.output):
        assert PASSWORD not in text
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\x9b" not in text


def test_a_failing_password_command_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = Workspace(tmp_path)
    secret = "cmd-Secret-7781"
    script = ws.folder / "pw.sh"
    script.write_text(f"set -x\nPW={secret}\necho $PW\necho 'locked: {secret}' >&2\nexit 4\n")
    with FakePop3Server(sample_messages(1), username="alice", password=secret) as srv:
        entry = fake_account(srv, "acct", password_file=None, password_command="sh pw.sh")
        ws.write_config([entry])
        run = ws.cli("run")
    assert run.code in (1, 2)
    assert "exited with status 4" in run.output
    for text in _channels(ws, caplog, run.output):
        assert secret not in text


def test_the_ledger_url_password_is_masked(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    url = "postgresql+psycopg://popvault:Url-Secret-4411@127.0.0.1:1/nowhere"
    with FakePop3Server(sample_messages(1), username="alice", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")], ledger_url=url)
        result = ws.cli("status")
    assert result.code != 0
    assert "Url-Secret-4411" not in result.output


def test_a_short_secret_is_masked_only_where_it_stands_alone() -> None:
    registry = SecretRegistry()
    registry.add("pw")
    assert registry.scrub("PASS pw") == f"PASS {MASK}"
    assert registry.scrub("password upward") == "password upward"


@pytest.mark.parametrize(
    ("verb", "template"),
    [
        ("PASS", "-ERR bad password {arg}"),
        ("PASS", "PASSWORD-WAS {arg}"),
        ("UIDL", "-ERR cannot open mailbox for user:{password}"),
        ("RETR", "-ERR {username}/{password} is locked"),
    ],
)
def test_a_server_that_echoes_what_it_was_sent_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, verb: str, template: str
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    caplog.set_level(logging.DEBUG)
    with FakePop3Server(sample_messages(2), username="alice", password=PASSWORD) as srv:
        srv.reply_with(verb, template)
        ws.write_config([fake_account(srv, "acct", retention="delete")])
        run = ws.cli("--log-level", "debug", "run")
    assert run.code == 1, run.output
    for text in _channels(ws, caplog, run.output):
        assert PASSWORD not in text


def test_a_login_accepted_with_the_password_echoed_in_its_ok_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    caplog.set_level(logging.DEBUG)
    with FakePop3Server(sample_messages(2), username="alice", password=PASSWORD) as srv:
        srv.reply_with("PASS", "+OK PASSWORD-WAS {arg}", carry_out=True)
        ws.write_config([fake_account(srv, "acct")])
        run = ws.cli("--log-level", "debug", "run")
    assert run.code == 0, run.output
    assert "PASSWORD-WAS ***" in caplog.text, "the debug log shows the reply, masked"
    for text in _channels(ws, caplog, run.output):
        assert PASSWORD not in text


def test_the_registry_is_bounded_and_keeps_what_is_registered_again() -> None:
    registry = SecretRegistry()
    registry.add("the-password-of-a-daemon")
    for number in range(redaction.MAX_SECRETS * 2):
        registry.add(f"access-token-number-{number:06d}")
        if number % 100 == 0:
            registry.add("the-password-of-a-daemon")  # a run reads it again
    assert len(registry) == redaction.MAX_SECRETS
    assert registry.scrub("pw the-password-of-a-daemon") == f"pw {MASK}"
    newest = f"access-token-number-{redaction.MAX_SECRETS * 2 - 1:06d}"
    assert registry.scrub(newest) == MASK
    assert registry.scrub("access-token-number-000000") == "access-token-number-000000"


def test_temporary_secrets_are_masked_in_their_block_only_and_add_nothing() -> None:
    registry = SecretRegistry()
    registry.add("long-lived-secret")
    with registry.temporarily() as passing:
        passing("c=biws,r=nonce-1,p=proof-of-this-login")
        with registry.temporarily() as other:  # another account's login, in another thread
            other("c=biws,r=nonce-1,p=proof-of-this-login")
        echoed = "-ERR bad proof c=biws,r=nonce-1,p=proof-of-this-login long-lived-secret"
        assert registry.scrub(echoed) == f"-ERR bad proof {MASK} {MASK}"
        assert "c=biws,r=nonce-1,p=proof-of-this-login" in registry
    assert len(registry) == 1
    assert "c=biws,r=nonce-1,p=proof-of-this-login" not in registry
    assert registry.scrub("p=proof-of-this-login").endswith("proof-of-this-login")


def test_many_scram_logins_do_not_grow_the_registry() -> None:
    before = len(redaction.SECRETS)
    with FakePop3Server(
        sample_messages(1), username="alice", password="scram-Pa55word", sasl=("SCRAM-SHA-256",)
    ) as srv:
        for _ in range(20):
            client = Pop3Client(srv.host, srv.port, security="plain", timeout=5, account="a")
            client.connect()
            client.login("alice", "scram-Pa55word", method="scram-sha-256", allow_plaintext=True)
            client.quit()
    assert len(redaction.SECRETS) <= before + 1  # the password, once
