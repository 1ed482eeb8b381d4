"""Support code for the test fixtures: TLS certificates and a private Dovecot.

The fixtures themselves are in ``conftest.py``; this module holds the code
so that it can be read, typed and tested on its own.

The Dovecot instance is private: its config, ``base_dir``, ``state_dir``,
log, passwd-file and Maildirs all live in one temporary folder, and it listens
on free loopback ports. The system's Dovecot config is never read.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOST = "127.0.0.1"
# Dovecot's mail processes refuse uid 0 and anything below first_valid_uid;
# the system's `mail` user (uid 8 on Debian) owns the test Maildirs.
MAIL_USER = "mail"
DEFAULT_PASSWORD = "dovecot-test-pw"
_USERNAME = re.compile(r"[A-Za-z0-9_+@-][A-Za-z0-9._+@-]{0,63}")
_START_SECONDS = 20.0
#: SASL mechanisms checked against a password (passwd-file, {PLAIN} scheme).
PASSWORD_MECHANISMS = ("plain", "login", "apop", "scram-sha-1", "scram-sha-256")
#: SASL mechanisms checked against an OAuth 2.0 authorization server (passdb oauth2).
OAUTH2_MECHANISMS = ("xoauth2", "oauthbearer")
_STOP_SECONDS = 10.0


# -- TLS ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsCerts:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context with the certificate (for FakePop3Server)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_certs(folder: Path) -> TlsCerts:
    """Write a CA, and a server certificate it signed, into ``folder`` (PEM)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_cert, ca_key)
    paths = TlsCerts(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths.key_file.chmod(0o600)
    return paths


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=30)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "popvault test CA")])
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return _validity(builder).sign(key, hashes.SHA256())


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return _validity(builder).sign(ca_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# -- Dovecot -----------------------------------------------------------------


def find_dovecot() -> str | None:
    """The dovecot binary (it lives in sbin, often not on a user's PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("dovecot", path=path)


def dovecot_binary_or_skip() -> str:
    """The dovecot binary; else skip the test, or fail it under CI=true.

    CI must not turn green by skipping the tests against a real server.
    """
    binary = find_dovecot()
    if binary is None:
        unavailable("dovecot is not installed (apt-get install dovecot-pop3d)")
    if os.geteuid() != 0:
        unavailable("the private Dovecot needs root (its Maildirs belong to the mail user)")
    return binary


def unavailable(reason: str, what: str = "Dovecot") -> NoReturn:
    """Skip the test; under CI=true fail it, since there the real servers must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the {what} tests must run)", pytrace=False)
    pytest.skip(reason)


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a server's process group (it and its children), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def free_port() -> int:
    """A loopback port that was free a moment ago (Dovecot binds it next)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


_CONFIG = """\
# Generated by popvault's tests: a private POP3-only Dovecot.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
instance_name = popvault-test-{port}
protocols = pop3
listen = {host}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
# No ssl_dh: with a fresh state_dir and an EC certificate, 2.3.19 only uses
# ECDHE and does not ask for DH parameters (which are slow to generate).
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
# No delay after a failed login (default 2 s): tests fail logins on purpose.
auth_failure_delay = 0
auth_mechanisms = {mechanisms}
first_valid_uid = {uid}
first_valid_gid = {gid}
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:~/Maildir
# One passwd-file per user, written once before its first login: Dovecot
# notices a changed passwd-file at most once a second, which made logins of
# freshly added users fail now and then.
# {{PLAIN}} passwords: Dovecot derives the SCRAM keys from them at login
# (a {{SCRAM-SHA-256}} hash would serve SCRAM-SHA-256 only, and not PLAIN).
passdb {{
  driver = passwd-file
  mechanisms = {password_mechanisms}
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
{oauth2_passdb}userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {port}
  }}
  inet_listener pop3s {{
    address = {host}
    port = {tls_port}
    ssl = yes
  }}
}}
"""


# passdb oauth2 (Dovecot 2.3, dovecot-oauth2.conf.ext): every XOAUTH2 or
# OAUTHBEARER token is POSTed as "token=..." to the introspection URL
# (RFC 7662); the answer's "active" must be true and its "username" names the
# Dovecot user, which the passwd-file userdb then finds.
_OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = {mechanisms}
  args = {args}
}}
"""
_OAUTH2_ARGS = """\
# Generated by popvault's tests: tokens checked by a local authorization server.
introspection_url = {url}
introspection_mode = post
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
"""


