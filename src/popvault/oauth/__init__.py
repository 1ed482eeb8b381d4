"""OAuth 2.0 for POP3 (issue 10): provider presets, login flows, the token lifecycle.

::

    from popvault.oauth import OAuthClient, TokenSource, preset

    client = OAuthClient(preset("m365", tenant="contoso.com"), CLIENT_ID, account="work")
    login = client.start_device_login()
    print(login.instructions())
    result = client.finish_device_login(login)   # result.warnings: scopes missing
    source = TokenSource("work", client)
    source.store(result.tokens)
    source.access_token()                        # for SASL XOAUTH2/OAUTHBEARER, always valid

Importing this package (and reading a token file) loads neither Authlib nor
httpx: they are imported by the functions that talk to a server. Only this
package imports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from popvault.oauth.flows import (
        ClientCertificate,
        DeviceLogin,
        LoginResult,
        LoopbackLogin,
        OAuthClient,
        pkce_challenge,
        scope_warnings,
    )
    from popvault.oauth.providers import PRESETS, OAuthProvider, custom, preset
    from popvault.oauth.tokens import (
        LogoutResult,
        TokenFile,
        TokenSet,
        TokenSource,
        TokenStatus,
        default_token_path,
        refresh_margin,
    )

# Each name from the module that defines it, loaded on first use (PEP 562): the
# config layer reads the presets on every run and must not load the flows and the
# token store with them.
_HOMES = {
    **dict.fromkeys(
        (
            "ClientCertificate",
            "DeviceLogin",
            "LoginResult",
            "LoopbackLogin",
            "OAuthClient",
            "pkce_challenge",
            "scope_warnings",
        ),
        "flows",
    ),
    **dict.fromkeys(("PRESETS", "OAuthProvider", "custom", "preset"), "providers"),
    **dict.fromkeys(
        (
            "LogoutResult",
            "TokenFile",
            "TokenSet",
            "TokenSource",
            "TokenStatus",
            "default_token_path",
            "refresh_margin",
        ),
        "tokens",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'popvault.oauth' has no attribute {name!r}")
    return getattr(importlib.import_module(f"popvault.oauth.{home}"), name)


__all__ = [
    "PRESETS",
    "ClientCertificate",
    "DeviceLogin",
    "LoginResult",
    "LogoutResult",
    "LoopbackLogin",
    "OAuthClient",
    "OAuthProvider",
    "TokenFile",
    "TokenSet",
    "TokenSource",
    "TokenStatus",
    "custom",
    "default_token_path",
    "pkce_challenge",
    "preset",
    "refresh_margin",
    "scope_warnings",
]
