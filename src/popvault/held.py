"""``popvault held``: the server copies popvault will not delete until told, and releasing them.

A message is held when what the server sent did not match what it listed
(see :func:`popvault.sync._check_sizes`): the archive has what the server
sent, the server may still have the real message, so retention leaves its
copy alone. Releasing a hold is the user's word that the archived copy is
the message; retention then applies to it like to any other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from popvault.config import Account
from popvault.ledger import HeldMessage, Ledger


@dataclass(frozen=True)
class AccountHolds:
    """One account's held messages."""

    account: str
    held: list[HeldMessage]


def list_holds(ledger: Ledger, accounts: Sequence[Account]) -> list[AccountHolds]:
    """The held messages of each account, oldest first."""
    return [AccountHolds(account.name, ledger.held(account.name)) for account in accounts]


def release(ledger: Ledger, account: Account, uidls: Sequence[str]) -> int:
    """Release the holds of ``account`` (only those under ``uidls`` if any); returns how many."""
    if not uidls:
        return ledger.release_holds(account.name)
    wanted = set(uidls)
    keys = [message.key for message in ledger.held(account.name) if message.uidl in wanted]
    return ledger.release_holds(account.name, keys) if keys else 0


def render_text(holds: Sequence[AccountHolds]) -> str:
    """One line per account, then one per held message."""
    lines = []
    for entry in holds:
        lines.append(f"{entry.account}: {len(entry.held)} server copy(ies) held")
        lines += [f"  {describe(message)}" for message in entry.held]
    return "\n".join(lines) if lines else "no accounts"


def describe(message: HeldMessage) -> str:
    """A held message in one line: its UIDL, its archived file, and why it is held."""
    name = message.uidl if message.occurrence == 1 else f"{message.uidl} (#{message.occurrence})"
    return f"UIDL {name!r}, archived as {message.path}: {message.reason}"


def render_json(holds: Sequence[AccountHolds]) -> str:
    """A JSON list of ``{"name", "held": [{uidl, occurrence, path, server_size, ...}]}``."""
    return json.dumps(
        [
            {"name": entry.account, "held": [_message_dict(m) for m in entry.held]}
            for entry in holds
        ],
        indent=2,
    )


def _message_dict(message: HeldMessage) -> dict[str, object]:
    return {
        "uidl": message.uidl,
        "occurrence": message.occurrence,
        "path": message.path,
        "server_size": message.server_size,
        "received_size": message.received_size,
        "reason": message.reason,
        "held_at": message.held_at.isoformat(),
    }
