"""The duration parsers on their own: any valid spelling, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popvault.config import Retention, parse_retention, parse_timeout

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(count=st.integers(min_value=1, max_value=10**6), unit=st.sampled_from(sorted(UNITS)))
def test_retention_count_and_unit(count, unit):
    expected = Retention(mode="after", after=timedelta(seconds=count * UNITS[unit]))
    assert parse_retention(f"{count}{unit}") == expected


@given(count=st.integers(max_value=0), unit=st.sampled_from(sorted(UNITS)))
def test_retention_zero_or_negative_is_refused(count, unit):
    with pytest.raises(ValueError, match="more than zero"):
        parse_retention(f"{count}{unit}")


@given(seconds=st.integers(min_value=1, max_value=86_400))
def test_timeout_spellings_agree(seconds):
    assert parse_timeout(seconds) == parse_timeout(str(seconds)) == parse_timeout(f"{seconds}s")


def outcome(text: str) -> float | str:
    try:
        return parse_timeout(text)
    except ValueError as exc:
        return str(exc)


@given(text=st.text(max_size=12))
def test_timeout_accepts_only_durations(text):
    result = outcome(text)
    if isinstance(result, str):
        assert result.startswith("invalid duration")
    else:
        assert 0 < result <= 86_400


def test_retention_dataclass_checks_itself():
    with pytest.raises(ValueError, match="exactly when"):
        Retention(mode="keep", after=timedelta(days=1))
    with pytest.raises(ValueError, match="positive"):
        Retention(mode="after", after=timedelta(0))
