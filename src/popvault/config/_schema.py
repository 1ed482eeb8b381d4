"""The config file's schema, read with pydantic-settings (TOML + environment)."""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Self, TypeGuard

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from popvault.config._cron import crontab_fields
from popvault.config._model import (
    DEFAULT_ARCHIVE_ROOT,
    DEFAULT_KEEP_RUNS,
    DEFAULT_LEASE_HEARTBEAT,
    DEFAULT_LEASE_TTL,
    DEFAULT_LEDGER_URL,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    MAX_PIPELINE_DEPTH,
    MAX_SESSIONS_PER_RUN,
    ArchiveFormat,
    AuthMethod,
    OAuthGrant,
    Retention,
    Security,
    format_seconds,
    parse_every,
    parse_keep_runs,
    parse_rate,
    parse_retention,
    parse_size,
    parse_timeout,
    parse_window_size,
)
from popvault.errors import ConfigError
from popvault.oauth.providers import PresetName

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
_URL_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.*", re.DOTALL)


def is_account_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid account name (also a safe default folder name)."""
    return isinstance(value, str) and bool(_NAME_RE.fullmatch(value)) and value not in (".", "..")


def _port(value: object) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    # TCP ports are 16 bits; 0 means "any" and cannot be connected to.
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise ValueError(f"invalid port {value!r} (a whole number from 1 to 65535)")


def _account_name(value: str) -> str:
    if not is_account_name(value):
        raise ValueError(
            f"invalid account name {value!r} (1-64 characters from A-Z a-z 0-9 _ . -,"
            " not '.' or '..')"
        )
    return value


def _folder(value: str) -> str:
    """A folder under the archive root: relative, no ``..``, normalised to ``a/b``."""
    parts = [part for part in value.split("/") if part]
    if value.startswith("/") or "\\" in value or "\0" in value:
        raise ValueError(f"invalid path {value!r}: must be a relative folder under archive.root")
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"invalid path {value!r}: must not be empty or contain '.' or '..'")
    return "/".join(parts)


def _one_line(value: str) -> str:
    # A CR or LF would end the POP3 command line early (RFC 1939 section 3).
    if not value or any(char in value for char in "\r\n\0"):
        raise ValueError("must be one non-empty line")
    return value


def _host(value: str) -> str:
    # RFC 1035 section 2.3.4 / RFC 1123: a name is at most 253 characters of text.
    if not 0 < len(value) <= 253 or any(char.isspace() or char in "/@" for char in value):
        raise ValueError(f"invalid host {value!r}")
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"invalid environment variable name {value!r}")
    return value


def _url(value: str) -> str:
    if not _URL_RE.fullmatch(value):
        raise ValueError("must be a SQLAlchemy URL such as sqlite:///popvault.sqlite3")
    return value


def _cron(value: str) -> str:
    """A 5-field crontab line, checked by the scheduler that will run it."""
    # Imported here: only a config that uses cron pays for loading APScheduler.
    from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415

    text = " ".join(value.split())
    try:
        CronTrigger(**crontab_fields(text))
    except ValueError as exc:
        raise ValueError(f"invalid cron {value!r}: {exc}") from None
    return text


# Threads that each hold a POP3 session; past this the server, not popvault, is the limit.
_MAX_CONCURRENT = 64


def _max_concurrent(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_CONCURRENT:
        return value
    raise ValueError(f"invalid max_concurrent {value!r} (a whole number from 1 to 64)")


# Far above any provider's limit of sessions per client address (Gmail's is 15).
_MAX_PER_HOST = 1000


def _max_per_host(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_PER_HOST:
        return value
    raise ValueError(
        f"invalid max_per_host {value!r} (a whole number from 1 to {_MAX_PER_HOST}; "
        "leave it out for no bound)"
    )


_LISTEN_RE: Final = re.compile(r"(?P<host>[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")


def _listen_address(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` -> ``("127.0.0.1", 9464)``; an IPv4 address or a host name."""
    match = _LISTEN_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(
            f"invalid metrics address {value!r} (use HOST:PORT, e.g. 127.0.0.1:9464;"
            " IPv6 addresses are not supported)"
        )
    return match["host"], _port(match["port"])


Timeout = Annotated[float, PlainValidator(parse_timeout)]
Interval = Annotated[float, PlainValidator(parse_every)]
Cron = Annotated[str, AfterValidator(_cron)]
RetentionValue = Annotated[Retention, PlainValidator(parse_retention)]


def _endpoint(value: str) -> str:
    """An OAuth endpoint: https, or http only to this machine (a local test server)."""
    parts = urllib.parse.urlsplit(value)
    local = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ValueError("must be an https:// URL (http:// only to 127.0.0.1 or localhost)")
    if not parts.hostname:
        raise ValueError("must be a URL with a host name")
    return value


Port = Annotated[int, PlainValidator(_port)]
OneLine = Annotated[str, AfterValidator(_one_line)]


# --- the file's schema (pydantic-settings); every level forbids unknown keys ----------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LedgerSection(_Section):
    url: Annotated[str, AfterValidator(_url)] = DEFAULT_LEDGER_URL
    lease: Timeout = DEFAULT_LEASE_TTL
    lease_heartbeat: Timeout = DEFAULT_LEASE_HEARTBEAT
    keep_runs: Annotated[float | None, PlainValidator(parse_keep_runs)] = DEFAULT_KEEP_RUNS

    @model_validator(mode="after")
    def _well_inside_the_lease(self) -> Self:
        # After the model, not on the field: a lease given alone is checked against
        # the default heartbeat too.
        if self.lease_heartbeat > self.lease / 2:
            raise ValueError(
                f"lease_heartbeat ({format_seconds(self.lease_heartbeat)}) must be at most half "
                f"of lease ({format_seconds(self.lease)}), so that a late renewal is tried "
                "again before the lease runs out"
            )
        return self


