"""EML: one ``.eml`` file per message in ``<root>/<folder>/YYYY/MM``, bytes as received.

The year and month come from the message's ``Date:`` header (RFC 5322 section
3.6.1), read from the header block while the message streams past; a missing,
unparsable or absurd date falls back to the archive time. Temp files live in
``<root>/<folder>/.tmp`` (a dot folder, so mail tools that scan the tree skip it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parsedate_to_datetime

from popvault.store.base import BaseStore, Writer, list_dir, utc

# RFC 5322 sets no limit on the header block (only 998 octets per line,
# section 2.1.1); 64 KiB holds the headers of any ordinary message, and
# beyond it we stop looking so that a hostile header cannot grow memory.
HEADER_LIMIT = 64 * 1024

# The empty line that ends the header block (RFC 5322 section 2.1), with CRLF
# or, from a sloppy server, a bare LF.
_BLANK_LINE = re.compile(rb"\n\r?\n")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A Date: up to a day ahead of the archive time is clock skew or a time zone
# written wrongly; anything later is nonsense and must not make a folder.
_FUTURE_SLACK = timedelta(days=1)

_YEAR = re.compile(r"\d{4}")
_MONTH = re.compile(r"\d{2}")


class HeaderSniffer:
    """Keeps the start of a message until its header block is complete (or too large)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk of the message; cheap once the header block is over."""
        if self.done:
            return
        start = len(self._buffer)
        self._buffer += chunk[: HEADER_LIMIT + 1 - start]
        end = self._header_end(start)
        if end is not None:
            del self._buffer[end:]
            self.done = True
        elif len(self._buffer) > HEADER_LIMIT:
            # Keep only whole lines, so that a cut Date: line is not misread.
            del self._buffer[self._buffer.rfind(b"\n", 0, HEADER_LIMIT) + 1 :]
            self.done = True

    def _header_end(self, start: int) -> int | None:
        """Where the header block ends in the buffer, if its empty line has arrived."""
        if self._buffer[:1] == b"\n" or self._buffer[:2] == b"\r\n":
            return 0  # no header fields at all
        # Back up two octets: the empty line may have begun in the previous chunk.
        found = _BLANK_LINE.search(self._buffer, max(0, start - 2))
        return None if found is None else found.start() + 1

    def header_date(self) -> datetime | None:
        """The first ``Date:`` field of the header block, parsed; None if absent or bad."""
        fields = BytesHeaderParser(policy=compat32).parsebytes(bytes(self._buffer))
        value = fields.get("Date")
        if value is None:
            return None
        try:
            return parsedate_to_datetime(str(value))
        except (TypeError, ValueError, IndexError, OverflowError):
            return None


def folder_date(header_date: datetime | None, received_at: datetime) -> datetime:
    """The UTC time that files a message: its Date: if plausible, else ``received_at``.

    A date without a zone (``-0000``, RFC 5322 section 3.3) is taken as UTC.
    Before 1970 or more than a day after ``received_at`` is not plausible.
    """
    received_at = utc(received_at)
    if header_date is None:
        return received_at
    if header_date.utcoffset() is None:
        header_date = header_date.replace(tzinfo=UTC)
    try:
        when = header_date.astimezone(UTC)
    except OverflowError:  # e.g. year 9999 plus a time zone
        return received_at
    if when < _EPOCH or when > received_at + _FUTURE_SLACK:
        return received_at
    return when


class EmlWriter(Writer):
    """Writes one message byte for byte; files it by its Date: when sealed."""

    def __init__(self, store: EmlStore, received_at: datetime) -> None:
        self._token = secrets.token_hex(16)  # 128 random bits: names cannot collide
        super().__init__(root=store.root, tmp_path=store.tmp_dir / f"{self._token}.tmp")
        self._store = store
        self._received_at = utc(received_at)
        self._headers = HeaderSniffer()
        self._month = ""

    def _consume(self, chunk: bytes) -> None:
        self._headers.feed(chunk)
        self._emit(chunk)

    def _choose_relpath(self, size: int) -> str:
        when = folder_date(self._headers.header_date(), self._received_at)
        self._month = when.strftime("%Y/%m")
        return f"{self._store.folder}/{self._month}/{when:%Y%m%dT%H%M%SZ}-{self._token}.eml"

    def _prepare_publish(self) -> None:
        self._store.ensure_folder(self._month)


class EmlStore(BaseStore):
    """``.eml`` files under ``<root>/<folder>/YYYY/MM``, temp files in ``.tmp``."""

    tmp_name = ".tmp"

    def begin(self, *, received_at: datetime) -> EmlWriter:
        """Start writing one message; ``received_at`` (aware) is the fallback date."""
        utc(received_at)  # reject a naive time before touching the disk
        self.ensure_layout(self.tmp_name)
        return EmlWriter(self, received_at)

    def iter_files(self) -> Iterator[str]:
        """Relpaths of every ``YYYY/MM/*.eml`` file (never the temp folder)."""
        for year in list_dir(self.path, files=False):
            if not _YEAR.fullmatch(year):
                continue
            for month in list_dir(self.path / year, files=False):
                if not _MONTH.fullmatch(month):
                    continue
                for name in list_dir(self.path / year / month, files=True):
                    if name.endswith(".eml"):
                        yield f"{self.folder}/{year}/{month}/{name}"
