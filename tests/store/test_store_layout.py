"""Inside the store, only durable.py may fsync, set modes or create files and folders."""

from __future__ import annotations

import ast
from pathlib import Path

import popvault.store

STORE = Path(popvault.store.__file__).parent
GUARDED = {"fsync", "fdatasync", "chmod", "fchmod", "mkdir", "makedirs", "open", "link", "umask"}


def os_calls(source: str) -> set[str]:
    """The guarded ``os.<name>`` attributes used in ``source``."""
    return {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node.attr in GUARDED
    }


def test_only_durable_touches_modes_and_fsync() -> None:
    modules = sorted(STORE.glob("*.py"))
    assert {p.name for p in modules} >= {"durable.py", "base.py", "maildir.py", "eml.py"}
    offenders = {
        p.name: sorted(found)
        for p in modules
        if p.name != "durable.py" and (found := os_calls(p.read_text(encoding="utf-8")))
    }
    assert offenders == {}
    assert os_calls((STORE / "durable.py").read_text(encoding="utf-8")) >= {
        "fsync",
        "fchmod",
        "chmod",
    }


def test_the_checker_can_fail() -> None:
    assert os_calls("import os\nos.fsync(3)\nos.getpid()\n") == {"fsync"}
