"""The backoff policy: pure functions, checked case by case and with hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popvault.daemon import backoff
from popvault.daemon.backoff import (
    BUSY,
    CREDENTIALS,
    LOCAL,
    LOCKED,
    NETWORK,
    UNSURE_LOGIN,
    Policy,
    expires_at_once,
    login_delay,
    plan_next,
    policy_for,
    waits_for_login_fix,
)
from popvault.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DatabaseUnavailable,
    InUseError,
    LoginDelayError,
    LoginRefused,
    Pop3Timeout,
    RemoteProtocolError,
    SecurityPolicyError,
    ServerError,
    StoreError,
    TemporaryError,
    TLSError,
)
from popvault.ledger import AccountBusy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("error", "policy"),
    [
        (AuthError("invalid login", code="AUTH"), CREDENTIALS),
        # A plain -ERR from a server without response codes: just as slow, not as sure.
        (AuthError("invalid login", certain=False), UNSURE_LOGIN),
        # The server announced codes and did not say [AUTH]: the ordinary backoff.
        (LoginRefused("message is damaged", command="PASS ***"), NETWORK),
        (InUseError("locked", code="IN-USE"), BUSY),
        (TemporaryError("later", code="SYS/TEMP"), BUSY),
        (LoginDelayError("too soon", code="LOGIN-DELAY"), BUSY),
        (AccountBusy("a", 123), LOCKED),
        (ConnectError("refused"), NETWORK),
        (Pop3Timeout("no answer"), NETWORK),
        (TLSError("bad certificate"), NETWORK),
        (RemoteProtocolError("garbage"), NETWORK),
        (ServerError("UIDL refused"), NETWORK),
        (SecurityPolicyError("no STLS"), LOCAL),
        (StoreError("disk full"), LOCAL),
        (DatabaseUnavailable("locked"), LOCAL),
        (ConfigError("no such variable"), LOCAL),
        (RuntimeError("a bug"), LOCAL),
    ],
)
def test_policy_is_chosen_from_the_error(error, policy):
    assert policy_for(error) is policy


def test_the_delays_the_design_asks_for():
    assert (CREDENTIALS.delay(1), CREDENTIALS.delay(2), CREDENTIALS.delay(99)) == (
        1800,
        3600,
        86400,
    )
    assert (BUSY.delay(1), BUSY.delay(2), BUSY.delay(99)) == (60, 120, 1800)
    assert (NETWORK.delay(1), NETWORK.delay(99)) == (60, 3600)
    assert (LOCAL.delay(1), LOCAL.delay(99)) == (300, 3600)
    assert CREDENTIALS.delay(0) == 0


@given(
    first=st.floats(min_value=0.1, max_value=1e4),
    factor=st.floats(min_value=1, max_value=1e3),
    failures=st.integers(min_value=1, max_value=10_000),
)
def test_delays_double_until_the_cap_and_never_pass_it(first, factor, failures):
    policy = Policy("test", first, first * factor)
    delay, later = policy.delay(failures), policy.delay(failures + 1)
    assert first <= delay <= policy.cap
    assert later == min(policy.cap, delay * 2) or later == policy.cap


def test_a_success_returns_to_the_schedule_and_resets_the_count():
    scheduled = NOW + timedelta(minutes=15)
    plan = plan_next(now=NOW, scheduled=scheduled, error=None, failures=5)
    assert (plan.at, plan.failures, plan.reason) == (scheduled, 0, None)


def test_a_refused_password_waits_long_even_with_a_short_schedule():
    plan = plan_next(
        now=NOW, scheduled=NOW + timedelta(seconds=1), error=AuthError("no"), failures=0
    )
    assert plan.at == NOW + timedelta(minutes=30)
    assert plan.failures == 1
    assert plan.reason == CREDENTIALS.reason
    again = plan_next(now=NOW, scheduled=None, error=AuthError("no"), failures=plan.failures)
    assert again.at == NOW + HOUR


def test_a_transient_error_retries_sooner_than_a_long_schedule():
    plan = plan_next(now=NOW, scheduled=NOW + 24 * HOUR, error=InUseError("x"), failures=0)
    assert plan.at == NOW + timedelta(minutes=1)


def test_our_own_lock_retries_at_the_next_tick_when_that_is_sooner():
    tick = NOW + timedelta(seconds=5)
    assert plan_next(now=NOW, scheduled=tick, error=AccountBusy("a", 1), failures=0).at == tick
    late = NOW + 24 * HOUR
    assert plan_next(now=NOW, scheduled=late, error=AccountBusy("a", 1), failures=0).at == (
        NOW + timedelta(minutes=1)
    )


@given(
    seconds_to_tick=st.integers(min_value=1, max_value=10**6),
    floor_seconds=st.integers(min_value=0, max_value=10**6),
    failures=st.integers(min_value=0, max_value=50),
    failed=st.booleans(),
)
def test_login_delay_is_a_floor_under_every_plan(seconds_to_tick, floor_seconds, failures, failed):
    floor = NOW + timedelta(seconds=floor_seconds)
    plan = plan_next(
        now=NOW,
        scheduled=NOW + timedelta(seconds=seconds_to_tick),
        error=TemporaryError("x") if failed else None,
        failures=failures,
        not_before=floor,
    )
    assert plan.at is not None
    assert plan.at >= floor
    assert plan.at >= NOW
    assert plan.failures == (failures + 1 if failed else 0)
    if plan.at == floor and floor_seconds > seconds_to_tick and not failed:
        assert plan.reason is not None
        assert "LOGIN-DELAY" in plan.reason


def test_capabilities_are_read_per_rfc_2449():
    assert login_delay({"LOGIN-DELAY": ["900"]}) == 900
    assert login_delay({"LOGIN-DELAY": ["900", "USER"]}) == 900
    assert login_delay({"LOGIN-DELAY": []}) is None
    assert login_delay({}) is None
    assert expires_at_once({"EXPIRE": ["0"]})
    assert not expires_at_once({"EXPIRE": ["NEVER"]})
    assert not expires_at_once({"EXPIRE": ["30"]})
    assert not expires_at_once({})
    assert backoff.HOUR == 3600


def test_only_the_login_policies_wait_for_a_person():
    assert waits_for_login_fix(CREDENTIALS.reason)
    assert waits_for_login_fix(UNSURE_LOGIN.reason + "; the server's LOGIN-DELAY")
    assert not waits_for_login_fix(NETWORK.reason)
    assert not waits_for_login_fix(None)
    assert UNSURE_LOGIN.delay(1) == CREDENTIALS.delay(1)
