"""Support code for the peer fixtures: private POP3 servers other than Dovecot.

Two independent implementations, each run privately on free loopback ports
from one temporary folder, with mbox mailboxes:

* **GNU Mailutils pop3d** (Debian ``mailutils-pop3d``), started as
  ``pop3d --config-file=FILE`` (which implies ``--no-config``: the system's
  ``/etc/mailutils.conf`` is never read) in daemon mode in the foreground. Users
  come from a private *virtual domain* password file (``virtdomain``
  ``passwd-dir``, crypt(3) hashes, checked by the ``generic`` authentication
  module), so no system user is needed: log in as ``NAME@popvault.test``; the
  mailbox is ``HOME/INBOX``, owned by the ``mail`` user. Plain with ``STLS`` on
  ``port``, implicit TLS on ``tls_port``.
* **popa3d** (Debian ``popa3d``): it has no config file, authenticates system
  users through PAM and serves ``/var/mail/USER``, and its standalone mode
  listens on port 110 of every address. So it runs in inetd mode behind a tiny
  bridge (:func:`bridge_main`, started as a separate process): the bridge runs
  in a private mount namespace (``unshare --mount``, root only) in which a
  private ``/var`` (``mail/`` and the empty chroot ``lib/popa3d``), a private
  ``/etc/pam.d`` (``pam_unix`` only) and private ``/etc/passwd`` and
  ``/etc/shadow`` are bind-mounted; it accepts on a loopback port and spawns
  popa3d with the connection as stdin and stdout, as inetd does. Nothing of the
  system's users, PAM config or mail spool is read or changed. Debian's
  ``popa3d`` package conflicts with ``dovecot-pop3d`` (both provide
  ``pop3-server``), so CI unpacks its binary to :data:`POPA3D_PRIVATE` instead
  of installing it (see ``.ci/test``).

How the two differ from Dovecot, as observed (Mailutils 3.15, popa3d 1.0.3):

* GNU pop3d's UIDL is ``MD5.UIDVALIDITY.UID``: unique per message, even for
  byte-identical ones. It adds headers to what it serves: ``X-UIDL`` on the fly
  the first time a message is listed, and at the first ``QUIT`` after a message
  was read it rewrites the mbox with ``X-UIDL``, ``X-UID``, ``Status: OR`` (and
  ``X-IMAPbase`` on the first message), which it serves from then on. ``LIST``
  sizes match what ``RETR`` sends once ``UIDL`` has been asked in the session.
* popa3d's UIDL is 16 hex digits of an MD5 over the ``Received:``, ``Date:``
  and ``Message-ID:`` fields only: byte-identical messages share a UIDL, and so
  do *different* messages that lack those fields. It serves the stored message
  unchanged, sizes are exact, it announces no ``CAPA``, and it serves a body
  line ``>From `` as stored (no mboxrd unquoting: only the ``From `` separator
  matters to it).
* Both send CRLF line ends for the LF-terminated lines of the mbox and keep a
  bare CR.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Protocol

from dovecot import HOST, TlsCerts, accepts, free_port, stop_process_group, unavailable

DEFAULT_PASSWORD = "peer-Test-pw-42"
# Mailboxes belong to an unprivileged user: both servers drop to the owner of
# the mailbox after the login (GNU pop3d refuses uid 0 mail, popa3d root logins).
MAIL_USER = "mail"
DOMAIN = "popvault.test"
# Where .ci/test unpacks Debian's popa3d when it is not installed.
POPA3D_PRIVATE = Path("/opt/popvault-peers/popa3d/usr/sbin/popa3d")
_ENVELOPE = b"From popvault-test@localhost Thu Jan  1 00:00:00 2026\n"
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
_BARE_FROM_LINE = re.compile(rb"^(From )", re.MULTILINE)
_QUOTED_FROM_LINE = re.compile(rb"^>(>*From )", re.MULTILINE)
_USERNAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
# Private uids for popa3d's users and its own `popa3d` user (inside the namespace only).
_FIRST_PRIVATE_UID = 61000
_START_SECONDS = 20.0


# -- finding the binaries ----------------------------------------------------


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def find_gnu_pop3d() -> str | None:
    """GNU Mailutils' pop3d (``pop3d`` is a common name: the version must say so)."""
    binary = shutil.which("pop3d", path=_sbin_path())
    if binary is None:
        return None
    version = subprocess.run([binary, "--version"], capture_output=True, check=False)
    return binary if b"GNU Mailutils" in version.stdout else None


