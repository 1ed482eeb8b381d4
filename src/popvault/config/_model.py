"""The resolved, public configuration types and the duration parsers."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from popvault.errors import ConfigError
from popvault.oauth.providers import OAuthProvider

# The schema's placeholders only: load() gives a config that does not set
# [ledger] url or [archive] root the XDG state and data folders instead
# (default_ledger_path, default_archive_root), never the config file's folder.
DEFAULT_LEDGER_URL: Final = "sqlite:///popvault.sqlite3"
DEFAULT_ARCHIVE_ROOT: Final = "archive"
DEFAULT_TIMEOUT: Final = 60.0
# RFC 8314 section 3.3 (pop3s, implicit TLS) and RFC 1939 section 3 (POP3, also used for STLS).
DEFAULT_PORTS: Final[Mapping[str, int]] = {"tls": 995, "starttls": 110, "plain": 110}
PASSWORD_KEYS: Final = ("password", "password_env", "password_file", "password_command")
# An account signs in with OAuth 2.0 (issue 10) when it sets one of these (or
# inherits them from [defaults] without a password of its own).
OAUTH_SELECTING_KEYS: Final = ("provider", "oauth_client_id", "oauth_token_endpoint")
OAUTH_SECRET_KEYS: Final = (
    "oauth_client_secret",
    "oauth_client_secret_env",
    "oauth_client_secret_file",
    "oauth_client_secret_command",
)
# socket.settimeout() overflows on absurd values, and a timeout over a day is a typo.
_MAX_TIMEOUT: Final = 86_400.0
_UNIT_SECONDS: Final[Mapping[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIMEOUT_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)")
# "50M", "1.5 GiB", "800k", "123456" (octets): binary units, as mail sizes go.
_SIZE_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:([kmgt])(?:i?b)?|b?)", re.IGNORECASE)
_SIZE_UNITS: Final = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Smaller than any real message with headers: a limit below it is a typo.
_MIN_MESSAGE_SIZE: Final = 1 << 10
# The defaults of popvault.pop3.pace, restated here (config imports no pop3);
# a test keeps the two in step.
DEFAULT_LOGIN_TIMEOUT: Final = 120.0
DEFAULT_SESSION_TIMEOUT: Final = 24 * 3600.0
DEFAULT_MIN_RATE: Final = 1024
DEFAULT_RATE_WINDOW: Final = 60.0
# RFC 2449 section 6.6 PIPELINING: RETRs in flight at once. The window is what
# keeps a long link busy: at 50 ms round trip, 2,000 messages of ~21 KB took
# 4.4 s with 32 in flight, 2.0 s with 100 and 1.3 s with 300 (mpop: 2.3 s).
# 256 such messages are ~5 MB a round trip, and pipeline_octets bounds larger
# ones; commands in flight cost the server a few bytes each, and what a cut
# session had in flight is only fetched again (what arrived whole is kept).
DEFAULT_PIPELINE_DEPTH: Final = 256
MAX_PIPELINE_DEPTH: Final = 1000
# ... and their LIST sizes in flight: 8 MiB covers the bandwidth-delay product
# of ~1 Gbit/s at 50 ms; one message over it is still fetched, alone.
DEFAULT_PIPELINE_OCTETS: Final = 8 << 20
# Sessions one run may open with a server that hands out a window of the mailbox
# (Gmail's POP3 lists about 250 of the oldest messages not yet downloaded per
# session; see sync.py): 100 sessions drain 25,000 such messages in one run,
# the 20,000-message first archive of issue 12 included, and bound a run's
# length (and what a server that keeps offering "new" messages can cost) to
# 100 logins. 10,000 sessions (2.5 million messages) is past any real mailbox.
DEFAULT_MAX_SESSIONS_PER_RUN: Final = 100
MAX_SESSIONS_PER_RUN: Final = 10_000
_RETENTION_RE: Final = re.compile(r"(-?[0-9]+)([smhdw])")
# The daemon's schedule: every 15 minutes unless an account says otherwise.
DEFAULT_EVERY: Final = 900.0
# Below one second a schedule would hammer the server; above a year it is a typo.
_MIN_EVERY: Final = 1.0
_MAX_EVERY: Final = 366 * 86_400.0
DEFAULT_MAX_CONCURRENT: Final = 4
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0
# [ledger] lease, lease_heartbeat (PostgreSQL, issue 11): a stalled daemon's account
# is taken by another within about lease + heartbeat (40 s); one renewal per daemon
# every 10 s. The heartbeat must come at most every half lease (two tries per lease).
DEFAULT_LEASE_TTL: Final = 30.0
DEFAULT_LEASE_HEARTBEAT: Final = 10.0
# [ledger] keep_runs: the runs history kept per account. 90 days answer "since when
# has it failed?" for a quarter, and cap an account run every 15 minutes at ~8,600
# rows (10,000 accounts every 5 minutes write 2.9 million rows a day: a billion a
# year unpruned).
DEFAULT_KEEP_RUNS: Final = 90 * 86_400.0

Security = Literal["tls", "starttls", "plain"]
# How an account logs in; the same values as popvault.pop3.sasl.AuthMethod (config
# imports no pop3; a test keeps the two in step). "auto": the strongest the
# server offers (SCRAM-SHA-256 > SCRAM-SHA-1 > PLAIN > USER/PASS); a named SASL
# mechanism is that one or no login at all.
AuthMethod = Literal[
    "auto", "user", "apop", "plain", "scram-sha-256", "scram-sha-1", "xoauth2", "oauthbearer"
]
ArchiveFormat = Literal["maildir", "eml"]
# How `popvault auth login` gets the first tokens: RFC 8628's device code (a URL
# and a code, for a headless machine), a browser with a loopback redirect
# (RFC 8252, PKCE), or app-only client credentials (no user, no refresh token).
OAuthGrant = Literal["device", "browser", "client-credentials"]


# --- the public, resolved types -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retention:
    """What happens to a message on the server once it is archived.

    ``keep``: never delete; ``delete``: delete right after archiving;
    ``after``: delete once the message has been archived for ``after``.
    """

    mode: Literal["keep", "delete", "after"]
    after: timedelta | None = None
    # The duration as the config wrote it ("14d", not "2w"), for summaries; two
    # policies of one duration are equal however they were written.
    written: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.mode == "after") != (self.after is not None):
            raise ValueError("Retention: 'after' is set exactly when mode is 'after'")
        if self.after is not None and self.after <= timedelta(0):
            raise ValueError("Retention: 'after' must be positive")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When the daemon runs an account: ``every`` seconds (with jitter) or a ``cron`` line."""

    every: float | None = DEFAULT_EVERY
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError("Schedule: set exactly one of 'every' and 'cron'")

    def describe(self) -> str:
        """``every 15m`` or ``cron */15 * * * *``, for logs and status."""
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {format_seconds(self.every or 0.0)}"


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    """The ``[daemon]`` section: concurrency, shutdown bound, metrics endpoint."""

    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    # (host, port) of the Prometheus endpoint; None: no endpoint.
    metrics: tuple[str, int] | None = None
    # Sessions to one POP3 server at once across every daemon of the ledger; None: no bound.
    max_per_host: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretSource:
    """Where one secret is read from when it is needed: ``key`` names the config key.

    ``kind`` is ``inline`` (``value`` is the secret), ``env`` (a variable's
    name), ``file`` (a path) or ``command`` (a shell command's first line).
    """

    key: str
    kind: Literal["inline", "env", "file", "command"]
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthSettings:
    """An account's OAuth 2.0 sign-in: the provider (a preset with overrides), the client.

    ``client_secret`` is a :class:`SecretSource` or None (a public client, or a
    certificate); ``token_file`` where the account's tokens live.
    """

    provider: OAuthProvider
    client_id: str
    grant: OAuthGrant
    token_file: Path
    client_secret: SecretSource | None = None
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    xoauth2_two_step: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """One POP3 account, with ``[defaults]`` merged in and every path absolute.

    The password itself is not here: only where to find it (see :func:`read_password`);
    an inline ``password`` is a :class:`~pydantic.SecretStr` and never printed.
    """

    name: str
    host: str
    port: int
    security: Security
    username: str
    auth: AuthMethod
    ca_file: Path | None
    allow_plaintext: bool
    timeout: float
    format: ArchiveFormat
    path: str
    retention: Retention
    password_source: str
    # Set for an account that signs in with OAuth 2.0 (then there is no password).
    oauth: OAuthSettings | None = None
    password: SecretStr | None = field(default=None, repr=False)
    password_env: str | None = None
    password_file: Path | None = None
    password_command: str | None = field(default=None, repr=False)
    schedule: Schedule = field(default_factory=Schedule)
    # False: the server's LIST sizes are estimates, so a message whose octets
    # differ from its LIST size is not held on the server for that reason.
    trust_list_sizes: bool = True
    # Octets above which a message is not archived (None: no such limit).
    max_message_size: int | None = None
    # Deadlines (pop3/pace.py): greeting and login, the whole session, and the
    # minimum rate of every multi-line reply over a window.
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    min_rate: int = DEFAULT_MIN_RATE
    rate_window: float = DEFAULT_RATE_WINDOW
    # Pipelining (RFC 2449 section 6.6), used only when the server offers it:
    # RETRs in flight by count (1: none), and by the LIST octets they announce.
    pipeline_depth: int = DEFAULT_PIPELINE_DEPTH
    pipeline_octets: int = DEFAULT_PIPELINE_OCTETS
    # Sessions a run may open one after another while the server may have more
    # to offer after each (a server that hands out a window of the mailbox).
    max_sessions_per_run: int = DEFAULT_MAX_SESSIONS_PER_RUN

    @property
    def recent_mode(self) -> bool:
        """Whether the account logs in to Gmail's ``recent:`` mode (see :func:`is_recent_mode`)."""
        return is_recent_mode(self.username)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Config:
    """The whole configuration, as read from ``file``."""

    file: Path
    ledger_url: str
    archive_root: Path
    accounts: tuple[Account, ...]
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    # [ledger] lease and lease_heartbeat (PostgreSQL: ledger/leases.py), in seconds.
    lease_ttl: float = DEFAULT_LEASE_TTL
    lease_heartbeat: float = DEFAULT_LEASE_HEARTBEAT
    # [ledger] keep_runs, in seconds; None: "forever" (the runs history is never pruned).
    keep_runs: float | None = DEFAULT_KEEP_RUNS

    def account(self, name: str) -> Account:
        """The account called ``name``; :class:`ConfigError` if there is none."""
        for account in self.accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise ConfigError(f"no account named {name!r} (configured: {known})", file=str(self.file))

    def __repr__(self) -> str:
        # The ledger URL may carry a database password: show it redacted.
        return (
            f"Config(file={self.file!r}, ledger_url={redact_url(self.ledger_url)!r}, "
            f"archive_root={self.archive_root!r}, accounts={self.accounts!r}, "
            f"daemon={self.daemon!r})"
        )


