"""Helpers for the OAuth tests: a provider pointing at the fake server, a browser, a certificate."""

from __future__ import annotations

import datetime
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from popvault.oauth import OAuthClient, OAuthProvider, custom
from popvault.testing.fake_oauth import FakeOAuthServer

CLIENT_ID = "popvault-test"
POP_SCOPE = "https://pop.example.test/POP.AccessAsUser.All"
SCOPES = (POP_SCOPE, "offline_access")
ACCOUNT = "work"


def provider_for(server: FakeOAuthServer, **overrides: object) -> OAuthProvider:
    """A provider like Microsoft's (POP scope + offline_access), at the fake server."""
    provider = custom(
        "fake",
        token_endpoint=server.token_url,
        authorization_endpoint=server.authorization_url,
        device_authorization_endpoint=server.device_authorization_url,
        revocation_endpoint=server.revocation_url,
        scopes=SCOPES,
        app_scopes=("https://pop.example.test/.default",),
        pop_scope=POP_SCOPE,
        offline_scope="offline_access",
        tenant="contoso.example",
    )
    return provider.with_overrides(**overrides) if overrides else provider


def client_for(server: FakeOAuthServer, **kwargs: object) -> OAuthClient:
    kwargs.setdefault("account", ACCOUNT)
    return OAuthClient(provider_for(server), CLIENT_ID, **kwargs)  # type: ignore[arg-type]


def device_login(server: FakeOAuthServer, client: OAuthClient, **approve: object):
    """A whole device login, the user approving at once."""
    login = client.start_device_login()
    server.approve(login.user_code, **approve)  # type: ignore[arg-type]
    return client.finish_device_login(login, sleep=lambda _: None)


def browse(url: str) -> httpx.Response:
    """The browser: GET the authorization URL and follow its redirect to the loopback listener."""
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        return browser.get(url)


def make_certificate(folder: Path) -> tuple[bytes, bytes]:
    """A self-signed RSA certificate and its key (PEM), as an app registration would hold."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "popvault app-only test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (folder / "app.crt").write_bytes(cert_pem)
    (folder / "app.key").write_bytes(key_pem)
    return cert_pem, key_pem
