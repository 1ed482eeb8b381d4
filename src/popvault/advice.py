"""What to do about an account's trouble: the advice ``popvault status`` gives.

An :class:`Advice` is a problem (what happened) and an action (what to do
about it). Actions name two kinds of things, always in backticks and nothing
else in backticks: a command (`` `popvault run --account NAME` ``) or a config
key (`` `password_file` ``, `` `security = "tls"` ``, `` `[ledger] lease` ``).
tests/test_status_advice.py parses every such span of every advice with the
CLI's parser and the config's schema, so an advice cannot name a command or
a key that does not exist.

A failed run is classified from its recorded error text: the ledger keeps
the text (``runs.error``), not the exception's class. Each :data:`ERROR_RULES`
entry matches words that the error's constructor writes (popvault.errors,
pop3/client.py, pop3/sasl.py, oauth/, config/_secrets.py, store/); the tests
raise those errors for real and check that each still lands on its rule.
Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from popvault.config import Account

# The secret sources an account may log in with (config/_schema.py, AccountKeys),
# in the order config/_load.py prefers them.
PASSWORD_KEYS: Final = ("password", "password_env", "password_file", "password_command")
# The keys whose failure config/_secrets.py reports at run time (a ConfigError naming
# the key): the password sources and the OAuth client's secret and key files.
SECRET_KEYS: Final = frozenset(
    {
        *PASSWORD_KEYS,
        "oauth_client_secret",
        "oauth_client_secret_env",
        "oauth_client_secret_file",
        "oauth_client_secret_command",
        "oauth_certificate_file",
        "oauth_private_key_file",
        "oauth_token_file",
    }
)


@dataclass(frozen=True, slots=True)
class Advice:
    """One thing to act on: its ``kind`` (stable, for scripts), what happened, what to do."""

    kind: str
    problem: str
    action: str


@dataclass(frozen=True, slots=True)
class Subject:
    """The account an advice is about, as the action texts name it."""

    account: Account
    config_file: Path

    @property
    def name(self) -> str:
        """The account's name."""
        return self.account.name

    @property
    def where(self) -> str:
        """``account 'NAME' in /path/config.toml``: where its keys are written."""
        return f"account {self.name!r} in {self.config_file}"


def command(*words: str) -> str:
    """A popvault command line in backticks (account names need no quoting: [A-Za-z0-9_.-])."""
    return "`" + " ".join(("popvault", *words)) + "`"


def run_now(name: str, *flags: str) -> str:
    """`` `popvault run --account NAME [flags]` ``: the account's run, now."""
    return command("run", "--account", name, *flags)


def login_key(account: Account) -> str | None:
    """The key the account's password comes from; None for an OAuth account."""
    if account.oauth is not None:
        return None
    return next((key for key in PASSWORD_KEYS if getattr(account, key) is not None), None)


# -- the actions, one per kind of run failure -------------------------------------------

Action = Callable[[Subject, "re.Match[str]"], str]


def _check_login(subject: Subject, _match: re.Match[str]) -> str:
    name = subject.name
    key = login_key(subject.account)
    if key is None:
        return (
            f"{command('auth', 'login', name)} signs the account in again "
            f"({command('auth', 'status', '--account', name)} shows its tokens)"
        )
    return (
        f"check the password that `{key}` gives and `username` of {subject.where} (many "
        "providers want an app password, or POP3 turned on in their settings); then "
        f"{run_now(name)}"
    )


def _check_login_unsure(subject: Subject, match: re.Match[str]) -> str:
    return f"the server did not say why; it may be the password: {_check_login(subject, match)}"


def _server_refused_login(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "the password is not to blame: the mailbox or the server refused (disabled, locked, "
        f"under maintenance); ask the provider if it lasts; {run_now(subject.name)} tries again"
    )


def _server_busy(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "nothing to change: the server asked to come back later ([IN-USE]: another client, a "
        "phone or mail program, holds the mailbox; [LOGIN-DELAY]; [SYS/TEMP]). Close other "
        f"POP3 clients of this mailbox; {run_now(subject.name)} tries again"
    )


def _check_certificate(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"`host` of {subject.where} must be the name the server's certificate is for; a "
        "server whose certificate a private CA signed needs `ca_file` (that CA's PEM file); "
        f"then {run_now(subject.name)}"
    )


