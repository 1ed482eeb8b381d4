"""Fixtures for the config tests: a config folder and a writer for config files.

Every test passes ``environ`` explicitly (an empty mapping unless it is about the
environment), so a POPVAULT_* variable in the developer's shell cannot change a result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

WriteConfig = Callable[[str], Path]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "conf"
    folder.mkdir()
    return folder


@pytest.fixture
def write_config(config_dir: Path) -> WriteConfig:
    """Write ``text`` as ``config.toml`` (mode 0600) in the config folder; return its path."""

    def write(text: str) -> Path:
        path = config_dir / "config.toml"
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        return path

    return write


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory that is not the config folder, so cwd-relative bugs show."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder
