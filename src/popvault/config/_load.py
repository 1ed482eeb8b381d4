"""load(): read, validate, merge [defaults], resolve paths, check across accounts."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final

from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import SettingsError

from popvault.config._environment import warn_about_unknown
from popvault.config._model import (
    DEFAULT_LOGIN_TIMEOUT,
    DEFAULT_MAX_SESSIONS_PER_RUN,
    DEFAULT_MIN_RATE,
    DEFAULT_PIPELINE_DEPTH,
    DEFAULT_PIPELINE_OCTETS,
    DEFAULT_PORTS,
    DEFAULT_RATE_WINDOW,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_TIMEOUT,
    OAUTH_SELECTING_KEYS,
    PASSWORD_KEYS,
    Account,
    Config,
    DaemonSettings,
    Retention,
    Schedule,
    Security,
    is_recent_mode,
)
from popvault.config._oauth import (
    check_password_auth,
    oauth_auth,
    provider_defaults,
    resolve_oauth,
    wants_oauth,
)
from popvault.config._schema import (
    CONTEXT,
    AccountEntry,
    AccountKeys,
    DaemonSection,
    LoadContext,
    Settings,
)
from popvault.config._secrets import warn_if_readable_by_others
from popvault.errors import ConfigError
from popvault.redaction import register

# The two ways to give the daemon's schedule; an account's own one replaces [defaults]'.
_SCHEDULE_KEYS: Final = ("every", "cron")
# SQLAlchemy: sqlite:///relative/path, sqlite:////absolute/path, optional ?query.
_SQLITE_URL_RE: Final = re.compile(r"(sqlite(?:\+\w+)?):///([^?]*)(\?.*)?", re.DOTALL)

# --- load ------------------------------------------------------------------------------------


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$POPVAULT_CONFIG``, else ``$XDG_CONFIG_HOME/popvault/config.toml``, else ``~/.config``."""
    explicit = environ.get("POPVAULT_CONFIG", "")
    if explicit:
        return Path(explicit).expanduser()
    return _xdg(environ, "XDG_CONFIG_HOME", ".config") / "popvault" / "config.toml"


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ["HOME"]) if environ.get("HOME") else Path.home()


