"""`popvault status`: one line per account that is fine; for trouble, what to do (issue 12 part 3).

Real runs against FakePop3Server (and a real Dovecot for a wrong password) make
the errors that status then classifies from the ledger's text; the rules
themselves are checked against the errors popvault's own classes write; and
every command and config key any advice names is checked against the CLI's
parser and the config's schema, so that no advice can go stale.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import postgres
from dovecot import DovecotServer, TlsCerts
from popvault import advice
from popvault import config as config_module
from popvault.advice import ERROR_RULES, Advice, Subject, classify
from popvault.cli import build_parser
from popvault.config._schema import AccountEntry, Settings
from popvault.daemon.backoff import CREDENTIALS
from popvault.errors import (
    AuthError,
    LoginDelayError,
    LoginRefused,
    OAuthError,
    OAuthUnavailable,
    ReadError,
    ReauthorizationRequired,
    TemporaryError,
    TLSError,
)
from popvault.ledger import AccountBusy, LeaseOwner, Ledger, ScheduleEntry
from popvault.plan import MAX_ATTEMPTS
from popvault.pop3.tls import make_client_context
from popvault.store.durable import store_error
from popvault.testing import FakePop3Server, Served, sample_messages
from workspace import CliResult, Workspace, fake_account

PASSWORD = "advice-Pa55word-never-shown"
NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


def rows(ws: Workspace) -> dict[str, dict[str, Any]]:
    shown = ws.cli("status", "--json")
    assert shown.code == 0, shown.output
    return {row["name"]: row for row in json.loads(shown.out)}


def table(ws: Workspace) -> CliResult:
    shown = ws.cli("status")
    assert shown.code == 0, shown.output  # trouble or not, status itself succeeds
    return shown


def account_lines(text: str) -> list[str]:
    """The table's lines: after the two location lines and the blank line, up to the notes."""
    below = text.splitlines()[3:]
    return below[: below.index("")] if "" in below else below


def assert_shown(ws: Workspace, name: str, item: dict[str, Any]) -> None:
    """The text output carries the same problem and action as ``--json``."""
    text = table(ws).out
    assert f"{name}: {item['problem']}" in text, text
    assert f"{name}:   -> {item['action']}" in text, text


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the socket is closed


# -- every account fine: one line each ------------------------------------------------------


def test_a_fine_ledger_prints_exactly_one_line_per_account(ws: Workspace) -> None:
    servers = [
        FakePop3Server(sample_messages(3), username="alice", password=PASSWORD),
        FakePop3Server(sample_messages(3, seed=2), username="alice", password=PASSWORD),
        # A server that hands out a window of the mailbox (Gmail): several sessions, fine.
        FakePop3Server(sample_messages(5, seed=3), username="alice", password=PASSWORD, window=2),
    ]
    with servers[0], servers[1], servers[2]:
        ws.write_config(
            [
                fake_account(servers[0], "plain"),
                fake_account(servers[1], "kept", retention="14d"),
                fake_account(servers[2], "windowed"),
            ]
        )
        for _ in range(2):
            ran = ws.cli("run")
            assert ran.code == 0, ran.output
        shown = table(ws)
        by_name = rows(ws)
    lines = account_lines(shown.out)
    assert lines[0].startswith("ACCOUNT")
    assert [line.split()[0] for line in lines[1:]] == ["plain", "kept", "windowed"]
    assert shown.out.rstrip("\n").splitlines()[-1] == lines[-1], "no line after the table"
    assert all(row["advice"] is None for row in by_name.values())
    assert by_name["windowed"]["last_sessions"] == 1  # the second run: nothing new, one session
    assert "after 14d, next " in lines[2]


def test_a_run_in_several_sessions_is_fine_and_shown_in_its_line(ws: Workspace) -> None:
    with FakePop3Server(sample_messages(6), username="alice", password=PASSWORD, window=2) as srv:
        ws.write_config([fake_account(srv, "gmail")])
        ran = ws.cli("run")
        assert ran.code == 0, ran.output
    (row,) = rows(ws).values()
    assert row["last_sessions"] > 1
    assert row["advice"] is None
    lines = account_lines(table(ws).out)
    assert len(lines) == 2
    assert f"ok ({row['last_sessions']} sessions)" in lines[1]


