"""Happy paths of load(): defaults, every key, merging, path resolution."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from config_samples import ACCOUNT

from popvault.config import Config, Retention, load
from popvault.errors import ConfigError


def test_minimal_account_gets_every_default(write_config, config_dir):
    config = load(write_config(ACCOUNT), environ={"HOME": "/home/alice"})
    account = config.account("personal")
    assert config.file == config_dir / "config.toml"
    # The XDG state and data folders, not the config folder (see test_config_defaults.py).
    assert config.ledger_url == "sqlite:////home/alice/.local/state/popvault/popvault.sqlite3"
    assert config.archive_root == Path("/home/alice/.local/share/popvault/archive")
    assert (account.host, account.port, account.security) == ("pop.example.org", 995, "tls")
    assert (account.username, account.auth, account.format) == (
        "alice@example.org",
        "auto",
        "maildir",
    )
    assert account.timeout == 60.0
    assert account.path == "personal"
    assert account.retention == Retention(mode="keep")
    assert account.ca_file is None
    assert account.allow_plaintext is False
    assert account.password_source == "password_env PERSONAL_PASSWORD"


def test_every_key_set(write_config, config_dir):
    (config_dir / "ca.pem").write_text("not parsed here\n")
    text = """
[ledger]
url = "sqlite:///db/ledger.sqlite3"
[archive]
root = "/srv/mail"
[[accounts]]
name = "work.main-2"
host = "192.0.2.7"
port = 1995
security = "starttls"
username = "bob"
password_file = "secret.txt"
auth = "apop"
ca_file = "ca.pem"
allow_plaintext = true
timeout = "2m"
format = "eml"
path = "work/main"
retention = "14d"
"""
    config = load(write_config(text), environ={})
    account = config.accounts[0]
    assert config.ledger_url == f"sqlite:///{config_dir}/db/ledger.sqlite3"
    assert config.archive_root == Path("/srv/mail")
    assert account == dataclasses.replace(
        account,
        name="work.main-2",
        host="192.0.2.7",
        port=1995,
        security="starttls",
        username="bob",
        auth="apop",
        ca_file=config_dir / "ca.pem",
        allow_plaintext=True,
        timeout=120.0,
        format="eml",
        path="work/main",
        retention=Retention(mode="after", after=timedelta(days=14)),
        password_file=config_dir / "secret.txt",
    )
    assert account.password_source == f"password_file {config_dir}/secret.txt"


@pytest.mark.parametrize(
    ("security", "extra", "port"),
    [("tls", "", 995), ("starttls", "", 110), ("plain", "allow_plaintext = true", 110)],
)
def test_port_defaults_by_security(write_config, security, extra, port):
    config = load(write_config(f'{ACCOUNT}security = "{security}"\n{extra}\n'), environ={})
    assert config.accounts[0].port == port


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ('"60s"', 60.0),
        ('"2m"', 120.0),
        ('"1.5s"', 1.5),
        ('"1h"', 3600.0),
        ('"90"', 90.0),
        ("45", 45.0),
        ("0.25", 0.25),
    ],
)
def test_timeout_values(write_config, value, seconds):
    config = load(write_config(f"{ACCOUNT}timeout = {value}\n"), environ={})
    assert config.accounts[0].timeout == seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("keep", Retention(mode="keep")),
        ("delete", Retention(mode="delete")),
        ("14d", Retention(mode="after", after=timedelta(days=14))),
        ("36h", Retention(mode="after", after=timedelta(hours=36))),
        ("90m", Retention(mode="after", after=timedelta(minutes=90))),
        ("45s", Retention(mode="after", after=timedelta(seconds=45))),
        ("2w", Retention(mode="after", after=timedelta(weeks=2))),
    ],
)
def test_retention_values(write_config, value, expected):
    config = load(write_config(f'{ACCOUNT}retention = "{value}"\n'), environ={})
    assert config.accounts[0].retention == expected


def test_relative_paths_follow_the_config_folder_not_the_cwd(write_config, config_dir, elsewhere):
    (config_dir / "ca.pem").write_text("x")
    text = f"""
[ledger]
url = "sqlite:///state/ledger.sqlite3?timeout=5"
[archive]
root = "../mail"
{ACCOUNT}ca_file = "ca.pem"
"""
    write_config(text)
    config = load(Path("..") / "conf" / "config.toml", environ={})
    assert config.file == config_dir.resolve() / "config.toml"
    assert config.ledger_url == f"sqlite:///{config_dir}/state/ledger.sqlite3?timeout=5"
    assert config.archive_root == config_dir.parent / "mail"
    assert config.accounts[0].ca_file == config_dir / "ca.pem"
    assert not (elsewhere / "mail").exists()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/popvault/ledger.sqlite3",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql+psycopg://popvault@db.example.org/popvault",
    ],
)
def test_absolute_and_non_file_urls_are_kept(write_config, url):
    config = load(write_config(f'[ledger]\nurl = "{url}"\n'), environ={})
    assert config.ledger_url == url


def test_tilde_means_home(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(write_config('[archive]\nroot = "~/Mail"\n'), environ={})
    assert config.archive_root == tmp_path / "home" / "Mail"


def test_defaults_apply_unless_the_account_sets_the_key(write_config):
    text = """
[defaults]
host = "pop.example.org"
username = "shared"
timeout = "30s"
password_env = "SHARED_PASSWORD"
format = "eml"
[[accounts]]
name = "a"
[[accounts]]
name = "b"
timeout = 5
password_command = "pass show b"
"""
    a, b = load(write_config(text), environ={}).accounts
    assert (a.host, a.username, a.timeout, a.format) == ("pop.example.org", "shared", 30.0, "eml")
    assert a.password_env == "SHARED_PASSWORD"
    assert b.timeout == 5.0
    assert b.format == "eml"
    # A password key in the account replaces the defaults' password key (not "two sources").
    assert (b.password_env, b.password_command) == (None, "pass show b")


def test_zero_accounts_is_a_valid_config(write_config):
    config = load(write_config("[archive]\nroot = 'archive'\n"), environ={})
    assert config.accounts == ()


def test_empty_file_is_valid_with_defaults(write_config):
    config = load(write_config(""), environ={"HOME": "/home/alice"})
    assert config.archive_root == Path("/home/alice/.local/share/popvault/archive")


def test_account_lookup(write_config):
    config = load(write_config(ACCOUNT), environ={})
    assert config.account("personal").name == "personal"
    with pytest.raises(ConfigError, match=r"no account named 'nope' \(configured: personal\)"):
        config.account("nope")


def test_path_is_normalised(write_config):
    config = load(write_config(f'{ACCOUNT}path = "mail//personal/"\n'), environ={})
    assert config.accounts[0].path == "mail/personal"


def test_nested_but_distinct_folders_are_fine(write_config):
    text = f"""{ACCOUNT}path = "mail/personal"
[[accounts]]
name = "work"
host = "h"
username = "u"
password_env = "W"
path = "mail/personal-old"
"""
    assert len(load(write_config(text), environ={}).accounts) == 2


def test_config_and_account_are_frozen(write_config):
    config = load(write_config(ACCOUNT), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.accounts[0].host = "evil.example"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.archive_root = Path("/")  # type: ignore[misc]
    assert isinstance(config, Config)


def test_config_repr_hides_the_database_password(write_config):
    url = "postgresql+psycopg://popvault:db-s3cret@db.example.org/popvault"
    config = load(write_config(f'[ledger]\nurl = "{url}"\n'), environ={})
    assert config.ledger_url == url
    assert "db-s3cret" not in repr(config)
    assert "popvault:***@db.example.org" in str(config)