def _xdg(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    """An XDG base folder: ``$VARIABLE``, else ``~/FALLBACK``.

    XDG Base Directory spec: a relative value is invalid and is ignored.
    """
    value = environ.get(variable, "")
    if value and Path(value).is_absolute():
        return Path(value)
    return _home(environ) / fallback


def default_archive_root(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/popvault/archive`` (default ``~/.local/share/popvault/archive``).

    Mail is data: out of the config folder, which dotfile sync and backups of
    settings pick up.
    """
    return _xdg(environ, "XDG_DATA_HOME", ".local/share") / "popvault" / "archive"


def default_ledger_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/popvault/popvault.sqlite3`` (default ``~/.local/state/popvault/``)."""
    return _xdg(environ, "XDG_STATE_HOME", ".local/state") / "popvault" / "popvault.sqlite3"


def load(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read and validate the config file (default: :func:`default_config_path`).

    ``environ`` replaces ``os.environ`` (for ``POPVAULT_*`` and ``POPVAULT_CONFIG``);
    ``overrides`` are explicit settings (``{"archive": {"root": "..."}}``) that beat
    the environment and the file. Raises :class:`ConfigError` for every problem.
    """
    env = os.environ if environ is None else environ
    given = Path(default_config_path(env) if path is None else path).expanduser()
    # The folder is resolved (no "..", no symlinked folder), the file name is not: relative
    # paths inside a symlinked config file stay relative to the folder the link is in.
    file = given.absolute().parent.resolve() / given.name
    _check_is_file(file)
    context = LoadContext(file=file, environ=env)
    warn_about_unknown(env)
    settings = _read_settings(context, overrides or {})
    config = _build(settings, file, env)
    _warn_about_inline_passwords(context)
    return config


def _check_is_file(file: Path) -> None:
    if file.is_dir():
        raise ConfigError("is a folder, not a config file", file=str(file))
    if not file.exists():
        raise ConfigError(
            f"no config file at {file}; `popvault init --config {file}` writes a commented"
            " example there to edit, or name another file with --config or POPVAULT_CONFIG",
            file=str(file),
        )


def _read_settings(context: LoadContext, overrides: Mapping[str, Any]) -> Settings:
    token = CONTEXT.set(context)
    try:
        return Settings(**overrides)
    except PydanticValidationError as exc:
        # Imported only here: a valid config (every run) never needs the messages, nor
        # the difflib and key tables they build.
        from popvault.config._messages import translate  # noqa: PLC0415

        # "from None": pydantic's own text quotes input values, which may be passwords.
        raise translate(exc, context) from None
    except SettingsError as exc:
        message = f"{exc} (check the POPVAULT_ environment variables)"
        raise ConfigError(message, file=str(context.file)) from None
    finally:
        CONTEXT.reset(token)


def _build(settings: Settings, file: Path, environ: Mapping[str, str]) -> Config:
    folder = file.parent
    _check_one_schedule(settings.defaults.model_fields_set, str(file), "[defaults]")
    state_home = _xdg(environ, "XDG_STATE_HOME", ".local/state")
    accounts = tuple(
        _resolve_account(_merge(settings.defaults, entry), folder, str(file), state_home)
        for entry in settings.accounts
    )
    _check_unique(accounts, str(file))
    _register_url_password(settings.ledger.url)
    # Given ones (file, environment, overrides) are relative to the file; the defaults
    # are the XDG data and state folders, never the config folder.
    given_url = "url" in settings.ledger.model_fields_set
    given_root = "root" in settings.archive.model_fields_set
    return Config(
        file=file,
        ledger_url=(
            _absolute_sqlite_url(settings.ledger.url, folder)
            if given_url
            else f"sqlite:///{default_ledger_path(environ)}"
        ),
        archive_root=(
            _absolute(settings.archive.root, folder)
            if given_root
            else default_archive_root(environ)
        ),
        accounts=accounts,
        daemon=_daemon(settings.daemon),
        lease_ttl=settings.ledger.lease,
        lease_heartbeat=settings.ledger.lease_heartbeat,
        keep_runs=settings.ledger.keep_runs,
    )


def _register_url_password(url: str) -> None:
    """A password in the ledger URL is a secret like the accounts' (redaction.py).

    Registered as written (percent-encoded, as it appears in the URL) and
    decoded (as a driver's error message may show it).
    """
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:  # a malformed URL: the ledger refuses it later, with its own error
        return
    if password:
        register(password)
        register(urllib.parse.unquote(password))


def _daemon(section: DaemonSection) -> DaemonSettings:
    return DaemonSettings(
        max_concurrent=section.max_concurrent,
        shutdown_timeout=section.shutdown_timeout,
        metrics=section.metrics,
        max_per_host=section.max_per_host,
    )


def _check_one_schedule(keys: Iterable[str], file: str, account: str) -> None:
    if set(_SCHEDULE_KEYS) <= set(keys):
        message = "set either every or cron, not both"
        raise ConfigError(message, file=file, account=account, key="cron")


def _schedule(raw: Mapping[str, Any]) -> Schedule:
    if "cron" in raw:
        return Schedule(every=None, cron=raw["cron"])
    return Schedule(every=raw["every"]) if "every" in raw else Schedule()


def _merge(defaults: AccountKeys, entry: AccountEntry) -> dict[str, Any]:
    """The entry's keys over the defaults'.

    A password key in the entry replaces all four of [defaults], and ``every`` or
    ``cron`` in the entry replaces both of [defaults]. How to sign in is one
    choice too: an entry with a password inherits no OAuth provider or client
    id, and an entry with ``provider``, ``oauth_client_id`` or
    ``oauth_token_endpoint`` inherits no password.
    """
    inherited = {key: getattr(defaults, key) for key in defaults.model_fields_set}
    given = entry.model_fields_set
    for group in (PASSWORD_KEYS, _SCHEDULE_KEYS, OAUTH_SELECTING_KEYS):
        if given.intersection(group):
            for key in group:
                inherited.pop(key, None)
    if given.intersection(PASSWORD_KEYS):
        for key in OAUTH_SELECTING_KEYS:
            inherited.pop(key, None)
    if given.intersection(OAUTH_SELECTING_KEYS):
        for key in PASSWORD_KEYS:
            inherited.pop(key, None)
    return inherited | {key: getattr(entry, key) for key in given}


def _resolve_account(
    given: Mapping[str, Any], folder: Path, file: str, state_home: Path
) -> Account:
    name: str = given["name"]
    raw = provider_defaults(given)
    for key in ("host", "username"):
        if key not in raw:
            message = "required key is missing (set it in the account or in [defaults])"
            raise ConfigError(message, file=file, account=name, key=key)
    _check_one_schedule(raw, file, name)
    _check_recent_mode(raw, file, name)
    security: Security = raw.get("security", "tls")
    allow_plaintext: bool = raw.get("allow_plaintext", False)
    if security == "plain" and not allow_plaintext:
        # Refused here rather than at login, so the user learns it before any connection.
        # APOP (RFC 1939 section 7) sends no password, but its MD5 digest with the
        # server's timestamp lets an eavesdropper guess the password offline.
        exposed = (
            "an MD5 digest of the password that an eavesdropper can use to guess it offline"
            if raw.get("auth") == "apop"
            else "the OAuth 2.0 access token unencrypted"
            if wants_oauth(raw)
            else "the password unencrypted"
        )
        message = (
            f'security = "plain" sends {exposed}; use "tls" or "starttls",'
            " or set allow_plaintext = true to accept that"
        )
        raise ConfigError(message, file=file, account=name, key="security")
    if wants_oauth(raw):
        oauth = resolve_oauth(
            raw,
            file=file,
            name=name,
            absolute=lambda value: _absolute(value, folder),
            state_home=state_home,
        )
        auth = oauth_auth(raw, oauth.provider, file, name)
        sign_in: dict[str, Any] = {
            "oauth": oauth,
            "password_source": f"OAuth 2.0 ({oauth.provider.name}, token file {oauth.token_file})",
        }
    else:
        check_password_auth(raw, file, name)
        auth = raw.get("auth", "auto")
        sign_in = _password_fields(raw, folder, file, name)
    return Account(
        name=name,
        host=raw["host"],
        port=raw.get("port", DEFAULT_PORTS[security]),
        security=security,
        username=raw["username"],
        auth=auth,
        ca_file=_ca_file(raw.get("ca_file"), folder, file, name),
        allow_plaintext=allow_plaintext,
        timeout=raw.get("timeout", DEFAULT_TIMEOUT),
        format=raw.get("format", "maildir"),
        path=raw.get("path", name),
        retention=raw.get("retention", Retention(mode="keep")),
        schedule=_schedule(raw),
        trust_list_sizes=raw.get("trust_list_sizes", True),
        max_message_size=raw.get("max_message_size"),
        login_timeout=raw.get("login_timeout", DEFAULT_LOGIN_TIMEOUT),
        session_timeout=raw.get("session_timeout", DEFAULT_SESSION_TIMEOUT),
        min_rate=raw.get("min_rate", DEFAULT_MIN_RATE),
        rate_window=raw.get("rate_window", DEFAULT_RATE_WINDOW),
        pipeline_depth=raw.get("pipeline_depth", DEFAULT_PIPELINE_DEPTH),
        pipeline_octets=raw.get("pipeline_octets", DEFAULT_PIPELINE_OCTETS),
        max_sessions_per_run=raw.get("max_sessions_per_run", DEFAULT_MAX_SESSIONS_PER_RUN),
        **sign_in,
    )


def _check_recent_mode(raw: Mapping[str, Any], file: str, name: str) -> None:
    """Refuse Gmail's ``recent:`` login with a retention policy that deletes.

    ``recent:user@gmail.com`` lists the last 30 days of mail whatever other
    clients downloaded (issue 12), so it shows messages another client or
    device relies on finding on the server; deleting what it lists would take
    them from everyone. Whatever the retention is, [defaults] or the account's.
    """
    username: str = raw["username"]
    retention: Retention = raw.get("retention", Retention(mode="keep"))
    if retention.mode == "keep" or not is_recent_mode(username):
        return
    written = retention.written or retention.mode
    message = (
        f"username {username!r} uses Gmail's recent: mode (the last 30 days of mail, whatever "
        f"other clients downloaded), which popvault never combines with deleting server "
        f'copies (retention = "{written}"): set retention = "keep", or log in without '
        '"recent:"'
    )
    raise ConfigError(message, file=file, account=name, key="retention")


def _ca_file(value: str | None, folder: Path, file: str, name: str) -> Path | None:
    if value is None:
        return None
    path = _absolute(value, folder)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", file=file, account=name, key="ca_file")
    return path


def _password_fields(raw: Mapping[str, Any], folder: Path, file: str, name: str) -> dict[str, Any]:
    given = [key for key in PASSWORD_KEYS if key in raw]
    if len(given) != 1:
        found = f"found {', '.join(given)}" if given else "found none"
        message = f"set exactly one of {', '.join(PASSWORD_KEYS)} ({found})"
        if not given:
            message += ", or sign in with OAuth 2.0 instead: set provider or oauth_client_id"
        raise ConfigError(message, file=file, account=name, key=given[-1] if given else None)
    key = given[0]
    value = raw[key]
    if key == "password":
        return {"password": value, "password_source": "password (inline)"}
    if key == "password_file":
        path = _absolute(value, folder)
        return {"password_file": path, "password_source": f"password_file {path}"}
    if key == "password_command":
        # Only the program's name: the rest of the command line may hold something private.
        program = value.split()[0] if value.split() else "?"
        return {"password_command": value, "password_source": f"password_command {program} ..."}
    return {"password_env": value, "password_source": f"password_env {value}"}


def _check_unique(accounts: Iterable[Account], file: str) -> None:
    """No two accounts share a name, or archive folders where one holds the other.

    In time linear in the accounts (times the folders' depth): a config of
    10,000 accounts compared pair by pair took 50 million comparisons, 25 s
    of every command's start. An earlier folder holds this one when it is
    one of this one's prefixes (or the same); this one holds an earlier one
    when it is among the earlier folders' proper prefixes.
    """
    names: set[str] = set()
    folders: dict[tuple[str, ...], Account] = {}
    holders: dict[tuple[str, ...], Account] = {}  # each proper prefix of an earlier folder
    for account in accounts:
        if account.name in names:
            raise ConfigError("duplicate account name", file=file, account=account.name, key="name")
        names.add(account.name)
        # Case-folded: on a case-insensitive file system "Work" and "work" are one folder.
        parts = tuple(part.casefold() for part in PurePosixPath(account.path).parts)
        prefixes = [parts[:length] for length in range(len(parts) + 1)]
        other = next((folders[p] for p in prefixes if p in folders), None) or holders.get(parts)
        if other is not None:
            message = (
                f"archive folder {account.path!r} overlaps account {other.name!r}'s folder"
                f" {other.path!r}; give each account its own folder"
            )
            raise ConfigError(message, file=file, account=account.name, key="path")
        folders[parts] = account
        for prefix in prefixes[:-1]:
            holders.setdefault(prefix, account)


def _absolute(value: str, folder: Path) -> Path:
    """``value`` with ``~`` expanded, relative to the config file's folder (not the cwd)."""
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else folder / path))


def _absolute_sqlite_url(url: str, folder: Path) -> str:
    match = _SQLITE_URL_RE.fullmatch(url)
    if match is None:
        return url  # another database, or sqlite:// (in memory)
    scheme, path, query = match[1], match[2], match[3] or ""
    if path in ("", ":memory:") or path.startswith(("/", "file:")):
        return url
    return f"{scheme}:///{_absolute(path, folder)}{query}"


def _warn_about_inline_passwords(context: LoadContext) -> None:
    data = context.toml_data
    tables = [data.get("defaults"), *(data.get("accounts") or [])]
    if any(isinstance(table, dict) and "password" in table for table in tables):
        warn_if_readable_by_others(context.file, "holds an inline password")
