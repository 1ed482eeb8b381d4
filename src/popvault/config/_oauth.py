"""An account's OAuth 2.0 keys resolved into :class:`OAuthSettings` (issue 10).

``provider = "gmail" | "outlook" | "m365"`` fills the POP3 server, the OAuth
endpoints and scopes and the SASL habits of the provider
(:mod:`popvault.oauth.providers`, plain data); every ``oauth_*`` key overrides
its part. Without ``provider``, ``oauth_token_endpoint`` and the other
endpoints describe any other authorization server. The client id is always
the user's own (the README says how to register one with each provider).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from popvault.config._model import (
    OAUTH_SECRET_KEYS,
    OAUTH_SELECTING_KEYS,
    PASSWORD_KEYS,
    AuthMethod,
    OAuthGrant,
    OAuthSettings,
    SecretSource,
)
from popvault.errors import ConfigError
from popvault.oauth.providers import OAuthProvider, custom, preset

# The mechanisms that carry an OAuth access token; the others need a password.
OAUTH_MECHANISMS: Final = frozenset({"xoauth2", "oauthbearer"})
_OVERRIDES: Final = {
    "oauth_authorization_endpoint": "authorization_endpoint",
    "oauth_token_endpoint": "token_endpoint",
    "oauth_device_endpoint": "device_authorization_endpoint",
    "oauth_revocation_endpoint": "revocation_endpoint",
}


def wants_oauth(raw: Mapping[str, Any]) -> bool:
    """Whether the (merged) account signs in with OAuth 2.0 rather than a password."""
    return any(key in raw for key in OAUTH_SELECTING_KEYS)


def provider_defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with the provider preset's host, port and security where not given."""
    name = raw.get("provider")
    if name is None:
        return dict(raw)
    chosen = preset(name, tenant=raw.get("oauth_tenant"))
    filled = dict(raw)
    if chosen.pop3_host is not None:
        filled.setdefault("host", chosen.pop3_host)
    if "security" not in raw:
        filled["security"] = chosen.security
        filled.setdefault("port", chosen.pop3_port)
    return filled


def oauth_auth(raw: Mapping[str, Any], provider: OAuthProvider, file: str, name: str) -> AuthMethod:
    """The account's ``auth``: the provider's mechanism unless one is named (an OAuth one)."""
    auth: AuthMethod | None = raw.get("auth")
    if auth is None or auth == "auto":
        return "xoauth2" if provider.mechanism == "XOAUTH2" else "oauthbearer"
    if auth not in OAUTH_MECHANISMS:
        message = (
            f'auth = "{auth}" needs a password, and this account signs in with OAuth 2.0 '
            f'({_selector(raw)}): use auth = "xoauth2" or "oauthbearer", or remove the OAuth keys'
        )
        raise ConfigError(message, file=file, account=name, key="auth")
    return auth


def check_password_auth(raw: Mapping[str, Any], file: str, name: str) -> None:
    """A password account must not name an OAuth mechanism, nor set OAuth-only keys."""
    auth = raw.get("auth")
    if auth in OAUTH_MECHANISMS:
        message = (
            f'auth = "{auth}" signs in with an OAuth 2.0 token: set provider (or '
            "oauth_client_id and oauth_token_endpoint) for this account, and no password"
        )
        raise ConfigError(message, file=file, account=name, key="auth")
    stray = [key for key in raw if key.startswith("oauth_") or key == "xoauth2_two_step"]
    if stray:
        message = (
            f"{stray[0]} is an OAuth 2.0 setting, but this account has no provider or "
            "oauth_client_id: set one of them, or remove it"
        )
        raise ConfigError(message, file=file, account=name, key=stray[0])


def resolve_oauth(
    raw: Mapping[str, Any],
    *,
    file: str,
    name: str,
    absolute: Callable[[str], Path],
    state_home: Path,
) -> OAuthSettings:
    """The OAuth settings of an account for which :func:`wants_oauth` holds."""
    password = [key for key in PASSWORD_KEYS if key in raw]
    if password:
        message = (
            f"{password[0]} and OAuth 2.0 ({_selector(raw)}) on one account: an account signs "
            "in with a password or with OAuth, not both; remove one"
        )
        raise ConfigError(message, file=file, account=name, key=password[0])
    client_id = raw.get("oauth_client_id")
    if not client_id:
        message = (
            "OAuth 2.0 needs your own client id (register an application with the provider; "
            'the README says how): set oauth_client_id = "..."'
        )
        raise ConfigError(message, file=file, account=name, key="oauth_client_id")
    provider = _provider(raw, file, name)
    grant = _grant(raw, provider, file, name)
    secret = _client_secret(raw, file, name, absolute)
    certificate, key = _certificate(raw, file, name, absolute)
    if grant == "client-credentials" and secret is None and certificate is None:
        message = (
            'oauth_grant = "client-credentials" needs a client secret '
            "(oauth_client_secret, _env, _file or _command) or oauth_certificate_file"
        )
        raise ConfigError(message, file=file, account=name, key="oauth_grant")
    token_file = raw.get("oauth_token_file")
    return OAuthSettings(
        provider=provider,
        client_id=client_id,
        grant=grant,
        token_file=(
            absolute(token_file)
            if token_file
            else state_home / "popvault" / "tokens" / f"{name}.json"
        ),
        client_secret=secret,
        certificate_file=certificate,
        private_key_file=key,
        xoauth2_two_step=raw.get("xoauth2_two_step", provider.xoauth2_two_step),
    )


def _selector(raw: Mapping[str, Any]) -> str:
    key = next(key for key in OAUTH_SELECTING_KEYS if key in raw)
    return f"{key} = {raw[key]!r}" if key == "provider" else key


def _provider(raw: Mapping[str, Any], file: str, name: str) -> OAuthProvider:
    overrides = {field: raw[key] for key, field in _OVERRIDES.items() if key in raw}
    if "oauth_scopes" in raw:
        overrides["scopes"] = tuple(raw["oauth_scopes"])
    if raw.get("provider") is not None:
        return preset(raw["provider"], tenant=raw.get("oauth_tenant")).with_overrides(**overrides)
    if "token_endpoint" not in overrides:
        message = "an OAuth 2.0 account without provider needs oauth_token_endpoint"
        raise ConfigError(message, file=file, account=name, key="oauth_token_endpoint")
    return custom(name, **overrides)


def _grant(raw: Mapping[str, Any], provider: OAuthProvider, file: str, name: str) -> OAuthGrant:
    grant: OAuthGrant | None = raw.get("oauth_grant")
    if grant is None:
        # A headless machine is the common case: the device code where the provider has it.
        return "device" if provider.device_authorization_endpoint else "browser"
    needs = {
        "device": ("device_authorization_endpoint", "oauth_device_endpoint"),
        "browser": ("authorization_endpoint", "oauth_authorization_endpoint"),
    }.get(grant)
    if needs is not None and getattr(provider, needs[0]) is None:
        hint = '; Gmail has no device flow for mail: use "browser"' if grant == "device" else ""
        message = (
            f'oauth_grant = "{grant}" needs an endpoint this provider does not have: '
            f"set {needs[1]}{hint}"
        )
        raise ConfigError(message, file=file, account=name, key="oauth_grant")
    if grant == "client-credentials" and not provider.app_scopes and "oauth_scopes" not in raw:
        message = (
            'oauth_grant = "client-credentials": this provider has no app-only scope; '
            "set oauth_scopes"
        )
        raise ConfigError(message, file=file, account=name, key="oauth_grant")
    return grant


def _client_secret(
    raw: Mapping[str, Any], file: str, name: str, absolute: Callable[[str], Path]
) -> SecretSource | None:
    given = [key for key in OAUTH_SECRET_KEYS if key in raw]
    if len(given) > 1:
        message = f"set at most one of {', '.join(OAUTH_SECRET_KEYS)} (found {', '.join(given)})"
        raise ConfigError(message, file=file, account=name, key=given[-1])
    if not given:
        return None
    key = given[0]
    value = raw[key]
    if key == "oauth_client_secret":
        return SecretSource(key=key, kind="inline", value=value.get_secret_value())
    if key == "oauth_client_secret_env":
        return SecretSource(key=key, kind="env", value=value)
    if key == "oauth_client_secret_file":
        return SecretSource(key=key, kind="file", value=str(absolute(value)))
    return SecretSource(key=key, kind="command", value=value)


def _certificate(
    raw: Mapping[str, Any], file: str, name: str, absolute: Callable[[str], Path]
) -> tuple[Path | None, Path | None]:
    certificate, key = raw.get("oauth_certificate_file"), raw.get("oauth_private_key_file")
    if key is not None and certificate is None:
        message = "oauth_private_key_file needs oauth_certificate_file (the key's certificate)"
        raise ConfigError(message, file=file, account=name, key="oauth_private_key_file")
    return (
        _existing(certificate, "oauth_certificate_file", file, name, absolute),
        _existing(key, "oauth_private_key_file", file, name, absolute),
    )


def _existing(
    value: str | None, setting: str, file: str, name: str, absolute: Callable[[str], Path]
) -> Path | None:
    if value is None:
        return None
    path = absolute(value)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", file=file, account=name, key=setting)
    return path
