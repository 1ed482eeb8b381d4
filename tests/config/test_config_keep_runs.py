"""[ledger] keep_runs: 90 days by default, a duration with a unit, or "forever"."""

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


def load(
    tmp_path: Path, ledger: str, environ: dict[str, str] | None = None
) -> config_module.Config:
    file = tmp_path / "config.toml"
    file.write_text(f"[ledger]\n{ledger}\n{ACCOUNT}", encoding="utf-8")
    return config_module.load(file, environ=environ or {})


def test_the_default_is_90_days(tmp_path: Path) -> None:
    assert load(tmp_path, "").keep_runs == 90 * 86400.0


@pytest.mark.parametrize(
    ("text", "seconds"), [('"30d"', 30 * 86400.0), ('"12w"', 12 * 604800.0), ('"forever"', None)]
)
def test_given_values(tmp_path: Path, text: str, seconds: float | None) -> None:
    assert load(tmp_path, f"keep_runs = {text}").keep_runs == seconds


def test_the_environment_overrides_it(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'keep_runs = "30d"', {"POPVAULT_LEDGER__KEEP_RUNS": "forever"})
    assert cfg.keep_runs is None


@pytest.mark.parametrize("text", ['"0d"', '"-5d"', '"90"', "90", '"1.5d"', '"never"', "true"])
def test_a_bad_value_names_the_file_and_the_key(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, f"keep_runs = {text}")
    assert refused.value.key == "ledger.keep_runs"
    assert "config.toml" in str(refused.value)
    assert "keep_runs" in str(refused.value)