# -- a failed run: each kind of failure, from a real run, names its fix ----------------------

CLOSED = -1  # stands for a port nothing listens on


@dataclass(frozen=True)
class Situation:
    """One way a run fails, and what its advice must name."""

    kind: str
    expect: tuple[str, ...]
    account: dict[str, Any] = field(default_factory=dict)
    server_password: str = PASSWORD
    fault: tuple[str, str] | None = None
    hang: str | None = None
    tls: bool = False


SITUATIONS = {
    "wrong password": Situation(
        "login_refused",
        ("`password_file`", "`username`", "`popvault run --account acct`"),
        server_password="not-the-password",
    ),
    "login refused, not the password": Situation(
        "login_refused_by_server",
        ("not to blame", "`popvault run --account acct`"),
        fault=("PASS", "-ERR [SYS/PERM] account disabled"),
    ),
    "mailbox in use": Situation(
        "server_busy",
        ("another client", "`popvault run --account acct`"),
        fault=("PASS", "-ERR [IN-USE] mailbox locked by another session"),
    ),
    "server unreachable": Situation(
        "connect", ("`host`", "`port`", "`popvault run --account acct`"), {"port": CLOSED}
    ),
    "TLS against a plain port": Situation(
        "tls", ('`security = "tls"`', '`security = "starttls"`', "`port`"), {"security": "tls"}
    ),
    "untrusted certificate": Situation(
        "tls_certificate", ("`ca_file`", "`host`"), {"security": "tls"}, tls=True
    ),
    "no answer": Situation(
        "timeout", ("`timeout`", "`login_timeout`"), {"timeout": "1s"}, hang="UIDL"
    ),
    "password command fails": Situation(
        "config_key",
        ("`password_command`", "`popvault run --account acct`"),
        {"password_file": None, "password_command": "false"},
    ),
    "OAuth account never signed in": Situation(
        "oauth_sign_in",
        ("`popvault auth login acct`",),
        {
            "password_file": None,
            "auth": "xoauth2",
            "provider": "gmail",
            "oauth_client_id": "client.apps.googleusercontent.com",
            "oauth_token_file": "tokens/acct.json",
        },
    ),
}


@pytest.mark.parametrize("situation", SITUATIONS.values(), ids=SITUATIONS.keys())
def test_a_failed_run_says_what_to_do(
    ws: Workspace, tls_certs: TlsCerts, situation: Situation
) -> None:
    context = tls_certs.server_context() if situation.tls else None
    with FakePop3Server(
        sample_messages(2),
        username="alice",
        password=situation.server_password,
        tls_context=context,
    ) as srv:
        if situation.fault is not None:
            srv.fail_command(*situation.fault)
        if situation.hang is not None:
            srv.hang_on(situation.hang)
        entry = fake_account(srv, "acct", **situation.account)
        if entry.get("port") == CLOSED:
            entry["port"] = closed_port()
        ws.write_config([entry])
        ran = ws.cli("run")
        assert ran.code != 0, ran.output
    (row,) = rows(ws).values()
    (item,) = row["advice"]
    assert item["kind"] == situation.kind, row["last_error"]
    assert all(part in item["action"] for part in situation.expect), item["action"]
    assert item["problem"].startswith("the last run failed: ")
    assert_shown(ws, "acct", item)
    assert PASSWORD not in table(ws).output + json.dumps(row)