class DovecotMailbox:
    """One Dovecot user and its Maildir."""

    def __init__(self, username: str, password: str, maildir: Path, uid: int, gid: int) -> None:
        self.username = username
        self.password = password
        self.maildir = maildir
        self._uid, self._gid = uid, gid
        self._serial = itertools.count()

    def deliver(self, raw: bytes) -> None:
        """Put one message into ``new/``, visible to the next POP3 session.

        Dovecot keeps Maildir files with LF line endings and sends CRLF on the
        wire, so the CRLF of ``raw`` is stored as LF: RETR then gives back
        exactly ``raw`` (plus a final CRLF if ``raw`` lacked one).
        """
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._serial):06d}.popvault-test"
        temporary = self.maildir / "tmp" / name
        temporary.write_bytes(raw.replace(b"\r\n", b"\n"))
        os.chown(temporary, self._uid, self._gid)
        temporary.chmod(0o600)
        temporary.rename(self.maildir / "new" / name)

    def messages(self) -> list[bytes]:
        """The messages in the Maildir now, in delivery order, with CRLF line endings."""
        files = [*(self.maildir / "new").iterdir(), *(self.maildir / "cur").iterdir()]
        files.sort(key=lambda f: f.name.split(":", 1)[0])
        return [f.read_bytes().replace(b"\n", b"\r\n") for f in files]

    def clear(self) -> None:
        """Remove every message (Dovecot's own index files stay)."""
        for sub in ("new", "cur", "tmp"):
            for path in (self.maildir / sub).iterdir():
                path.unlink()


class DovecotMboxMailbox:
    """A Dovecot user whose INBOX is an mbox file and whose UIDLs are ``%m``.

    ``pop3_uidl_format = %m`` is the MD5 of the message's headers (mbox
    only), so two messages with the same headers get the same UIDL: Dovecot's
    default ``pop3_uidl_duplicates = allow`` lists both under it, as
    content-derived UIDL schemes do on other servers.
    """

    def __init__(self, username: str, password: str, mbox: Path, uid: int, gid: int) -> None:
        self.username = username
        self.password = password
        self.mbox = mbox
        self._uid, self._gid = uid, gid

    def deliver(self, raw: bytes) -> None:
        """Append one message (CRLF stored as LF, after a ``From`` separator line).

        No line of ``raw`` may start with ``From `` (mboxo quoting is left
        out on purpose: the tests compare with what Dovecot serves).
        """
        body = raw.replace(b"\r\n", b"\n")
        if not body.endswith(b"\n"):
            body += b"\n"
        with self.mbox.open("ab") as stream:
            stream.write(b"From sender@example.org Mon Jan  5 10:00:00 2026\n" + body + b"\n")
        os.chown(self.mbox, self._uid, self._gid)


