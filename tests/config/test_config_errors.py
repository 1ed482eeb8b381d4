"""Every problem is a ConfigError naming the file, the account and the key."""

from __future__ import annotations

import pytest
from config_samples import ACCOUNT

from popvault.config import load
from popvault.errors import ConfigError

OTHER = """
[[accounts]]
name = "work"
host = "pop.example.com"
username = "bob"
password_env = "WORK_PASSWORD"
"""


def with_line(line: str) -> str:
    """ACCOUNT with ``line`` replacing (or added to) the line of the same key."""
    key = line.split("=", maxsplit=1)[0].strip()
    kept = [old for old in ACCOUNT.splitlines() if old.split("=", maxsplit=1)[0].strip() != key]
    return "\n".join([*kept, line]) + "\n"


def load_error(path, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, environ={} if environ is None else environ)
    return info.value


def test_message_format_names_file_account_and_key(write_config):
    path = write_config(f'{ACCOUNT}timeout = "sixty"\n')
    error = load_error(path)
    assert (error.file, error.account, error.key) == (str(path), "personal", "timeout")
    assert str(error) == (
        f"{path}, account 'personal', key 'timeout': invalid duration 'sixty' (use e.g. 60s, 2m)"
    )


def test_missing_file_says_where_and_what_to_do(config_dir):
    error = load_error(config_dir / "absent.toml")
    assert error.file == str(config_dir / "absent.toml")
    assert "no config file at" in error.message
    assert f"`popvault init --config {config_dir / 'absent.toml'}`" in error.message


def test_a_folder_is_not_a_config_file(config_dir):
    assert "is a folder" in load_error(config_dir).message


def test_toml_syntax_error_gives_the_line(write_config):
    error = load_error(write_config('[ledger]\nurl = "x"\nroot = \n'))
    assert "not valid TOML" in error.message
    assert "line 3" in error.message


def test_non_utf8_file(write_config, config_dir):
    path = write_config("")
    path.write_bytes(b'[archive]\nroot = "\xff"\n')
    assert "not UTF-8" in load_error(path).message


def test_misspelt_key_is_named_with_a_suggestion(write_config):
    text = ACCOUNT.replace("username", "usernmae")
    error = load_error(write_config(text))
    assert (error.account, error.key) == ("personal", "usernmae")
    assert "unknown key (did you mean 'username'?)" in error.message


@pytest.mark.parametrize(
    ("text", "account", "key"),
    [
        ('[ledger]\nurll = "x"\n', None, "ledger.urll"),
        ('[archive]\nroute = "x"\n', None, "archive.route"),
        ('[defaults]\ntimeuot = "5s"\n', "[defaults]", "timeuot"),
        ("[defaults]\nname = 'x'\n", "[defaults]", "name"),
        ("verbose = true\n", None, "verbose"),
    ],
)
def test_unknown_keys_everywhere(write_config, text, account, key):
    error = load_error(write_config(text))
    assert (error.account, error.key) == (account, key)
    assert error.message.startswith("unknown key")


def test_unknown_key_in_the_daemon_section(write_config):
    error = load_error(write_config("[daemon]\ninterval = '15m'\n" + ACCOUNT))
    assert error.key == "daemon.interval"
    assert error.message.startswith("unknown key")


def test_accounts_written_as_a_single_table(write_config):
    error = load_error(write_config('[accounts]\nname = "x"\n'))
    assert error.key == "accounts"
    assert "[[accounts]]" in error.message