def test_a_wrong_password_at_a_real_dovecot_names_the_password_key(
    dovecot: DovecotServer, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = dovecot.add_user()
    mailbox.deliver(b"From: a@example.org\nSubject: one\n\nfirst\n")
    monkeypatch.setenv("PW_ACCT", "Wrong-Secret-123")
    entry = {
        "name": "acct",
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "starttls",
        "ca_file": str(dovecot.ca_file),
        "username": mailbox.username,
        "password_env": "PW_ACCT",
        "timeout": "20s",
    }
    ws.write_config([entry])
    assert ws.cli("run").code == 1
    (item,) = rows(ws)["acct"]["advice"]
    assert item["kind"] == "login_refused"
    assert "`password_env`" in item["action"]
    assert "`popvault run --account acct`" in item["action"]
    assert "Wrong-Secret-123" not in table(ws).output


def test_a_failing_daemon_account_says_when_the_daemon_tries_again(ws: Workspace) -> None:
    with FakePop3Server(sample_messages(1), username="alice", password="other") as srv:
        ws.write_config([fake_account(srv, "acct")])
        assert ws.cli("run").code == 1
    next_try = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    entry = ScheduleEntry(
        account="acct",
        next_run_at=next_try,
        consecutive_failures=3,
        backoff_reason=CREDENTIALS.reason,
        daemon_pid=os.getpid(),  # a live daemon on this host: its rows are shown
        daemon_host=platform.node(),
        updated_at=datetime.now(UTC),
    )
    with Ledger.open(f"sqlite:///{ws.ledger_file}") as ledger:
        ledger.save_schedule(entry)
    row = rows(ws)["acct"]
    (item,) = row["advice"]
    when = next_try.strftime("%Y-%m-%d %H:%M:%S")
    assert (
        f"The daemon tries again at {when} UTC (3 failed run(s) in a row: "
        f"{CREDENTIALS.reason})" in item["action"]
    )
    assert row["backoff_reason"] == CREDENTIALS.reason
    assert when in account_lines(table(ws).out)[1]  # the NEXT RUN column


# -- messages failing, held; runs interrupted, never run ------------------------------------


def test_failing_messages_are_retried_then_set_aside_with_the_command_to_retry(
    ws: Workspace,
) -> None:
    with FakePop3Server(sample_messages(4), username="alice", password=PASSWORD) as srv:
        srv.fail_command("RETR", "-ERR [SYS/PERM] cannot read message", arg="2")
        ws.write_config([fake_account(srv, "acct")])
        assert ws.cli("run").code == 1
        row = rows(ws)["acct"]
        assert classify(row["last_error"])[0].kind == "message_problems"
        (item,) = row["advice"]  # the run's error is not advised twice
        assert item["kind"] == "failing_messages"
        assert "1 message(s) failing, tried again by each run" in item["problem"]
        assert "cannot read message" in item["problem"]  # where the error is shown
        assert "`popvault run --account acct`" in item["action"]
        assert "--retry-failed" not in item["action"], "nothing is set aside yet"

        for _ in range(MAX_ATTEMPTS - 1):
            ws.cli("run")
        (item,) = rows(ws)["acct"]["advice"]
        assert "1 message(s) set aside after failing 3 runs" in item["problem"]
        assert "`popvault run --account acct --retry-failed`" in item["action"]
        assert_shown(ws, "acct", item)

        srv.clear_faults()
        retried = ws.cli("run", "--account", "acct", "--retry-failed")
        assert retried.code == 0, retried.output
    assert rows(ws)["acct"]["advice"] is None


def test_held_messages_name_the_commands_that_list_and_release_them(ws: Workspace) -> None:
    def padded(served: Served) -> bytes:
        return served.raw + b"X-Padding: " + b"p" * 40 + b"\r\n"  # more than LIST said

    with FakePop3Server(
        sample_messages(2), username="alice", password=PASSWORD, serve=padded
    ) as srv:
        ws.write_config([fake_account(srv, "acct", retention="delete")])
        assert ws.cli("run").code == 0
        (item,) = rows(ws)["acct"]["advice"]
        assert item["kind"] == "held"
        assert item["problem"].startswith("2 server copy(ies) held")
        assert "`popvault held --account acct`" in item["action"]
        assert "`popvault held --release --account acct`" in item["action"]
        text = table(ws).out
        assert text.count("acct:   UIDL ") == 2, text  # the held copies, named
        assert_shown(ws, "acct", item)
        assert ws.cli("held", "--release", "--account", "acct").code == 0
    assert rows(ws)["acct"]["advice"] is None


def test_an_interrupted_run_says_nothing_is_lost_and_what_to_run(ws: Workspace) -> None:
    with FakePop3Server(sample_messages(1), username="alice", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")])
        assert ws.cli("run").code == 0
    # A run whose process died: its row says running, and nobody holds the lock.
    with Ledger.open(f"sqlite:///{ws.ledger_file}") as ledger:
        ledger.start_run("acct", started_at=NOW)
    row = rows(ws)["acct"]
    assert row["last_outcome"] == "interrupted"
    (item,) = row["advice"]
    assert item["kind"] == "interrupted"
    assert "nothing is lost" in item["action"]
    assert "`popvault run --account acct`" in item["action"]
    assert_shown(ws, "acct", item)


def test_a_never_run_account_names_the_run_command_unless_a_daemon_plans_it(
    ws: Workspace,
) -> None:
    with FakePop3Server(sample_messages(1), username="alice", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "ran"), fake_account(srv, "new")])
        assert ws.cli("run", "--account", "ran").code == 0
    (item,) = rows(ws)["new"]["advice"]
    assert item["kind"] == "never_run"
    assert "`popvault run --account new`" in item["action"]
    assert "`popvault daemon`" in item["action"]
    assert rows(ws)["ran"]["advice"] is None
    with Ledger.open(f"sqlite:///{ws.ledger_file}") as ledger:
        ledger.save_schedule(
            ScheduleEntry("new", NOW, 0, None, os.getpid(), platform.node(), datetime.now(UTC))
        )
    assert rows(ws)["new"]["advice"] is None, "the daemon will run it: nothing to do"


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with postgres.databases("popvault_advice") as make:
        yield make()


