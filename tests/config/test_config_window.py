"""max_sessions_per_run (issue 12 part 2) and the refusal of Gmail's recent: mode with deletion."""

from __future__ import annotations

import pytest
from config_samples import ACCOUNT

from popvault.config import load
from popvault.errors import ConfigError

RECENT = ACCOUNT.replace('username = "alice@example.org"', 'username = "recent:alice@gmail.com"')


def load_error(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    return info.value


def test_max_sessions_per_run_defaults_to_100(write_config):
    (account,) = load(write_config(ACCOUNT), environ={}).accounts
    assert account.max_sessions_per_run == 100


def test_max_sessions_per_run_comes_from_defaults_or_the_account(write_config):
    text = f"[defaults]\nmax_sessions_per_run = 7\n{ACCOUNT}"
    text += ACCOUNT.replace('"personal"', '"other"') + "max_sessions_per_run = 1\n"
    personal, other = load(write_config(text), environ={}).accounts
    assert (personal.max_sessions_per_run, other.max_sessions_per_run) == (7, 1)


@pytest.mark.parametrize("value", ["0", "10001", "-3", '"many"', "2.5"])
def test_max_sessions_per_run_out_of_bounds_names_the_key(write_config, value):
    path = write_config(f"{ACCOUNT}max_sessions_per_run = {value}\n")
    error = load_error(path)
    assert (error.file, error.account, error.key) == (str(path), "personal", "max_sessions_per_run")


def test_max_sessions_per_run_bounds_are_inclusive(write_config):
    for value in (1, 10_000):
        config = load(write_config(f"{ACCOUNT}max_sessions_per_run = {value}\n"), environ={})
        assert config.accounts[0].max_sessions_per_run == value


@pytest.mark.parametrize("retention", ["delete", "14d"])
def test_recent_mode_with_a_deleting_retention_is_refused(write_config, retention):
    path = write_config(f'{RECENT}retention = "{retention}"\n')
    error = load_error(path)
    assert (error.file, error.account, error.key) == (str(path), "personal", "retention")
    assert "recent:" in error.message
    assert f'retention = "{retention}"' in error.message
    assert 'set retention = "keep"' in error.message
    assert str(error).startswith(f"{path}, account 'personal', key 'retention': ")


def test_recent_mode_refusal_sees_a_retention_from_defaults(write_config):
    path = write_config(f'[defaults]\nretention = "delete"\n{RECENT}')
    error = load_error(path)
    assert (error.account, error.key) == ("personal", "retention")


@pytest.mark.parametrize("username", ["RECENT:alice@gmail.com", "Recent:alice@gmail.com"])
def test_recent_mode_is_recognised_in_any_case(write_config, username):
    text = ACCOUNT.replace('"alice@example.org"', f'"{username}"') + 'retention = "delete"\n'
    assert load_error(write_config(text)).key == "retention"


def test_recent_mode_with_keep_loads_and_says_so(write_config):
    (account,) = load(write_config(f'{RECENT}retention = "keep"\n'), environ={}).accounts
    assert account.recent_mode
    assert account.retention.mode == "keep"
    (plain,) = load(write_config(f'{ACCOUNT}retention = "delete"\n'), environ={}).accounts
    assert not plain.recent_mode


def test_a_username_that_only_contains_recent_is_not_recent_mode(write_config):
    text = ACCOUNT.replace('"alice@example.org"', '"alice.recent:x@example.org"')
    (account,) = load(write_config(f'{text}retention = "delete"\n'), environ={}).accounts
    assert not account.recent_mode
