"""An account's OAuth 2.0 tokens: a private file, refreshed ahead of expiry, one refresh at a time.

::

    source = TokenSource("work", client)        # client: popvault.oauth.flows.OAuthClient
    source.access_token()                        # what SASL XOAUTH2/OAUTHBEARER sends
    source.status()                              # for `popvault auth status`: no secret in it
    source.logout()                              # revoke at the provider, delete the file

The token file (:class:`TokenFile`) is JSON, mode ``0600`` in a ``0700``
folder, by default ``$XDG_STATE_HOME/popvault/tokens/<account>.json``
(``~/.local/state`` without the variable). Every write goes to a temp file
in the same folder, which is fsynced, renamed over the old file, and the
folder fsynced: a crash leaves the old file or the new one, never a part.
The fsyncs are :mod:`popvault.store.durable`'s, the one place popvault
fsyncs.

Refreshing (:meth:`TokenSource.access_token`):

* ahead of expiry, by :func:`refresh_margin` (60 s, or a tenth of a short
  lifetime), so a token never expires between being handed out and being
  checked by the server;
* under an exclusive ``flock(2)`` on ``<account>.json.lock`` beside the
  file, and after taking it the file is read again: another process (a
  daemon and a ``popvault run`` by hand) may have refreshed meanwhile, and a
  provider that rotates refresh tokens would refuse the old one;
* a rotated refresh token is on disk (fsynced) before the new access token
  is returned: if popvault died right after, the next process still holds a
  refresh token the provider accepts. (A crash between the provider's answer
  and the rename loses the new refresh token; a provider that invalidates
  the old one at once then needs a new login. No client can close that
  window; Microsoft and Google keep the old token valid for a while.)

Errors: a refused grant is :class:`~popvault.errors.ReauthorizationRequired`
(its message says ``popvault auth login NAME``); a network failure or 5xx
is :class:`~popvault.errors.OAuthUnavailable`, to be retried; a damaged disk
is a :class:`~popvault.errors.StoreError`. Every token is registered with
:func:`popvault.redaction.register` the moment a :class:`TokenSet` holds it,
and no ``repr`` shows one.

Keeping tokens in PostgreSQL (not built): a deployment whose ledger is on
PostgreSQL and whose daemons run on several hosts could keep each account's
token set in a table ``oauth_tokens(account primary key, data jsonb,
updated_at)`` instead of a file. The lock becomes the row lock: ``BEGIN;
SELECT data FROM oauth_tokens WHERE account = %s FOR UPDATE;`` serialises
refreshes across hosts as ``flock`` does across processes, and reading the
row after taking the lock is the same re-read; the new token set is written
by ``UPDATE ... SET data = %s`` and ``COMMIT`` before the access token is
used (the commit is the fsync). Refresh tokens at rest should then be
encrypted with a key the database does not hold (``pgcrypto`` with a key
from the secret sources), since database backups travel further than a
``0600`` file. The :class:`TokenSource` logic would not change: only
:class:`TokenFile`'s four methods (``load``, ``save``, ``delete``, ``lock``).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from popvault.errors import OAuthError, OAuthUnavailable, ReauthorizationRequired, StoreError
from popvault.redaction import redact, register
from popvault.store import durable

log = logging.getLogger("popvault.oauth")

Grant = Literal["device_code", "authorization_code", "client_credentials"]
GRANTS: Final = ("device_code", "authorization_code", "client_credentials")

#: The token file format's version; a file of another version needs a new login.
FORMAT_VERSION: Final = 1
# Refresh this long before expiry at most: a POP3 login after a slow TLS
# handshake and a CAPA takes seconds, not a minute.
_MAX_MARGIN: Final = 60.0
# ... and at most this share of the lifetime, so that a token of a few seconds
# (the test server's) is still used before it is refreshed.
_MARGIN_SHARE: Final = 0.1
# How long a process waits for another's refresh: two token requests at
# httpx's 30 s timeout with room to spare.
DEFAULT_LOCK_TIMEOUT: Final = 75.0
_LOCK_POLL: Final = 0.02


def refresh_margin(lifetime: float) -> float:
    """Seconds before expiry at which a token of ``lifetime`` seconds is refreshed."""
    return max(0.0, min(_MAX_MARGIN, lifetime * _MARGIN_SHARE))


@dataclass(frozen=True, slots=True)
class TokenSet:
    """What a token endpoint granted, as popvault keeps it.

    Times are POSIX seconds. ``obtained_at`` is when the current access token
    was issued, ``login_at`` when the grant was made (the login),
    ``last_refresh`` when the access token was last renewed (None: never).
    ``expires_at`` None means the server did not say (RFC 6749 section 5.1
    makes ``expires_in`` only RECOMMENDED): the token is used until a server
    refuses it (:meth:`TokenSource.invalidate`). The tokens are registered
    as secrets on construction and left out of ``repr``.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    grant: Grant
    obtained_at: float
    expires_at: float | None
    scopes: tuple[str, ...] = ()
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 type name
    login_at: float | None = None
    last_refresh: float | None = None

    def __post_init__(self) -> None:
        register(self.access_token)
        if self.refresh_token:
            register(self.refresh_token)

    def __repr__(self) -> str:
        refresh = "***" if self.refresh_token else None
        return (
            f"TokenSet(grant={self.grant!r}, access_token='***', refresh_token={refresh!r}, "
            f"expires_at={self.expires_at!r}, scopes={self.scopes!r})"
        )

    @property
    def lifetime(self) -> float | None:
        """Seconds the access token was valid for when it was issued."""
        return None if self.expires_at is None else self.expires_at - self.obtained_at

    def needs_refresh(self, now: float) -> bool:
        """Whether the access token is expired or within :func:`refresh_margin` of it."""
        if self.expires_at is None or self.lifetime is None:
            return False
        return now >= self.expires_at - refresh_margin(self.lifetime)

    def renewed(self, response: Mapping[str, Any], *, now: float) -> TokenSet:
        """The token set after a refresh answered ``response`` (RFC 6749 section 6).

        A response without ``refresh_token`` keeps the old one (the server did
        not rotate it); one without ``scope`` keeps the old scopes (section 5.1:
        then they are unchanged).
        """
        fresh = from_response(response, grant=self.grant, now=now, requested=self.scopes)
        return TokenSet(
            access_token=fresh.access_token,
            refresh_token=fresh.refresh_token or self.refresh_token,
            grant=self.grant,
            obtained_at=now,
            expires_at=fresh.expires_at,
            scopes=fresh.scopes,
            token_type=fresh.token_type,
            login_at=self.login_at,
            last_refresh=now,
        )

    def to_json(self) -> dict[str, Any]:
        """The token file's JSON object."""
        return {
            "version": FORMAT_VERSION,
            "grant": self.grant,
            "token_type": self.token_type,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "obtained_at": self.obtained_at,
            "expires_at": self.expires_at,
            "scopes": list(self.scopes),
            "login_at": self.login_at,
            "last_refresh": self.last_refresh,
        }

    @classmethod
    def from_json(cls, data: object) -> TokenSet:
        """Parse :meth:`to_json`'s form; :class:`ValueError` names what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"format version {data.get('version')!r}, not {FORMAT_VERSION}")
        grant = data.get("grant")
        if grant not in GRANTS:
            raise ValueError(f"unknown grant {grant!r}")
        scopes = data.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes is not a list of strings")
        return cls(
            access_token=_text(data, "access_token"),
            refresh_token=_text(data, "refresh_token", optional=True),
            grant=grant,
            obtained_at=_number(data, "obtained_at"),
            expires_at=_number(data, "expires_at", optional=True),
            scopes=tuple(scopes),
            token_type=_text(data, "token_type"),
            login_at=_number(data, "login_at", optional=True),
            last_refresh=_number(data, "last_refresh", optional=True),
        )


def from_response(
    response: Mapping[str, Any], *, grant: Grant, now: float, requested: tuple[str, ...] = ()
) -> TokenSet:
    """A :class:`TokenSet` from a token endpoint's successful answer (RFC 6749 section 5.1)."""
    access = response.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthError("the token endpoint answered without an access_token", error=None)
    register(access)
    refresh = response.get("refresh_token")
    if refresh is not None and not isinstance(refresh, str):
        raise OAuthError("the token endpoint sent a refresh_token that is not a string")
    expires_in = response.get("expires_in")
    expires_at = None
    if expires_in is not None:
        try:
            expires_at = now + float(expires_in)
        except (TypeError, ValueError):
            raise OAuthError(f"the token endpoint sent expires_in {expires_in!r}") from None
    scope = response.get("scope")
    scopes = tuple(str(scope).split()) if scope is not None else requested
    return TokenSet(
        access_token=access,
        refresh_token=refresh or None,
        grant=grant,
        obtained_at=now,
        expires_at=expires_at,
        scopes=scopes,
        token_type=str(response.get("token_type") or "Bearer"),
        login_at=now,
    )