def _check_ca_file(subject: Subject, _match: re.Match[str]) -> str:
    return f"fix `ca_file` of {subject.where} (a readable PEM file); then {run_now(subject.name)}"


def _check_tls(subject: Subject, _match: re.Match[str]) -> str:
    # RFC 8314 section 3.3: implicit TLS on 995; RFC 2595 section 4: STLS on 110.
    account = subject.account
    return (
        f"`security` and `port` of {subject.where} must agree (now {account.security!r} on "
        f'port {account.port}): `security = "tls"` for port 995, `security = "starttls"` '
        f"for port 110; then {run_now(subject.name)}"
    )


def _check_plaintext(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f'use TLS: `security = "tls"` (port 995) or `security = "starttls"` in '
        f"{subject.where}; only on a network you trust, `allow_plaintext = true`; then "
        f"{run_now(subject.name)}"
    )


def _check_auth_method(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"set `auth` of {subject.where} to a method the server offers (the error lists them), "
        f'or `auth = "auto"`; then {run_now(subject.name)}'
    )


def _server_identity(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"the server could not prove it knows the password: check that `host` of "
        f"{subject.where} is the real server (not a proxy on the path), and do not lower "
        "`auth` to get past it"
    )


def _check_host(subject: Subject, _match: re.Match[str]) -> str:
    account = subject.account
    return (
        f"check `host` and `port` of {subject.where} (now {account.host}:{account.port}) and "
        f"the network (DNS, a firewall); then {run_now(subject.name)}"
    )


def _check_timeouts(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "a slow server or network: if it lasts, raise `timeout` (each read), "
        "`login_timeout` (greeting and login) or `session_timeout` (the whole session), or "
        f"lower `min_rate`, of {subject.where}; {run_now(subject.name)} tries again"
    )


def _try_again(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"a network or server failure: {run_now(subject.name)} tries again; "
        f"{command('--log-level', 'debug', 'run', '--account', subject.name)} shows the session"
    )


def _sign_in_again(subject: Subject, _match: re.Match[str]) -> str:
    return f"{command('auth', 'login', subject.name)} signs the account in again"


def _oauth_later(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "nothing to change: the provider's sign-in server could not be reached or is failing; "
        f"{run_now(subject.name)} tries again"
    )


def _check_oauth_client(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"check `provider`, `oauth_client_id` and `oauth_client_secret` (or "
        f"`oauth_client_secret_file`) of {subject.where}; then "
        f"{command('auth', 'login', subject.name)}"
    )


def _fix_key(subject: Subject, match: re.Match[str]) -> str:
    key = match["key"]
    if key not in SECRET_KEYS:
        return f"fix {subject.config_file} as the error says; then {run_now(subject.name)}"
    return f"fix `{key}` of {subject.where} as the error says; then {run_now(subject.name)}"


def _wait_for_other_run(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "nothing to do: another `popvault run` or daemon was archiving the account; "
        f"{run_now(subject.name)} goes ahead once it is done"
    )


def _follow_error(subject: Subject, _match: re.Match[str]) -> str:
    return (
        'nothing was archived: the error names the ways out (README: "A lost ledger", '
        f'"Several daemons: one shared archive"); then {run_now(subject.name)}'
    )


def _check_archive(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "check the archive folder the error names (`[archive] root`, the account's `path`): "
        f"disk space, permissions, is its disk mounted?; then {run_now(subject.name)}"
    )


def _upgrade_ledger(_subject: Subject, _match: re.Match[str]) -> str:
    return f"{command('db', 'upgrade')} brings the ledger's schema up to date"


def _message_problems(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"the next runs try those messages again ({run_now(subject.name)}); after 3 failed "
        f"runs a message is set aside, and {run_now(subject.name, '--retry-failed')} tries it"
    )


def _report_bug(subject: Subject, _match: re.Match[str]) -> str:
    return (
        "a bug in popvault: please report it with what "
        f"{command('--log-level', 'debug', 'run', '--account', subject.name)} prints"
    )


def _unknown(subject: Subject, _match: re.Match[str]) -> str:
    return (
        f"{command('--log-level', 'debug', 'run', '--account', subject.name)} tries again and "
        "shows the session"
    )


