"""POPVAULT_* variables that match no setting are warned about; a bad value from one is
blamed on the variable, not on the config file."""

from __future__ import annotations

import logging

import pytest
from config_samples import ACCOUNT

from popvault.config import load
from popvault.errors import ConfigError

FILE = f"""
[archive]
root = "from-file"
{ACCOUNT}
"""


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("POPVAULT_ARCHIVE_ROOT", "POPVAULT_ARCHIVE__ROOT"),
        ("POPVAULT_LEDGER_URL", "POPVAULT_LEDGER__URL"),
        ("POPVAULT_DEFAULTS_TIMEOUT", "POPVAULT_DEFAULTS__TIMEOUT"),
        ("popvault_archive_root", "POPVAULT_ARCHIVE__ROOT"),
    ],
)
def test_a_variable_that_matches_no_setting_is_warned_about_with_the_closest_name(
    write_config, config_dir, caplog, variable: str, closest: str
) -> None:
    caplog.set_level(logging.WARNING)
    config = load(write_config(FILE), environ={variable: "/srv/typo"})
    assert config.archive_root == config_dir / "from-file"  # ignored, as before
    [warning] = warnings(caplog)
    assert variable in warning
    assert f"did you mean {closest}?" in warning


def test_a_variable_with_no_close_name_is_still_named(write_config, caplog) -> None:
    caplog.set_level(logging.WARNING)
    load(write_config(FILE), environ={"POPVAULT_FROBNICATE": "1"})
    [warning] = warnings(caplog)
    assert "POPVAULT_FROBNICATE matches no popvault setting" in warning


@pytest.mark.parametrize(
    "variable",
    [
        "POPVAULT_CONFIG",
        "POPVAULT_LEDGER__URL",
        "POPVAULT_ARCHIVE__ROOT",
        "POPVAULT_DAEMON__SHUTDOWN_TIMEOUT",
        "POPVAULT_DEFAULTS__TIMEOUT",
        "POPVAULT_ARCHIVE",
    ],
)
def test_valid_variables_are_not_warned_about(write_config, caplog, variable: str) -> None:
    values = {
        "POPVAULT_LEDGER__URL": "sqlite:///x.sqlite3",
        "POPVAULT_ARCHIVE": '{"root": "/srv/json"}',
    }
    caplog.set_level(logging.WARNING)
    path = write_config(FILE)
    value = values.get(variable, str(path) if variable == "POPVAULT_CONFIG" else "30s")
    load(path, environ={variable: value})
    assert warnings(caplog) == []


def test_empty_variables_are_ignored_silently(write_config, caplog) -> None:
    caplog.set_level(logging.WARNING)
    load(write_config(FILE), environ={"POPVAULT_ARCHIVE_ROOT": ""})
    assert warnings(caplog) == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("POPVAULT_DEFAULTS__TIMEOUT", "soon", "invalid duration 'soon'"),
        ("POPVAULT_DAEMON__MAX_CONCURRENT", "100", "a whole number from 1 to 64"),
        ("POPVAULT_LEDGER__URL", "nope", "must be a SQLAlchemy URL"),
        ("POPVAULT_LEDGER__URI", "x", "did you mean POPVAULT_LEDGER__URL?"),
        ("POPVAULT_ACCOUNTS__0__HOST", "h", "POPVAULT_ACCOUNTS takes a JSON array"),
    ],
)
def test_a_bad_value_from_the_environment_names_the_variable_not_the_file(
    write_config, variable: str, value: str, expected: str
) -> None:
    path = write_config(FILE)
    with pytest.raises(ConfigError) as info:
        load(path, environ={variable: value})
    assert info.value.variable == variable
    assert info.value.file is None
    text = str(info.value)
    assert text.startswith(f"environment variable {variable}: ")
    assert expected in text
    assert str(path) not in text


def test_a_bad_value_in_the_file_still_names_the_file(write_config) -> None:
    path = write_config(FILE.replace('root = "from-file"', 'root = ""'))
    with pytest.raises(ConfigError) as info:
        load(path, environ={"POPVAULT_DEFAULTS__TIMEOUT": "30s"})
    assert info.value.variable is None
    assert info.value.file == str(path)