def is_recent_mode(username: str) -> bool:
    """Whether ``username`` asks Gmail for its ``recent:`` mode: the prefix, in any case.

    ``recent:user@gmail.com`` lists the last 30 days of mail, whatever other
    clients downloaded already, and never moves on: a new session lists the
    same messages again.
    """
    return username[:7].casefold() == "recent:"


# --- value parsers (pydantic calls them; a ValueError's text becomes the user's message) ----


def parse_timeout(value: object) -> float:
    """Seconds from ``60``, ``"60"``, ``"60s"``, ``"1.5s"``, ``"2m"`` (units s m h d w)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _TIMEOUT_RE.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2] or "s"]
    else:
        raise ValueError(f"invalid duration {value!r} (use e.g. 60s, 2m)")
    if not math.isfinite(seconds) or not 0 < seconds <= _MAX_TIMEOUT:
        raise ValueError(f"invalid duration {value!r}: must be more than 0 and at most 1 day")
    return seconds


def parse_rate(value: object) -> int:
    """Octets per second from ``1024``, ``"1K"``, ``"1KiB/s"``, ``"0"`` (0: no minimum)."""
    text = value.strip().removesuffix("/s") if isinstance(value, str) else value
    if text in (0, "0"):
        return 0
    try:
        return _size(text, minimum=1)
    except ValueError:
        raise ValueError(f"invalid rate {value!r} (use e.g. 1K, 512, or 0 for none)") from None


def parse_size(value: object) -> int:
    """Octets from ``52428800``, ``"50M"``, ``"50MiB"``, ``"1.5G"`` (binary units k m g t)."""
    return _size(value, minimum=_MIN_MESSAGE_SIZE)


def parse_window_size(value: object) -> int:
    """Octets for ``pipeline_octets``: like :func:`parse_size`, at least 1 KiB."""
    return _size(value, minimum=_MIN_MESSAGE_SIZE)


def _size(value: object, *, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        octets = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value.strip())):
        unit = _SIZE_UNITS[match[2].lower()] if match[2] else 1
        octets = int(float(match[1]) * unit)
    else:
        raise ValueError(f"invalid size {value!r} (use e.g. 50M, 1G, or a number of octets)")
    if octets < minimum:
        raise ValueError(f"invalid size {value!r}: must be at least {minimum} octets")
    return octets


def parse_every(value: object) -> float:
    """An interval in seconds from ``"15m"``, ``"1.5s"``, ``"2h"``, ``90`` (units s m h d w)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _TIMEOUT_RE.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2] or "s"]
    else:
        raise ValueError(f"invalid interval {value!r} (use e.g. 15m, 1h, 30s; units s m h d w)")
    if not math.isfinite(seconds) or not _MIN_EVERY <= seconds <= _MAX_EVERY:
        raise ValueError(f"invalid interval {value!r}: must be at least 1s and at most 366d")
    return seconds