@dataclass(frozen=True, slots=True)
class ErrorRule:
    """A kind of run failure: the words its error text has, and what to do about it."""

    kind: str
    pattern: re.Pattern[str]
    action: Action


def _rule(kind: str, pattern: str, action: Action) -> ErrorRule:
    return ErrorRule(kind, re.compile(pattern), action)


# First match wins: the more specific words first. The "source" of each is the
# code that writes the words (keep them in step; the tests check each one).
ERROR_RULES: Final[tuple[ErrorRule, ...]] = (
    # sync._close_run: a run whose only trouble was some messages.
    _rule("message_problems", r"\d+ message problem\(s\)", _message_problems),
    # errors.ReauthorizationRequired (its text names the command itself).
    _rule("oauth_sign_in", r"`popvault auth login ", _sign_in_again),
    # oauth/flows.py, oauth/tokens.py: OAuthUnavailable.
    _rule(
        "oauth_unavailable",
        r"authorization server (?:is failing|did not answer|answered HTTP (?:5\d\d|429)\b)"
        r"|cannot reach the authorization server|another process has held .* for over",
        _oauth_later,
    ),
    # oauth/flows.py: OAuthError, a client the provider does not accept.
    _rule(
        "oauth_client",
        r"authorization server (?:refused|answered HTTP)|the token endpoint",
        _check_oauth_client,
    ),
    # errors.AuthError.meaning, certain ([AUTH]) and not.
    _rule("login_refused", r"the server refused the credentials", _check_login),
    _rule("login_unsure", r"the server refused the login without saying why", _check_login_unsure),
    # errors.LoginRefused.meaning.
    _rule(
        "login_refused_by_server",
        r"the server refused the login, not because of the credentials",
        _server_refused_login,
    ),
    # errors.ServerError: "server said '-ERR [CODE] ..." (RFC 2449 section 8, RFC 3206 section 4).
    _rule("server_busy", r"server said [\"']-ERR \[(?:IN-USE|LOGIN-DELAY|SYS/TEMP)", _server_busy),
    # pop3/client.py _handshake and pop3/tls.py.
    _rule("tls_certificate", r"the TLS certificate of .* failed verification", _check_certificate),
    _rule("ca_file", r"cannot load the CA file", _check_ca_file),
    _rule("tls", r"TLS handshake with .* failed|TLS error (?:reading|sending)", _check_tls),
    # pop3/client.py _check_login_policy and _starttls.
    _rule(
        "plaintext_refused",
        r"allow_plaintext is off|does not offer STLS; refusing to continue in clear text",
        _check_plaintext,
    ),
    # pop3/sasl.py: the server's SCRAM signature (RFC 5802 section 5).
    _rule(
        "server_identity",
        r"the server's signature is wrong|accepted the login without proving",
        _server_identity,
    ),
    _rule(
        "auth_method",
        r"but the server does not offer SASL|offers neither OAUTHBEARER|does not support APOP",
        _check_auth_method,
    ),
    # config/_secrets.py: a password source that failed ("..., key 'password_file': ...").
    _rule("config_key", r"key '(?P<key>[a-z_]+)'", _fix_key),
    _rule("connect", r"cannot connect to ", _check_host),
    # pop3/client.py Pop3Timeout, pop3/pace.py deadlines and minimum rate.
    _rule(
        "timeout",
        r"timed out|no answer from .* within|took longer than|was too slow",
        _check_timeouts,
    ),
    _rule(
        "connection_lost",
        r"the server closed the connection|reading from |sending [A-Z]+ to |expected a greeting",
        _try_again,
    ),
    # ledger.AccountBusy.
    _rule("account_busy", r"being archived by another popvault process", _wait_for_other_run),
    # archive_check.py ArchiveNotInLedger, store/marker.py ArchiveMismatch.
    _rule(
        "archive_not_this_ledger",
        r"knows no message of this account|belongs to another popvault ledger"
        r"|the ledger's files are not in this folder|is not a popvault marker",
        _follow_error,
    ),
    # store/durable.py store_error and its checks.
    _rule(
        "archive",
        r"cannot (?:create|write|open|publish|inspect|use|rename|sync) |is its disk mounted",
        _check_archive,
    ),
    _rule("ledger_schema", r"`popvault db upgrade`", _upgrade_ledger),
    # sync._fail: an exception that is not a PopvaultError.
    _rule("internal", r"internal error: ", _report_bug),
)
UNKNOWN: Final = ErrorRule("unknown", re.compile(""), _unknown)


