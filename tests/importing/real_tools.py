"""The real getmail6, fetchmail and mpop, run against the test Dovecot: the state files they write.

Each ``run_*`` function points one tool at a Dovecot mailbox with "keep the
messages on the server", lets it retrieve what is there, and returns the
state file it wrote and how many messages it delivered (counted from the
files its delivery wrote). Plain functions (the tests call them with the
``dovecot`` fixtures of ``tests/conftest.py``), each in a folder of its own
from :func:`work_folder`.

A missing tool skips the test, and fails it under ``CI=true`` (``.ci/test``
installs all three).
"""

from __future__ import annotations

import os
import poplib
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dovecot import HOST, MAIL_USER, DovecotMailbox, DovecotServer, unavailable

# Each tool retrieves a few small messages from a local server: well under a second.
_RUN_SECONDS = 60
_PACKAGES = {"getmail": "getmail6", "fetchmail": "fetchmail", "mpop": "mpop"}


@dataclass(frozen=True)
class ToolRun:
    """What one run of a tool left: its state file, and the messages it delivered."""

    state_file: Path
    # "user@host" as the tool keys its state -> messages delivered for it in this run
    delivered: dict[str, int]


@dataclass(frozen=True)
class FetchmailPoll:
    """One ``poll`` entry of a fetchmailrc: a name, maybe a ``via``, and its users."""

    mailboxes: Sequence[DovecotMailbox]
    name: str = HOST
    via: str | None = None

    @property
    def recorded_host(self) -> str:
        """The host fetchmail writes into ``.fetchids`` for this poll: ``via``, else the name."""
        return self.via or self.name


def tool_or_skip(command: str) -> str:
    """The path of ``command`` (getmail, fetchmail or mpop); else skip, or fail under CI=true."""
    found = shutil.which(command)
    if found is None:
        package = _PACKAGES[command]
        unavailable(f"{command} is not installed (apt-get install {package})", what=package)
    return found


