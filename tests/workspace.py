"""A test workspace: a config file, an archive and a ledger in one folder, and the CLI.

Tests drive popvault the way a user does — through a config file and the
``popvault`` command — and then look at the files and the ledger directly.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popvault import config as config_module
from popvault.cli import main
from popvault.ledger import Ledger
from popvault.sync import RunResult, sync_account

if TYPE_CHECKING:
    from datetime import datetime


@dataclass
class CliResult:
    """What one ``popvault`` invocation did."""

    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


class Workspace:
    """One folder holding config.toml, ledger.sqlite3 and archive/."""

    def __init__(self, folder: Path, *, password: str | None = None) -> None:
        self.folder = folder
        self.config = folder / "config.toml"
        self.ledger_file = folder / "ledger.sqlite3"
        self.archive = folder / "archive"
        if password is not None:
            self.write_secret(password)

    def write_secret(self, password: str, name: str = "secret") -> Path:
        """A 0600 password file for ``password_file = name`` (relative to the config)."""
        secret = self.folder / name
        secret.write_text(password + "\n", encoding="utf-8")
        secret.chmod(0o600)
        return secret

    def write_config(
        self,
        accounts: list[dict[str, Any]],
        *,
        defaults: dict[str, Any] | None = None,
        ledger_url: str = "sqlite:///ledger.sqlite3",
        ledger: dict[str, Any] | None = None,
    ) -> Path:
        lines = ["[ledger]", f"url = {toml_value(ledger_url)}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in (ledger or {}).items()]
        lines += ["", "[archive]", 'root = "archive"']
        if defaults:
            lines += ["", "[defaults]"] + [f"{k} = {toml_value(v)}" for k, v in defaults.items()]
        for account in accounts:
            lines += ["", "[[accounts]]"] + [f"{k} = {toml_value(v)}" for k, v in account.items()]
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.config.chmod(0o600)
        return self.config

    def cli(self, *args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--config", str(self.config), *args])
        return CliResult(code, out.getvalue(), err.getvalue())

    def archived_files(self, folder: str) -> list[Path]:
        """Every published message file of one account's folder, sorted by name."""
        base = self.archive / folder
        files = list((base / "new").glob("*")) + list((base / "cur").glob("*"))
        files += list(base.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/*.eml"))
        return sorted(path for path in files if path.is_file())

    def run_at(self, when: datetime, **options: Any) -> RunResult:
        """One run of the config's first account with the clock frozen at ``when``."""
        cfg = config_module.load(self.config)
        with Ledger.open(cfg.ledger_url) as ledger:
            return sync_account(cfg, cfg.accounts[0], ledger, clock=lambda: when, **options)

    def mark_archive(self) -> None:
        """Write the archive root's marker now, as a run's first step would.

        Every ``popvault run`` and daemon checks the root's ``.popvault-ledger``
        before anything else and writes it on first use (popvault.store.marker).
        A test that counts or fails the store's operations of a run calls this
        first, so that those operations are the messages' only.
        """
        from popvault.archive_root import check_archive_root  # noqa: PLC0415 - few tests need it

        cfg = config_module.load(self.config)
        with Ledger.open(cfg.ledger_url) as ledger:
            check_archive_root(cfg, ledger)

    def stored(self, folder: str = "acct") -> list[bytes]:
        """The contents of one account's archived files, sorted."""
        return sorted(path.read_bytes() for path in self.archived_files(folder))

    def ledger_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.ledger_file)) as db:
            return list(db.execute(sql, params))

    def ledger_dump(self) -> str:
        """Everything in the ledger as text (to search it for secrets)."""
        with contextlib.closing(sqlite3.connect(self.ledger_file)) as db:
            return "\n".join(db.iterdump())


def fake_account(srv: Any, name: str = "acct", **extra: Any) -> dict[str, Any]:
    """An ``[[accounts]]`` entry for a FakePop3Server; ``password_file = "secret"``.

    Keys given as None are left out (so a test can drop a default).
    """
    entry: dict[str, Any] = {
        "name": name,
        "host": srv.host,
        "port": srv.port,
        "security": "plain",
        "allow_plaintext": True,
        "username": srv.username,
        "password_file": "secret",
        "timeout": "5s",
    }
    entry.update(extra)
    return {key: value for key, value in entry.items() if value is not None}


def maildir_form(raw: bytes) -> bytes:
    """What the Maildir store keeps of a message as served: CRLF becomes LF."""
    return raw.replace(b"\r\n", b"\n")


def wire_form(raw: bytes) -> bytes:
    """A message as a POP3 server hands it out: CRLF line endings, ending in CRLF."""
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return crlf if crlf.endswith(b"\r\n") else crlf + b"\r\n"


def dovecot_account(server: Any, username: str, name: str, **extra: Any) -> dict[str, Any]:
    """An ``[[accounts]]`` entry for a private Dovecot (tests/dovecot.py): STARTTLS checked
    against its CA, the password read from ``PW_<NAME>``. ``extra`` keys override."""
    entry: dict[str, Any] = {
        "name": name,
        "host": server.host,
        "port": server.port,
        "security": "starttls",
        "ca_file": str(server.ca_file),
        "username": username,
        "password_env": f"PW_{name.upper()}",
        "timeout": "20s",
    }
    entry.update(extra)
    return entry


def reference_lf(data: bytes) -> bytes:
    """CRLF to LF, one octet at a time (a reference independent of the store's code)."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i : i + 2] == b"\r\n":
            out += b"\n"
            i += 2
        else:
            out.append(data[i])
            i += 1
    return bytes(out)
