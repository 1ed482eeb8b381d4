"""The cyclic garbage collector held off while a row object per message is built.

A session's plan and the ledger's mailbox-wide reads (the diff, the retained
list) build a few objects per listed message: ~200k for 20,000 messages, a
million for 100,000, none of them garbage. Every 700 such allocations start a
collection, and the older generations' ones walk the whole heap (SQLAlchemy's
included): on a 20,000-message no-op run that was ~40% of the planning CPU
(0.45 s with collection, 0.26 s without), a third of a 100k-message diff.
Reference counting still frees everything as usual; only cycles made
meanwhile wait for the next collection. Depends on nothing of popvault's.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cycle collector off for the block, back on after if it was on.

    Process-wide: a thread that pauses it while another already has it
    paused leaves it to that one to turn back on.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