class _ArchiveSection(_Section):
    root: OneLine = DEFAULT_ARCHIVE_ROOT


class DaemonSection(_Section):
    """``[daemon]``: settings of ``popvault daemon`` only."""

    max_concurrent: Annotated[int, PlainValidator(_max_concurrent)] = DEFAULT_MAX_CONCURRENT
    shutdown_timeout: Timeout = DEFAULT_SHUTDOWN_TIMEOUT
    metrics: Annotated[tuple[str, int], PlainValidator(_listen_address)] | None = None
    max_per_host: Annotated[int, PlainValidator(_max_per_host)] | None = None


class AccountKeys(_Section):
    """Every key an account may take from ``[defaults]``; unset means "not given here"."""

    host: Annotated[str, AfterValidator(_host)] | None = None
    port: Port | None = None
    security: Security | None = None
    username: OneLine | None = None
    password: Annotated[SecretStr, Field(min_length=1)] | None = None
    password_env: Annotated[str, AfterValidator(_env_name)] | None = None
    password_file: OneLine | None = None
    password_command: OneLine | None = None
    auth: AuthMethod | None = None
    ca_file: OneLine | None = None
    allow_plaintext: bool | None = None
    trust_list_sizes: bool | None = None
    max_message_size: Annotated[int, PlainValidator(parse_size)] | None = None
    login_timeout: Timeout | None = None
    session_timeout: Timeout | None = None
    min_rate: Annotated[int, PlainValidator(parse_rate)] | None = None
    rate_window: Timeout | None = None
    pipeline_depth: Annotated[int, Field(ge=1, le=MAX_PIPELINE_DEPTH)] | None = None
    pipeline_octets: Annotated[int, PlainValidator(parse_window_size)] | None = None
    max_sessions_per_run: Annotated[int, Field(ge=1, le=MAX_SESSIONS_PER_RUN)] | None = None
    timeout: Timeout | None = None
    format: ArchiveFormat | None = None
    retention: RetentionValue | None = None
    every: Interval | None = None
    cron: Cron | None = None
    # OAuth 2.0 sign-in (issue 10): a provider preset and the user's own client id,
    # every preset value overridable (see README "Sign-in with OAuth 2.0").
    provider: PresetName | None = None
    oauth_client_id: OneLine | None = None
    oauth_client_secret: Annotated[SecretStr, Field(min_length=1)] | None = None
    oauth_client_secret_env: Annotated[str, AfterValidator(_env_name)] | None = None
    oauth_client_secret_file: OneLine | None = None
    oauth_client_secret_command: OneLine | None = None
    oauth_certificate_file: OneLine | None = None
    oauth_private_key_file: OneLine | None = None
    oauth_tenant: OneLine | None = None
    oauth_grant: OAuthGrant | None = None
    oauth_scopes: tuple[OneLine, ...] | None = None
    oauth_authorization_endpoint: Annotated[str, AfterValidator(_endpoint)] | None = None
    oauth_token_endpoint: Annotated[str, AfterValidator(_endpoint)] | None = None
    oauth_device_endpoint: Annotated[str, AfterValidator(_endpoint)] | None = None
    oauth_revocation_endpoint: Annotated[str, AfterValidator(_endpoint)] | None = None
    oauth_token_file: OneLine | None = None
    xoauth2_two_step: bool | None = None


class AccountEntry(AccountKeys):
    name: Annotated[str, AfterValidator(_account_name)]
    path: Annotated[str, AfterValidator(_folder)] | None = None


class Settings(BaseSettings):
    """The whole file, before [defaults] are merged and paths resolved."""

    model_config = SettingsConfigDict(
        env_prefix="POPVAULT_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
    )

    ledger: _LedgerSection = _LedgerSection()
    archive: _ArchiveSection = _ArchiveSection()
    daemon: DaemonSection = DaemonSection()
    defaults: AccountKeys = AccountKeys()
    accounts: tuple[AccountEntry, ...] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings takes no file path at instantiation: load() puts this call's
        # file and environment into a context variable, and the sources are built from it.
        context = CONTEXT.get()
        env = _EnvSource(settings_cls, context.environ)
        return init_settings, env, _TomlSource(settings_cls, context)


@dataclass
class LoadContext:
    """One load() call's inputs for the sources, and the raw TOML for error messages."""

    file: Path
    environ: Mapping[str, str]
    toml_data: dict[str, Any] = field(default_factory=dict)


CONTEXT: ContextVar[LoadContext] = ContextVar("popvault_config_load")


class _EnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Same shape as the base class: names folded to lower case (case_sensitive is off).
        return {name.lower(): value for name, value in self._environ.items() if value}


class _TomlSource(TomlConfigSettingsSource):
    """The TOML source, turning unreadable or malformed files into ConfigError."""

    def __init__(self, settings_cls: type[BaseSettings], context: LoadContext) -> None:
        self._file = context.file
        super().__init__(settings_cls, toml_file=context.file)
        context.toml_data = self.toml_data

    def _read_file(self, file_path: Path | Any) -> dict[str, Any]:
        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:  # its text carries "(at line N, column M)"
            raise ConfigError(f"not valid TOML: {exc}", file=str(self._file)) from None
        except UnicodeDecodeError:
            raise ConfigError(
                "not valid TOML: the file is not UTF-8", file=str(self._file)
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=str(self._file)) from None
