"""The archive invariant, checked in one place, and a fake server that witnesses each DELE.

The invariant (the core issue): after any sequence of interrupted runs followed
by one run that completes, every message that was on the server is in the
archive exactly once, byte-exact, recorded once in the ledger; and no message
was ever deleted from the server unless its archived copy was durable at that
moment.

:func:`check_invariant` asserts the end state. The "at that moment" part needs
a witness inside the server: :class:`WitnessServer` looks at the ledger and
the archive each time it receives a ``DELE``, before it answers, and keeps
what it saw in :attr:`WitnessServer.witnesses`.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from popvault.ledger import Ledger
from popvault.testing import FakePop3Server
from workspace import Workspace, maildir_form, wire_form

Format = Literal["maildir", "eml"]

ACCOUNT = "acct"
USERNAME = "carol"
# Distinctive, so that a search of any output for it cannot match by chance.
PASSWORD = "Inv4riant-pw-never-shown-7Q"

# A migrated, empty ledger copied into each workspace: running the Alembic
# migrations for each of hundreds of scenarios would dominate their runtime.
_TEMPLATE_LOCK = threading.Lock()
_template: Path | None = None


@dataclass(frozen=True)
class DeleWitness:
    """What the archive looked like when the server received ``DELE`` for ``uidl``."""

    uidl: str
    problem: str | None


class WitnessServer(FakePop3Server):
    """A FakePop3Server that checks, at each DELE, that the message is durably archived.

    "Durable" here: the ledger row of that UIDL is committed as ``archived``
    and its file is in place with the recorded size and SHA-256. The check
    runs in the server's session thread before the command is carried out,
    so the client is blocked waiting for the answer while we look.

    The message number is mapped to a UIDL through the current mailbox: the
    tests change the mailbox only between sessions, and deletions take
    effect only at QUIT, so during a session it equals the session's view.
    """

    def __init__(self, messages: Sequence[bytes] = (), **kwargs: Any) -> None:
        kwargs.setdefault("username", USERNAME)
        kwargs.setdefault("password", PASSWORD)
        super().__init__(messages, **kwargs)
        self.witnesses: list[DeleWitness] = []
        self._watched: tuple[Workspace, str] | None = None
        self.on_command("DELE", self._witness)

    def clear_faults(self) -> None:
        """Forget faults (see :meth:`FakePop3Server.clear_faults`), but keep witnessing."""
        super().clear_faults()
        self.on_command("DELE", self._witness)

    def start(self) -> WitnessServer:
        """Start serving (see :meth:`FakePop3Server.start`); typed for this class."""
        super().start()
        return self

    def __enter__(self) -> WitnessServer:
        return self.start()

    def watch(self, ws: Workspace, account: str = ACCOUNT) -> None:
        """Check ``account``'s ledger and archive in ``ws`` at each DELE."""
        self._watched = (ws, account)

    def _witness(self, _session: int, arg: str) -> None:
        if self._watched is None or not arg.strip().isdigit():
            return
        mailbox = self.mailbox
        number = int(arg.strip())
        if not 1 <= number <= len(mailbox):
            return  # the server refuses it; nothing is deleted
        uidl, raw = mailbox[number - 1]
        ws, account = self._watched
        self.witnesses.append(DeleWitness(uidl, durable_copy_problem(ws, account, uidl, raw)))


def durable_copy_problem(
    ws: Workspace, account: str, uidl: str, raw: bytes | None = None
) -> str | None:
    """Why no durable archived copy of the message ``raw`` under ``uidl`` exists, or None.

    A UIDL may have several rows (a server listing two messages under one
    UIDL): one of them must be archived, match its file, and — when ``raw``
    is given — hold that very message (in either store's form).
    """
    rows = ws.ledger_rows(
        "SELECT state, path, size, sha256 FROM messages WHERE account = ? AND uidl = ?",
        account,
        uidl,
    )
    if not rows:
        return "0 ledger rows"
    problems = [_row_problem(ws, row, raw) for row in rows]
    if None in problems:
        return None
    return "; ".join(problem for problem in problems if problem)


