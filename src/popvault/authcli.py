"""``popvault auth login | status | logout``: an account's OAuth 2.0 sign-in (issue 10).

The flows are :mod:`popvault.oauth`'s; this module asks the user what the
flow needs (a URL and a code, a browser), stores the tokens, and says what
is wrong with a grant (a missing ``offline_access``: no refresh token).
Nothing printed here holds a token or a secret.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from popvault.config import Account, Config, OAuthGrant
from popvault.errors import ConfigError
from popvault.signin import oauth_client, token_source, token_status

if TYPE_CHECKING:
    from popvault.oauth import LoginResult, TokenStatus

# How long a browser sign-in may take before `auth login` gives up.
BROWSER_SECONDS = 300.0


def oauth_account(config: Config, name: str) -> Account:
    """The account ``name``, which must sign in with OAuth (else a :class:`ConfigError`)."""
    account = config.account(name)
    if account.oauth is None:
        raise ConfigError(
            "this account signs in with a password, not OAuth 2.0: `popvault auth` is for "
            "accounts with provider or oauth_client_id",
            file=str(config.file),
            account=name,
        )
    return account


def login(
    config: Config,
    account: Account,
    *,
    grant: OAuthGrant | None = None,
    open_browser: bool = True,
    out: TextIO = sys.stdout,
) -> LoginResult:
    """Sign ``account`` in by its grant (or ``grant``), store the tokens, print warnings."""
    settings = account.oauth
    assert settings is not None  # noqa: S101 - oauth_account checked it
    chosen = grant or settings.grant
    client = oauth_client(config, account)
    if chosen == "device":
        started = client.start_device_login()
        print(started.instructions(), file=out, flush=True)
        result = client.finish_device_login(started)
    elif chosen == "browser":
        pending = client.start_loopback_login()
        try:
            print(
                f"To sign in, open this address in a browser on this machine:\n{pending.url}",
                file=out,
                flush=True,
            )
            if open_browser:
                _open(pending.url)
            result = pending.wait(BROWSER_SECONDS)
        finally:
            pending.close()
    else:
        result = client.client_credentials()
    token_source(config, account).store(result.tokens)
    for warning in result.warnings:
        print(f"warning: {warning}", file=out)
    expiry = result.tokens.expires_at
    until = f"; the access token is valid until {_when(expiry)}" if expiry else ""
    print(f"{account.name}: signed in ({chosen}){until}", file=out)
    return result


def status(config: Config, accounts: Sequence[Account], *, as_json: bool, out: TextIO) -> int:
    """Print each OAuth account's token state; 1 when one needs a login, else 0."""
    statuses = [token_status(config, account) for account in accounts]
    if as_json:
        print(json.dumps([s.to_json() for s in statuses], indent=2), file=out)
    else:
        for line in map(_status_line, statuses):
            print(line, file=out)
    now = time.time()
    return 1 if any(s.needs_login(now) for s in statuses) else 0


def logout(config: Config, account: Account, *, revoke: bool, out: TextIO) -> int:
    """Revoke (where the provider can) and delete the account's tokens."""
    result = token_source(config, account).logout(revoke=revoke)
    if result.warning:
        print(f"warning: {result.warning}", file=out)
    done = "deleted its tokens" if result.deleted else "had no tokens to delete"
    revoked = ", revoked the grant at the provider" if result.revoked else ""
    print(f"{account.name}: {done}{revoked}", file=out)
    return 0


def _status_line(item: TokenStatus) -> str:
    login = f"run `popvault auth login {item.account}`"
    if not item.logged_in:
        why = f" ({item.last_failure})" if item.last_failure else ""
        return f"{item.account}: not signed in{why}; {login}"
    if item.needs_login(time.time()):
        return (
            f"{item.account}: signed in once, but the access token expired and nothing can "
            f"renew it (no refresh token, or the grant was revoked); {login}"
        )
    parts = [f"{item.account}: signed in ({item.grant or 'unknown grant'})"]
    if item.expires_at is not None:
        left = item.expires_at - time.time()
        state = "expired" if left <= 0 else f"valid for {_duration(left)}"
        parts.append(f"access token {state}, until {_when(item.expires_at)}")
    parts.append("refresh token: yes" if item.has_refresh_token else "refresh token: none")
    if item.last_refresh is not None:
        parts.append(f"last refreshed {_when(item.last_refresh)}")
    if item.refresh_failures:
        parts.append(f"{item.refresh_failures} refresh failure(s): {item.last_failure}")
    if item.scopes:
        parts.append("scopes " + " ".join(item.scopes))
    return "; ".join(parts)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _open(url: str) -> None:
    """Open ``url`` in the user's browser where there is one; the printed URL is the fallback."""
    import webbrowser  # noqa: PLC0415 - only a browser login needs it

    with contextlib.suppress(webbrowser.Error):
        webbrowser.open(url)
