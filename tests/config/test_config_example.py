"""config.example.toml loads with our own load() and documents every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from popvault.config import default_archive_root, default_ledger_path, load, read_password
from popvault.config._schema import AccountEntry, Settings
from popvault.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def test_example_loads_without_any_secret(elsewhere):
    config = load(EXAMPLE, environ={})
    personal, work, office = config.accounts
    assert (personal.name, personal.security, personal.port) == ("personal", "tls", 995)
    assert personal.password_source == "password_env PERSONAL_PASSWORD"
    assert (work.name, work.security, work.port) == ("work", "starttls", 110)
    assert work.password_command is not None
    assert work.format == "eml"
    # The OAuth account: the m365 preset filled server, mechanism and form; no password.
    assert (office.host, office.port, office.security) == ("outlook.office365.com", 995, "tls")
    assert office.auth == "xoauth2"
    assert office.oauth is not None
    assert office.oauth.xoauth2_two_step
    assert office.oauth.grant == "device"
    assert office.oauth.provider.tenant == "contoso.com"
    assert "contoso.com" in (office.oauth.provider.token_endpoint or "")
    assert office.password is None
    assert office.password_env is None
    # The example leaves the paths to their XDG defaults, out of the config folder.
    assert config.archive_root == default_archive_root({})
    assert config.ledger_url == f"sqlite:///{default_ledger_path({})}"


def test_example_secrets_are_read_only_when_asked(elsewhere):
    config = load(EXAMPLE, environ={})
    with pytest.raises(ConfigError, match="PERSONAL_PASSWORD"):
        read_password(config, config.account("personal"), environ={})
    assert read_password(config, config.account("personal"), environ={"PERSONAL_PASSWORD": "x"})


@pytest.mark.parametrize("key", [*Settings.model_fields, *AccountEntry.model_fields, "url", "root"])
def test_example_documents_every_key(key):
    text = EXAMPLE.read_text(encoding="utf-8")
    # Set ("key = ...") or shown in a comment ("# key = ...", "#   key  = ...", "[key]").
    pattern = rf"^(#\s*)?({key}\s*=|\[\[?{key}\]\]?)"
    assert re.search(pattern, text, re.MULTILINE), f"{key} is not documented in the example"
