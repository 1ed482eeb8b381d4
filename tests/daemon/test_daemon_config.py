"""The daemon's configuration keys: every, cron, [daemon]."""

from __future__ import annotations

import pytest

from popvault.config import Schedule, crontab_fields, load
from popvault.config._cron import weekday_names
from popvault.errors import ConfigError

BASE = """
[[accounts]]
name = "personal"
host = "pop.example.org"
username = "alice"
password_env = "PW"
"""


@pytest.fixture
def write(tmp_path):
    def _write(text: str):
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return _write


def error_of(path, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(path, environ=environ or {})
    return caught.value


def test_defaults_without_any_daemon_key(write):
    config = load(write(BASE), environ={})
    assert config.accounts[0].schedule == Schedule(every=900.0)
    assert config.daemon.max_concurrent == 4
    assert config.daemon.shutdown_timeout == 30.0
    assert config.daemon.metrics is None
    assert config.daemon.max_per_host is None


def test_every_and_cron_in_accounts_and_defaults(write):
    text = (
        '[defaults]\nevery = "2m"\n'
        + BASE
        + BASE.replace("personal", "work")
        + 'cron = "0 3 * * 1-5"\n'
    )
    personal, work = load(write(text), environ={}).accounts
    assert personal.schedule == Schedule(every=120.0)
    # The account's own cron replaces the defaults' every: not "both set".
    assert work.schedule == Schedule(every=None, cron="0 3 * * 1-5")
    assert work.schedule.describe() == "cron 0 3 * * 1-5"
    assert personal.schedule.describe() == "every 2m"


def test_both_in_one_account_is_an_error_naming_it(write):
    error = error_of(write(BASE + 'every = "5m"\ncron = "* * * * *"\n'))
    assert (error.account, error.key) == ("personal", "cron")
    assert "not both" in error.message


def test_both_in_defaults_is_an_error_naming_defaults(write):
    error = error_of(write('[defaults]\nevery = "5m"\ncron = "* * * * *"\n' + BASE))
    assert (error.account, error.key) == ("[defaults]", "cron")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"61 * * * *"', "invalid cron"),
        ('"* * * *"', "5 fields"),
        ('"* * * * 8"', "invalid weekday"),
        ('"* * * * mon-"', "invalid"),
    ],
)
def test_a_bad_cron_names_file_account_and_key(write, value, fragment):
    path = write(BASE + f"cron = {value}\n")
    error = error_of(path)
    assert (error.file, error.account, error.key) == (str(path), "personal", "cron")
    assert fragment in error.message


@pytest.mark.parametrize("value", ['"0s"', '"0.5s"', '"soon"', "-3", '"400d"'])
def test_a_bad_interval_is_refused(write, value):
    error = error_of(write(BASE + f"every = {value}\n"))
    assert (error.account, error.key) == ("personal", "every")


def test_daemon_section_and_its_environment_overrides(write):
    path = write(
        '[daemon]\nmax_concurrent = 2\nshutdown_timeout = "5s"\nmetrics = "127.0.0.1:9464"\n' + BASE
    )
    config = load(path, environ={})
    assert (config.daemon.max_concurrent, config.daemon.shutdown_timeout) == (2, 5.0)
    assert config.daemon.metrics == ("127.0.0.1", 9464)
    env = {"POPVAULT_DAEMON__MAX_CONCURRENT": "8", "POPVAULT_DAEMON__METRICS": "localhost:9000"}
    overridden = load(path, environ=env)
    assert overridden.daemon.max_concurrent == 8
    assert overridden.daemon.metrics == ("localhost", 9000)


def test_max_per_host_from_the_file_and_the_environment(write):
    path = write("[daemon]\nmax_per_host = 3\n" + BASE)
    assert load(path, environ={}).daemon.max_per_host == 3
    env = {"POPVAULT_DAEMON__MAX_PER_HOST": "12"}
    assert load(path, environ=env).daemon.max_per_host == 12


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_concurrent = 0", "daemon.max_concurrent"),
        ("max_concurrent = 65", "daemon.max_concurrent"),
        ('shutdown_timeout = "never"', "daemon.shutdown_timeout"),
        ('metrics = "9464"', "daemon.metrics"),
        ('metrics = "[::1]:9464"', "daemon.metrics"),
        ('metrics = "127.0.0.1:70000"', "daemon.metrics"),
        ('interval = "5m"', "daemon.interval"),
        ("max_per_host = 0", "daemon.max_per_host"),
        ("max_per_host = 1001", "daemon.max_per_host"),
        ("max_per_host = true", "daemon.max_per_host"),
        ('max_per_host = "four"', "daemon.max_per_host"),
    ],
)
def test_bad_daemon_keys_are_named(write, text, key):
    error = error_of(write(f"[daemon]\n{text}\n" + BASE))
    assert error.key == key


def test_the_daemon_section_is_known_now(write):
    # Replaces tests/config's "[daemon] is not known yet": it is, but unknown keys in it are not.
    error = error_of(write("[daemon]\ninterval = '15m'\n" + BASE))
    assert error.key == "daemon.interval"
    assert error.message.startswith("unknown key")


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("sat,sun", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("5/1", "sun,fri,sat"),
        ("MON-wed", "mon,tue,wed"),
    ],
)
def test_crontab_weekdays_count_from_sunday(field, names):
    # APScheduler 3 counts from Monday; crontab(5) from Sunday: "1-5" is Monday to Friday.
    assert weekday_names(field) == names


def test_crontab_fields_pass_the_other_fields_through():
    assert crontab_fields("*/15 2 1 6 1") == {
        "minute": "*/15",
        "hour": "2",
        "day": "1",
        "month": "6",
        "day_of_week": "mon",
    }