def format_seconds(seconds: float) -> str:
    """``900.0`` -> ``"15m"``, ``1.5`` -> ``"1.5s"``: the largest unit that divides evenly."""
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_keep_runs(value: object) -> float | None:
    """Seconds from a positive whole count with a unit (``"90d"``, ``"12w"``), or ``"forever"``."""
    if value == "forever":
        return None
    match = _RETENTION_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or int(match[1]) <= 0:
        raise ValueError(
            f"invalid keep_runs {value!r} (a duration like 90d, units s, m, h, d, w; or forever)"
        )
    return float(int(match[1]) * _UNIT_SECONDS[match[2]])


def parse_retention(value: object) -> Retention:
    """``"keep"``, ``"delete"``, or a positive whole count with a unit: ``"14d"``, ``"36h"``."""
    if isinstance(value, Retention):
        return value
    if value in ("keep", "delete"):
        return Retention(mode=value)
    match = _RETENTION_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"invalid retention {value!r} (use keep, delete, or a duration like 14d;"
            " units s, m, h, d, w)"
        )
    count = int(match[1])
    if count <= 0:
        raise ValueError(f"invalid retention {value!r}: the duration must be more than zero")
    try:
        return Retention(
            mode="after",
            after=timedelta(seconds=count * _UNIT_SECONDS[match[2]]),
            written=f"{count}{match[2]}",
        )
    except OverflowError:
        raise ValueError(f"invalid retention {value!r}: too long") from None


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` ledger URL (absolute once loaded), else None.

    None for another database and for an in-memory SQLite ledger.
    """
    scheme, _, rest = url.partition(":///")
    if not scheme.startswith("sqlite") or not rest:
        return None
    path = rest.split("?", 1)[0]
    return None if path in ("", ":memory:") or path.startswith("file:") else Path(path)
