"""Where the file is found, and how POPVAULT_* variables and overrides beat it."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_samples import ACCOUNT

from popvault.config import default_config_path, load
from popvault.errors import ConfigError

FILE = f"""
[ledger]
url = "sqlite:///from-file.sqlite3"
[archive]
root = "from-file"
[defaults]
timeout = "10s"
{ACCOUNT}
[[accounts]]
name = "own-timeout"
host = "h"
username = "u"
password_env = "P"
timeout = "7s"
"""


def test_environment_beats_the_file(write_config, config_dir):
    environ = {
        "POPVAULT_LEDGER__URL": "sqlite:///from-env.sqlite3",
        "POPVAULT_ARCHIVE__ROOT": "/srv/from-env",
        "POPVAULT_DEFAULTS__TIMEOUT": "30s",
    }
    config = load(write_config(FILE), environ=environ)
    assert config.ledger_url == f"sqlite:///{config_dir}/from-env.sqlite3"
    assert config.archive_root == Path("/srv/from-env")
    personal, own = config.accounts
    assert personal.timeout == 30.0
    # [defaults] stay defaults: an account's own key still wins over an overridden default.
    assert own.timeout == 7.0


def test_file_beats_built_in_defaults(write_config, config_dir):
    config = load(write_config(FILE), environ={})
    assert config.ledger_url == f"sqlite:///{config_dir}/from-file.sqlite3"
    assert config.archive_root == config_dir / "from-file"
    assert config.accounts[0].timeout == 10.0


def test_relative_environment_paths_follow_the_config_folder(write_config, config_dir, elsewhere):
    config = load(write_config(FILE), environ={"POPVAULT_ARCHIVE__ROOT": "env-archive"})
    assert config.archive_root == config_dir / "env-archive"


def test_overrides_beat_the_environment(write_config):
    config = load(
        write_config(FILE),
        environ={"POPVAULT_ARCHIVE__ROOT": "/srv/from-env"},
        overrides={"archive": {"root": "/srv/explicit"}},
    )
    assert config.archive_root == Path("/srv/explicit")


def test_environment_variable_names_ignore_case(write_config):
    config = load(write_config(FILE), environ={"popvault_archive__root": "/srv/lower"})
    assert config.archive_root == Path("/srv/lower")


def test_empty_environment_variable_is_ignored(write_config, config_dir):
    config = load(write_config(FILE), environ={"POPVAULT_ARCHIVE__ROOT": ""})
    assert config.archive_root == config_dir / "from-file"


def test_environment_can_supply_a_whole_default(write_config):
    text = ACCOUNT.replace('password_env = "PERSONAL_PASSWORD"\n', "")
    config = load(write_config(text), environ={"POPVAULT_DEFAULTS__PASSWORD_ENV": "SHARED"})
    assert config.accounts[0].password_source == "password_env SHARED"


def test_unknown_nested_environment_key_is_an_error(write_config):
    with pytest.raises(ConfigError) as info:
        load(write_config(FILE), environ={"POPVAULT_LEDGER__URI": "x"})
    assert info.value.variable == "POPVAULT_LEDGER__URI"
    assert "did you mean POPVAULT_LEDGER__URL?" in str(info.value)


def test_os_environ_is_the_default(write_config, monkeypatch):
    monkeypatch.setenv("POPVAULT_ARCHIVE__ROOT", "/srv/os-environ")
    assert load(write_config(FILE)).archive_root == Path("/srv/os-environ")


def test_popvault_config_names_the_file(write_config):
    path = write_config(FILE)
    assert load(environ={"POPVAULT_CONFIG": str(path)}).file == path


def test_explicit_path_beats_popvault_config(write_config, tmp_path):
    path = write_config(FILE)
    config = load(path, environ={"POPVAULT_CONFIG": str(tmp_path / "other.toml")})
    assert config.file == path


def test_missing_default_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no config file at") as info:
        load(environ={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert info.value.file == str(tmp_path / "xdg" / "popvault" / "config.toml")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"POPVAULT_CONFIG": "/etc/popvault.toml"}, "/etc/popvault.toml"),
        (
            {"POPVAULT_CONFIG": "/etc/popvault.toml", "XDG_CONFIG_HOME": "/xdg"},
            "/etc/popvault.toml",
        ),
        ({"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/a"}, "/xdg/popvault/config.toml"),
        (
            {"XDG_CONFIG_HOME": "relative", "HOME": "/home/a"},
            "/home/a/.config/popvault/config.toml",
        ),
        ({"XDG_CONFIG_HOME": "", "HOME": "/home/a"}, "/home/a/.config/popvault/config.toml"),
        ({"POPVAULT_CONFIG": "", "HOME": "/home/a"}, "/home/a/.config/popvault/config.toml"),
    ],
)
def test_default_config_path(environ, expected):
    assert default_config_path(environ) == Path(expected)


def test_default_config_path_reads_os_environ(monkeypatch, tmp_path):
    monkeypatch.delenv("POPVAULT_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_path() == tmp_path / "popvault" / "config.toml"
