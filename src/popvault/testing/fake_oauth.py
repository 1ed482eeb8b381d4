"""A local OAuth 2.0 authorization server for tests: real HTTP on 127.0.0.1, in a thread.

::

    with FakeOAuthServer(access_token_lifetime=3) as server:
        server.add_client("popvault-test")                   # a public client
        server.token_url, server.device_authorization_url, server.authorization_url
        server.approve(user_code)                            # the user, for the device flow
        server.introspection_url                             # for Dovecot's oauth2 passdb
        server.revoke_user("alice")                          # what an admin would do
        server.refreshes, server.introspections              # what happened

Endpoints (all form-encoded POSTs answering JSON, except ``/authorize``):

* ``/token`` — ``authorization_code`` (PKCE S256 required and verified,
  RFC 7636 section 4.6; the code is single-use and bound to its
  ``redirect_uri``), the device code grant (RFC 8628 section 3.4:
  ``authorization_pending`` until :meth:`approve`, ``access_denied`` after
  :meth:`deny`, ``expired_token``, ``slow_down`` on demand), ``refresh_token``
  (rotated on each use unless ``rotate_refresh_tokens=False``: the old token
  is then ``invalid_grant``), ``client_credentials`` with a client secret
  (HTTP Basic or in the body) or a ``private_key_jwt`` assertion (RFC 7523)
  verified against the client's certificate, ``x5t#S256``/``x5t`` included;
* ``/device_authorization`` (RFC 8628 section 3.1);
* ``/authorize`` — a GET that a test (the browser) follows: it answers
  ``302`` to the ``redirect_uri`` with ``code`` and ``state``, or with
  ``error=access_denied`` when ``deny_authorizations`` is set;
* ``/introspect`` (RFC 7662) in the form Dovecot 2.3's oauth2 passdb uses with
  ``introspection_mode = post``: it POSTs ``token=...&client_id=...&client_secret=...``
  and reads a flat JSON object; the answer has ``active``, ``username`` (also
  as ``email`` and ``sub``), ``scope``, ``client_id``, ``token_type``, ``exp``
  and ``expires_in`` (:meth:`dovecot_config` writes the matching
  ``dovecot-oauth2.conf.ext``);
* ``/revoke`` (RFC 7009): a refresh token revokes its grant and every access
  token of it; an access token only itself.

Faults for what a real server will not do on demand: :meth:`fail` (an HTTP
status for the next requests to an endpoint), :meth:`slow_down`,
``token_delay`` (seconds each token request takes, to make refreshes
overlap). Errors raised inside the server thread are kept in :attr:`errors`
and re-raised by :meth:`stop`.

An independent peer: it checks PKCE and JWT signatures with the standard
library and ``cryptography``, not with Authlib (the client's library), so a
bug in Authlib's signing would not be shared by both sides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.server
import json
import math
import secrets
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_CLIENT: Final = "popvault-test"
DEFAULT_USER: Final = "alice"
# The scope that, where asked for, decides whether a refresh token is issued
# (Microsoft's behaviour); a grant that did not ask for it gets one anyway
# (Google's, with access_type=offline).
OFFLINE_ACCESS: Final = "offline_access"
_PAGE: Final = "<!doctype html><title>fake OAuth</title><p>{}</p>"


@dataclass
class FakeClient:
    """A registered client: public (no secret), with a secret, or with a certificate (PEM)."""

    client_id: str
    secret: str | None = None
    certificate_pem: bytes | None = None


@dataclass
class _Grant:
    username: str
    client_id: str
    scopes: tuple[str, ...]
    refresh_token: str | None
    revoked: bool = False


@dataclass
class _AccessToken:
    username: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    grant: _Grant | None
    revoked: bool = False


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scopes: tuple[str, ...]
    username: str
    expires_at: float


@dataclass
class _Device:
    device_code: str
    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_at: float
    status: str = "pending"  # pending, approved, denied, used
    username: str = DEFAULT_USER
    granted: tuple[str, ...] | None = None


class _Answer(Exception):
    """An HTTP answer decided deep in a handler (an OAuth error, a redirect)."""

    def __init__(
        self, status: int, body: dict[str, Any] | None = None, location: str | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.location = location


def _oauth_error(status: int, error: str, description: str = "") -> _Answer:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return _Answer(status, body)


@dataclass
class _Fault:
    status: int
    times: int
    body: dict[str, Any] | None


@dataclass
class _State:
    clients: dict[str, FakeClient] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    devices: dict[str, _Device] = field(default_factory=dict)
    grants: dict[str, _Grant] = field(default_factory=dict)  # by refresh token
    access: dict[str, _AccessToken] = field(default_factory=dict)
    seen_jti: set[str] = field(default_factory=set)
    faults: dict[str, list[_Fault]] = field(default_factory=dict)
    slow_downs: int = 0


class FakeOAuthServer:
    """The authorization server; see the module docstring. Port 0: the system picks one."""

    def __init__(
        self,
        *,
        access_token_lifetime: float = 3600.0,
        rotate_refresh_tokens: bool = True,
        device_code_lifetime: float = 600.0,
        device_interval: int = 5,
        user: str = DEFAULT_USER,
        access_token_length: int = 48,
        host: str = "127.0.0.1",
    ) -> None:
        self.access_token_lifetime = access_token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.device_code_lifetime = device_code_lifetime
        self.device_interval = device_interval
        self.user = user
        self.access_token_length = access_token_length
        #: Scopes never granted, whatever was asked (a tenant without the POP permission).
        self.withhold_scopes: set[str] = set()
        #: ``/authorize`` redirects with ``error=access_denied`` (the user said no).
        self.deny_authorizations = False
        #: Seconds each ``/token`` request waits before it is answered.
        self.token_delay = 0.0
        #: What happened: ``refreshes``, ``introspections``, ``revocations`` and
        #: one count per grant type at ``/token``.
        self.counts: Counter[str] = Counter()
        #: Exceptions raised inside the server thread (re-raised by :meth:`stop`).
        self.errors: list[BaseException] = []
        self._host = host
        self._lock = threading.Lock()
        self._state = _State()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> FakeOAuthServer:
        """Bind, serve in a daemon thread; returns self once it accepts connections."""
        server = http.server.ThreadingHTTPServer((self._host, 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; re-raise the first error the server thread hit."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.errors:
            raise RuntimeError("the fake OAuth server failed") from self.errors[0]

    def __enter__(self) -> FakeOAuthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- where --

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake OAuth server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def authorization_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def device_authorization_url(self) -> str:
        return f"{self.url}/device_authorization"

    @property
    def verification_url(self) -> str:
        return f"{self.url}/device"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    @property
    def revocation_url(self) -> str:
        return f"{self.url}/revoke"

    @property
    def refreshes(self) -> int:
        return self.counts["refreshes"]

    @property
    def introspections(self) -> int:
        return self.counts["introspections"]

    def dovecot_config(self, *, username_attribute: str = "username") -> str:
        """A ``dovecot-oauth2.conf.ext`` for Dovecot 2.3's oauth2 passdb against this server."""
        return (
            f"introspection_mode = post\n"
            f"introspection_url = {self.introspection_url}\n"
            f"force_introspection = yes\n"
            f"username_attribute = {username_attribute}\n"
            f"active_attribute = active\n"
            f"active_value = true\n"
        )

    # -- clients and users --

    def add_client(
        self,
        client_id: str = DEFAULT_CLIENT,
        *,
        secret: str | None = None,
        certificate_pem: bytes | None = None,
    ) -> FakeClient:
        """Register a client (public unless it has a secret or a certificate)."""
        client = FakeClient(client_id, secret, certificate_pem)
        with self._lock:
            self._state.clients[client_id] = client
        return client

    def pending_user_codes(self) -> list[str]:
        """User codes of device logins nobody has approved or denied yet."""
        with self._lock:
            return [d.user_code for d in self._state.devices.values() if d.status == "pending"]

    def approve(
        self, user_code: str, *, username: str | None = None, scopes: tuple[str, ...] | None = None
    ) -> None:
        """The user signs in and consents (``scopes``: what is granted; default: what was asked)."""
        device = self._device(user_code)
        with self._lock:
            device.status = "approved"
            device.username = username or self.user
            device.granted = scopes

    def deny(self, user_code: str) -> None:
        """The user declines."""
        device = self._device(user_code)
        with self._lock:
            device.status = "denied"

    def expire(self, user_code: str) -> None:
        """The device code's time runs out now."""
        device = self._device(user_code)
        with self._lock:
            device.expires_at = 0.0

    def revoke(self, refresh_token: str) -> None:
        """Revoke one grant by its refresh token (and its access tokens)."""
        with self._lock:
            grant = self._state.grants.get(refresh_token)
            if grant is not None:
                self._revoke_grant(grant)

    def revoke_user(self, username: str | None = None) -> int:
        """Revoke every grant of ``username`` (default: the server's user); how many."""
        who = username or self.user
        with self._lock:
            grants = [g for g in self._state.grants.values() if g.username == who]
            for grant in grants:
                self._revoke_grant(grant)
            for token in self._state.access.values():
                if token.username == who:
                    token.revoked = True
            return len(grants)

    def is_active(self, access_token: str) -> bool:
        """Whether ``access_token`` would introspect as active now (not counted)."""
        with self._lock:
            return self._active(access_token) is not None

    def refresh_token_of(self, username: str | None = None) -> str | None:
        """The current refresh token of ``username``'s newest live grant (for assertions)."""
        who = username or self.user
        with self._lock:
            live = [
                token
                for token, grant in self._state.grants.items()
                if grant.username == who and not grant.revoked
            ]
        return live[-1] if live else None

    # -- faults --

    def fail(
        self,
        endpoint: str = "token",
        *,
        status: int = 503,
        times: int = 1,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``/endpoint`` with ``status`` (and ``body``)."""
        with self._lock:
            self._state.faults.setdefault(endpoint, []).append(_Fault(status, times, body))

    def slow_down(self, times: int = 1) -> None:
        """Answer the next ``times`` device-code polls with ``slow_down`` (RFC 8628 3.5)."""
        with self._lock:
            self._state.slow_downs += times

    # -- internals (server thread) --

    def _device(self, user_code: str) -> _Device:
        with self._lock:
            for device in self._state.devices.values():
                if device.user_code == user_code:
                    return device
        raise KeyError(f"no device login with user code {user_code!r}")

    def _revoke_grant(self, grant: _Grant) -> None:
        grant.revoked = True
        for token in self._state.access.values():
            if token.grant is grant:
                token.revoked = True

    def _active(self, access_token: str) -> _AccessToken | None:
        token = self._state.access.get(access_token)
        if token is None or token.revoked or (token.grant is not None and token.grant.revoked):
            return None
        return token if time.time() < token.expires_at else None

    def _fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            queue = self._state.faults.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    def _new_token(self, prefix: str) -> str:
        # access_token_length is bytes of randomness: the text is about 4/3 as long.
        size = self.access_token_length if prefix == "at" else 32
        return f"{prefix}-{secrets.token_urlsafe(size)}"

    def _issue(
        self,
        username: str,
        client_id: str,
        scopes: tuple[str, ...],
        *,
        grant: _Grant | None = None,
        refreshable: bool = True,
    ) -> dict[str, Any]:
        """Tokens for a grant (new unless ``grant``), as a token endpoint answers them."""
        if grant is None and refreshable and self._offline(scopes):
            grant = _Grant(username, client_id, scopes, None)
        access = self._new_token("at")
        self._state.access[access] = _AccessToken(
            username, client_id, scopes, time.time() + self.access_token_lifetime, grant
        )
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "scope": " ".join(scopes),
        }
        if grant is not None:
            if grant.refresh_token is None or self.rotate_refresh_tokens:
                if grant.refresh_token is not None:
                    del self._state.grants[grant.refresh_token]
                grant.refresh_token = self._new_token("rt")
                self._state.grants[grant.refresh_token] = grant
            answer["refresh_token"] = grant.refresh_token
        return answer

    def _offline(self, scopes: tuple[str, ...]) -> bool:
        return OFFLINE_ACCESS not in self.withhold_scopes or OFFLINE_ACCESS in scopes

    def _granted(self, asked: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(scope for scope in asked if scope not in self.withhold_scopes)

    # -- endpoints (called with the request's form, under no lock) --

    def handle_post(self, endpoint: str, form: dict[str, str], headers: Any) -> dict[str, Any]:
        if endpoint == "token":
            if self.token_delay:
                time.sleep(self.token_delay)
            with self._lock:
                return self._token(form, headers)
        with self._lock:
            if endpoint == "device_authorization":
                return self._device_authorization(form, headers)
            if endpoint == "introspect":
                return self._introspect(form, headers)
            if endpoint == "revoke":
                return self._revocation(form, headers)
        raise _Answer(404, {"error": "not_found"})

    def handle_authorize(self, query: dict[str, str]) -> str:
        """The redirect ``Location`` for an authorization request (RFC 6749 section 4.1.2)."""
        with self._lock:
            client = self._state.clients.get(query.get("client_id", ""))
            redirect = query.get("redirect_uri", "")
            if client is None or not _loopback_redirect(redirect):
                # Section 4.1.2.1: never redirect to an unverified URI.
                raise _Answer(400, {"error": "invalid_request", "error_description": "client"})
            state = query.get("state", "")
            if query.get("response_type") != "code":
                return _redirect(redirect, error="unsupported_response_type", state=state)
            challenge = query.get("code_challenge", "")
            if query.get("code_challenge_method") != "S256" or not challenge:
                return _redirect(
                    redirect, error="invalid_request", state=state, why="PKCE S256 is required"
                )
            if self.deny_authorizations:
                return _redirect(redirect, error="access_denied", state=state)
            code = self._new_token("code")
            scopes = tuple(query.get("scope", "").split())
            self._state.codes[code] = _Code(
                client.client_id, redirect, challenge, scopes, self.user, time.time() + 60
            )
            return _redirect(redirect, code=code, state=state)

    def _token(self, form: dict[str, str], headers: Any) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        self.counts[grant_type] += 1
        client = self._authenticate(form, headers)
        if grant_type == "authorization_code":
            return self._authorization_code(client, form)
        if grant_type == DEVICE_CODE_GRANT:
            return self._device_code(client, form)
        if grant_type == "refresh_token":
            return self._refresh(client, form)
        if grant_type == "client_credentials":
            if client.secret is None and client.certificate_pem is None:
                raise _oauth_error(400, "unauthorized_client", "a public client")
            scopes = tuple(form.get("scope", "").split())
            return self._issue(client.client_id, client.client_id, scopes, refreshable=False)
        raise _oauth_error(400, "unsupported_grant_type")

    def _authorization_code(self, client: FakeClient, form: dict[str, str]) -> dict[str, Any]:
        code = self._state.codes.pop(form.get("code", ""), None)  # single use
        if code is None or code.client_id != client.client_id or time.time() > code.expires_at:
            raise _oauth_error(400, "invalid_grant", "unknown, used or expired code")
        if form.get("redirect_uri") != code.redirect_uri:
            raise _oauth_error(400, "invalid_grant", "redirect_uri differs")
        verifier = form.get("code_verifier", "")
        if not verifier or _s256(verifier) != code.challenge:
            raise _oauth_error(400, "invalid_grant", "PKCE verification failed")
        return self._issue(code.username, client.client_id, self._granted(code.scopes))

    def _device_code(self, client: FakeClient, form: dict[str, str]) -> dict[str, Any]:
        device = self._state.devices.get(form.get("device_code", ""))
        if device is None or device.client_id != client.client_id:
            raise _oauth_error(400, "invalid_grant", "unknown device code")
        if self._state.slow_downs > 0:
            self._state.slow_downs -= 1
            raise _oauth_error(400, "slow_down")
        if device.status == "used":
            raise _oauth_error(400, "invalid_grant", "device code already used")
        if time.time() >= device.expires_at:
            raise _oauth_error(400, "expired_token")
        if device.status == "denied":
            raise _oauth_error(400, "access_denied")
        if device.status == "pending":
            raise _oauth_error(400, "authorization_pending")
        device.status = "used"
        granted = device.granted if device.granted is not None else self._granted(device.scopes)
        return self._issue(device.username, client.client_id, granted)

    def _refresh(self, client: FakeClient, form: dict[str, str]) -> dict[str, Any]:
        grant = self._state.grants.get(form.get("refresh_token", ""))
        if grant is None or grant.revoked or grant.client_id != client.client_id:
            raise _oauth_error(400, "invalid_grant", "the refresh token is not valid")
        self.counts["refreshes"] += 1
        return self._issue(grant.username, client.client_id, grant.scopes, grant=grant)

    def _device_authorization(self, form: dict[str, str], headers: Any) -> dict[str, Any]:
        client = self._authenticate(form, headers)
        user_code = "-".join(
            "".join(secrets.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(4)) for _ in range(2)
        )
        device = _Device(
            device_code=self._new_token("dc"),
            user_code=user_code,
            client_id=client.client_id,
            scopes=tuple(form.get("scope", "").split()),
            expires_at=time.time() + self.device_code_lifetime,
        )
        self._state.devices[device.device_code] = device
        return {
            "device_code": device.device_code,
            "user_code": user_code,
            "verification_uri": self.verification_url,
            "verification_uri_complete": f"{self.verification_url}?user_code={user_code}",
            "expires_in": int(self.device_code_lifetime),
            "interval": self.device_interval,
        }

    def _introspect(self, form: dict[str, str], headers: Any) -> dict[str, Any]:
        self.counts["introspections"] += 1
        if form.get("client_id") or headers.get("Authorization"):
            self._authenticate(form, headers)
        token = self._active(form.get("token", ""))
        if token is None:
            return {"active": False}
        remaining = token.expires_at - time.time()
        return {
            "active": True,
            "username": token.username,
            "email": token.username,
            "sub": token.username,
            "scope": " ".join(token.scopes),
            "client_id": token.client_id,
            "token_type": "Bearer",
            "exp": int(token.expires_at),
            "expires_in": max(1, math.ceil(remaining)),
        }

    def _revocation(self, form: dict[str, str], headers: Any) -> dict[str, Any]:
        self._authenticate(form, headers)
        self.counts["revocations"] += 1
        token = form.get("token", "")
        grant = self._state.grants.get(token)
        if grant is not None:
            self._revoke_grant(grant)
        elif token in self._state.access:
            self._state.access[token].revoked = True
        # RFC 7009 section 2.2: 200 also for a token the server does not know.
        return {}

    def _authenticate(self, form: dict[str, str], headers: Any) -> FakeClient:
        """RFC 6749 section 2.3: Basic, secret in the body, a JWT assertion, or public."""
        client_id, secret = _basic(headers.get("Authorization", ""))
        client_id = client_id or form.get("client_id", "")
        secret = secret if secret is not None else form.get("client_secret")
        assertion = form.get("client_assertion")
        if assertion is not None and not client_id:
            client_id = _claims(assertion).get("sub", "")
        client = self._state.clients.get(client_id)
        if client is None:
            raise _oauth_error(401, "invalid_client", "unknown client")
        if client.certificate_pem is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE or assertion is None:
                raise _oauth_error(401, "invalid_client", "a client assertion is required")
            self._verify_assertion(client, assertion)
        elif client.secret is not None and not (
            secret is not None and secrets.compare_digest(secret, client.secret)
        ):
            raise _oauth_error(401, "invalid_client", "wrong client secret")
        return client

    def _verify_assertion(self, client: FakeClient, assertion: str) -> None:
        failure = _check_assertion(assertion, client, self.token_url, self._state.seen_jti)
        if failure:
            raise _oauth_error(401, "invalid_client", failure)


def _check_assertion(assertion: str, client: FakeClient, audience: str, seen: set[str]) -> str:
    """Why the RFC 7523 client assertion is not acceptable; empty if it is."""
    try:
        head_b64, body_b64, sig_b64 = assertion.split(".")
        header = json.loads(_unb64(head_b64))
        claims = json.loads(_unb64(body_b64))
        signature = _unb64(sig_b64)
    except (ValueError, binascii.Error):
        return "not a JWS compact serialisation"
    if client.certificate_pem is None:
        return "the client has no certificate"
    signed = f"{head_b64}.{body_b64}".encode("ascii")
    return _check_signature(header, signed, signature, client.certificate_pem) or _check_claims(
        claims, client.client_id, audience, seen
    )


def _check_signature(header: dict[str, Any], signed: bytes, signature: bytes, pem: bytes) -> str:
    from cryptography import x509  # noqa: PLC0415 - only certificate clients need it
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: PLC0415

    certificate = x509.load_pem_x509_certificate(pem)
    der = certificate.public_bytes(serialization.Encoding.DER)
    problems = []
    if header.get("x5t#S256") != _b64(hashlib.sha256(der).digest()):
        problems.append("x5t#S256 does not name the registered certificate")
    if "x5t" in header and header["x5t"] != _b64(hashlib.sha1(der, usedforsecurity=False).digest()):
        problems.append("x5t does not name the registered certificate")
    schemes: dict[str, padding.AsymmetricPadding] = {
        "RS256": padding.PKCS1v15(),
        # RFC 7518 section 3.5: the salt is as long as the hash (32 octets).
        "PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
    }
    scheme = schemes.get(header.get("alg", ""))
    key = certificate.public_key()
    if scheme is None or not isinstance(key, rsa.RSAPublicKey):
        problems.append(f"algorithm {header.get('alg')!r} with this key is not accepted")
    else:
        try:
            key.verify(signature, signed, scheme, hashes.SHA256())
        except InvalidSignature:
            problems.append("the signature does not verify")
    return "; ".join(problems)


def _check_claims(claims: dict[str, Any], client_id: str, audience: str, seen: set[str]) -> str:
    problems = []
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        problems.append("iss and sub must be the client id")
    if claims.get("aud") != audience:
        problems.append("aud is not the token endpoint")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp <= time.time():
        problems.append("expired or without exp")
    jti = claims.get("jti")
    if not jti or jti in seen:
        problems.append("jti missing or replayed")
    if not problems:
        seen.add(str(jti))
    return "; ".join(problems)


def _claims(assertion: str) -> dict[str, Any]:
    try:
        claims = json.loads(_unb64(assertion.split(".")[1]))
    except (ValueError, IndexError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _basic(header: str) -> tuple[str, str | None]:
    if not header.startswith("Basic "):
        return "", None
    try:
        decoded = base64.b64decode(header[6:]).decode()
    except (ValueError, binascii.Error):
        return "", None
    user, _, password = decoded.partition(":")
    return urllib.parse.unquote(user), urllib.parse.unquote(password)


def _s256(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _loopback_redirect(uri: str) -> bool:
    parts = urllib.parse.urlsplit(uri)
    return parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost", "::1"}


def _redirect(uri: str, *, why: str = "", **params: str) -> str:
    if why:
        params["error_description"] = why
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _handler(server: FakeOAuthServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            endpoint = parts.path.strip("/")
            self._answer(endpoint, lambda: self._get(endpoint, query))

        def do_POST(self) -> None:
            endpoint = urllib.parse.urlsplit(self.path).path.strip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
            self._answer(endpoint, lambda: server.handle_post(endpoint, form, self.headers))

        def _get(self, endpoint: str, query: dict[str, str]) -> dict[str, Any]:
            if endpoint == "authorize":
                raise _Answer(302, location=server.handle_authorize(query))
            if endpoint == "device":
                raise _Answer(200, {"page": "enter the code"})
            raise _Answer(404, {"error": "not_found"})

        def _answer(self, endpoint: str, work: Any) -> None:
            fault = server._fault(endpoint)
            if fault is not None:
                self._send(fault.status, fault.body)
                return
            try:
                self._send(200, work())
            except _Answer as answer:
                self._send(answer.status, answer.body, answer.location)
            except Exception as exc:
                server.errors.append(exc)
                self._send(500, {"error": "server_error"})

        def _send(
            self, status: int, body: dict[str, Any] | None, location: str | None = None
        ) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if location is not None:
                self.send_header("Location", location)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            else:
                data = _PAGE.format(http.HTTPStatus(status).phrase).encode()
                self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # request lines carry codes and tokens

    return Handler
