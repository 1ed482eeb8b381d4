"""OAuth 2.0 accounts in the config (issue 10): presets, overrides, and errors naming the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from popvault.config import load, read_client_secret, read_password
from popvault.errors import ConfigError

# The config folder's fixture (tests/config/conftest.py) writes a config and returns its
# path. Its type is restated here: "from conftest import" finds another folder's
# conftest when the whole suite runs.
WriteConfig = Callable[[str], Path]

OFFICE = """
[[accounts]]
name = "office"
provider = "m365"
username = "alice@contoso.com"
oauth_client_id = "client-1"
"""


def error_of(
    write_config: WriteConfig, text: str, environ: dict[str, str] | None = None
) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        load(write_config(text), environ=environ or {})
    return raised.value


def test_a_preset_fills_the_server_the_mechanism_and_the_form(write_config: WriteConfig) -> None:
    (office,) = load(write_config(OFFICE), environ={}).accounts
    assert (office.host, office.port, office.security) == ("outlook.office365.com", 995, "tls")
    assert office.auth == "xoauth2"
    assert office.oauth is not None
    assert office.oauth.xoauth2_two_step
    assert office.oauth.grant == "device"
    assert office.oauth.client_id == "client-1"
    assert office.oauth.provider.tenant == "organizations"
    assert "POP.AccessAsUser.All" in " ".join(office.oauth.provider.scopes)
    assert "offline_access" in office.oauth.provider.scopes


@pytest.mark.parametrize(
    ("provider", "host", "two_step", "grant"),
    [
        ("gmail", "pop.gmail.com", False, "browser"),  # no device flow for mail at Google
        ("outlook", "outlook.office365.com", True, "device"),
        ("m365", "outlook.office365.com", True, "device"),
    ],
)
def test_every_preset(
    write_config: WriteConfig, provider: str, host: str, two_step: bool, grant: str
) -> None:
    text = OFFICE.replace('"m365"', f'"{provider}"')
    (account,) = load(write_config(text), environ={}).accounts
    assert account.host == host
    assert account.oauth is not None
    assert account.oauth.xoauth2_two_step is two_step
    assert account.oauth.grant == grant


def test_every_preset_value_can_be_overridden(write_config: WriteConfig, config_dir: Path) -> None:
    text = (
        OFFICE
        + """
host = "pop.example.org"
security = "starttls"
oauth_tenant = "contoso.com"
oauth_scopes = ["a", "b"]
oauth_token_endpoint = "https://login.example.org/token"
oauth_token_file = "tokens/office.json"
xoauth2_two_step = false
auth = "oauthbearer"
oauth_grant = "browser"
"""
    )
    (office,) = load(write_config(text), environ={}).accounts
    assert (office.host, office.port, office.security) == ("pop.example.org", 110, "starttls")
    assert office.auth == "oauthbearer"
    assert office.oauth is not None
    assert office.oauth.provider.scopes == ("a", "b")
    assert office.oauth.provider.token_endpoint == "https://login.example.org/token"
    assert "contoso.com" in (office.oauth.provider.authorization_endpoint or "")
    assert office.oauth.token_file == config_dir / "tokens" / "office.json"
    assert not office.oauth.xoauth2_two_step
    assert office.oauth.grant == "browser"


def test_the_token_file_defaults_to_the_xdg_state_folder(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    (office,) = load(write_config(OFFICE), environ={"XDG_STATE_HOME": str(state)}).accounts
    assert office.oauth is not None
    assert office.oauth.token_file == state / "popvault" / "tokens" / "office.json"


def test_a_server_of_ones_own_without_a_provider(write_config: WriteConfig) -> None:
    text = """