def test_section_given_as_a_value(write_config):
    error = load_error(write_config('ledger = "sqlite:///x"\n'))
    assert (error.key, error.message) == ("ledger", "must be a table (a [section])")


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        ("timeout = 0", "timeout", "must be more than 0"),
        ("timeout = -5", "timeout", "must be more than 0"),
        ('timeout = "-5s"', "timeout", "invalid duration '-5s'"),
        ("timeout = inf", "timeout", "must be more than 0 and at most 1 day"),
        ("timeout = nan", "timeout", "invalid duration"),
        ('timeout = "2d"', "timeout", "at most 1 day"),
        ("timeout = true", "timeout", "invalid duration True"),
        ('timeout = "60 seconds"', "timeout", "invalid duration"),
        ("port = 0", "port", "invalid port 0"),
        ("port = 65536", "port", "invalid port 65536"),
        ('port = "pop3s"', "port", "invalid port 'pop3s'"),
        ("port = true", "port", "invalid port True"),
        ('security = "ssl"', "security", "'ssl'"),
        (
            'auth = "cram-md5"',
            "auth",
            "'scram-sha-256', 'scram-sha-1', 'xoauth2' or 'oauthbearer', got 'cram-md5'",
        ),
        ('format = "mbox"', "format", "'maildir' or 'eml'"),
        ('retention = "forever"', "retention", "invalid retention 'forever'"),
        ('retention = "0d"', "retention", "must be more than zero"),
        ('retention = "-3d"', "retention", "must be more than zero"),
        ('retention = "14"', "retention", "invalid retention '14'"),
        ('retention = "1.5d"', "retention", "invalid retention"),
        ("retention = 14", "retention", "invalid retention 14"),
        ('retention = "99999999999999w"', "retention", "too long"),
        ('path = "../escape"', "path", "'.' or '..'"),
        ('path = "a/../../b"', "path", "'.' or '..'"),
        ('path = "/srv/mail"', "path", "relative folder"),
        ('path = ""', "path", "must not be empty"),
        ('path = "a\\\\b"', "path", "relative folder"),
        ('host = "pop example org"', "host", "invalid host"),
        ('host = ""', "host", "invalid host"),
        ('username = ""', "username", "one non-empty line"),
        ('username = "alice\\r\\nDELE 1"', "username", "one non-empty line"),
        ("allow_plaintext = 3", "allow_plaintext", "valid boolean"),
        ('ca_file = "missing.pem"', "ca_file", "no such file"),
        ("auth = 1", "auth", "got 1"),
    ],
)
def test_bad_values(write_config, line, key, fragment):
    error = load_error(write_config(with_line(line)))
    assert (error.account, error.key) == ("personal", key)
    assert fragment in error.message


@pytest.mark.parametrize(
    ("replacement", "fragment"),
    [
        ('password_env = "1NOT-A-NAME"', "invalid environment variable name"),
        ('password_file = ""', "one non-empty line"),
        ('password_command = ""', "one non-empty line"),
        ('password = ""', "at least 1"),
    ],
)
def test_bad_password_keys(write_config, replacement, fragment):
    text = ACCOUNT.replace('password_env = "PERSONAL_PASSWORD"', replacement)
    error = load_error(write_config(text))
    assert error.account == "personal"
    assert fragment in error.message


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[ledger]\nurl = "popvault.sqlite3"\n', "ledger.url", "SQLAlchemy URL"),
        ("[ledger]\nurl = 5\n", "ledger.url", "valid string"),
        ('[archive]\nroot = ""\n', "archive.root", "one non-empty line"),
    ],
)
def test_bad_section_values(write_config, text, key, fragment):
    error = load_error(write_config(text))
    assert (error.account, error.key) == (None, key)
    assert fragment in error.message


def test_bad_default_names_the_defaults(write_config):
    error = load_error(write_config(f'[defaults]\ntimeout = "soon"\n{ACCOUNT}'))
    assert (error.account, error.key) == ("[defaults]", "timeout")


def test_entry_without_a_valid_name_is_named_by_index(write_config):
    bad = ACCOUNT.replace('name = "personal"', 'name = "no spaces please"')
    error = load_error(write_config(OTHER + bad))
    assert (error.account, error.key) == ("accounts[1]", "name")
    assert "invalid account name 'no spaces please'" in error.message


@pytest.mark.parametrize("name", [".", "..", "x" * 65, ""])
def test_invalid_names(write_config, name):
    error = load_error(write_config(ACCOUNT.replace('"personal"', f'"{name}"')))
    assert (error.account, error.key) == ("accounts[0]", "name")


def test_missing_name(write_config):
    error = load_error(write_config(ACCOUNT.replace('name = "personal"\n', "")))
    assert (error.account, error.key, error.message) == (
        "accounts[0]",
        "name",
        "required key is missing",
    )