def find_popa3d() -> str | None:
    """popa3d, installed or unpacked privately by ``.ci/test``."""
    found = shutil.which("popa3d", path=_sbin_path())
    if found is None and POPA3D_PRIVATE.is_file():
        found = str(POPA3D_PRIVATE)
    return found


def gnu_pop3d_binary_or_skip() -> str:
    """GNU pop3d; else skip the test, or fail it under CI=true."""
    binary = find_gnu_pop3d()
    if binary is None:
        _unavailable("GNU pop3d is not installed (apt-get install mailutils-pop3d)")
    if os.geteuid() != 0:
        _unavailable("the private GNU pop3d needs root (its mailboxes belong to the mail user)")
    return binary


def popa3d_binary_or_skip() -> str:
    """popa3d; else skip the test, or fail it under CI=true."""
    binary = find_popa3d()
    if binary is None:
        _unavailable(f"popa3d is not installed (.ci/test unpacks it to {POPA3D_PRIVATE})")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        _unavailable("the private popa3d needs root and unshare (a private mount namespace)")
    return binary


def _unavailable(reason: str) -> NoReturn:
    unavailable(reason, "peer server")


# -- mbox --------------------------------------------------------------------


def mbox_entry(raw: bytes, *, mboxrd: bool) -> bytes:
    """``raw`` (CRLF or LF line ends) as one mbox entry.

    An envelope ``From `` line; LF line ends; a final LF added if ``raw`` has
    none (mbox cannot store a message without one, so the server serves it
    with a final CRLF, as RFC 1939 requires anyway); a blank separator line.
    Body lines are quoted with one more ``>``: for an mboxrd server every line
    matching ``>*From `` (it unquotes them all), else only ``From `` lines (the
    server serves them quoted: no mbox without unquoting can store them).
    """
    lf = raw.replace(b"\r\n", b"\n")
    if not lf.endswith(b"\n"):
        lf += b"\n"
    quote = _FROM_LINE if mboxrd else _BARE_FROM_LINE
    return _ENVELOPE + quote.sub(rb">\1", lf) + b"\n"


def served_form(raw: bytes, *, mboxrd: bool) -> bytes:
    """What a server serves (CRLF) of ``raw`` delivered by :func:`mbox_entry`,
    before any header it adds itself."""
    return parse_mbox(mbox_entry(raw, mboxrd=mboxrd), mboxrd=mboxrd)[0]


def parse_mbox(data: bytes, *, mboxrd: bool) -> list[bytes]:
    """The messages of an mbox (as written by :func:`mbox_entry`, or as the
    server rewrote it), with CRLF line ends, unquoted if ``mboxrd``."""
    if not data.strip():
        return []
    # A separator is the blank line after a message's final LF, then a From line.
    pieces = re.split(rb"(?<=\n)\nFrom [^\n]*\n", b"\n\n" + data)[1:]
    if pieces and pieces[-1].endswith(b"\n\n"):
        pieces[-1] = pieces[-1][:-1]
    if mboxrd:
        pieces = [_QUOTED_FROM_LINE.sub(rb"\1", piece) for piece in pieces]
    return [piece.replace(b"\n", b"\r\n") for piece in pieces]


