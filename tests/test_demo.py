"""`popvault demo`: a newcomer sees popvault work without a mail account."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from popvault.cli import main


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(args))
    return code, out.getvalue()


def test_demo_archives_the_sample_mailbox_once(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, out = run("demo", "--dir", str(folder), "--messages", "20")
    assert code == 0, out
    assert "first run: 20 new message(s)" in out
    assert "second run: 0 new message(s)" in out
    assert str(folder) in out
    files = [p for p in (folder / "archive" / "demo" / "new").iterdir() if p.is_file()]
    assert len(files) == 20
    password = (folder / "demo-password").read_text(encoding="utf-8").strip()
    assert password not in out
    # The folder it leaves behind is a working setup: status reads it.
    code, status = run("--config", str(folder / "config.toml"), "status", "--json")
    assert code == 0
    (row,) = json.loads(status)
    assert row["archived_messages"] == 20
    assert row["last_outcome"] == "ok"
