"""The archive on disk: Maildir or EML, written crash-safely.

::

    store = open_store("maildir", Path("/srv/mail"), "alice/personal")
    with store.begin(received_at=now) as writer:
        for chunk in chunks:
            writer.write(chunk)
        sealed = writer.seal()      # durable in a temp file; record it as pending
        writer.commit()             # published under sealed.relpath, folder fsynced

This package imports only the standard library and :mod:`popvault.errors`.
Every :class:`OSError` becomes a :class:`~popvault.errors.StoreError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from popvault.store.base import Fingerprint, SealedMessage, Store, Writer
from popvault.store.eml import EmlStore
from popvault.store.maildir import MaildirStore

__all__ = ["Fingerprint", "SealedMessage", "Store", "Writer", "open_store"]


def open_store(
    kind: Literal["maildir", "eml"],
    root: Path,
    folder: str,
    *,
    create_root: bool = True,
) -> Store:
    """The store for one account: format ``kind`` in ``<root>/<folder>``.

    ``root`` must be absolute; ``folder`` is relative, may contain ``/``, never
    ``.`` or ``..``. Nothing is created until the first message is written.
    Then a missing root is created (with its missing parents, mode ``0700``),
    unless ``create_root`` is false: then it is a :class:`StoreError`, for
    setups where a missing root means an unmounted disk.
    """
    if kind == "maildir":
        return MaildirStore(root, folder, create_root=create_root)
    if kind == "eml":
        return EmlStore(root, folder, create_root=create_root)
    raise ValueError(f"unknown archive format {kind!r}: expected 'maildir' or 'eml'")