@pytest.fixture
def pg(pg_database: str) -> str:
    postgres.reset_ledger(pg_database)
    return pg_database


def gone_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.postgres
def test_a_lease_held_by_a_dead_process_says_when_it_expires(ws: Workspace, pg: str) -> None:
    with FakePop3Server(sample_messages(1), username="alice", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "dead"), fake_account(srv, "elsewhere")], ledger_url=pg)
        with Ledger.open(pg) as ledger:
            dead = LeaseOwner(platform.node(), gone_pid(), "d" * 16)
            lease = ledger.claim_lease("dead", dead, timedelta(minutes=5))
            assert lease is not None
            # Another machine's holder: status cannot tell whether it lives.
            other = LeaseOwner("elsewhere.example", 4242, "e" * 16)
            assert ledger.claim_lease("elsewhere", other, timedelta(minutes=5)) is not None
        by_name = rows(ws)
        text = table(ws).out
    stale = [item for item in by_name["dead"]["advice"] if item["kind"] == "stale_lease"]
    assert len(stale) == 1, by_name["dead"]["advice"]
    expires = lease.expires_at.strftime("%Y-%m-%d %H:%M:%S")
    assert f"until the lease expires at {expires} UTC" in stale[0]["action"]
    assert "`[ledger] lease`" in stale[0]["action"]
    assert all(item["kind"] != "stale_lease" for item in by_name["elsewhere"]["advice"])
    assert f"elsewhere: being archived now by {other.describe()}" in text


# -- the rules against the errors popvault writes -------------------------------------------