def _text(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing or not a string")
    return value


def _number(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} is missing or not a number")
    return float(value)


# -- where the file lives -------------------------------------------------------------------


def state_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME``, or ``~/.local/state`` (XDG Base Directory Specification 0.8)."""
    env = os.environ if environ is None else environ
    value = env.get("XDG_STATE_HOME", "")
    # The specification: a relative path in the variable is invalid and ignored.
    if value and os.path.isabs(value):
        return Path(value)
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "state"


def default_token_path(account: str, environ: Mapping[str, str] | None = None) -> Path:
    """``<state home>/popvault/tokens/<account>.json``; the name is quoted to stay one file name."""
    if not account:
        raise ValueError("an account name is needed for its token file")
    name = urllib.parse.quote(account, safe="-_@+")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return state_home(environ) / "popvault" / "tokens" / f"{name}.json"


# -- the file ---------------------------------------------------------------------------------


class TokenFile:
    """One account's token file: read, written atomically and durably, locked, deleted."""

    def __init__(self, path: Path, *, account: str) -> None:
        self.path = Path(os.path.abspath(path))
        self.account = account

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        """The lock file beside the token file (kept: removing lock files races)."""
        return self.path.with_name(self.path.name + ".lock")

    def exists(self) -> bool:
        """Whether a token file is there."""
        return self.path.exists()

    def load(self) -> TokenSet | None:
        """The tokens in the file; None if there is no file.

        A file that is not a token file of this format raises
        :class:`ReauthorizationRequired` naming it: a new login writes a good one.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise durable.store_error("read token file", self.path, exc) from exc
        try:
            return TokenSet.from_json(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            reason = f"the token file {self.path} is damaged ({redact(str(exc))})"
            raise ReauthorizationRequired(reason, account=self.account, error=None) from None

    def save(self, tokens: TokenSet) -> None:
        """Replace the file with ``tokens``, durably: temp file, fsync, rename, folder fsync."""
        data = json.dumps(tokens.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        durable.ensure_root(self.path.parent)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = durable.create_private_file(temp)
        try:
            durable.write_all(fd, data, temp)
        except BaseException:
            durable.close_quietly(fd)
            durable.unlink_quietly(temp)
            raise
        try:
            durable.sync_and_close(fd, temp)
            with durable.os_errors("replace token file", self.path):
                os.replace(temp, self.path)
        except BaseException:
            durable.unlink_quietly(temp)
            raise
        durable.sync_dir(self.path.parent)
        log.debug("saved tokens of account %r to %s", self.account, self.path)

    def delete(self) -> bool:
        """Remove the file durably; False if there was none."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise durable.store_error("remove token file", self.path, exc) from exc
        durable.sync_dir(self.path.parent)
        return True

    @contextmanager
    def lock(self, *, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the exclusive lock on the account's tokens (``flock(2)``) while the block runs.

        ``flock`` locks belong to the open file description, so two threads or
        processes each opening the lock file exclude each other; the kernel
        drops the lock when its holder dies. Waiting longer than ``timeout``
        raises :class:`OAuthUnavailable` (another process is stuck refreshing).
        """
        durable.ensure_root(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        with durable.os_errors("open token lock", self.lock_path):
            fd = os.open(self.lock_path, flags, durable.FILE_MODE)
        try:
            self._acquire(fd, timeout)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _acquire(self, fd: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise durable.store_error("lock", self.lock_path, exc) from exc
            if time.monotonic() >= deadline:
                raise OAuthUnavailable(
                    f"another process has held {self.lock_path} for over {timeout:.0f} s",
                    account=self.account,
                )
            time.sleep(_LOCK_POLL)


# -- the source -------------------------------------------------------------------------------


class Renewer(Protocol):
    """What renews and revokes tokens (:class:`popvault.oauth.flows.OAuthClient`)."""

    def renew(self, tokens: TokenSet) -> TokenSet:
        """A new access token: by the refresh token, or client credentials again."""
        ...

    def revoke(self, tokens: TokenSet) -> bool:
        """Revoke the grant at the provider; False if it has no revocation endpoint."""
        ...


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What ``popvault auth status`` shows of one account: times and scopes, no secret."""

    account: str
    path: Path
    logged_in: bool
    grant: str | None = None
    expires_at: float | None = None
    scopes: tuple[str, ...] = ()
    has_refresh_token: bool = False
    login_at: float | None = None
    last_refresh: float | None = None
    refresh_failures: int = 0
    last_failure: str | None = None

    def needs_login(self, now: float) -> bool:
        """Whether only ``popvault auth login`` can give this account a token again.

        No tokens, or an expired access token that nothing can renew: no
        refresh token (never issued, or dropped when the grant was revoked),
        and not app-only access (which renews by client credentials).
        """
        if not self.logged_in:
            return True
        renewable = self.has_refresh_token or self.grant == "client_credentials"
        expired = self.expires_at is not None and self.expires_at <= now
        return expired and not renewable

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``popvault auth status --json``)."""
        return {
            "account": self.account,
            "path": str(self.path),
            "logged_in": self.logged_in,
            "needs_login": self.needs_login(time.time()),
            "grant": self.grant,
            "expires_at": self.expires_at,
            "scopes": list(self.scopes),
            "has_refresh_token": self.has_refresh_token,
            "login_at": self.login_at,
            "last_refresh": self.last_refresh,
            "refresh_failures": self.refresh_failures,
            "last_failure": self.last_failure,
        }


@dataclass(frozen=True, slots=True)
class LogoutResult:
    """What :meth:`TokenSource.logout` did."""

    deleted: bool
    revoked: bool
    warning: str | None = None


class TokenSource:
    """An account's access tokens, always valid when handed out; a ``Callable[[], str]``.

    One object per account and process; thread-safe. ``renewer`` is the
    :class:`~popvault.oauth.flows.OAuthClient` of the account; ``path`` the
    token file (default :func:`default_token_path`); ``clock`` returns POSIX
    seconds (tests move it).
    """

    def __init__(
        self,
        account: str,
        renewer: Renewer,
        *,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.account = account
        self.file = TokenFile(path or default_token_path(account), account=account)
        self._renewer = renewer
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._mutex = threading.Lock()
        self._cached: TokenSet | None = None
        self._stale: str | None = None
        self.refresh_failures = 0
        self.last_failure: str | None = None

    def __repr__(self) -> str:
        return f"TokenSource(account={self.account!r}, path={str(self.file.path)!r})"

    def __call__(self) -> str:
        return self.access_token()

    def access_token(self) -> str:
        """A valid access token, refreshed first if it is within the margin of expiry.

        Raises :class:`ReauthorizationRequired` (no file, or the grant is gone),
        :class:`OAuthUnavailable` (retry later) or another :class:`OAuthError`.
        """
        with self._mutex:
            current = self._usable(self._cached) or self._usable(self._load())
            if current is None:
                current = self._refresh_locked()
            self._cached = current
            return current.access_token

    def invalidate(self, access_token: str | None = None) -> None:
        """The server refused ``access_token`` (default: the current one): renew it next time."""
        with self._mutex:
            token = access_token or (self._cached.access_token if self._cached else None)
            self._stale = token
            self._cached = None

    def store(self, tokens: TokenSet) -> None:
        """Save the tokens of a new login (under the lock), replacing any earlier ones."""
        with self._mutex, self.file.lock(timeout=self._lock_timeout):
            self.file.save(tokens)
            self._cached = tokens
            self._stale = None
            self.refresh_failures = 0
            self.last_failure = None

    def status(self) -> TokenStatus:
        """Expiry, scopes and refresh history; never a token. Reads the file, no network."""
        try:
            tokens = self.file.load()
        except ReauthorizationRequired as exc:
            return self._status(None, failure=str(exc))
        return self._status(tokens, failure=self.last_failure)

    def logout(self, *, revoke: bool = True) -> LogoutResult:
        """Revoke the grant at the provider (if it can) and delete the token file.

        A failed revocation does not keep the file: the user asked to forget the
        tokens, and the result's ``warning`` says the provider may still honour them.
        """
        with self._mutex, self.file.lock(timeout=self._lock_timeout):
            try:
                tokens = self.file.load()
            except ReauthorizationRequired:
                tokens = None
            revoked, warning = self._revoke(tokens) if revoke and tokens else (False, None)
            deleted = self.file.delete()
            self._cached = None
            return LogoutResult(deleted=deleted, revoked=revoked, warning=warning)

    # -- internals --

    def _usable(self, tokens: TokenSet | None) -> TokenSet | None:
        if tokens is None or tokens.access_token == self._stale:
            return None
        return None if tokens.needs_refresh(self._clock()) else tokens

    def _load(self) -> TokenSet:
        tokens = self.file.load()
        if tokens is None:
            raise ReauthorizationRequired(
                f"no OAuth tokens (no token file {self.file.path})", account=self.account
            )
        return tokens

    def _refresh_locked(self) -> TokenSet:
        with self.file.lock(timeout=self._lock_timeout):
            # Another process may have refreshed while this one waited for the lock.
            tokens = self._load()
            fresh = self._usable(tokens)
            if fresh is not None:
                log.debug("account %r: tokens already refreshed by another process", self.account)
                return fresh
            try:
                renewed = self._renewer.renew(tokens)
            except ReauthorizationRequired as exc:
                self.refresh_failures += 1
                self.last_failure = str(exc)
                if tokens.refresh_token is not None:
                    # The grant is gone (RFC 6749 invalid_grant is final): forget the
                    # dead refresh token on disk, so that no process offers it again
                    # and `popvault auth status` anywhere says a login is needed.
                    self.file.save(dataclasses.replace(tokens, refresh_token=None))
                raise
            except OAuthError as exc:
                self.refresh_failures += 1
                self.last_failure = str(exc)
                raise
            # On disk before anyone uses the new access token: a rotated
            # refresh token must survive whatever happens next.
            self.file.save(renewed)
            self._stale = None
            self.last_failure = None
            log.debug("account %r: access token refreshed", self.account)
            return renewed

    def _revoke(self, tokens: TokenSet) -> tuple[bool, str | None]:
        try:
            return self._renewer.revoke(tokens), None
        except (OAuthError, StoreError) as exc:
            return False, f"the provider did not confirm the revocation: {exc}"

    def _status(self, tokens: TokenSet | None, *, failure: str | None) -> TokenStatus:
        if tokens is None:
            return TokenStatus(
                account=self.account,
                path=self.file.path,
                logged_in=False,
                refresh_failures=self.refresh_failures,
                last_failure=failure,
            )
        return TokenStatus(
            account=self.account,
            path=self.file.path,
            logged_in=True,
            grant=tokens.grant,
            expires_at=tokens.expires_at,
            scopes=tokens.scopes,
            has_refresh_token=tokens.refresh_token is not None,
            login_at=tokens.login_at,
            last_refresh=tokens.last_refresh,
            refresh_failures=self.refresh_failures,
            last_failure=failure,
        )