@contextmanager
def work_folder() -> Iterator[Path]:
    """A fresh folder the ``mail`` user can reach (getmail6 delivers as it when run as root).

    Not pytest's tmp_path: that lies under a 0700 folder of root's.
    """
    folder = Path(tempfile.mkdtemp(prefix="popvault-realtools-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server_uidls(server: DovecotServer, mailbox: DovecotMailbox) -> list[str]:
    """The mailbox's UIDLs as the server lists them now (RFC 1939 UIDL, through poplib)."""
    client = poplib.POP3(HOST, server.port, timeout=20)
    try:
        client.user(mailbox.username)
        client.pass_(mailbox.password)
        _, lines, _ = client.uidl()
        return [line.split(b" ", 1)[1].decode("ascii") for line in lines]
    finally:
        client.quit()


# -- mpop --------------------------------------------------------------------------


def run_mpop(server: DovecotServer, mailboxes: Sequence[DovecotMailbox], work: Path) -> ToolRun:
    """``mpop`` with ``keep on``, one account per mailbox, each into a Maildir of its own,
    all sharing one UIDLs file (``uidls_file``): that file."""
    mpop = tool_or_skip("mpop")
    uidls = work / "mpop-uidls"
    accounts: list[str] = []
    maildirs: dict[str, Path] = {}
    for mailbox in mailboxes:
        name = f"account{len(accounts)}"
        maildir = _maildir(work / f"mpop-{name}")
        maildirs[f"{mailbox.username}@{HOST}"] = maildir
        accounts.append(
            f"""\
account {name}
host {HOST}
port {server.port}
tls off
auth user
user {mailbox.username}
password {mailbox.password}
keep on
received_header off
uidls_file {uidls}
delivery maildir {maildir}
"""
        )
    rcfile = _private_file(work / "mpoprc", "\n".join(accounts))
    names = [f"account{i}" for i in range(len(accounts))]
    _run([mpop, "--quiet", f"--file={rcfile}", *names], work)
    return ToolRun(uidls, {key: _count_maildir(folder) for key, folder in maildirs.items()})


# -- getmail6 ----------------------------------------------------------------------


def run_getmail6(server: DovecotServer, mailbox: DovecotMailbox, work: Path) -> ToolRun:
    """``getmail`` (SimplePOP3Retriever, ``read_all = false``, ``delete = false``) into a
    Maildir; the one ``oldmail-*`` file it wrote in its private getmail directory."""
    getmail = tool_or_skip("getmail")
    maildir = _maildir(work / "getmail-maildir")
    getmaildir = work / "getmail"
    getmaildir.mkdir(exist_ok=True)
    rcfile = _private_file(
        getmaildir / "getmailrc",
        f"""\
[retriever]
type = SimplePOP3Retriever
server = {HOST}
port = {server.port}
username = {mailbox.username}
password = {mailbox.password}

[destination]
type = Maildir
path = {maildir}/
{_getmail6_delivery_user(maildir)}
[options]
verbose = 0
read_all = false
delete = false
delivered_to = false
received = false
message_log_syslog = false
""",
    )
    _run([getmail, "--quiet", f"--getmaildir={getmaildir}", f"--rcfile={rcfile}"], work)
    state = sorted(getmaildir.glob("oldmail-*"))
    if len(state) != 1:
        raise AssertionError(f"getmail6 wrote {len(state)} oldmail files: {state}")
    return ToolRun(state[0], {f"{mailbox.username}@{HOST}": _count_maildir(maildir)})


def _getmail6_delivery_user(maildir: Path) -> str:
    # getmail6 refuses to deliver as root; as root, it delivers as another user.
    if os.geteuid() != 0:
        return ""
    mail = pwd.getpwnam(MAIL_USER)
    for path in (maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
        os.chown(path, mail.pw_uid, mail.pw_gid)
    return f"user = {MAIL_USER}\n"


# -- fetchmail ---------------------------------------------------------------------


def run_fetchmail(server: DovecotServer, polls: Sequence[FetchmailPoll], work: Path) -> ToolRun:
    """``fetchmail`` with ``uidl`` and ``keep`` for every user of ``polls``, each delivered
    by an MDA into a folder of its own; the ``--idfile`` it wrote."""
    fetchmail = tool_or_skip("fetchmail")
    idfile = work / "fetchids"
    entries: list[str] = []
    outputs: dict[str, Path] = {}
    for poll in polls:
        via = f" via {poll.via}" if poll.via else ""
        entries.append(f"poll {poll.name}{via} service {server.port} protocol pop3 uidl")
        for mailbox in poll.mailboxes:
            key = f"{mailbox.username}@{poll.recorded_host}"
            out = work / "fetchmail-out" / str(len(outputs))
            out.mkdir(parents=True)
            outputs[key] = out
            # One file per message: the MDA is a shell command line, $$ its own process.
            mda = f"cat > {out}/$$.eml"
            # sslproto '': plain POP3, no STLS (the test server's CA is not the system's).
            entries.append(
                f'  user "{mailbox.username}" password "{mailbox.password}"'
                f" keep sslproto '' mda \"{mda}\""
            )
    rcfile = _private_file(work / "fetchmailrc", "\n".join(entries) + "\n")
    argv = [fetchmail, "-f", str(rcfile), "-i", str(idfile), "-N", "--nosyslog"]
    _run([*argv, "--pidfile", str(work / "fetchmail.pid")], work)
    counts = {key: sum(1 for _ in out.iterdir()) for key, out in outputs.items()}
    return ToolRun(idfile, counts)


# -- shared --------------------------------------------------------------------------


def _private_file(path: Path, text: str) -> Path:
    # mpop and fetchmail refuse a config with a password that others may read.
    path.write_text(text)
    path.chmod(0o600)
    return path


def _maildir(folder: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


def _count_maildir(maildir: Path) -> int:
    return sum(1 for sub in ("new", "cur") for _ in (maildir / sub).iterdir())


def _run(argv: list[str], work: Path) -> None:
    # HOME in the work folder: no tool reads or writes the real user's dot files.
    env = {**os.environ, "HOME": str(work)}
    result = subprocess.run(
        argv, cwd=work, env=env, capture_output=True, timeout=_RUN_SECONDS, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise AssertionError(f"{Path(argv[0]).name} exited {result.returncode}:\n{output}")
