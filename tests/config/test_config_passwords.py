"""read_password(): the four sources, read lazily, and never leaked."""

from __future__ import annotations

import logging
import time

import pytest

from popvault.config import _secrets, load, read_password
from popvault.errors import ConfigError

SECRET = "correct horse battery staple"


def account_with(source: str) -> str:
    return f"""
[[accounts]]
name = "personal"
host = "pop.example.org"
username = "alice@example.org"
{source}
"""


def load_one(write_config, source: str):
    config = load(write_config(account_with(source)), environ={})
    return config, config.accounts[0]


def password_error(config, account, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        read_password(config, account, environ={} if environ is None else environ)
    assert info.value.account == "personal"
    assert info.value.file == str(config.file)
    return info.value


# --- password_env ---------------------------------------------------------------------------


def test_password_env(write_config):
    config, account = load_one(write_config, 'password_env = "MAIL_PW"')
    assert account.password_source == "password_env MAIL_PW"
    assert read_password(config, account, environ={"MAIL_PW": SECRET}) == SECRET


def test_password_env_reads_os_environ_by_default(write_config, monkeypatch):
    config, account = load_one(write_config, 'password_env = "MAIL_PW"')
    monkeypatch.setenv("MAIL_PW", SECRET)
    assert read_password(config, account) == SECRET


@pytest.mark.parametrize("environ", [{}, {"MAIL_PW": ""}])
def test_password_env_missing_or_empty(write_config, environ):
    config, account = load_one(write_config, 'password_env = "MAIL_PW"')
    error = password_error(config, account, environ)
    assert error.key == "password_env"
    assert "MAIL_PW" in error.message


# --- password_file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [(f"{SECRET}\n", SECRET), (SECRET, SECRET), (f"{SECRET}\r\n", SECRET), (" pw ", " pw ")],
)
def test_password_file_relative_to_config_folder(
    write_config, config_dir, elsewhere, content, expected
):
    (config_dir / "pw.txt").write_text(content, encoding="utf-8")
    (config_dir / "pw.txt").chmod(0o600)
    (elsewhere / "pw.txt").write_text("wrong one\n", encoding="utf-8")
    config, account = load_one(write_config, 'password_file = "pw.txt"')
    assert account.password_file == config_dir / "pw.txt"
    assert read_password(config, account) == expected


def test_password_file_with_two_trailing_newlines_is_refused(write_config, config_dir):
    (config_dir / "pw.txt").write_text(f"{SECRET}\n\n", encoding="utf-8")
    config, account = load_one(write_config, 'password_file = "pw.txt"')
    error = password_error(config, account)
    assert error.key == "password_file"
    assert SECRET not in str(error)


def test_password_file_is_read_lazily(write_config, config_dir):
    config, account = load_one(write_config, 'password_file = "later.txt"')
    error = password_error(config, account)
    assert error.key == "password_file"
    assert "cannot read password file" in error.message
    (config_dir / "later.txt").write_text(SECRET)
    assert read_password(config, account) == SECRET


def test_unreadable_password_file(write_config, config_dir):
    (config_dir / "pw.txt").mkdir()  # reading a folder fails even as root
    config, account = load_one(write_config, 'password_file = "pw.txt"')
    assert "cannot read password file" in password_error(config, account).message


def test_password_file_readable_by_others_warns(write_config, config_dir, caplog):
    (config_dir / "pw.txt").write_text(SECRET)
    (config_dir / "pw.txt").chmod(0o644)
    config, account = load_one(write_config, 'password_file = "pw.txt"')
    with caplog.at_level(logging.WARNING, logger="popvault.config"):
        read_password(config, account)
    assert "holds the password of account 'personal' but is readable by group" in caplog.text
    assert SECRET not in caplog.text
    # A daemon reads it on every run: one warning per file and mode is enough.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="popvault.config"):
        read_password(config, account)
    assert caplog.text == ""
    (config_dir / "pw.txt").chmod(0o604)
    with caplog.at_level(logging.WARNING, logger="popvault.config"):
        read_password(config, account)
    assert "mode 0604" in caplog.text


# --- password_command -----------------------------------------------------------------------