def _row_problem(ws: Workspace, row: tuple[Any, ...], raw: bytes | None) -> str | None:
    state, path, size, sha256 = row
    if state != "archived":
        return f"ledger state {state!r}"
    file = ws.archive / path
    if not file.is_file():
        return f"no file at {path}"
    data = file.read_bytes()
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        return f"file {path} differs from its ledger row"
    if raw is not None and data not in (maildir_form(wire_form(raw)), wire_form(raw)):
        return f"file {path} holds another message"
    return None


def expected_form(raw: bytes, fmt: Format) -> bytes:
    """What the archive must hold for a message the server stores as ``raw``."""
    served = wire_form(raw)
    form: bytes = maildir_form(served) if fmt == "maildir" else served
    return form


def new_workspace(folder: Path) -> Workspace:
    """A workspace with the password file and an already migrated, empty ledger."""
    folder.mkdir(parents=True, exist_ok=True)
    ws = Workspace(folder, password=PASSWORD)
    shutil.copyfile(_ledger_template(), ws.ledger_file)
    ws.ledger_file.chmod(0o600)
    return ws


def _ledger_template() -> Path:
    global _template  # noqa: PLW0603 - one migrated ledger per test process
    with _TEMPLATE_LOCK:
        if _template is None:
            folder = Path(tempfile.mkdtemp(prefix="popvault-ledger-template-"))
            # Gone when the test process ends, however it ends short of a kill.
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = folder / "ledger.sqlite3"
            Ledger.open(f"sqlite:///{path}").close()
            _template = path
        return _template


def account_entry(srv: FakePop3Server, *, fmt: Format = "maildir", **extra: Any) -> dict[str, Any]:
    """One ``[[accounts]]`` table for the fake server at ``srv``."""
    entry: dict[str, Any] = {
        "name": ACCOUNT,
        "host": srv.host,
        "port": srv.port,
        "security": "plain",
        "allow_plaintext": True,
        "username": USERNAME,
        "password_file": "secret",
        "timeout": "5s",
        "format": fmt,
    }
    entry.update(extra)
    return entry


def wait_until_idle(srv: FakePop3Server, timeout: float = 5.0) -> None:
    """Wait until no session holds the maildrop lock (a killed client's session ends late).

    A client that was killed or dropped the line without QUIT leaves its
    session thread waiting for the EOF; a run started before that thread
    releases the lock would be refused with [IN-USE] (RFC 2449 section 8.1.1).
    """
    deadline = time.monotonic() + timeout
    while srv.holds_lock:
        if time.monotonic() > deadline:
            raise AssertionError("the fake server's maildrop is still locked")
        time.sleep(0.005)


def assert_no_secret(*texts: str) -> None:
    """The password appears in none of ``texts``."""
    for text in texts:
        assert PASSWORD not in text, "the password leaked into output"


def check_invariant(
    ws: Workspace,
    originals: Mapping[str, bytes],
    server_deleted: Sequence[str],
    *,
    account: str = ACCOUNT,
    fmt: Format = "maildir",
    still_on_server: Iterable[str] | None = None,
    witnesses: Sequence[DeleWitness] | None = None,
) -> None:
    """Assert the archive invariant for one account after a run that completed.

    ``originals``: every message that was ever on the server, by UIDL, as the
    server stores it. ``server_deleted``: the UIDLs the server actually
    removed. ``still_on_server``: the UIDLs it holds now (the ledger must not
    call them deleted or gone). ``witnesses``: what the server saw at each DELE.
    """
    _check_verify(ws, account)
    rows = _ledger_rows(ws, account)
    assert not [row for row in rows if row["state"] != "archived"], "pending rows left"
    counts = Counter(row["uidl"] for row in rows)
    assert not [u for u, n in counts.items() if n > 1], "a UIDL recorded more than once"
    by_uidl = {row["uidl"]: row for row in rows}
    assert set(by_uidl) == set(originals), _difference("ledger", set(by_uidl), set(originals))
    _check_files(ws, account, by_uidl, originals, fmt)
    _check_deletions(by_uidl, server_deleted, still_on_server)
    if witnesses is not None:
        _check_witnesses(witnesses, server_deleted)
    assert_no_secret(ws.ledger_dump())


