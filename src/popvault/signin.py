"""How an account signs in: its password, or its OAuth 2.0 token source (issue 10).

The bridge between the account's configuration and :mod:`popvault.oauth`,
shared by a run (:mod:`popvault.sync`), the daemon and ``popvault auth``.
:mod:`popvault.oauth` (and through it Authlib and httpx) is imported only
for an account that signs in with OAuth.

One :class:`~popvault.oauth.tokens.TokenSource` per account and process
(:func:`token_source` keeps them): a daemon's runs share its cached access
token and its count of refresh failures, which the metrics report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from popvault.config import Account, Config, OAuthSettings, read_client_secret, read_password

if TYPE_CHECKING:
    from popvault.oauth import OAuthClient, TokenSet, TokenSource, TokenStatus

# By account name and its whole OAuth settings: a daemon's reloaded config with a
# new client, endpoint or token file gets a new source, the same one keeps its own.
_sources: dict[tuple[str, OAuthSettings], tuple[TokenSource, OAuthClient]] = {}
_sources_lock = threading.Lock()


@dataclass(frozen=True)
class Credentials:
    """What a login needs: a password, or a token provider with its XOAUTH2 form."""

    password: str | None = None
    token: Callable[[], str] | None = None
    two_step: bool = False


def credentials(config: Config, account: Account) -> Credentials:
    """The account's credentials, read now (a password) or ready to fetch (a token)."""
    if account.oauth is None:
        return Credentials(password=read_password(config, account))
    source = token_source(config, account)
    obtain_app_tokens(config, account, source)
    # Now, before any connection: a missing login or a refused refresh fails the
    # run without a POP3 session, and the login itself finds the token cached.
    source.access_token()
    return Credentials(token=source, two_step=account.oauth.xoauth2_two_step)


def oauth_client(config: Config, account: Account) -> OAuthClient:
    """The account's OAuth client (provider, client id, secret or certificate), kept per process.

    Built once with its token source (:func:`token_source`): the client secret,
    which may come from a command, is read once, not once per use.
    """
    return _entry(config, account)[1]


def token_source(config: Config, account: Account) -> TokenSource:
    """The account's token source (one per account, client and token file in this process)."""
    return _entry(config, account)[0]


def token_status(config: Config, account: Account) -> TokenStatus:
    """The account's token state for ``auth status``: from the token file only.

    No client is built, so an account whose client secret cannot be read here
    (a variable set only in the daemon's environment) still shows its state.
    In the process that runs the account, the shared source's counts are used.
    """
    from popvault.oauth import TokenSource  # noqa: PLC0415 - OAuth only

    settings = _settings(account)
    with _sources_lock:
        shared = _sources.get((account.name, settings))
    if shared is not None:
        return shared[0].status()
    return TokenSource(account.name, _StatusOnly(), path=settings.token_file).status()


def _settings(account: Account) -> OAuthSettings:
    if account.oauth is None:
        raise ValueError(f"account {account.name!r} does not sign in with OAuth 2.0")
    return account.oauth


def _entry(config: Config, account: Account) -> tuple[TokenSource, OAuthClient]:
    """The account's token source and client, made on first use (see the module doc)."""
    settings = _settings(account)
    key = (account.name, settings)
    with _sources_lock:
        entry = _sources.get(key)
        if entry is None:
            client = _new_client(config, account, settings)
            from popvault.oauth import TokenSource  # noqa: PLC0415 - OAuth only

            entry = (TokenSource(account.name, client, path=settings.token_file), client)
            _sources[key] = entry
        return entry


def _new_client(config: Config, account: Account, settings: OAuthSettings) -> OAuthClient:
    from popvault.oauth import ClientCertificate, OAuthClient  # noqa: PLC0415 - OAuth only

    certificate = (
        None
        if settings.certificate_file is None
        else ClientCertificate.from_files(settings.certificate_file, settings.private_key_file)
    )
    return OAuthClient(
        settings.provider,
        settings.client_id,
        client_secret=read_client_secret(config, account),
        certificate=certificate,
        # The system's trust store: ca_file is the POP3 server's, not the provider's.
        account=account.name,
    )


class _StatusOnly:
    """A renewer for reading a token file's state only: it never talks to a server."""

    def renew(self, tokens: TokenSet) -> TokenSet:
        raise RuntimeError("a status-only token source does not renew")

    def revoke(self, tokens: TokenSet) -> bool:
        raise RuntimeError("a status-only token source does not revoke")


def obtain_app_tokens(config: Config, account: Account, source: TokenSource) -> None:
    """App-only access (client credentials) needs no person: get its first tokens now.

    Every later token comes the same way when the last one expires
    (:meth:`~popvault.oauth.flows.OAuthClient.renew`); a user's grant instead
    waits for ``popvault auth login``.
    """
    if account.oauth is None or account.oauth.grant != "client-credentials":
        return
    if source.file.load() is not None:
        return
    result = oauth_client(config, account).client_credentials()
    source.store(result.tokens)
