"""The heartbeat does not call a lease lost when its run gave it up during the renewal."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from popvault.ledger import AccountHold, Lease, LeaseOwner, LeaseTerms
from popvault.ledger.keeper import LeaseKeeper

OWNER = LeaseOwner("host", 1, "daemon-1")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class RenewingLedger:
    """renew_leases that returns nothing renewed, with ``during`` run while it works."""

    def __init__(self) -> None:
        self.during: Any = None

    def renew_leases(self, leases: list[Lease], ttl: timedelta) -> dict[tuple[str, int], datetime]:
        if self.during is not None:
            self.during()
        return {}


def hold_for(account: str) -> AccountHold:
    lease = Lease(account, OWNER, 7, NOW, NOW + timedelta(seconds=30))
    return AccountHold(None, lease)  # type: ignore[arg-type]


def test_a_lease_released_during_the_renewal_is_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    ledger = RenewingLedger()
    keeper = LeaseKeeper(ledger, LeaseTerms())  # type: ignore[arg-type]
    ended, going = hold_for("ended"), hold_for("going")
    keeper.add(ended, 0.0)
    keeper.add(going, 0.0)
    ledger.during = lambda: keeper.remove(ended)  # its run finished and released it meanwhile
    with caplog.at_level(logging.WARNING, logger="popvault.ledger"):
        keeper.renew_now()
    assert ended.lost is None
    assert going.lost is not None  # not renewed and still kept: lost
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 1
    assert "'going'" in warned[0]