class DovecotServer:
    """A private Dovecot POP3 server: plain with STLS on ``port``, implicit TLS on ``tls_port``."""

    host = HOST

    def __init__(
        self,
        binary: str,
        root: Path,
        certs: TlsCerts,
        *,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        """``oauth2_introspection_url`` adds XOAUTH2 and OAUTHBEARER, their tokens
        checked by POSTing them to that RFC 7662 introspection endpoint."""
        self.binary = binary
        self.root = root
        self.certs = certs
        self.oauth2_introspection_url = oauth2_introspection_url
        self.port = 0
        self.tls_port = 0
        mail = pwd.getpwnam(MAIL_USER)
        self._uid, self._gid = mail.pw_uid, mail.pw_gid
        self._serial = itertools.count(1)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed the server certificate."""
        return self.certs.ca_file

    @property
    def config_file(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    def log_text(self) -> str:
        """Dovecot's log so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> DovecotServer:
        """Write the config and run Dovecot until both ports accept connections."""
        for folder in ("home", "users"):
            (self.root / folder).mkdir(mode=0o755, exist_ok=True)
        self.port, self.tls_port = free_port(), free_port()
        self.config_file.write_text(self._config())
        self._process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.config_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_listening()
        return self

    def stop(self) -> None:
        """Stop Dovecot and its children (SIGTERM to its process group, then SIGKILL)."""
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process)

    def add_user(self, name: str | None = None, password: str = DEFAULT_PASSWORD) -> DovecotMailbox:
        """A new user with an empty Maildir; a unique name is made up if not given."""
        name = name or f"user{next(self._serial)}-{secrets.token_hex(3)}"
        if not _USERNAME.fullmatch(name) or ":" in password or "\n" in password:
            raise ValueError("user names are [A-Za-z0-9._+@-]; no ':' or newline in a password")
        entry = self.root / "users" / name
        if entry.exists():
            raise ValueError(f"user {name!r} exists already")
        maildir = self._make_maildir(self.root / "home" / name)
        line = f"{name}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{maildir.parent}::\n"
        self._write_user(name, line)
        return DovecotMailbox(name, password, maildir, self._uid, self._gid)

    def add_mbox_user(self, password: str = DEFAULT_PASSWORD) -> DovecotMboxMailbox:
        """A new user with an empty mbox INBOX and header-MD5 UIDLs (see DovecotMboxMailbox)."""
        name = f"mbox{next(self._serial)}-{secrets.token_hex(3)}"
        home = self.root / "home" / name
        (home / "mail").mkdir(parents=True)
        mbox = home / "mbox"
        mbox.touch()
        for path in (home, home / "mail", mbox):
            os.chown(path, self._uid, self._gid)
            path.chmod(0o700 if path.is_dir() else 0o600)
        # userdb extra fields override settings per user; "%%" because Dovecot
        # expands variables in them, and the setting itself must keep "%m".
        extra = "userdb_mail=mbox:~/mail:INBOX=~/mbox userdb_pop3_uidl_format=%%m"
        line = f"{name}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{home}::{extra}\n"
        self._write_user(name, line)
        return DovecotMboxMailbox(name, password, mbox, self._uid, self._gid)

    def _write_user(self, name: str, line: str) -> None:
        # Written to the side and renamed, so the auth process never sees half
        # a line; readable by it (it runs as the dovecot user).
        entry = self.root / "users" / name
        side = entry.with_suffix(".new")
        side.write_text(line)
        side.chmod(0o644)
        side.replace(entry)

    def _make_maildir(self, home: Path) -> Path:
        maildir = home / "Maildir"
        subs = [maildir / sub for sub in ("cur", "new", "tmp")]
        for sub in subs:
            sub.mkdir(parents=True)
        for path in (home, maildir, *subs):
            os.chown(path, self._uid, self._gid)
            path.chmod(0o700)
        return maildir

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms this Dovecot offers (its ``auth_mechanisms``)."""
        oauth = OAUTH2_MECHANISMS if self.oauth2_introspection_url is not None else ()
        return (*PASSWORD_MECHANISMS, *oauth)

    def _oauth2_passdb(self) -> str:
        url = self.oauth2_introspection_url
        if url is None:
            return ""
        if any(c in url for c in "\n\r ") or not url.startswith(("http://", "https://")):
            raise ValueError(f"not an introspection URL for Dovecot: {url!r}")
        args = self.root / "dovecot-oauth2.conf.ext"
        args.write_text(_OAUTH2_ARGS.format(url=url))
        args.chmod(0o644)  # read by the auth process (the dovecot user)
        return _OAUTH2_PASSDB.format(mechanisms=" ".join(OAUTH2_MECHANISMS), args=args)

    def _config(self) -> str:
        return _CONFIG.format(
            mechanisms=" ".join(self.mechanisms),
            password_mechanisms=" ".join(PASSWORD_MECHANISMS),
            oauth2_passdb=self._oauth2_passdb(),
            root=self.root,
            host=HOST,
            port=self.port,
            tls_port=self.tls_port,
            cert=self.certs.cert_file,
            key=self.certs.key_file,
            uid=self._uid,
            gid=self._gid,
        )

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(self._failure("exited"))
            if all(accepts(port) for port in (self.port, self.tls_port)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(self._failure(f"did not listen within {_START_SECONDS} s"))

    def _failure(self, what: str) -> str:
        output = b""
        if self._process is not None and self._process.stdout is not None:
            output = self._process.stdout.read() if self._process.poll() is not None else b""
        return (
            f"dovecot {what}\n--- output ---\n{output.decode(errors='replace')}"
            f"\n--- {self.log_path} ---\n{self.log_text()}"
        )


def accepts(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port`` now."""
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def make_private_root() -> Path:
    """A fresh folder for one Dovecot instance, traversable by its service users.

    Not pytest's tmp_path: that lives under a 0700 folder, which the
    unprivileged auth and mail processes cannot traverse.
    """
    root = Path(tempfile.mkdtemp(prefix="popvault-dovecot-"))
    root.chmod(0o755)
    return root
