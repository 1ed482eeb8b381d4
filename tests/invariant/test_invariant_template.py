"""The migrated ledger template the invariant scenarios copy leaves nothing in the temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = """
import sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from invariant_check import new_workspace
ws = new_workspace(Path(sys.argv[3]) / "ws")
assert ws.ledger_file.stat().st_size > 0
"""


def test_the_ledger_template_is_removed_when_the_process_ends(tmp_path: Path) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    subprocess.run(
        [sys.executable, "-c", PROBE, str(HERE), str(HERE.parent), str(tmp_path)],
        env=env,
        check=True,
        timeout=120,
    )
    assert (tmp_path / "ws" / "ledger.sqlite3").is_file()
    assert list(private_tmp.glob("popvault-ledger-template-*")) == []