def _error_examples() -> dict[str, list[str]]:
    """For each rule, error texts as popvault's own classes and functions write them."""
    try:
        make_client_context(Path("/nonexistent/ca.pem"))
    except TLSError as exc:
        ca_file = str(exc)
    return {
        # sync._close_run's summary of a run's message problems.
        "message_problems": ["account 'a': 2 message problem(s): message 2: RETR 2: ..."],
        "oauth_sign_in": [str(ReauthorizationRequired("no OAuth tokens", account="a"))],
        "oauth_unavailable": [
            str(OAuthUnavailable("the authorization server answered HTTP 503", account="a")),
            str(OAuthUnavailable("cannot reach the authorization server: refused", account="a")),
        ],
        "oauth_client": [
            str(OAuthError("the authorization server refused: invalid_client", account="a"))
        ],
        "login_refused": [str(AuthError("invalid", code="AUTH", command="PASS ***", account="a"))],
        "login_unsure": [str(AuthError("no", command="PASS ***", account="a", certain=False))],
        "login_refused_by_server": [
            str(LoginRefused("disabled", code="SYS/PERM", command="PASS ***", account="a"))
        ],
        "server_busy": [
            str(LoginDelayError("wait", code="LOGIN-DELAY", command="PASS ***", account="a")),
            str(TemporaryError("later", code="SYS/TEMP", command="UIDL", account="a")),
            str(TemporaryError("it's down", code="SYS/TEMP", command="UIDL", account="a")),
        ],
        "tls_certificate": [
            "account 'a': the TLS certificate of h:995 failed verification: self-signed"
        ],
        "ca_file": [ca_file],
        "tls": ["account 'a': TLS error reading from h:995: decryption failed"],
        "plaintext_refused": [
            "account 'a': refusing to send the password to h:110 over a connection without "
            "TLS (allow_plaintext is off)",
            "account 'a': h:110 does not offer STLS; refusing to continue in clear text",
        ],
        "server_identity": ["account 'a': SCRAM-SHA-256: the server's signature is wrong (x)"],
        "auth_method": [
            "account 'a': auth = 'plain', but the server does not offer SASL PLAIN (...)"
        ],
        "config_key": ["/c.toml, account 'a', key 'password_file': no such file /s"],
        "connect": ["account 'a': cannot connect to h:110: [Errno 111] Connection refused"],
        "timeout": [
            "account 'a': no answer from h:110 within 1.0s (waiting for UIDL)",
            "account 'a': the greeting and login took longer than 30s (h:110)",
        ],
        "connection_lost": [
            str(ReadError("the server closed the connection (waiting for RETR 1)", account="a"))
        ],
        "account_busy": [str(AccountBusy("a", 42))],
        "archive_not_this_ledger": [
            "account 'a': its archive folder /x already holds 3 message file(s) (...), but "
            "the ledger /l knows no message of this account: ..."
        ],
        "archive": [
            str(store_error("create", Path("/x/a"), OSError(28, "No space left on device")))
        ],
        "ledger_schema": [
            "ledger database sqlite:///l is at revision 1: run `popvault db upgrade`"
        ],
        "internal": ["account 'a': internal error: KeyError: 'x'"],
    }


EXAMPLES = _error_examples()


def test_every_rule_has_examples_from_the_code_that_writes_its_words() -> None:
    assert sorted(EXAMPLES) == sorted(rule.kind for rule in ERROR_RULES)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_each_error_lands_on_its_rule(kind: str) -> None:
    for text in EXAMPLES[kind]:
        assert classify(text)[0].kind == kind, text


def test_an_error_no_rule_knows_still_gets_advice() -> None:
    rule, _ = classify("account 'a': something nobody foresaw")
    assert rule.kind == "unknown"


# -- advice never goes stale: the commands and keys it names exist ---------------------------

SPAN = re.compile(r"`([^`]+)`")
SECTION_KEY = re.compile(r"\[(?P<section>\w+)\] (?P<key>\w+)")


def named_thing_problem(span: str) -> str | None:
    """Why ``span`` (backticked in an advice) names no command or key that exists, or None."""
    if span.startswith("popvault"):
        try:
            build_parser().parse_args(shlex.split(span)[1:])
        except SystemExit:
            return f"{span}: the CLI's parser refuses it"
        return None
    key = span.split("=", 1)[0].strip()
    section = SECTION_KEY.fullmatch(key)
    if section is not None:
        model = Settings.model_fields.get(section["section"])
        keys = getattr(model.annotation, "model_fields", {}) if model else {}
        return None if section["key"] in keys else f"{span}: no such key in the config schema"
    return None if key in AccountEntry.model_fields else f"{span}: no such account key"


