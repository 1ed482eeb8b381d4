"""Where people's mail lives: OAuth 2.0 and POP3 settings of the big providers.

A preset fills what a user would otherwise copy from three documentation
sites; every value can be overridden (:meth:`OAuthProvider.with_overrides`),
and :func:`custom` builds a provider from nothing for any other server (a
self-hosted Dovecot with its own authorization server, the test suite's fake).

The values and where they come from (checked 2026-12):

* Google, https://developers.google.com/identity/protocols/oauth2/native-app :
  authorization ``https://accounts.google.com/o/oauth2/v2/auth``, token
  ``https://oauth2.googleapis.com/token``, revocation
  ``https://oauth2.googleapis.com/revoke``; a loopback redirect
  ``http://127.0.0.1:PORT``. A refresh token is issued only with
  ``access_type=offline`` (and again on a later login only with
  ``prompt=consent``). POP3 takes ``https://mail.google.com/`` with SASL
  XOAUTH2 (https://developers.google.com/gmail/imap/xoauth2-protocol) at
  ``pop.gmail.com:995``. Google's device flow
  (https://developers.google.com/identity/protocols/oauth2/limited-input-device#allowedscopes)
  allows a short list of scopes that does not include ``https://mail.google.com/``,
  so the preset has no device endpoint: ``popvault auth login`` uses the
  loopback flow for Gmail.
* Microsoft,
  https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
  :
  delegated scope ``https://outlook.office.com/POP.AccessAsUser.All`` plus
  ``offline_access`` (without it no refresh token is issued:
  https://learn.microsoft.com/entra/identity-platform/scopes-oidc#offline_access),
  app-only scope ``https://outlook.office365.com/.default`` (permission
  ``POP.AccessAsApp``), POP3 at ``outlook.office365.com:995``, and the two-step
  XOAUTH2 form (``AUTH XOAUTH2``, wait for ``+``, then the token). Endpoints
  ``https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize``,
  ``.../token`` (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow)
  and ``.../devicecode``
  (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code);
  the tenant is ``consumers`` for Outlook.com/Hotmail, ``organizations`` or
  the organisation's tenant id or domain for work and school accounts, and
  must be a real tenant for client credentials
  (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow).
  Microsoft has no public revocation endpoint: a logout there only deletes
  the local tokens.

This module imports nothing heavy: the config layer builds providers while
loading a file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Security = Literal["tls", "starttls", "plain"]
Mechanism = Literal["XOAUTH2", "OAUTHBEARER"]
PresetName = Literal["gmail", "outlook", "m365"]

#: The names ``provider = "..."`` takes.
PRESETS: tuple[PresetName, ...] = ("gmail", "outlook", "m365")

_GOOGLE_POP_SCOPE = "https://mail.google.com/"
_MICROSOFT_POP_SCOPE = "https://outlook.office.com/POP.AccessAsUser.All"
_MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"
OFFLINE_ACCESS = "offline_access"
_MICROSOFT_LOGIN = "https://login.microsoftonline.com"
# Tenants that name a kind of account rather than one directory: fine for a
# user's sign-in, refused by Microsoft for client credentials.
MICROSOFT_MULTI_TENANTS = frozenset({"common", "organizations", "consumers"})


@dataclass(frozen=True, slots=True)
class OAuthProvider:
    """One provider's POP3 server, OAuth 2.0 endpoints, scopes and SASL habits.

    ``scopes`` are asked for in a user's login (delegated access), ``app_scopes``
    in client credentials (app-only access). ``pop_scope`` is the scope without
    which POP3 access fails and ``offline_scope`` the one without which no
    refresh token is issued (None where the provider has no such scope):
    :func:`popvault.oauth.flows.scope_warnings` checks the grant against both.
    ``xoauth2_two_step`` says that the server refuses the initial response on
    the ``AUTH`` line and wants ``AUTH XOAUTH2``, ``+``, then the token.
    ``authorization_params`` are added to the authorization URL (Google's
    ``access_type=offline``). An endpoint that is None is not offered.
    """

    name: str
    token_endpoint: str
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    scopes: tuple[str, ...] = ()
    app_scopes: tuple[str, ...] = ()
    pop_scope: str | None = None
    offline_scope: str | None = None
    authorization_params: tuple[tuple[str, str], ...] = ()
    pop3_host: str | None = None
    pop3_port: int = 995
    security: Security = "tls"
    mechanism: Mechanism = "XOAUTH2"
    xoauth2_two_step: bool = False
    tenant: str | None = None

    def with_overrides(self, **values: Any) -> OAuthProvider:
        """A copy with ``values`` replaced (the config layer's per-account overrides).

        Unknown names raise :class:`TypeError`, as :func:`dataclasses.replace` does.
        """
        for key in ("scopes", "app_scopes", "authorization_params"):
            if key in values:
                values[key] = tuple(values[key])
        return dataclasses.replace(self, **values)


def preset(name: str, *, tenant: str | None = None) -> OAuthProvider:
    """The preset ``name`` (one of :data:`PRESETS`).

    ``tenant`` is for ``"m365"`` (default ``"organizations"``: any work or
    school account; app-only access needs the organisation's own tenant id or
    domain). ``"outlook"`` is always the ``consumers`` tenant.
    """
    if name == "gmail":
        return _gmail()
    if name == "outlook":
        return _microsoft("outlook", "consumers")
    if name == "m365":
        return _microsoft("m365", tenant or "organizations")
    raise ValueError(f"unknown OAuth provider {name!r}; known: {', '.join(PRESETS)}")


def custom(
    name: str,
    *,
    token_endpoint: str,
    authorization_endpoint: str | None = None,
    device_authorization_endpoint: str | None = None,
    revocation_endpoint: str | None = None,
    scopes: tuple[str, ...] = (),
    **values: Any,
) -> OAuthProvider:
    """A provider that is not a preset (any other value as in :class:`OAuthProvider`)."""
    return OAuthProvider(
        name=name,
        token_endpoint=token_endpoint,
        authorization_endpoint=authorization_endpoint,
        device_authorization_endpoint=device_authorization_endpoint,
        revocation_endpoint=revocation_endpoint,
        scopes=tuple(scopes),
        **values,
    )


def _gmail() -> OAuthProvider:
    return OAuthProvider(
        name="gmail",
        authorization_endpoint="https://accounts.google.com/o/oauth2/v2/auth",
        token_endpoint="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL
        device_authorization_endpoint=None,  # mail.google.com is not a device-flow scope
        revocation_endpoint="https://oauth2.googleapis.com/revoke",
        scopes=(_GOOGLE_POP_SCOPE,),
        pop_scope=_GOOGLE_POP_SCOPE,
        offline_scope=None,  # Google: access_type=offline instead of a scope
        authorization_params=(("access_type", "offline"), ("prompt", "consent")),
        pop3_host="pop.gmail.com",
        pop3_port=995,
        security="tls",
        mechanism="XOAUTH2",
        xoauth2_two_step=False,
    )


def _microsoft(name: str, tenant: str) -> OAuthProvider:
    base = f"{_MICROSOFT_LOGIN}/{tenant}/oauth2/v2.0"
    return OAuthProvider(
        name=name,
        authorization_endpoint=f"{base}/authorize",
        token_endpoint=f"{base}/token",
        device_authorization_endpoint=f"{base}/devicecode",
        revocation_endpoint=None,
        scopes=(_MICROSOFT_POP_SCOPE, OFFLINE_ACCESS),
        app_scopes=(_MICROSOFT_APP_SCOPE,),
        pop_scope=_MICROSOFT_POP_SCOPE,
        offline_scope=OFFLINE_ACCESS,
        pop3_host="outlook.office365.com",
        pop3_port=995,
        security="tls",
        mechanism="XOAUTH2",
        # Exchange Online answers the one-line form with "-ERR Protocol error".
        xoauth2_two_step=True,
        tenant=tenant,
    )