def _check_verify(ws: Workspace, account: str) -> None:
    """`popvault verify` finds no missing, changed or unknown file."""
    result = ws.cli("verify", "--account", account, "--json")
    assert_no_secret(result.output)
    assert result.code == 0, result.output
    (report,) = json.loads(result.out)
    assert report["ok"], report
    assert not report["problems"], report


def _ledger_rows(ws: Workspace, account: str) -> list[dict[str, Any]]:
    names = ("uidl", "state", "path", "size", "sha256", "deleted_at", "gone_at")
    sql = f"SELECT {', '.join(names)} FROM messages WHERE account = ?"  # noqa: S608 - fixed names
    return [dict(zip(names, row, strict=True)) for row in ws.ledger_rows(sql, account)]


def _check_files(
    ws: Workspace,
    account: str,
    by_uidl: Mapping[str, Mapping[str, Any]],
    originals: Mapping[str, bytes],
    fmt: Format,
) -> None:
    """Ledger rows and archive files match 1:1, and each holds its message's bytes."""
    files = [path.relative_to(ws.archive).as_posix() for path in ws.archived_files(account)]
    recorded = [row["path"] for row in by_uidl.values()]
    assert sorted(files) == sorted(recorded), _difference("files", set(files), set(recorded))
    for uidl, row in by_uidl.items():
        data = (ws.archive / row["path"]).read_bytes()
        assert data == expected_form(originals[uidl], fmt), f"{uidl}: archived bytes differ"
        assert (len(data), hashlib.sha256(data).hexdigest()) == (row["size"], row["sha256"])
    stored = Counter((ws.archive / path).read_bytes() for path in files)
    assert stored == Counter(expected_form(raw, fmt) for raw in originals.values())


def _check_deletions(
    by_uidl: Mapping[str, Mapping[str, Any]],
    server_deleted: Sequence[str],
    still_on_server: Iterable[str] | None,
) -> None:
    """Only archived messages were deleted, each once; the ledger agrees with the server."""
    assert len(set(server_deleted)) == len(server_deleted), "a message deleted twice"
    unarchived = set(server_deleted) - set(by_uidl)
    assert not unarchived, f"deleted from the server but never archived: {sorted(unarchived)}"
    for uidl in server_deleted:
        assert by_uidl[uidl]["deleted_at"] is not None, f"{uidl}: deletion not in the ledger"
    for uidl in still_on_server or ():
        if uidl in by_uidl:
            row = by_uidl[uidl]
            assert row["deleted_at"] is None, f"{uidl}: marked deleted but on the server"
            assert row["gone_at"] is None, f"{uidl}: marked gone but on the server"


def _check_witnesses(witnesses: Sequence[DeleWitness], server_deleted: Sequence[str]) -> None:
    bad = [w for w in witnesses if w.problem is not None]
    assert not bad, f"DELE sent for a message not durably archived: {bad}"
    unseen = set(server_deleted) - {w.uidl for w in witnesses}
    assert not unseen, f"deleted without a witnessed DELE: {sorted(unseen)}"


def _difference(what: str, actual: set[str], expected: set[str]) -> str:
    return f"{what}: extra {sorted(actual - expected)}, missing {sorted(expected - actual)}"


def pending_rows(ws: Workspace, account: str = ACCOUNT) -> int:
    """How many pending rows the ledger holds for ``account``."""
    ((count,),) = ws.ledger_rows(
        "SELECT count(*) FROM messages WHERE account = ? AND state = 'pending'", account
    )
    return int(count)


def temp_files(ws: Workspace, account: str = ACCOUNT) -> list[Path]:
    """Unpublished files in the account's temp folders (Maildir tmp/, EML .tmp/)."""
    base = ws.archive / account
    return sorted(p for sub in ("tmp", ".tmp") for p in (base / sub).glob("*") if p.is_file())


def sqlite_holding_write_lock(path: Path) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    """A connection to the ledger holding its write lock (BEGIN IMMEDIATE) until the block ends."""

    @contextlib.contextmanager
    def hold() -> Any:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        finally:
            db.close()

    return hold()