[[accounts]]
name = "own"
host = "mail.example.org"
username = "me"
oauth_client_id = "c"
oauth_token_endpoint = "http://127.0.0.1:8080/token"
oauth_device_endpoint = "http://127.0.0.1:8080/device"
"""
    (own,) = load(write_config(text), environ={}).accounts
    assert own.oauth is not None
    assert own.oauth.grant == "device"
    assert own.auth == "xoauth2"
    assert not own.oauth.xoauth2_two_step


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('password = "x"', "password", "not both"),
        ('password_env = "X"', "password_env", "not both"),
        ('auth = "scram-sha-256"', "auth", "needs a password"),
        ('auth = "user"', "auth", "needs a password"),
        (
            'oauth_token_endpoint = "http://login.example.org/token"',
            "oauth_token_endpoint",
            "https",
        ),
        ('oauth_grant = "client-credentials"', "oauth_grant", "client secret"),
        ('oauth_grant = "magic"', "oauth_grant", ""),
        (
            'oauth_client_secret = "s"\noauth_client_secret_env = "S"',
            "oauth_client_secret_env",
            "at most one",
        ),
        ('oauth_private_key_file = "k.pem"', "oauth_private_key_file", "certificate"),
        ('oauth_certificate_file = "missing.pem"', "oauth_certificate_file", "no such file"),
    ],
)
def test_bad_oauth_settings_name_the_key(
    write_config: WriteConfig, extra: str, key: str, words: str
) -> None:
    error = error_of(write_config, OFFICE + extra + "\n")
    assert error.account == "office"
    assert error.key == key
    assert words in str(error)


def test_an_oauth_account_needs_a_client_id(write_config: WriteConfig) -> None:
    error = error_of(write_config, OFFICE.replace('oauth_client_id = "client-1"\n', ""))
    assert (error.account, error.key) == ("office", "oauth_client_id")
    assert "README" in str(error)


def test_an_unknown_provider_names_the_key(write_config: WriteConfig) -> None:
    error = error_of(write_config, OFFICE.replace('"m365"', '"yahoo"'))
    assert error.key == "provider"


def test_gmail_has_no_device_flow_and_says_so(write_config: WriteConfig) -> None:
    text = OFFICE.replace('"m365"', '"gmail"') + 'oauth_grant = "device"\n'
    error = error_of(write_config, text)
    assert error.key == "oauth_grant"
    assert "browser" in str(error)


def test_an_oauth_mechanism_without_oauth_settings(write_config: WriteConfig) -> None:
    text = """
[[accounts]]
name = "plain"
host = "mail.example.org"
username = "me"
password = "pw"
auth = "xoauth2"
"""
    error = error_of(write_config, text)
    assert (error.key, error.account) == ("auth", "plain")
    assert "provider" in str(error)


def test_an_oauth_key_on_a_password_account(write_config: WriteConfig) -> None:
    text = """
[[accounts]]
name = "plain"
host = "mail.example.org"
username = "me"
password = "pw"
oauth_tenant = "contoso.com"
"""
    error = error_of(write_config, text)
    assert error.key == "oauth_tenant"


def test_defaults_give_one_way_to_sign_in_and_an_account_takes_the_other(
    write_config: WriteConfig,
) -> None:
    text = """
[defaults]
provider = "m365"
oauth_client_id = "org-client"

[[accounts]]
name = "alice"
username = "alice@contoso.com"

[[accounts]]
name = "legacy"
host = "mail.example.org"
username = "bob"
password = "pw"
"""
    alice, legacy = load(write_config(text), environ={}).accounts
    assert alice.oauth is not None
    assert alice.oauth.client_id == "org-client"
    assert legacy.oauth is None
    assert legacy.auth == "auto"


def test_a_password_in_defaults_does_not_reach_an_oauth_account(write_config: WriteConfig) -> None:
    text = """
[defaults]
password_env = "MAIL_PASSWORD"

[[accounts]]
name = "office"
provider = "outlook"
username = "alice@outlook.com"
oauth_client_id = "c"
"""
    (office,) = load(write_config(text), environ={}).accounts
    assert office.oauth is not None
    assert office.password_env is None
    with pytest.raises(ConfigError):
        read_password(load(write_config(text), environ={}), office, environ={})


def test_plain_security_names_the_token_as_what_goes_unencrypted(write_config: WriteConfig) -> None:
    error = error_of(write_config, OFFICE + 'security = "plain"\n')
    assert error.key == "security"
    assert "access token" in str(error)


@pytest.mark.parametrize("kind", ["inline", "env", "file", "command"])
def test_the_client_secret_is_read_from_each_source_only_when_asked(
    write_config: WriteConfig, config_dir: Path, kind: str
) -> None:
    secret = "cl1ent-Secr3t"
    (config_dir / "secret").write_text(secret + "\n")
    (config_dir / "secret").chmod(0o600)
    line = {
        "inline": f'oauth_client_secret = "{secret}"',
        "env": 'oauth_client_secret_env = "CLIENT_SECRET"',
        "file": 'oauth_client_secret_file = "secret"',
        "command": 'oauth_client_secret_command = "cat secret"',
    }[kind]
    config = load(write_config(OFFICE + line + "\n"), environ={})
    (office,) = config.accounts
    assert secret not in repr(office)
    assert read_client_secret(config, office, environ={"CLIENT_SECRET": secret}) == secret


def test_no_client_secret_is_none(write_config: WriteConfig) -> None:
    config = load(write_config(OFFICE), environ={})
    assert read_client_secret(config, config.accounts[0], environ={}) is None
