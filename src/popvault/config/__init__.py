"""The configuration: the one reader of the config file and of secrets.

``load(path)`` reads a TOML file, lets ``POPVAULT_``-prefixed environment
variables override it (``__`` between levels: ``POPVAULT_LEDGER__URL``), merges
``[defaults]`` into every ``[[accounts]]`` entry and returns a frozen
:class:`Config` whose paths are absolute. Every problem is a
:class:`~popvault.errors.ConfigError` naming the file, the account and the key.

Passwords are not read at load time: :func:`read_password` resolves one account's
secret when a run needs it, so ``popvault status`` works without any secret.
Precedence: explicit ``overrides`` > environment > TOML file > built-in defaults.

Modules: ``_model`` (the public types and duration parsers), ``_schema`` (the
file's pydantic-settings schema and sources), ``_load`` (load and cross-account
checks), ``_messages`` (pydantic errors -> ConfigError), ``_secrets`` (passwords).
"""

from popvault.config._cron import crontab_fields
from popvault.config._load import (
    default_archive_root,
    default_config_path,
    default_ledger_path,
    load,
)
from popvault.config._model import (
    Account,
    ArchiveFormat,
    AuthMethod,
    Config,
    DaemonSettings,
    OAuthGrant,
    OAuthSettings,
    Retention,
    Schedule,
    SecretSource,
    Security,
    format_seconds,
    parse_every,
    parse_retention,
    parse_timeout,
    redact_url,
    sqlite_path,
)
from popvault.config._secrets import read_client_secret, read_password

__all__ = [
    "Account",
    "ArchiveFormat",
    "AuthMethod",
    "Config",
    "DaemonSettings",
    "OAuthGrant",
    "OAuthSettings",
    "Retention",
    "Schedule",
    "SecretSource",
    "Security",
    "crontab_fields",
    "default_archive_root",
    "default_config_path",
    "default_ledger_path",
    "format_seconds",
    "load",
    "parse_every",
    "parse_retention",
    "parse_timeout",
    "read_client_secret",
    "read_password",
    "redact_url",
    "sqlite_path",
]
