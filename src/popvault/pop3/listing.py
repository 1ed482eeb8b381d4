"""UIDL and LIST listings parsed in bulk, for the common case where every line is plain.

:func:`~popvault.pop3.parsing.parse_uidl_entry` and
:func:`~popvault.pop3.parsing.parse_list_line` parse one line at a time, so
that one malformed line can be skipped and reported; for a 20,000-message
mailbox that is ~15 ms a listing in Python calls. Nearly every server sends
every line in one strict form ("number SP uid", "number SP size"), which the
per-line parsers accept and read back exactly as the split below does. So a
batch of lines is checked against that form with one regular expression, and
then split and converted with C-level calls (~4 ms). A batch (of
:data:`BATCH_LINES`, so that its copies stay small) with any other line
(extra words, a tab, an escaped uid, trailing white space) comes back as None
and the caller parses it line by line: leniency and errors stay the per-line
parsers' alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from popvault.pop3.parsing import MAX_UID_OCTETS

# The strict forms, as the per-line parsers read them: a message number (and a
# size) is what parsing._NUMBER takes, a uid what parsing._UID takes (RFC 1939
# sections 5 and 7), one space between, nothing else on the line. Each line of
# a batch ends in LF here (the batch is joined with LF): a line holding an LF of
# its own would split in two, which the count of fields in _fields catches.
_UIDL_LINES: Final = re.compile(rb"(?:[0-9]{1,19} [\x21-\x7e]{1,%d}\n)*" % MAX_UID_OCTETS)
_LIST_LINES: Final = re.compile(rb"(?:[0-9]{1,19} [0-9]{1,19}\n)*")

# Lines a caller hands over at once: bounds the copies a batch makes (the joined
# octets, their text, the fields) to a few MB whatever the listing's length.
BATCH_LINES: Final = 4096


def uidl_entries(lines: Sequence[bytes]) -> list[tuple[int, str]] | None:
    """``[parse_uidl_entry(line) for line in lines]`` if every line is plain, else None."""
    fields = _fields(lines, _UIDL_LINES)
    if fields is None:
        return None
    return list(zip(map(int, fields[0::2]), fields[1::2], strict=True))


def list_entries(lines: Sequence[bytes]) -> list[tuple[int, int]] | None:
    """``[parse_list_line(line) for line in lines]`` if every line is plain, else None."""
    fields = _fields(lines, _LIST_LINES)
    if fields is None:
        return None
    numbers = list(map(int, fields))
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def _fields(lines: Sequence[bytes], form: re.Pattern[bytes]) -> list[str] | None:
    """The two fields of every line, in order, if every line is in ``form``."""
    joined = b"\n".join(lines) + b"\n" if lines else b""
    if form.fullmatch(joined) is None:
        return None
    # Only ASCII without white space inside a field matched, so split() gives
    # exactly the fields; two a line unless a line held an LF of its own.
    fields = joined.decode("ascii").split()
    return fields if len(fields) == 2 * len(lines) else None