def classify(error: str) -> tuple[ErrorRule, re.Match[str]]:
    """The first rule whose words the error text has (:data:`UNKNOWN` if none)."""
    for rule in ERROR_RULES:
        match = rule.pattern.search(error)
        if match is not None:
            return rule, match
    match = UNKNOWN.pattern.search(error)
    assert match is not None  # noqa: S101 - the empty pattern matches any text
    return UNKNOWN, match


def without_account(error: str, name: str) -> str:
    """The error without its ``account 'NAME': `` prefix (the status line names the account)."""
    return error.removeprefix(f"account {name!r}: ")


def run_failed(subject: Subject, error: str) -> Advice:
    """Advice for the account's last run, which failed with ``error``."""
    rule, match = classify(error)
    problem = f"the last run failed: {without_account(error, subject.name)}"
    return Advice(rule.kind, problem, rule.action(subject, match))


def interrupted(name: str, started_at: datetime | None) -> Advice:
    """The last run's process was killed or crashed before it recorded its outcome."""
    when = "" if started_at is None else f", started {when_utc(started_at)},"
    return Advice(
        "interrupted",
        f"the last run{when} was interrupted: its process was killed or crashed",
        "nothing is lost: what it archived is kept and the next run settles the rest "
        f"({run_now(name)}, or the daemon's next run)",
    )


def never_run(name: str) -> Advice:
    """A configured account no run has archived yet (and no daemon plans to)."""
    return Advice(
        "never_run",
        "never archived",
        f"{run_now(name)} archives it now ({run_now(name, '--dry-run')} shows what it would "
        f"fetch), or {command('daemon')} on its schedule",
    )


def failing(name: str, *, set_aside: int, retrying: int, example: str | None) -> Advice | None:
    """Messages that failed on their own: some retried by the next runs, some set aside.

    ``example`` is one failure's last error ("UIDL 'x': ..."), shown with the problem.
    """
    if not set_aside and not retrying:
        return None
    parts = []
    if set_aside:
        parts.append(f"{set_aside} message(s) set aside after failing 3 runs")
    if retrying:
        parts.append(f"{retrying} message(s) failing, tried again by each run")
    problem = "; ".join(parts) + ("" if example is None else f" (last error: {example})")
    if set_aside:
        action = (
            f"once the cause is fixed, {run_now(name, '--retry-failed')} tries the messages "
            "set aside again"
        )
    else:
        action = (
            f"the next run tries them again ({run_now(name)}); after 3 failures they are set aside"
        )
    return Advice("failing_messages", problem, action)


def held(name: str, count: int) -> Advice:
    """Server copies retention keeps until released: the server sent other octets than it listed."""
    return Advice(
        "held",
        f"{count} server copy(ies) held, never deleted until released: the server sent other "
        "octets than it listed",
        f"{command('held', '--account', name)} lists them; once the archived copies look right "
        f"({command('verify', '--account', name)}), "
        f"{command('held', '--release', '--account', name)} lets retention delete them",
    )


def stale_lease(name: str, holder: str, expires_at: datetime) -> Advice:
    """A lease whose holder's process is gone (PostgreSQL): the account waits for its expiry."""
    return Advice(
        "stale_lease",
        f"the account's lease is held by {holder}, a process that is gone",
        f"no run of the account starts until the lease expires at {when_utc(expires_at)} UTC "
        f"(`[ledger] lease`); then {run_now(name)} or any daemon takes it over and settles "
        "what the dead run left",
    )


def daemon_retry(next_run_at: datetime, failures: int, reason: str | None) -> str:
    """The sentence that says when a running daemon tries a failing account again."""
    why = "" if reason is None else f": {reason}"
    return (
        f"The daemon tries again at {when_utc(next_run_at)} UTC "
        f"({failures} failed run(s) in a row{why})"
    )


def when_utc(value: datetime) -> str:
    """A time as status prints it (UTC, to the second)."""
    return value.strftime("%Y-%m-%d %H:%M:%S")
