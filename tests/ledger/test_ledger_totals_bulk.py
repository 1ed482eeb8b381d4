"""archived_totals_by_account: every account's archive totals in one query, as one by one."""

from __future__ import annotations

from ledger_helpers import fill

from popvault.ledger import Ledger


def test_totals_of_every_account_agree_with_each_accounts(ledger: Ledger) -> None:
    fill(ledger, "a", [f"a{n}" for n in range(3)], size=10)
    fill(ledger, "b", [f"b{n}" for n in range(5)], size=7)
    fill(ledger, "c", ["pending"], state="pending", archived_at=None)
    totals = ledger.archived_totals_by_account()
    assert totals == {"a": (3, 30), "b": (5, 35), "c": (0, 0)}
    for name in ("a", "b", "c"):
        assert totals.get(name, (0, 0)) == ledger.archived_totals(name)
