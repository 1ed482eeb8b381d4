"""``popvault demo``: see popvault work without a mail account.

Starts the bundled fake POP3 server on loopback with sample messages, writes a
config for it into a folder, runs the archive twice (the second run finds
nothing new), and shows the status. Everything it makes stays in that folder.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from popvault import config
from popvault.ledger import Ledger
from popvault.status import account_statuses, render_table
from popvault.sync import sync_accounts
from popvault.testing import FakePop3Server, sample_messages

_CONFIG = """\
# Written by `popvault demo`: a config for the bundled fake POP3 server.
[ledger]
url = "sqlite:///ledger.sqlite3"

[archive]
root = "archive"

[[accounts]]
name = "demo"
host = "{host}"
port = {port}
security = "plain"          # the fake server listens on loopback only
allow_plaintext = true
username = "demo"
password_file = "demo-password"
format = "maildir"
"""


def run_demo(folder: Path | None, *, messages: int = 36) -> int:
    """Run the demo in ``folder`` (a new temp folder when None); returns the exit status."""
    folder = Path(tempfile.mkdtemp(prefix="popvault-demo-")) if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    with FakePop3Server(sample_messages(messages), username="demo", password=password) as server:
        config_file = _write_config(folder, server.host, server.port, password)
        cfg = config.load(config_file)
        with Ledger.open(cfg.ledger_url) as ledger:
            first = sync_accounts(cfg, cfg.accounts, ledger)
            second = sync_accounts(cfg, cfg.accounts, ledger)
            rows = account_statuses(cfg, ledger, now=datetime.now(UTC))
    for label, results in (("first run", first), ("second run", second)):
        for result in results:
            outcome = "ok" if result.ok else f"FAILED: {result.error}"
            print(f"{label}: {result.messages} new message(s) archived ({outcome})")
    print()
    print(render_table(rows))
    print()
    print(f"demo folder: {folder}")
    print(f"  config:  {config_file}")
    print(f"  archive: {cfg.archive_root}   (one file per message, Maildir)")
    print(f"  try:     popvault --config {config_file} status --json")
    print("The demo server has stopped; for a real account, see the README's quick start.")
    return 0 if all(result.ok for result in first + second) else 1


def _write_config(folder: Path, host: str, port: int, password: str) -> Path:
    secret = folder / "demo-password"
    secret.touch(mode=0o600)
    secret.write_text(password + "\n", encoding="utf-8")
    config_file = folder / "config.toml"
    config_file.write_text(_CONFIG.format(host=host, port=port), encoding="utf-8")
    if sys.platform != "win32":
        config_file.chmod(0o600)
    return config_file