class MboxMailbox:
    """One user of a peer server and the mbox file it serves."""

    def __init__(
        self, username: str, password: str, path: Path, owner: tuple[int, int], *, mboxrd: bool
    ) -> None:
        self.username = username
        self.password = password
        self.path = path
        self.mboxrd = mboxrd
        self._uid, self._gid = owner
        self._write(b"")

    def deliver(self, raw: bytes) -> None:
        """Append one message, visible to the next POP3 session.

        Stored as :func:`mbox_entry` makes it: the server then serves
        :func:`served_form` of ``raw`` — ``raw`` with CRLF line ends, plus a
        final CRLF if ``raw`` lacked one, ``From `` body lines quoted unless the
        server unquotes — plus what the server adds itself
        (:attr:`PeerServer.added_headers`).
        """
        with self.path.open("ab") as mbox:
            mbox.write(mbox_entry(raw, mboxrd=self.mboxrd))

    def serves(self, raw: bytes) -> bytes:
        """What the server serves of ``raw`` once delivered (before its own headers)."""
        return served_form(raw, mboxrd=self.mboxrd)

    def messages(self) -> list[bytes]:
        """The messages stored now, unquoted, with CRLF line ends (with the
        headers the server has written into the mbox itself, if any)."""
        return parse_mbox(self.path.read_bytes(), mboxrd=self.mboxrd)

    def clear(self) -> None:
        """Remove every message."""
        self._write(b"")

    def _write(self, data: bytes) -> None:
        self.path.write_bytes(data)
        os.chown(self.path, self._uid, self._gid)
        self.path.chmod(0o600)


class PeerServer(Protocol):
    """What the peer tests need of a private server."""

    name: str
    host: str
    port: int
    #: Implicit TLS port, or None when the server has no TLS.
    tls_port: int | None
    #: Header fields the server adds to what it serves (compared without them).
    added_headers: tuple[bytes, ...]
    #: Whether the server gives byte-identical messages one UIDL.
    shares_uidls: bool

    @property
    def ca_file(self) -> Path: ...

    def add_user(self) -> MboxMailbox: ...

    def log_text(self) -> str: ...


def without_headers(message: bytes, names: Sequence[bytes]) -> bytes:
    """``message`` (LF or CRLF) without the one-line header fields ``names``."""
    if not names:
        return message
    end = re.search(rb"\r?\n(?=\r?\n)", message)  # the line end of the last field
    head, rest = (message, b"") if end is None else (message[: end.end()], message[end.end() :])
    wanted = tuple(name.lower() + b":" for name in names)
    lines = re.findall(rb"[^\n]*\n|[^\n]+$", head)
    return b"".join(line for line in lines if not line.lower().startswith(wanted)) + rest


def hash_password(password: str) -> str:
    """A SHA-512 crypt(3) hash (``openssl passwd -6``; Python's crypt module is gone)."""
    salt = secrets.token_hex(8)
    done = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password.encode(),
        capture_output=True,
        check=True,
    )
    return done.stdout.decode().strip()


def make_private_root(server: str) -> Path:
    """A fresh folder for one server, traversable by the unprivileged owner of the mailboxes.

    Not pytest's tmp_path: that lives under a 0700 folder.
    """
    root = Path(tempfile.mkdtemp(prefix=f"popvault-{server}-"))
    root.chmod(0o755)
    return root