def stale_names(found: Advice) -> list[str]:
    spans = SPAN.findall(found.action)
    assert spans, f"an advice names no command or key: {found}"
    return [problem for span in spans if (problem := named_thing_problem(span)) is not None]


def test_the_staleness_check_can_fail(capsys: pytest.CaptureFixture[str]) -> None:
    assert named_thing_problem("popvault run --account a --retry-failed") is None
    assert named_thing_problem("popvault run --retries") is not None
    assert named_thing_problem("popvault unheard-of") is not None
    capsys.readouterr()  # argparse's complaints
    assert named_thing_problem('security = "tls"') is None
    assert named_thing_problem("[ledger] lease") is None
    assert named_thing_problem("[ledger] leases") is not None
    assert named_thing_problem("tls") is not None


@pytest.fixture(scope="module")
def subjects(tmp_path_factory: pytest.TempPathFactory) -> list[Subject]:
    """A password account and an OAuth account, loaded from a real config file."""
    ws = Workspace(tmp_path_factory.mktemp("subjects"), password=PASSWORD)
    base = {"host": "pop.example.org", "port": 995, "security": "tls", "username": "u"}
    ws.write_config(
        [
            {"name": "mail", **base, "password_file": "secret"},
            {
                "name": "gmail",
                **base,
                "auth": "xoauth2",
                "provider": "gmail",
                "oauth_client_id": "client.apps.googleusercontent.com",
            },
        ]
    )
    cfg = config_module.load(ws.config, environ={})
    return [Subject(account, cfg.file) for account in cfg.accounts]


def every_advice(subject: Subject) -> list[Advice]:
    """Each advice popvault can give, for one account."""
    name = subject.name
    found = [advice.run_failed(subject, text) for texts in EXAMPLES.values() for text in texts]
    found += [
        advice.run_failed(subject, "account 'x': nobody foresaw this"),
        advice.run_failed(subject, "/c.toml, account 'x', key 'format': bad"),
        advice.interrupted(name, NOW),
        advice.never_run(name),
        advice.held(name, 2),
        advice.stale_lease(name, "h pid 1 (daemon d)", NOW),
    ]
    for set_aside, retrying in ((1, 0), (0, 1), (2, 3)):
        failing = advice.failing(name, set_aside=set_aside, retrying=retrying, example=None)
        assert failing is not None
        found.append(failing)
    return found


def test_every_advice_names_only_commands_and_keys_that_exist(subjects: list[Subject]) -> None:
    for subject in subjects:
        for found in every_advice(subject):
            assert stale_names(found) == [], found


def test_every_key_a_failed_source_may_be_named_by_is_an_account_key() -> None:
    # The keys _fix_key and login_key put in backticks come from these lists.
    assert set(advice.PASSWORD_KEYS) <= advice.SECRET_KEYS
    assert sorted(advice.SECRET_KEYS - set(AccountEntry.model_fields)) == []


def test_a_login_advice_names_the_accounts_own_way_to_log_in(subjects: list[Subject]) -> None:
    password, oauth = subjects
    refused = EXAMPLES["login_refused"][0]
    assert "`password_file`" in advice.run_failed(password, refused).action
    assert "`popvault auth login gmail`" in advice.run_failed(oauth, refused).action


# Account names: config/_schema.py _NAME_RE.
NAMES = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(
    lambda n: n not in (".", "..")
)


@given(text=st.text(max_size=300), name=NAMES)
def test_any_error_text_gets_advice_that_names_real_things(
    subjects: list[Subject], text: str, name: str
) -> None:
    # The account prefix the errors carry never changes the kind, and no text,
    # whatever a server put in it, makes an advice name a key or command that
    # does not exist.
    assert classify(f"account {name!r}: {text}")[0] == classify(text)[0]
    for subject in subjects:
        assert stale_names(advice.run_failed(subject, text)) == []
