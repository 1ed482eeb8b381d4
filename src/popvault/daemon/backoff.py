"""When a failed account is tried again: backoff chosen from the error (pure functions).

Each policy doubles from its first delay up to its cap; a success resets the
count. The server's own limits come on top: a LOGIN-DELAY (RFC 2449 section
6.5) is a floor under the next login, whatever the schedule or the backoff say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from popvault.errors import (
    AuthError,
    ConfigError,
    CredentialsError,
    InUseError,
    LeaseLost,
    LedgerError,
    LoginDelayError,
    OAuthUnavailable,
    Pop3Error,
    SecurityPolicyError,
    StoreError,
    TemporaryError,
)
from popvault.ledger import AccountBusy

MINUTE: Final = 60.0
HOUR: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Exponential backoff: ``first`` seconds after one failure, doubling, at most ``cap``."""

    reason: str
    first: float
    cap: float
    # True when retrying at the next regular tick is harmless (no server is contacted).
    or_on_schedule: bool = False

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 or more)."""
        if failures < 1:
            return 0.0
        # 2**40 is far past every cap; bounding the exponent avoids float overflow.
        return min(self.cap, self.first * 2.0 ** min(failures - 1, 40))


# A refused password is retried rarely: many providers lock an account after a
# few failed logins, and a daemon must not do that to its user.
CREDENTIALS: Final = Policy("the server refused the credentials", 30 * MINUTE, 24 * HOUR)
# A plain -ERR to a login from a server without response codes (RFC 3206) may be
# the password too: just as slow, without claiming the password is wrong.
UNSURE_LOGIN: Final = Policy(
    "the server refused the login without saying why", 30 * MINUTE, 24 * HOUR
)
# An OAuth refresh refused (the grant revoked or expired: `popvault auth login`),
# or a client the provider does not accept: as slow, since only a person can fix it.
OAUTH_SIGN_IN: Final = Policy(
    "the OAuth sign-in needs `popvault auth login` or a fixed client", 30 * MINUTE, 24 * HOUR
)
#: The policies that wait for a person to check the login.
LOGIN_POLICIES: Final = (CREDENTIALS, UNSURE_LOGIN, OAUTH_SIGN_IN)
# [IN-USE], [SYS/TEMP], [LOGIN-DELAY]: the server asks to come back later.
BUSY: Final = Policy("the mailbox is busy or the server is unavailable", MINUTE, 30 * MINUTE)
# Our own account lock, held by a `popvault run` started by hand: no server was
# contacted, so the next regular tick may try again if it comes before the backoff.
LOCKED: Final = Policy(
    "another popvault process is archiving the account", MINUTE, 30 * MINUTE, or_on_schedule=True
)
# The account's lease passed to another daemon mid-run (it stalled or lost the
# ledger): that daemon finishes the account; this one tries again on schedule.
LEASE_LOST: Final = Policy(
    "the account's lease passed to another popvault daemon",
    MINUTE,
    30 * MINUTE,
    or_on_schedule=True,
)
NETWORK: Final = Policy("network or protocol failure", MINUTE, HOUR)
# The disk, the ledger, the config or a bug of ours: a person has to look.
LOCAL: Final = Policy("local failure (archive, ledger or configuration)", 5 * MINUTE, HOUR)


# The policy of each kind of failure, most specific first (AuthError: see policy_for).
_Kinds = type[BaseException] | tuple[type[BaseException], ...]
_POLICIES: Final[tuple[tuple[_Kinds, Policy], ...]] = (
    (AccountBusy, LOCKED),
    (LeaseLost, LEASE_LOST),
    ((InUseError, TemporaryError, LoginDelayError), BUSY),
    # The authorization server down or busy: retried as a network failure.
    (OAuthUnavailable, NETWORK),
    (CredentialsError, OAUTH_SIGN_IN),
    ((StoreError, LedgerError, ConfigError, SecurityPolicyError), LOCAL),
    (Pop3Error, NETWORK),  # transport, protocol, any other -ERR
)


def policy_for(error: BaseException) -> Policy:
    """The backoff policy for the exception that failed a run (most specific first)."""
    if isinstance(error, AuthError):
        return CREDENTIALS if error.certain else UNSURE_LOGIN
    for kinds, policy in _POLICIES:
        if isinstance(error, kinds):
            return policy
    return LOCAL  # a bug of ours: slowly, never a tight loop


def waits_for_login_fix(reason: str | None) -> bool:
    """Whether a backoff ``reason`` is one that waits for the user to check the login."""
    return reason is not None and any(reason.startswith(p.reason) for p in LOGIN_POLICIES)


def login_delay(capabilities: Mapping[str, Sequence[str]]) -> float | None:
    """Seconds the server wants between logins (RFC 2449 section 6.5), if it said."""
    return _seconds(capabilities.get("LOGIN-DELAY"))


def expires_at_once(capabilities: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``EXPIRE 0``: the server deletes messages once retrieved (RFC 2449 section 6.7)."""
    return _seconds(capabilities.get("EXPIRE")) == 0


def _seconds(arguments: Sequence[str] | None) -> float | None:
    # The first argument is a count (days for EXPIRE, seconds for LOGIN-DELAY);
    # EXPIRE may also say NEVER, and before login either may add USER.
    if not arguments or not arguments[0].isascii() or not arguments[0].isdigit():
        return None
    return float(arguments[0])


@dataclass(frozen=True, slots=True)
class NextRun:
    """The plan after a run: when, how many failures in a row, and why (None: on schedule)."""

    at: datetime | None
    failures: int
    reason: str | None


def plan_next(
    *,
    now: datetime,
    scheduled: datetime | None,
    error: BaseException | None,
    failures: int,
    not_before: datetime | None = None,
    choose: Callable[[BaseException], Policy] = policy_for,
) -> NextRun:
    """The next run of an account after a run that ended at ``now``.

    ``scheduled`` is the account's next regular run; ``error`` what failed this
    run (None: it succeeded); ``failures`` the consecutive failures before it;
    ``not_before`` the server's LOGIN-DELAY floor; ``choose`` picks the
    policy for an error. A failure replaces the schedule by the backoff
    delay; a success returns to the schedule.
    """
    if error is None:
        plan = NextRun(scheduled, 0, None)
    else:
        count = failures + 1
        policy = choose(error)
        at = now + timedelta(seconds=policy.delay(count))
        if policy.or_on_schedule and scheduled is not None:
            at = min(at, scheduled)
        plan = NextRun(at, count, policy.reason)
    if not_before is not None and (plan.at is None or plan.at < not_before):
        reason = "the server's LOGIN-DELAY"
        if plan.reason:
            reason = f"{plan.reason}; {reason}"
        plan = NextRun(not_before, plan.failures, reason)
    return plan