class _Process:
    """A server process in its own process group, with its output in a log file."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], *, stdout: int | None = None) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log,
                stderr=log,
                start_new_session=True,
            )
        return self.process

    def stop(self) -> None:
        """SIGTERM to the process group (server and its children), then SIGKILL."""
        process, self.process = self.process, None
        if process is not None:
            stop_process_group(process)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_until_listening(self, what: str, ports: Sequence[int]) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{what} exited\n--- log ---\n{self.log_text()}")
            if all(accepts(port) for port in ports):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{what} did not listen within {_START_SECONDS} s\n{self.log_text()}")


# -- GNU Mailutils pop3d -----------------------------------------------------

_GNU_CONFIG = """\
# Generated by popvault's tests: a private GNU pop3d (read with --config-file only).
mode daemon;
foreground yes;
logging {{ syslog no; }};
tcp-wrappers {{ enable no; }};
auth {{
  authorization virtdomain;
  authentication generic;
}};
virtdomain {{ passwd-dir "{root}/domains"; }};
tls {{
  ssl-certificate-file "{cert}";
  ssl-key-file "{key}";
}};
server {host}:{port} {{ tls-mode stls; }};
server {host}:{tls_port} {{ tls-mode connection; }};
"""


class GnuPop3dServer:
    """A private GNU Mailutils pop3d: plain with STLS on ``port``, implicit TLS on ``tls_port``."""

    name = "gnu-pop3d"
    host = HOST
    added_headers = (b"X-UIDL", b"X-UID", b"X-IMAPbase", b"Status")
    shares_uidls = False

    def __init__(self, binary: str, root: Path, certs: TlsCerts) -> None:
        self.binary = binary
        self.root = root
        self.certs = certs
        self.port = 0
        self.tls_port: int | None = 0
        mail = pwd.getpwnam(MAIL_USER)
        self._uid, self._gid = mail.pw_uid, mail.pw_gid
        self._serial = itertools.count(1)
        self._hash = hash_password(DEFAULT_PASSWORD)
        self._process = _Process(root / "pop3d.log")

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def config_file(self) -> Path:
        return self.root / "pop3d.conf"

    def log_text(self) -> str:
        return self._process.log_text()

    def start(self) -> GnuPop3dServer:
        """Write the config and run pop3d until both ports accept connections."""
        for folder in ("home", "domains"):
            (self.root / folder).mkdir(mode=0o755, exist_ok=True)
        (self.root / "domains" / DOMAIN).touch(mode=0o644)
        self.port, self.tls_port = free_port(), free_port()
        self.config_file.write_text(
            _GNU_CONFIG.format(
                root=self.root,
                host=HOST,
                port=self.port,
                tls_port=self.tls_port,
                cert=self.certs.cert_file,
                key=self.certs.key_file,
            )
        )
        self._process.start([self.binary, f"--config-file={self.config_file}"])
        self._process.wait_until_listening("GNU pop3d", [self.port, self.tls_port])
        return self

    def stop(self) -> None:
        self._process.stop()

    def add_user(self) -> MboxMailbox:
        """A new user (``userN@popvault.test``) with an empty mbox ``HOME/INBOX``."""
        local = f"user{next(self._serial)}"
        home = self.root / "home" / local
        home.mkdir(mode=0o700)
        os.chown(home, self._uid, self._gid)
        line = f"{local}:{self._hash}:{self._uid}:{self._gid}:popvault test:{home}:/bin/false\n"
        # pop3d reads the file at each login: an appended line is seen by the next one.
        with (self.root / "domains" / DOMAIN).open("a") as passwd:
            passwd.write(line)
        inbox = home / "INBOX"
        owner = (self._uid, self._gid)
        return MboxMailbox(f"{local}@{DOMAIN}", DEFAULT_PASSWORD, inbox, owner, mboxrd=True)


# -- popa3d ------------------------------------------------------------------

_PAM_POPA3D = "auth required pam_unix.so\naccount required pam_unix.so\n"
# Bind mounts inside the bridge's namespace: private source (under root) -> system path.
_POPA3D_MOUNTS: tuple[tuple[str, str], ...] = (
    ("var", "/var"),
    ("etc/passwd", "/etc/passwd"),
    ("etc/shadow", "/etc/shadow"),
    ("etc/pam.d", "/etc/pam.d"),
)


class Popa3dServer:
    """A private popa3d behind an inetd-like bridge in a private mount namespace."""

    name = "popa3d"
    host = HOST
    tls_port: int | None = None
    added_headers: tuple[bytes, ...] = ()
    shares_uidls = True

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = 0
        self._hash = hash_password(DEFAULT_PASSWORD)
        taken = {entry.pw_uid for entry in pwd.getpwall()}
        self._uids = (uid for uid in itertools.count(_FIRST_PRIVATE_UID) if uid not in taken)
        self._serial = itertools.count(1)
        self._process = _Process(root / "bridge.log")

    @property
    def ca_file(self) -> Path:
        raise NotImplementedError("popa3d has no TLS")

    def log_text(self) -> str:
        return self._process.log_text()

    def start(self) -> Popa3dServer:
        """Write the private files and run the bridge until it accepts connections."""
        self._write_private_files()
        argv = ["unshare", "--mount", "--propagation", "private", "--"]
        argv += [sys.executable, str(Path(__file__).resolve()), str(self.root), self.binary]
        process = self._process.start(argv, stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()  # "listening PORT", or EOF if it failed
        if not line.startswith(b"listening "):
            self._process.stop()
            raise RuntimeError(f"the popa3d bridge did not start\n{self.log_text()}")
        self.port = int(line.split()[1])
        self._process.wait_until_listening("the popa3d bridge", [self.port])
        return self

    def stop(self) -> None:
        self._process.stop()

    def add_user(self) -> MboxMailbox:
        """A new user with a private uid and an empty ``/var/mail/USER`` (private)."""
        name = f"popvault-peer{next(self._serial)}"
        if not _USERNAME.fullmatch(name):
            raise ValueError(name)
        uid = next(self._uids)
        # Appended in place: a bind-mounted file keeps its inode (a rename would
        # leave the namespace looking at the old file).
        with (self.root / "etc" / "passwd").open("a") as passwd:
            passwd.write(f"{name}:x:{uid}:{uid}:popvault test:/nonexistent:/usr/sbin/nologin\n")
        with (self.root / "etc" / "shadow").open("a") as shadow:
            shadow.write(f"{name}:{self._hash}:20000:0:99999:7:::\n")
        mbox = self.root / "var" / "mail" / name
        return MboxMailbox(name, DEFAULT_PASSWORD, mbox, (uid, uid), mboxrd=False)

    def _write_private_files(self) -> None:
        for folder in ("var/mail", "var/lib/popa3d", "etc/pam.d"):
            (self.root / folder).mkdir(mode=0o755, parents=True, exist_ok=True)
        (self.root / "etc" / "pam.d" / "popa3d").write_text(_PAM_POPA3D)
        # The system's passwd (not secret) for root and the other names, plus the
        # unprivileged `popa3d` user it drops to when that user does not exist.
        passwd = Path("/etc/passwd").read_text()
        if not any(entry.pw_name == "popa3d" for entry in pwd.getpwall()):
            uid = next(self._uids)
            passwd += f"popa3d:x:{uid}:{uid}:popa3d:/nonexistent:/usr/sbin/nologin\n"
        (self.root / "etc" / "passwd").write_text(passwd)
        # A shadow file with only the test users: the system's is never copied.
        shadow = self.root / "etc" / "shadow"
        shadow.write_text("")
        shadow.chmod(0o600)


def bridge_main(argv: Sequence[str]) -> int:
    """The popa3d bridge (run by :meth:`Popa3dServer.start` inside ``unshare --mount``).

    ``ROOT BINARY``: bind-mount the private files of ``ROOT``, listen on a free
    loopback port, print ``listening PORT``, and run ``BINARY`` for each
    connection with the socket as its stdin and stdout, like inetd.
    """
    root, binary = Path(argv[0]), argv[1]
    for source, target in _POPA3D_MOUNTS:
        subprocess.run(["mount", "--bind", str(root / source), target], check=True)
    children: list[subprocess.Popen[bytes]] = []
    with socket.create_server((HOST, 0)) as listener:
        print(f"listening {listener.getsockname()[1]}", flush=True)
        while True:
            connection, _ = listener.accept()
            with connection:
                fd = connection.fileno()
                children.append(subprocess.Popen([binary], stdin=fd, stdout=fd, close_fds=True))
            children = [child for child in children if child.poll() is None]


if __name__ == "__main__":
    sys.exit(bridge_main(sys.argv[1:]))
