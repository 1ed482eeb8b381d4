"""[ledger] lease and lease_heartbeat: defaults, values, a heartbeat not well inside the lease."""

from __future__ import annotations

from pathlib import Path

import pytest

from popvault import config as config_module
from popvault.errors import ConfigError

ACCOUNT = """
[[accounts]]
name = "a"
host = "pop.example.org"
username = "u"
password_env = "POP_PASSWORD"
"""


def load(tmp_path: Path, ledger: str) -> config_module.Config:
    file = tmp_path / "config.toml"
    file.write_text(f"[ledger]\n{ledger}\n{ACCOUNT}", encoding="utf-8")
    return config_module.load(file)


def test_defaults_are_a_30_s_lease_renewed_every_10_s(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert (cfg.lease_ttl, cfg.lease_heartbeat) == (30.0, 10.0)


def test_given_values_are_read(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'lease = "2m"\nlease_heartbeat = "20s"')
    assert (cfg.lease_ttl, cfg.lease_heartbeat) == (120.0, 20.0)


def test_a_short_lease_given_alone_is_checked_against_the_default_heartbeat(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, 'lease = "4s"')
    message = str(refused.value)
    assert "lease_heartbeat (10s) must be at most half of lease (4s)" in message


@pytest.mark.parametrize("heartbeat", ["16s", "30s", "1m"])
def test_a_heartbeat_over_half_the_lease_is_refused(tmp_path: Path, heartbeat: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, f'lease = "30s"\nlease_heartbeat = "{heartbeat}"')
    message = str(refused.value)
    assert "config.toml" in message
    assert "lease_heartbeat" in message


def test_a_lease_that_is_not_a_duration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, 'lease = "soon"')
    assert "lease" in str(refused.value)
    assert "invalid duration" in str(refused.value)
