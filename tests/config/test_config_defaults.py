"""Where the archive and the ledger go when the config does not say: the XDG data and state
folders, never the config folder (which dotfile sync and settings backups pick up)."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_samples import ACCOUNT

from popvault.config import default_archive_root, default_ledger_path, load

HOME = {"HOME": "/home/alice"}


def test_unset_paths_default_to_the_xdg_data_and_state_folders(write_config) -> None:
    config = load(write_config(ACCOUNT), environ=HOME)
    assert config.archive_root == Path("/home/alice/.local/share/popvault/archive")
    assert config.ledger_url == "sqlite:////home/alice/.local/state/popvault/popvault.sqlite3"


def test_xdg_variables_move_the_defaults(write_config) -> None:
    environ = {**HOME, "XDG_DATA_HOME": "/data", "XDG_STATE_HOME": "/state"}
    config = load(write_config(ACCOUNT), environ=environ)
    assert config.archive_root == Path("/data/popvault/archive")
    assert config.ledger_url == "sqlite:////state/popvault/popvault.sqlite3"
    assert default_archive_root(environ) == config.archive_root
    assert default_ledger_path(environ) == Path("/state/popvault/popvault.sqlite3")


def test_relative_xdg_variables_are_ignored(write_config) -> None:
    # XDG Base Directory spec: relative paths are invalid and must be ignored.
    environ = {**HOME, "XDG_DATA_HOME": "data", "XDG_STATE_HOME": "state"}
    config = load(write_config(ACCOUNT), environ=environ)
    assert config.archive_root == Path("/home/alice/.local/share/popvault/archive")
    assert config.ledger_url == "sqlite:////home/alice/.local/state/popvault/popvault.sqlite3"


def test_empty_sections_still_get_the_xdg_defaults(write_config) -> None:
    config = load(write_config(f"[ledger]\n[archive]\n{ACCOUNT}"), environ=HOME)
    assert config.archive_root == Path("/home/alice/.local/share/popvault/archive")
    assert config.ledger_url.endswith("/.local/state/popvault/popvault.sqlite3")


def test_relative_paths_given_in_the_file_stay_relative_to_the_file(
    write_config, config_dir, elsewhere
) -> None:
    text = f'[ledger]\nurl = "sqlite:///popvault.sqlite3"\n[archive]\nroot = "archive"\n{ACCOUNT}'
    config = load(write_config(text), environ=HOME)
    assert config.archive_root == config_dir / "archive"
    assert config.ledger_url == f"sqlite:///{config_dir}/popvault.sqlite3"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("POPVAULT_ARCHIVE__ROOT", "env-archive"), ("POPVAULT_LEDGER__URL", "sqlite:///env.db")],
)
def test_paths_from_the_environment_are_given_paths_too(
    write_config, config_dir, variable: str, value: str
) -> None:
    config = load(write_config(ACCOUNT), environ={**HOME, variable: value})
    if variable == "POPVAULT_ARCHIVE__ROOT":
        assert config.archive_root == config_dir / "env-archive"
        assert config.ledger_url.endswith("/.local/state/popvault/popvault.sqlite3")
    else:
        assert config.ledger_url == f"sqlite:///{config_dir}/env.db"
        assert config.archive_root == Path("/home/alice/.local/share/popvault/archive")


def test_overrides_are_given_paths_too(write_config) -> None:
    config = load(write_config(ACCOUNT), environ=HOME, overrides={"archive": {"root": "/srv"}})
    assert config.archive_root == Path("/srv")
