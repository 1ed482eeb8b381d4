"""OAuth 2.0 grants for POP3: device code, code with PKCE, client credentials, refresh.

Every exchange is Authlib's ``OAuth2Client`` over httpx; both are imported
inside the functions that talk to a server, so importing this module (or
reading a token file) costs nothing heavy. Foreign errors are mapped once,
here (:meth:`OAuthClient._exchange`):

* an OAuth error answer (RFC 6749 section 5.2) to a refresh that says the
  grant is gone (``invalid_grant``, and Microsoft's ``interaction_required``
  family) becomes :class:`~popvault.errors.ReauthorizationRequired`;
* ``server_error``/``temporarily_unavailable``, a 5xx or 429, a timeout or a
  network failure become :class:`~popvault.errors.OAuthUnavailable`;
* a refused login (denied, expired code, wrong ``state``) becomes
  :class:`~popvault.errors.AuthorizationFailed`;
* anything else the server refused (``invalid_client``, ``invalid_scope``) is
  an :class:`~popvault.errors.OAuthError` for a person to read.

The flows:

* device authorization grant (RFC 8628), for a headless server:
  :meth:`OAuthClient.start_device_login` returns the URL and the code to show,
  :meth:`OAuthClient.finish_device_login` polls at the server's ``interval``,
  5 s slower after each ``slow_down`` (section 3.5);
* authorization code with PKCE S256 (RFC 7636) and a loopback redirect
  (RFC 8252 section 7.3), for a desktop: :meth:`OAuthClient.start_loopback_login`
  listens on 127.0.0.1 on a port the system picks and returns the URL for the
  browser; :meth:`LoopbackLogin.wait` takes one redirect, checks ``state``
  and exchanges the code;
* client credentials (RFC 6749 section 4.4; Microsoft's app-only access) with a
  client secret or a certificate: a ``private_key_jwt`` assertion (RFC 7523)
  signed by Authlib with the certificate's key, whose header carries
  ``x5t#S256`` and ``x5t`` (the certificate's SHA-256 and SHA-1 thumbprints),
  as https://learn.microsoft.com/entra/identity-platform/certificate-credentials
  asks;
* refresh (RFC 6749 section 6) and revocation (RFC 7009), for
  :class:`~popvault.oauth.tokens.TokenSource`.

Logins return the scopes granted checked against what was asked
(:func:`scope_warnings`): without the POP scope every login fails, without a
refresh token access ends within the hour.
"""

from __future__ import annotations

import base64
import hashlib
import html
import ipaddress
import logging
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from popvault.errors import (
    AuthorizationFailed,
    OAuthError,
    OAuthUnavailable,
    ReauthorizationRequired,
)
from popvault.oauth.providers import MICROSOFT_MULTI_TENANTS, OAuthProvider
from popvault.oauth.tokens import Grant, TokenSet, from_response
from popvault.redaction import redact, register

if TYPE_CHECKING:
    import http.server

log = logging.getLogger("popvault.oauth")

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 section 3.4
# RFC 8628 section 3.2: without an interval the client waits 5 s between polls;
# section 3.5: each slow_down adds 5 s for this and every later poll.
DEFAULT_INTERVAL: Final = 5.0
SLOW_DOWN_STEP: Final = 5.0
# Microsoft says "authorization_declined" where RFC 8628 says "access_denied".
_DENIED: Final = frozenset({"access_denied", "authorization_declined"})
# The grant is gone: only a new login helps (RFC 6749 section 5.2; Microsoft adds
# the interaction_required family when MFA or consent must be given again).
_GRANT_GONE: Final = frozenset(
    {"invalid_grant", "interaction_required", "consent_required", "login_required"}
)
# The authorization server says it is the one failing (RFC 6749 section 4.1.2.1).
_TRANSIENT_ERRORS: Final = frozenset({"server_error", "temporarily_unavailable"})
_TOO_MANY_REQUESTS: Final = 429
# RFC 7636 section 4.1: a verifier of 43 to 128 characters; 64 gives 384 bits.
_VERIFIER_LENGTH: Final = 64
DEFAULT_TIMEOUT: Final = 30.0
# How long the loopback listener waits for the browser by default.
LOOPBACK_TIMEOUT: Final = 300.0

Context = Literal["login", "refresh", "client_credentials", "revoke", "device"]


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A certificate registered with the app and its private key, PEM (Microsoft app-only).

    ``private_key_pem`` and ``password`` are secrets: registered on
    construction, never in ``repr``.
    """

    certificate_pem: bytes
    private_key_pem: bytes = field(repr=False)
    password: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        register(self.private_key_pem.decode("ascii", "replace").strip())
        if self.password:
            register(self.password.decode("utf-8", "replace"))

    @classmethod
    def from_files(
        cls, certificate: Path, private_key: Path | None = None, *, password: bytes | None = None
    ) -> ClientCertificate:
        """Read the PEM files (the key may be in the certificate's file)."""
        cert_pem = certificate.read_bytes()
        key_pem = private_key.read_bytes() if private_key is not None else cert_pem
        return cls(certificate_pem=cert_pem, private_key_pem=key_pem, password=password)

    def thumbprints(self) -> dict[str, str]:
        """The JWS header's ``x5t#S256`` and ``x5t`` (RFC 7515 sections 4.1.8, 4.1.7)."""
        from cryptography import x509  # noqa: PLC0415 - only app-only logins pay for it
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        der = x509.load_pem_x509_certificate(self.certificate_pem).public_bytes(
            serialization.Encoding.DER
        )
        return {
            "x5t#S256": _b64url(hashlib.sha256(der).digest()),
            # SHA-1 only as a name for the certificate, which is what x5t is defined as.
            "x5t": _b64url(hashlib.sha1(der, usedforsecurity=False).digest()),
        }


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A completed login: the tokens to store and what is wrong with the grant."""

    tokens: TokenSet
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceLogin:
    """A started device login (RFC 8628 section 3.2): what to show the user.

    ``device_code`` is the client's secret for the polls; ``started_at`` is on
    the client's monotonic clock.
    """

    verification_uri: str
    user_code: str
    expires_in: float
    interval: float
    started_at: float
    scopes: tuple[str, ...]
    device_code: str = field(repr=False)
    verification_uri_complete: str | None = None
    message: str | None = None

    def instructions(self) -> str:
        """One paragraph for the terminal."""
        minutes = max(1, round(self.expires_in / 60))
        text = (
            f"To sign in, open {self.verification_uri} in a browser on any device "
            f"and enter the code {self.user_code} (valid for {minutes} min)."
        )
        if self.verification_uri_complete:
            text += f" Or open {self.verification_uri_complete} directly."
        return text


class OAuthClient:
    """One OAuth client (app registration) at one provider, for one account.

    ``client_secret`` (a confidential client; Google's desktop clients have
    one too) or ``certificate`` (Microsoft app-only) authenticate the client;
    neither makes it a public client. ``account`` goes into every error.
    ``verify`` is httpx's (True, or a CA bundle path). Endpoints must be
    HTTPS, except on the loopback interface (the test server).
    """

    def __init__(
        self,
        provider: OAuthProvider,
        client_id: str,
        *,
        client_secret: str | None = None,
        certificate: ClientCertificate | None = None,
        account: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if client_secret is not None and certificate is not None:
            raise ValueError("a client secret or a certificate, not both")
        for url in _endpoints(provider):
            _require_https(url)
        self.provider = provider
        self.client_id = client_id
        self.account = account
        self._secret = register(client_secret) if client_secret else None
        self._certificate = certificate
        self._timeout = timeout
        self._verify = verify
        self._clock = clock
        self._monotonic = monotonic

    def __repr__(self) -> str:
        kind = "certificate" if self._certificate else "secret" if self._secret else "public"
        return f"OAuthClient(provider={self.provider.name!r}, client_id={self.client_id!r}, {kind})"

    # -- device authorization grant (RFC 8628) --

    def start_device_login(self, scopes: tuple[str, ...] | None = None) -> DeviceLogin:
        """Ask for a device code and a user code (RFC 8628 section 3.1)."""
        endpoint = self.provider.device_authorization_endpoint
        if endpoint is None:
            raise OAuthError(
                f"{self.provider.name} offers no device login; use the browser login",
                account=self.account,
            )
        wanted = self._scopes(scopes)
        with self._session() as session, self._exchange("device"):
            response = session.request(
                "POST",
                endpoint,
                data={"scope": " ".join(wanted)},
                auth=session.client_auth(session.token_endpoint_auth_method),
                withhold_token=True,
            )
            body = _json_answer(response)
        return self._device_login(body, wanted)

    def finish_device_login(
        self, login: DeviceLogin, *, sleep: Callable[[float], None] = time.sleep
    ) -> LoginResult:
        """Poll the token endpoint until the user approved, denied, or the code expired."""
        interval = login.interval
        deadline = login.started_at + login.expires_in
        while True:
            sleep(interval)
            if self._monotonic() >= deadline:
                raise AuthorizationFailed(
                    "the code expired before the sign-in was completed; start the login again",
                    error="expired_token",
                    account=self.account,
                )
            try:
                response = self._token(
                    "login", grant_type=DEVICE_CODE_GRANT, device_code=login.device_code
                )
            except OAuthUnavailable as exc:
                log.debug("device login: polling again after %s", exc)
                continue
            except AuthorizationFailed as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                    continue
                raise
            return self._login_result(response, "device_code", login.scopes)

    def device_login(
        self,
        scopes: tuple[str, ...] | None = None,
        *,
        show: Callable[[DeviceLogin], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> LoginResult:
        """:meth:`start_device_login`, ``show`` it (e.g. print its instructions), then finish."""
        login = self.start_device_login(scopes)
        if show is not None:
            show(login)
        return self.finish_device_login(login, sleep=sleep)

    # -- authorization code with PKCE and a loopback redirect (RFC 7636, RFC 8252) --

    def start_loopback_login(
        self,
        scopes: tuple[str, ...] | None = None,
        *,
        host: str = "127.0.0.1",
        redirect_host: str | None = None,
        path: str = "/",
    ) -> LoopbackLogin:
        """Listen on ``host`` at a free port; the result's ``url`` is for the browser.

        ``redirect_host`` is the name in the redirect URI (default ``host``):
        an app registration that lists ``http://localhost`` needs
        ``redirect_host="localhost"``.
        """
        endpoint = self.provider.authorization_endpoint
        if endpoint is None:
            raise OAuthError(
                f"{self.provider.name} offers no browser login; use the device login",
                account=self.account,
            )
        from authlib.common.security import generate_token  # type: ignore[import-untyped]  # noqa: PLC0415

        listener = _Listener(host, path)
        redirect_uri = f"http://{redirect_host or host}:{listener.port}{path}"
        verifier = register(generate_token(_VERIFIER_LENGTH))
        wanted = self._scopes(scopes)
        with self._session() as session:
            url, state = session.create_authorization_url(
                endpoint,
                redirect_uri=redirect_uri,
                scope=" ".join(wanted),
                code_verifier=verifier,
                **dict(self.provider.authorization_params),
            )
        register(state)
        listener.expect(state)
        return LoopbackLogin(
            self,
            listener,
            url=str(url),
            redirect_uri=redirect_uri,
            verifier=verifier,
            scopes=wanted,
        )

    def exchange_code(
        self, code: str, *, redirect_uri: str, verifier: str, scopes: tuple[str, ...]
    ) -> LoginResult:
        """Trade an authorization code for tokens (RFC 6749 section 4.1.3, RFC 7636 4.5)."""
        register(code)
        response = self._token(
            "login",
            grant_type="authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=verifier,
        )
        return self._login_result(response, "authorization_code", scopes)

    # -- client credentials (RFC 6749 section 4.4) --

    def client_credentials(self, scopes: tuple[str, ...] | None = None) -> LoginResult:
        """App-only tokens; needs a client secret or a certificate."""
        if self._secret is None and self._certificate is None:
            raise OAuthError(
                "client credentials need a client secret or a certificate", account=self.account
            )
        if self.provider.tenant in MICROSOFT_MULTI_TENANTS:
            raise OAuthError(
                f"app-only access needs the organisation's tenant id or domain, "
                f"not {self.provider.tenant!r}",
                account=self.account,
            )
        wanted = tuple(scopes) if scopes else self.provider.app_scopes
        response = self._token(
            "client_credentials", grant_type="client_credentials", scope=" ".join(wanted)
        )
        tokens = from_response(
            response, grant="client_credentials", now=self._clock(), requested=wanted
        )
        return LoginResult(tokens)

    # -- what TokenSource needs --

    def renew(self, tokens: TokenSet) -> TokenSet:
        """A new access token: the refresh grant, or client credentials once more."""
        now = self._clock()
        if tokens.grant == "client_credentials":
            fresh = self.client_credentials(tokens.scopes or None).tokens
            return TokenSet(
                access_token=fresh.access_token,
                refresh_token=None,
                grant="client_credentials",
                obtained_at=fresh.obtained_at,
                expires_at=fresh.expires_at,
                scopes=fresh.scopes,
                token_type=fresh.token_type,
                login_at=tokens.login_at,
                last_refresh=now,
            )
        if tokens.refresh_token is None:
            raise ReauthorizationRequired(
                "the access token expired and the login issued no refresh token",
                account=self.account or "?",
                error=None,
            )
        response = self._refresh(tokens.refresh_token)
        return tokens.renewed(response, now=now)

    def revoke(self, tokens: TokenSet) -> bool:
        """Revoke the grant (RFC 7009); False if the provider has no revocation endpoint."""
        endpoint = self.provider.revocation_endpoint
        if endpoint is None:
            return False
        token = tokens.refresh_token or tokens.access_token
        hint = "refresh_token" if tokens.refresh_token else "access_token"
        with self._session() as session, self._exchange("revoke"):
            response = session.revoke_token(endpoint, token=token, token_type_hint=hint)
            response.raise_for_status()
        return True

    # -- internals --

    def _scopes(self, scopes: tuple[str, ...] | None) -> tuple[str, ...]:
        return tuple(scopes) if scopes else self.provider.scopes

    def _refresh(self, refresh_token: str) -> Mapping[str, Any]:
        with self._session() as session, self._exchange("refresh"):
            token: Mapping[str, Any] = session.refresh_token(
                self.provider.token_endpoint, refresh_token=refresh_token
            )
            return dict(token)

    def _token(self, context: Context, **params: str) -> Mapping[str, Any]:
        with self._session() as session, self._exchange(context):
            token: Mapping[str, Any] = session.fetch_token(self.provider.token_endpoint, **params)
            return dict(token)

    def _login_result(
        self, response: Mapping[str, Any], grant: Grant, scopes: tuple[str, ...]
    ) -> LoginResult:
        tokens = from_response(response, grant=grant, now=self._clock(), requested=scopes)
        return LoginResult(tokens, scope_warnings(self.provider, scopes, tokens))

    def _device_login(self, body: Mapping[str, Any], scopes: tuple[str, ...]) -> DeviceLogin:
        # Google's device endpoint says verification_url (RFC 8628's draft name).
        uri = body.get("verification_uri") or body.get("verification_url")
        device_code, user_code = body.get("device_code"), body.get("user_code")
        if not isinstance(uri, str) or not isinstance(device_code, str) or not user_code:
            raise OAuthError(
                "the device authorization endpoint answered without a code or URL",
                account=self.account,
            )
        register(device_code)
        complete = body.get("verification_uri_complete")
        return DeviceLogin(
            verification_uri=uri,
            user_code=str(user_code),
            expires_in=float(body.get("expires_in") or 900),
            interval=float(body.get("interval") or DEFAULT_INTERVAL),
            started_at=self._monotonic(),
            scopes=scopes,
            device_code=device_code,
            verification_uri_complete=complete if isinstance(complete, str) else None,
            message=str(body["message"]) if body.get("message") else None,
        )

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """An Authlib ``OAuth2Client`` (an ``httpx.Client``) set up for this client."""
        client_class, private_key_jwt = _authlib()
        secret: object = self._secret
        method = "client_secret_post" if self._secret else "none"
        if self._certificate is not None:
            secret, method = _signing_key(self._certificate), "private_key_jwt"
        session = client_class(
            client_id=self.client_id,
            client_secret=secret,
            token_endpoint_auth_method=method,
            revocation_endpoint_auth_method=method,
            code_challenge_method="S256",
            timeout=self._timeout,
            verify=self._verify,
            trust_env=True,
        )
        if self._certificate is not None:
            session.register_client_auth_method(
                private_key_jwt(
                    self.provider.token_endpoint,
                    headers=self._certificate.thumbprints(),
                    alg="PS256",
                )
            )
        try:
            yield session
        finally:
            session.close()

    @contextmanager
    def _exchange(self, context: Context) -> Iterator[None]:
        """Map Authlib's and httpx's errors into popvault's, once."""
        import httpx  # noqa: PLC0415 - already loaded by _session

        authlib_error = _authlib_error()
        try:
            yield
        except authlib_error as exc:
            error, description = getattr(exc, "error", None), getattr(exc, "description", None)
            raise self._refused(context, error, description) from None
        except httpx.HTTPStatusError as exc:
            raise self._http_failure(exc.response.status_code, exc.response) from None
        except httpx.TimeoutException:
            raise OAuthUnavailable(
                f"the authorization server did not answer within {self._timeout:.0f} s",
                account=self.account,
            ) from None
        except httpx.HTTPError as exc:
            raise OAuthUnavailable(
                f"cannot reach the authorization server: {redact(str(exc)) or type(exc).__name__}",
                account=self.account,
            ) from None

    def _refused(self, context: Context, error: str | None, description: str | None) -> OAuthError:
        said = redact(f"{error}: {description}" if description else str(error))
        if error in _TRANSIENT_ERRORS:
            return OAuthUnavailable(
                f"the authorization server is failing ({said})", error=error, account=self.account
            )
        if context == "refresh" and error in _GRANT_GONE:
            return ReauthorizationRequired(
                f"the provider refused the refresh token ({said})",
                account=self.account or "?",
                error=error,
            )
        if context == "login" and error not in {"invalid_client", "unauthorized_client"}:
            return AuthorizationFailed(
                _login_refusal(error, said), error=error, account=self.account
            )
        return OAuthError(
            f"the authorization server refused: {said}", error=error, account=self.account
        )

    def _http_failure(self, status: int, response: Any) -> OAuthError:
        if status >= 500 or status == _TOO_MANY_REQUESTS:
            return OAuthUnavailable(
                f"the authorization server answered HTTP {status}", account=self.account
            )
        return OAuthError(
            f"the authorization server answered HTTP {status}: "
            f"{redact(response.text[:200]) if response.text else 'no details'}",
            account=self.account,
        )


def _login_refusal(error: str | None, said: str) -> str:
    if error in _DENIED:
        return f"the sign-in was denied ({said})"
    if error == "expired_token":
        return f"the code expired before the sign-in was completed ({said}); start again"
    return f"the sign-in failed ({said})"


class LoopbackLogin:
    """A started browser login: open :attr:`url`, then :meth:`wait`."""

    def __init__(
        self,
        client: OAuthClient,
        listener: _Listener,
        *,
        url: str,
        redirect_uri: str,
        verifier: str,
        scopes: tuple[str, ...],
    ) -> None:
        self._client = client
        self._listener = listener
        self.url = url
        self.redirect_uri = redirect_uri
        self._verifier = verifier
        self.scopes = scopes

    def __repr__(self) -> str:
        return f"LoopbackLogin(redirect_uri={self.redirect_uri!r})"

    def wait(self, timeout: float = LOOPBACK_TIMEOUT) -> LoginResult:
        """Take the browser's redirect, check ``state``, exchange the code for tokens."""
        try:
            params = self._listener.wait(timeout)
        finally:
            self._listener.close()
        account = self._client.account
        if params is None:
            raise AuthorizationFailed(
                f"no answer from the browser within {timeout:.0f} s", account=account
            )
        if params.get("error"):
            error = params["error"]
            said = redact(f"{error}: {params.get('error_description', '')}".rstrip(": "))
            raise AuthorizationFailed(_login_refusal(error, said), error=error, account=account)
        if not self._listener.state_matched:
            raise AuthorizationFailed(
                "the browser's redirect carried the wrong state; start the login again",
                error="invalid_state",
                account=account,
            )
        code = params.get("code")
        if not code:
            raise AuthorizationFailed("the redirect carried no code", account=account)
        return self._client.exchange_code(
            code, redirect_uri=self.redirect_uri, verifier=self._verifier, scopes=self.scopes
        )

    def close(self) -> None:
        """Stop listening (a login given up)."""
        self._listener.close()


_PAGE: Final = (
    "<!doctype html><html><head><meta charset='utf-8'><title>popvault</title></head>"
    "<body><p>{text}</p></body></html>"
)


class _Listener:
    """The loopback redirect's receiver: one authorization response, then done (RFC 8252 7.3)."""

    def __init__(self, host: str, path: str) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the redirect listener must be on a loopback address, not {host}")
        self.path = path
        self.state_matched = False
        self._expected: str | None = None
        self._params: dict[str, str] | None = None
        self._done = threading.Event()
        import http.server  # noqa: PLC0415 - only a browser login needs a server

        self._server = http.server.HTTPServer((host, 0), self._handler())
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def expect(self, state: str) -> None:
        self._expected = state

    def wait(self, timeout: float) -> dict[str, str] | None:
        self._done.wait(timeout)
        return self._params

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def _receive(self, query: str) -> str:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        for key in ("code", "state"):
            if params.get(key):
                register(params[key])
        self.state_matched = self._expected is not None and params.get("state") == self._expected
        self._params = params
        self._done.set()
        if params.get("error"):
            return "The sign-in was not completed. You can close this window."
        if not self.state_matched:
            return "This answer does not belong to the login popvault started."
        return "popvault has the authorization. You can close this window."

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        import http.server  # noqa: PLC0415 - see __init__

        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                if parts.path != listener.path or listener._done.is_set():
                    self._reply(404, "Not found.")  # a favicon, a second request
                    return
                self._reply(200, listener._receive(parts.query))

            def _reply(self, status: int, text: str) -> None:
                body = _PAGE.format(text=html.escape(text)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # The default writes the request line, code included, to stderr.
                return

        return Handler


def scope_warnings(
    provider: OAuthProvider, requested: tuple[str, ...], tokens: TokenSet
) -> tuple[str, ...]:
    """What is missing from a delegated grant, in words for the user.

    Scopes compare without regard to case (Microsoft echoes them in its own
    casing). A response without ``scope`` granted what was asked (RFC 6749
    section 5.1). No refresh token is a warning whatever the scopes say: the
    access ends with the access token.
    """
    granted = {scope.lower() for scope in tokens.scopes}
    found: list[str] = []
    pop = provider.pop_scope
    if pop and pop.lower() in {s.lower() for s in requested} and pop.lower() not in granted:
        found.append(
            f"the provider did not grant {pop}: POP3 logins will be refused; check the API "
            "permissions of the app registration and sign in again"
        )
    if tokens.refresh_token is None:
        lifetime = tokens.lifetime
        until = f" in {lifetime / 60:.0f} min" if lifetime else ""
        offline = provider.offline_scope
        why = (
            f"{offline} was not granted" if offline and offline.lower() not in granted else None
        ) or "the provider issued no refresh token"
        found.append(
            f"{why}: access ends when this access token expires{until}, and then "
            "`popvault auth login` is needed again"
        )
    return tuple(found)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 section 4.2), for tests and servers."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_answer(response: Any) -> Mapping[str, Any]:
    """The JSON object of a response that is not a token response (the device endpoint)."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("error"):
            raise _authlib_error()(body["error"], body.get("error_description"))
        response.raise_for_status()
    body = response.json()
    if not isinstance(body, dict):
        raise OAuthError("the device authorization endpoint did not answer a JSON object")
    return body


def _endpoints(provider: OAuthProvider) -> list[str]:
    candidates = (
        provider.token_endpoint,
        provider.authorization_endpoint,
        provider.device_authorization_endpoint,
        provider.revocation_endpoint,
    )
    return [url for url in candidates if url]


def _require_https(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if parts.scheme == "http" and loopback:
        return
    raise OAuthError(f"refusing the OAuth endpoint {url}: it must be https:// (or on loopback)")


def _authlib() -> tuple[Any, Any]:
    """Authlib's httpx ``OAuth2Client`` and ``PrivateKeyJWT``, imported on first use.

    Authlib 1.9 warns (AuthlibDeprecationWarning) when it runs on httpx rather
    than its fork httpx2; popvault declares httpx, so exactly that warning is
    silenced, here, once.
    """
    import authlib.deprecate  # type: ignore[import-untyped]  # noqa: PLC0415, F401

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The httpx module is deprecated", category=DeprecationWarning
        )
        from authlib.integrations.httpx_client import (  # type: ignore[import-untyped]  # noqa: PLC0415
            OAuth2Client,
        )
    from authlib.oauth2.rfc7523 import PrivateKeyJWT  # type: ignore[import-untyped]  # noqa: PLC0415

    return OAuth2Client, PrivateKeyJWT


def _authlib_error() -> type[Exception]:
    """The exception Authlib's clients raise for an OAuth error answer."""
    from authlib.integrations.base_client import (  # type: ignore[import-untyped]  # noqa: PLC0415
        OAuthError as AuthlibOAuthError,
    )

    error: type[Exception] = AuthlibOAuthError
    return error


def _signing_key(certificate: ClientCertificate) -> Any:
    """The certificate's private key as joserfc's key object (what Authlib 1.9 signs with)."""
    from joserfc.jwk import RSAKey  # noqa: PLC0415

    return RSAKey.import_key(certificate.private_key_pem, password=certificate.password)