@pytest.mark.parametrize("key", ["host", "username"])
def test_missing_required_key(write_config, key):
    text = "\n".join(line for line in ACCOUNT.splitlines() if not line.startswith(key))
    error = load_error(write_config(text))
    assert (error.account, error.key) == ("personal", key)
    assert "[defaults]" in error.message


def test_several_problems_are_all_reported(write_config):
    error = load_error(write_config(f'{ACCOUNT}timeout = "x"\nport = 0\n[scheduler]\n'))
    assert (error.account, error.key) == ("personal", "port")
    assert "also account 'personal', key 'timeout': invalid duration 'x'" in error.message
    assert "also key 'scheduler': unknown section" in error.message


def test_duplicate_names(write_config):
    error = load_error(write_config(ACCOUNT + ACCOUNT.replace("path", "x")))
    assert (error.account, error.key) == ("personal", "name")
    assert "duplicate" in error.message


@pytest.mark.parametrize(
    ("first", "second"),
    [("mail", "mail"), ("mail", "mail/work"), ("mail/work", "mail"), ("Mail", "mail")],
)
def test_overlapping_folders(write_config, first, second):
    text = f'{ACCOUNT}path = "{first}"\n{OTHER}path = "{second}"\n'
    error = load_error(write_config(text))
    assert (error.account, error.key) == ("work", "path")
    assert "overlaps account 'personal'" in error.message


def test_default_path_overlapping_an_explicit_one(write_config):
    error = load_error(write_config(f'{ACCOUNT}{OTHER}path = "personal/work"\n'))
    assert (error.account, error.key) == ("work", "path")


def test_no_password_source(write_config):
    text = ACCOUNT.replace('password_env = "PERSONAL_PASSWORD"\n', "")
    error = load_error(write_config(text))
    assert error.account == "personal"
    assert "set exactly one of password, password_env, password_file, password_command" in (
        error.message
    )
    assert "found none" in error.message


def test_several_password_sources(write_config):
    error = load_error(write_config(f'{ACCOUNT}password_file = "pw.txt"\n'))
    assert (error.account, error.key) == ("personal", "password_file")
    assert "found password_env, password_file" in error.message


def test_plain_without_allow_plaintext_is_refused_at_load(write_config):
    error = load_error(write_config(f'{ACCOUNT}security = "plain"\n'))
    assert (error.account, error.key) == ("personal", "security")
    assert "allow_plaintext = true" in error.message


def test_bad_environment_value_names_the_variable_not_the_file(write_config):
    error = load_error(write_config(ACCOUNT), {"POPVAULT_DEFAULTS__TIMEOUT": "sixty"})
    assert (error.variable, error.file, error.account, error.key) == (
        "POPVAULT_DEFAULTS__TIMEOUT",
        None,
        None,
        None,
    )
    assert "invalid duration 'sixty'" in error.message


def test_unparsable_environment_json(write_config):
    error = load_error(write_config(ACCOUNT), {"POPVAULT_ACCOUNTS": "not json"})
    assert "POPVAULT_" in error.message


def test_errors_never_quote_a_password(write_config):
    secret = "hunter2-very-secret"
    cases = [
        ACCOUNT.replace("password_env", "pasword").replace("PERSONAL_PASSWORD", secret),
        f"{ACCOUNT.replace('password_env', 'password').replace('PERSONAL_PASSWORD', secret)}"
        f'port = "x"\n',
        f'[defaults]\npassword = ["{secret}"]\n',
        f'[ledger]\nurl = ["postgresql://u:{secret}@h/db"]\n',
        f'[ledger]\nurl = "no-scheme-{secret}"\n',
        ACCOUNT.replace("password_env", "password_command").replace(
            "PERSONAL_PASSWORD", f"{secret}\\n"
        ),
        f"{ACCOUNT}[[accounts]]\nname = 'x'\npassword = 12345678\n",
    ]
    for text in cases:
        error = load_error(write_config(text.replace("12345678", "1234567890123")))
        assert secret not in str(error), text
        assert "1234567890123" not in str(error), text