def test_password_command_first_line(write_config):
    config, account = load_one(
        write_config, f"password_command = \"printf '{SECRET}\\\\nsecond line\\\\n'\""
    )
    assert account.password_source == "password_command printf ..."
    assert read_password(config, account) == SECRET


def test_password_command_runs_in_the_config_folder(write_config, config_dir, elsewhere):
    (config_dir / "pw.txt").write_text(SECRET + "\n")
    config, account = load_one(write_config, 'password_command = "cat ./pw.txt"')
    assert read_password(config, account) == SECRET


def test_password_command_gets_the_given_environment(write_config):
    config, account = load_one(write_config, 'password_command = "echo \\"$FROM_ENV\\""')
    assert read_password(config, account, environ={"FROM_ENV": SECRET}) == SECRET


@pytest.mark.parametrize(
    "command",
    [
        f"echo {SECRET}; echo 'vault is locked' >&2; exit 3",
        # `set -x` echoes every line the script runs, the password with it.
        f"set -x; PW={SECRET}; echo $PW >&2; exit 3",
        f"echo 'cannot unlock {SECRET[::-1]}{SECRET}' >&2; exit 3",
    ],
)
def test_password_command_failure_shows_the_status_and_neither_stream(write_config, command):
    config, account = load_one(write_config, f'password_command = "{command}"')
    error = password_error(config, account)
    assert error.key == "password_command"
    assert "exited with status 3" in error.message
    assert "run the command yourself" in error.message
    assert SECRET not in str(error)
    assert "vault is locked" not in error.message


def test_password_command_that_prints_nothing(write_config):
    config, account = load_one(write_config, 'password_command = "true"')
    assert "empty" in password_error(config, account).message


def test_password_command_timeout_kills_the_whole_group(write_config, monkeypatch):
    monkeypatch.setattr(_secrets, "PASSWORD_COMMAND_TIMEOUT", 0.3)
    # The grandchild keeps stdout open: only killing the process group ends the wait.
    config, account = load_one(write_config, 'password_command = "sleep 30 & sleep 30"')
    started = time.monotonic()
    error = password_error(config, account)
    assert time.monotonic() - started < 10
    assert "did not finish within 0.3 s" in error.message


# --- inline password ------------------------------------------------------------------------


def test_inline_password(write_config, caplog):
    config, account = load_one(write_config, f'password = "{SECRET}"')
    assert account.password_source == "password (inline)"
    assert read_password(config, account) == SECRET


def test_inline_password_in_a_readable_file_warns(write_config, caplog):
    path = write_config(account_with(f'password = "{SECRET}"'))
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="popvault.config"):
        load(path, environ={})
    assert f"{path} holds an inline password but is readable by group or others" in caplog.text
    assert SECRET not in caplog.text


def test_inline_password_in_a_private_file_does_not_warn(write_config, caplog):
    with caplog.at_level(logging.WARNING, logger="popvault.config"):
        load(write_config(account_with(f'password = "{SECRET}"')), environ={})
    assert caplog.records == []


def test_readable_file_without_inline_password_does_not_warn(write_config, caplog):
    path = write_config(account_with('password_env = "X"'))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="popvault.config"):
        load(path, environ={})
    assert caplog.records == []


@pytest.mark.parametrize("bad", [f"{SECRET}\nPASS x", "line\rbreak", "nul\0byte"])
def test_password_with_a_line_break_is_refused(write_config, bad):
    config, account = load_one(write_config, 'password_env = "MAIL_PW"')
    error = password_error(config, account, {"MAIL_PW": bad})
    assert bad not in str(error)
    assert "line break" in error.message


# --- never shown ----------------------------------------------------------------------------


def test_the_password_never_appears_in_config_or_account_text(write_config):
    config, account = load_one(write_config, f'password = "{SECRET}"')
    for text in (str(config), repr(config), str(account), repr(account), repr(config.accounts)):
        assert SECRET not in text
    assert "**********" not in account.password_source


def test_password_command_text_is_not_shown(write_config):
    config, account = load_one(write_config, f'password_command = "echo {SECRET}"')
    assert SECRET not in repr(config)
    assert SECRET not in account.password_source


def test_password_command_not_found_says_so(write_config):
    config, account = load_one(write_config, 'password_command = "no-such-command-xyz"')
    error = password_error(config, account)
    assert "status 127, a command it names was not found" in error.message
