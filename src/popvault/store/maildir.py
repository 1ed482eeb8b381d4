"""Maildir: one file per message in ``<root>/<folder>/new``, written through ``tmp``.

The layout and names follow the Maildir convention (https://cr.yp.to/proto/maildir.html):
a message is written under a unique name in ``tmp/`` and appears in ``new/``
only when complete. Lines end in LF in a Maildir, so the CRLF line endings of
POP3 (RFC 1939 section 3) are converted while streaming; every other byte is
kept as received.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import secrets
from collections.abc import Iterator
from datetime import datetime

from popvault.store import durable
from popvault.store.base import BaseStore, Fingerprint, Writer, list_dir, utc
from popvault.store.lineends import known_crlf_only

# A process-wide delivery counter: with the pid it keeps two names from the
# same microsecond apart inside one process (the "Q" part of the name).
_deliveries = itertools.count(1)


# A CR that no LF follows (the end of the text is not an LF either).
_BARE_CR = re.compile(rb"\r(?!\n)")


def crlf_to_lf(data: bytes, *, no_bare_cr: bool = False) -> bytes:
    """``data`` with every CRLF turned into LF; a bare CR or bare LF stays as it is.

    ``no_bare_cr``: the caller knows every CR of ``data`` is followed by an
    LF. ``bytes.replace`` pays for every match (a 100 MB message of 78-octet
    lines has 1.3 million: 164 ms). Without a bare CR, deleting every CR is
    the same conversion: ``translate`` takes 55 ms, and the search for a bare
    CR, when the caller does not know, 45 ms more.
    """
    if b"\r" not in data:
        return data
    if no_bare_cr or _BARE_CR.search(data) is None:
        return data.translate(None, b"\r")
    return data.replace(b"\r\n", b"\n")


class CrlfToLf:
    """Converts CRLF to LF across chunk boundaries; bare CR and bare LF are kept.

    A CR at the end of a chunk is held back until the next chunk shows whether
    an LF follows it; :meth:`finish` releases a CR that ended the message.
    """

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, chunk: bytes) -> bytes:
        """The converted form of ``chunk``, given everything fed before it."""
        # The fetch judged this very chunk (lineends); cutting a first LF or a
        # last CR off it below leaves every other CR followed by its LF.
        no_bare_cr = known_crlf_only(chunk)
        head = b""
        if self._held_cr:
            self._held_cr = False
            if chunk[:1] == b"\n":
                head, chunk = b"\n", chunk[1:]
            elif chunk:
                head = b"\r"
            else:
                self._held_cr = True
        if chunk[-1:] == b"\r":
            self._held_cr, chunk = True, chunk[:-1]
        return head + crlf_to_lf(chunk, no_bare_cr=no_bare_cr)

    def finish(self) -> bytes:
        """The bytes still held back at the end of the message."""
        held, self._held_cr = self._held_cr, False
        return b"\r" if held else b""


@functools.cache
def _host_name() -> str:
    """This machine's name, asked once per process (a system call per message adds up)."""
    return os.uname().nodename


def unique_name(received_at: datetime, *, host: str | None = None) -> str:
    """A Maildir unique name: ``<secs>.M<usec>P<pid>Q<n>R<random>.<host>``.

    The host name has ``/`` and ``:`` escaped as ``\\057`` and ``\\072``: ``/``
    cannot appear in a file name and ``:`` starts the Maildir info suffix.
    """
    when = utc(received_at)
    seconds = int(when.timestamp())
    host = _host_name() if host is None else host
    host = host.replace("/", "\\057").replace(":", "\\072")
    counter = next(_deliveries)
    return f"{seconds}.M{when.microsecond}P{os.getpid()}Q{counter}R{secrets.token_hex(8)}.{host}"


class MaildirWriter(Writer):
    """Writes one message into ``tmp/`` with LF line endings, publishes into ``new/``."""

    def __init__(self, store: MaildirStore, name: str) -> None:
        super().__init__(root=store.root, tmp_path=store.tmp_dir / name)
        self._store = store
        self._name = name
        self._lines = CrlfToLf()

    def _consume(self, chunk: bytes) -> None:
        self._emit(self._lines.feed(chunk))

    def _finish(self) -> None:
        self._emit(self._lines.finish())

    def _choose_relpath(self, size: int) -> str:
        # ",S=<size>" lets readers know the size without a stat (a Dovecot and
        # Courier extension of the convention); the size is of the stored bytes.
        return f"{self._store.folder}/new/{self._name},S={size}"


class MaildirStore(BaseStore):
    """A Maildir at ``<root>/<folder>`` with ``tmp``, ``new`` and ``cur`` made on first use."""

    # (mtime of cur/, NAME -> file name in cur/): see _cur_index.
    _cur_cache: tuple[int, dict[str, str]] | None = None

    def begin(self, *, received_at: datetime) -> MaildirWriter:
        """Start writing one message; ``received_at`` (aware) goes into its unique name."""
        name = unique_name(received_at)
        self.ensure_layout("tmp", "new", "cur")
        return MaildirWriter(self, name)

    def fingerprint(self) -> Fingerprint:
        """A sink that hashes a message as a Maildir stores it (LF line ends)."""
        lines = CrlfToLf()
        return Fingerprint(lines.feed, lines.finish)

    def locate(self, relpath: str) -> str:
        """A message published in ``new/`` that a mail reader moved to ``cur/``.

        Readers move a message they have seen from ``new/NAME`` to
        ``cur/NAME:2,FLAGS`` (the Maildir convention; ":" never occurs in our
        names, whose host part escapes it). The content is unchanged, so the
        ledger's size and SHA-256 still hold for the moved file.
        """
        head, sep, name = relpath.rpartition("/new/")
        if not sep or head != self.folder or (self.path / "new" / name).exists():
            return relpath
        moved = self._cur_index().get(name)
        if moved is None:
            # Folder timestamps are coarse (a kernel tick): a miss lists cur/ afresh.
            moved = self._cur_index(fresh=True).get(name)
        return f"{self.folder}/cur/{moved}" if moved is not None else relpath

    def _cur_index(self, *, fresh: bool = False) -> dict[str, str]:
        """``NAME`` -> ``NAME:2,FLAGS`` for ``cur/``, listed again when ``cur/`` changed.

        One listing serves every lookup until the folder's mtime moves, so
        verifying an archive a reader has moved into ``cur/`` stays linear.
        """
        cur = self.path / "cur"
        with durable.os_errors("inspect", cur):
            try:
                stamp = cur.stat().st_mtime_ns
            except FileNotFoundError:
                return {}
        if fresh or self._cur_cache is None or self._cur_cache[0] != stamp:
            index = {found.split(":", 1)[0]: found for found in list_dir(cur, files=True)}
            self._cur_cache = (stamp, index)
        return self._cur_cache[1]

    def canonical(self, relpath: str) -> str:
        """``cur/NAME:2,FLAGS`` -> ``new/NAME``, the name the message was published under."""
        head, sep, name = relpath.rpartition("/cur/")
        if not sep or head != self.folder:
            return relpath
        return f"{self.folder}/new/{name.split(':', 1)[0]}"

    def iter_files(self) -> Iterator[str]:
        """Relpaths of the messages in ``new/`` and ``cur/`` (a mail reader moves them there)."""
        for sub in ("new", "cur"):
            for name in list_dir(self.path / sub, files=True):
                yield f"{self.folder}/{sub}/{name}"
