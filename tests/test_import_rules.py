"""The layering of DESIGN.md, enforced: which module may import what.

Walks every module's AST (imports inside functions included) and checks each
imported name against the rules below. A rule broken here is a design change:
change the table on purpose, with a note, or change the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "popvault"

# module prefix (relative to popvault) -> imported-name prefixes it must not use
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "errors": ("popvault.",),
    # The redaction point is used by every layer, so it depends on none of them.
    "redaction": ("popvault.",),
    # The cycle collector's pause is used by the plan and the ledger: it depends on neither.
    "gcpause": ("popvault.",),
    "pop3": (
        "popvault.store",
        "popvault.ledger",
        "popvault.config",
        "popvault.sync",
        "popvault.testing",
        "sqlalchemy",
        "alembic",
    ),
    "store": (
        "popvault.pop3",
        "popvault.ledger",
        "popvault.config",
        "popvault.sync",
        "sqlalchemy",
        "socket",
        "ssl",
    ),
    "ledger": ("popvault.pop3", "popvault.store", "popvault.config", "popvault.sync", "socket"),
    "config": (
        "popvault.pop3",
        "popvault.store",
        "popvault.ledger",
        "popvault.sync",
        "sqlalchemy",
        # The provider presets are plain data (popvault.oauth.providers); the flows and
        # the tokens talk to servers and files, which config never does.
        "popvault.oauth.flows",
        "popvault.oauth.tokens",
        "authlib",
        "httpx",
    ),
    "oauth": (
        "popvault.pop3",
        "popvault.ledger",
        "popvault.config",
        "popvault.sync",
        "popvault.daemon",
        "popvault.cli",
        "popvault.testing",
        "sqlalchemy",
    ),
    # Reading other tools' state files and archives: files only (popvault.importing).
    "importing": (
        "popvault.ledger",
        "popvault.store",
        "popvault.sync",
        "sqlalchemy",
        "socket",
        "ssl",
    ),
    "sync": ("sqlalchemy", "alembic", "socket", "ssl", "apscheduler"),
    "status": ("sqlalchemy", "socket", "popvault.pop3"),
    "daemon": ("socket", "sqlalchemy"),
    # The fake server must not share the client's protocol code: a bug in both would hide.
    "testing": ("popvault.pop3", "popvault.sync", "popvault.ledger", "popvault.store"),
}

# Single modules allowed what their area is not, each with its reason.
EXCEPTIONS: dict[str, tuple[str, ...]] = {
    # systemd's sd_notify(3) protocol is one AF_UNIX datagram to $NOTIFY_SOCKET: local
    # IPC, not the network; the daemon's POP3 and database traffic stay out of it.
    "daemon/notify.py": ("socket",),
}

# The sans-IO core must not do I/O or read the clock (pop3/client.py and pop3/tls.py may).
CORE_FORBIDDEN = ("socket", "ssl", "select", "os", "time", "selectors", "asyncio")
CORE_EXEMPT = {"client.py", "tls.py"}

# Only these may import SQLAlchemy/Alembic; only the store may fsync.
SQLALCHEMY_OWNERS = ("ledger",)
# Only the OAuth package talks HTTP (Authlib over httpx; joserfc is Authlib's JOSE).
HTTP_OWNERS = ("oauth",)
HTTP_LIBRARIES = ("authlib", "httpx", "httpcore", "joserfc")


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: use absolute imports (from popvault...), not relative")
    return names


def _area(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0].removesuffix(".py")


def _matches(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(
        prefix if prefix.endswith(".") else prefix + "."
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_module_respects_the_layering(path: Path) -> None:
    area = _area(path)
    allowed = EXCEPTIONS.get(path.relative_to(SRC).as_posix(), ())
    forbidden = [prefix for prefix in FORBIDDEN.get(area, ()) if prefix not in allowed]
    bad = sorted(name for name in _imports(path) for prefix in forbidden if _matches(name, prefix))
    assert not bad, f"{path.relative_to(SRC)} ({area}) must not import {bad}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_ledger_imports_sqlalchemy(path: Path) -> None:
    if _area(path) in SQLALCHEMY_OWNERS:
        return
    bad = sorted(
        name for name in _imports(path) if _matches(name, "sqlalchemy") or _matches(name, "alembic")
    )
    assert not bad, f"{path.relative_to(SRC)} imports {bad}; only popvault.ledger may"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_oauth_package_imports_an_http_client(path: Path) -> None:
    if _area(path) in HTTP_OWNERS:
        return
    bad = sorted(name for name in _imports(path) for lib in HTTP_LIBRARIES if _matches(name, lib))
    assert not bad, f"{path.relative_to(SRC)} imports {bad}; only popvault.oauth may"


def test_the_pop3_core_does_no_io() -> None:
    core = [p for p in (SRC / "pop3").glob("*.py") if p.name not in CORE_EXEMPT]
    assert core, "the sans-IO core has no modules?"
    for path in core:
        bad = sorted(
            name for name in _imports(path) for prefix in CORE_FORBIDDEN if _matches(name, prefix)
        )
        assert not bad, f"pop3/{path.name} is the sans-IO core and must not import {bad}"


def _fsync_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = {"fsync", "fdatasync", "sync"}
    return [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in names and _is_os(node.value))
        or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in names for alias in node.names)
        )
    ]


def _is_os(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "os"


def test_only_the_store_calls_fsync() -> None:
    offenders = {
        str(path.relative_to(SRC)): lines
        for path in _modules()
        if _area(path) != "store" and (lines := _fsync_calls(path))
    }
    assert not offenders, f"os.fsync outside popvault.store: {offenders}"


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    # The checker itself must be able to fail.
    sample = tmp_path / "sample.py"
    sample.write_text("import sqlalchemy\nfrom popvault.ledger import Ledger\n", encoding="utf-8")
    names = _imports(sample)
    assert any(_matches(n, "sqlalchemy") for n in names)
    assert any(_matches(n, "popvault.ledger") for n in names)
    assert not _matches("sqlalchemyx", "sqlalchemy")
    sample.write_text("import os\n\ndef f(fd):\n    os.fsync(fd)\n", encoding="utf-8")
    assert _fsync_calls(sample) == [4]
