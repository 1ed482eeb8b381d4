"""What getmail6, fetchmail and mpop had already retrieved: their state files, read.

Each tool keeps the UIDLs (RFC 1939 section 7) of the messages it has
retrieved and left on the server, so that it does not retrieve them again.
``popvault import`` reads that file to learn which of the server's messages
the user already has. The formats, as the tools write them:

* getmail6, ``oldmail-SERVER-PORT-USERNAME`` in its getmail directory
  (:func:`getmail6_file_name`): one line per message, ``UIDL NUL
  unix-seconds LF``, the seconds being the start of the run that first saw
  it. The file belongs to one account; getmail6 writes it after every run,
  empty when it keeps nothing.
* fetchmail, ``~/.fetchids`` (or ``--idfile``): one line per message,
  ``remote-user@poll-name SP UIDL LF``, every account of the rc file in one
  file. The key is the ``user`` of the rc file and the server's ``via``
  name, else its poll name, as written there: no DNS lookup, and no port
  (fetchmail 6.4 ``uid.c``). fetchmail deletes the file rather than leave
  it empty.
* mpop, ``~/.mpop_uidls/USER_at_HOST`` (or ``uidls_file``): comment lines
  (``#``) first, then for each account a line ``SP count SP host SP user``
  followed by that many UIDL lines. mpop writes the header even when it
  keeps nothing; an account with no kept message has no list.

Every reader is strict where the tool is lenient: a line the tool would
skip as malformed is an :class:`~popvault.errors.ImportFileError` naming the
file and the line, so that the caller imports nothing rather than part of a
file it misread. Duplicates collapse to the first; times are aware UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from popvault.errors import ImportFileError
from popvault.importing import SeenUidl
from popvault.redaction import redact

__all__ = [
    "getmail6_file_name",
    "getmail6_uidl_form",
    "read_fetchmail",
    "read_getmail6",
    "read_mpop",
]

# RFC 1939 section 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
_UIDL = re.compile(r"[\x21-\x7e]{1,70}")
# fetchmail reads lines into a 512-octet buffer (POPBUFSIZE), mpop into its
# POP3 line buffer; a longer line is none of theirs, and a binary file given by
# mistake must not be read into memory as one line.
MAX_LINE_OCTETS = 4096
# How much of a bad line an error message quotes.
_QUOTE_CHARS = 120
# The no-entry error names at most this many of the entries the file has.
_ENTRIES_SHOWN = 20
# A line that may hold a password (a tool's rc file given instead of its state
# file) is described, never quoted.
_PASSWORDISH = re.compile(r"\bpass(word)?\b|secret|token", re.IGNORECASE)


# -- reading lines ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    number: int  # 1-based
    text: str  # decoded as UTF-8, undecodable octets kept as surrogates
    raw: bytes  # without the line end


def _lines(path: Path) -> Iterator[_Line]:
    """The file's lines without their ends (LF, or CRLF of a file copied from Windows)."""
    try:
        with path.open("rb") as stream:
            number = 0
            while raw := stream.readline(MAX_LINE_OCTETS + 2):
                number += 1
                body = raw.removesuffix(b"\n").removesuffix(b"\r")
                if len(body) > MAX_LINE_OCTETS:
                    raise _malformed(path, number, body, f"longer than {MAX_LINE_OCTETS} octets")
                yield _Line(number, body.decode("utf-8", "surrogateescape"), body)
    except OSError as error:
        raise ImportFileError(
            f"cannot read {_shown(str(path))}: {error.strerror or error}", path=str(path)
        ) from None


def _shown(text: str) -> str:
    """``text`` safe to show: undecodable octets and control characters visible, secrets out."""
    raw = text.encode("utf-8", "surrogateescape")
    return redact(raw.decode("utf-8", "backslashreplace"))


def _quote(raw: bytes) -> str:
    text = _shown(raw.decode("utf-8", "surrogateescape"))
    if _PASSWORDISH.search(text):
        return "(not quoted: it may hold a password)"
    if len(text) > _QUOTE_CHARS:
        text = text[:_QUOTE_CHARS] + "..."
    return f'"{text}"'


def _malformed(path: Path, number: int, raw: bytes, why: str) -> ImportFileError:
    return ImportFileError(
        f"{_shown(str(path))}, line {number}: {why}: {_quote(raw)}", path=str(path), line=number
    )


def _uidl(path: Path, line: _Line, text: str) -> str:
    """``text`` if it is a UIDL, else the error for ``line``."""
    if not _UIDL.fullmatch(text):
        raise _malformed(
            path, line.number, line.raw, "not a UIDL (RFC 1939: 1 to 70 characters 0x21-0x7E)"
        )
    return text


def _first_of_each(seen: Iterable[SeenUidl]) -> list[SeenUidl]:
    """One entry per UIDL, the first the file names (with its time), in file order."""
    kept: dict[str, SeenUidl] = {}
    for entry in seen:
        kept.setdefault(entry.uidl, entry)
    return list(kept.values())


# -- getmail6 -----------------------------------------------------------------

# getmail6 turns each run of these into one "-" in its state file names
# (_retrieverbases.STRIP_CHAR_RE).
_GETMAIL6_NAME_STRIP = re.compile(r"[/\\:;<>|]+")
_DIGITS = re.compile(r"[0-9]+")


def getmail6_file_name(server: str, port: int, username: str) -> str:
    """The name getmail6 gives a POP3 account's state file in its getmail directory."""
    return _GETMAIL6_NAME_STRIP.sub("-", f"oldmail-{server}-{port}-{username}")


def getmail6_uidl_form(uidl: str) -> str:
    """A server's UIDL as getmail6 records it: each ``/`` becomes ``-``.

    getmail6 keeps ``/`` out of POP3 UIDLs because it marks the old
    ``uidvalidity/folder/uid`` IMAP entries; match server UIDLs to
    :func:`read_getmail6` through this.
    """
    return uidl.replace("/", "-")


def read_getmail6(path: Path) -> list[SeenUidl]:
    """The UIDLs in a getmail6 POP3 state file (``oldmail-SERVER-PORT-USER``), with their times.

    The UIDLs are as getmail6 records them (see :func:`getmail6_uidl_form`).
    An empty file is an empty list: getmail6 writes one when it keeps nothing.
    """
    return _first_of_each(_getmail6_entry(path, line) for line in _lines(path))


def _getmail6_entry(path: Path, line: _Line) -> SeenUidl:
    uidl, nul, seconds = line.text.partition("\0")
    if not nul:
        raise _malformed(path, line.number, line.raw, "no NUL between the UIDL and its time")
    if "/" in uidl:
        # getmail6 writes "/" of a POP3 UIDL as "-"; a "/" is an IMAP folder's entry.
        raise _malformed(path, line.number, line.raw, "a '/' in the UIDL: not a POP3 state file")
    if not _DIGITS.fullmatch(seconds):
        raise _malformed(path, line.number, line.raw, "the time is not whole unix seconds")
    try:
        seen_at = datetime.fromtimestamp(int(seconds), UTC)
    except (OverflowError, OSError, ValueError):
        raise _malformed(path, line.number, line.raw, "the time is out of range") from None
    return SeenUidl(_uidl(path, line, uidl), seen_at)


# -- fetchmail ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Keyed:
    """One UIDL line of a file that holds several accounts."""

    user: str
    host: str
    uidl: str
    line: _Line
    seen_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.user}@{self.host}"


def read_fetchmail(path: Path, *, user: str, host: str, port: int | None = None) -> list[SeenUidl]:
    """The UIDLs a fetchmail ``.fetchids`` file holds for ``user`` at ``host``.

    ``user`` and ``host`` are compared as fetchmail does, ignoring case;
    ``host`` is the name the rc file polls (its ``via``, else the poll name),
    spelt as there: an address stays an address. fetchmail records no port, so
    ``port`` cannot narrow the choice: entries of one user@host on two ports
    are one list, as they are to fetchmail itself. No entry for the account
    is an error that lists the entries the file has.
    """
    del port  # see the docstring: the file has none to compare
    entries = [_fetchmail_entry(path, line) for line in _lines(path)]
    wanted = [e for e in entries if _same(e.user, user) and _same(e.host, host)]
    if not wanted:
        raise _no_entry(path, f"{user}@{host}", entries, "fetchmail")
    return _first_of_each(SeenUidl(_uidl(path, e.line, e.uidl)) for e in wanted)


def _fetchmail_entry(path: Path, line: _Line) -> _Keyed:
    # Split as fetchmail's own reader does: the user may hold "@" and even
    # spaces (Lotus Notes), so the key ends at the first space after the first
    # "@", and its host starts after the last "@" before that space.
    text = line.text.lstrip(" \t")
    at = text.find("@")
    space = text.find(" ", at) if at >= 0 else -1
    if space < 0:
        raise _malformed(path, line.number, line.raw, "not 'user@host UIDL'")
    key, uidl = text[:space].rstrip(" \t"), text[space:].lstrip(" ")
    user, _, host = key.rpartition("@")
    if not user or not host or not uidl or any(c in uidl for c in " \t"):
        raise _malformed(path, line.number, line.raw, "not 'user@host UIDL'")
    return _Keyed(user, host, uidl, line)


def _same(recorded: str, given: str) -> bool:
    return recorded.casefold() == given.casefold()


def _no_entry(path: Path, wanted: str, entries: list[_Keyed], tool: str) -> ImportFileError:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.key] = counts.get(entry.key, 0) + 1
    if not counts:
        has = "it has none"
    else:
        shown = [f"{_shown(key)} ({n})" for key, n in list(counts.items())[:_ENTRIES_SHOWN]]
        more = len(counts) - len(shown)
        has = "it has " + ", ".join(shown) + (f" and {more} more" if more else "")
    return ImportFileError(
        f"{_shown(str(path))}: no {tool} entry for {_shown(wanted)}; {has}", path=str(path)
    )


# -- mpop -----------------------------------------------------------------------

# " count host user": what mpop writes before each account's UIDLs (uidls.c).
_MPOP_LIST = re.compile(r" ([1-9][0-9]*) ([^ ]+) ([^ ]+)")
_MPOP_VERSION = re.compile(r"# This file was generated by mpop version ([0-9]+(?:\.[0-9]+)*)")
# The first mpop whose file may give each UID a time. Its line is read as a
# UIDL and a unix time in either order, separated by one space: a UIDL has no
# space (RFC 1939 section 7: 0x21-0x7E), so that is the only shape a line of
# both can take. (Debian 12 ships mpop 1.4.18: no real file of this form was
# at hand to check it against.)
_MPOP_TIMED = (1, 4, 23)
# A time is taken for one only between 2000 and 2100: a UIDL of digits alone
# beside it must not pass for the time.
_PLAUSIBLE_SECONDS = range(946_684_800, 4_102_444_800)


@dataclass(frozen=True, slots=True)
class _MpopList:
    """One account's list header: how many UIDL lines follow."""

    user: str
    host: str
    count: int
    line: _Line


def read_mpop(path: Path, *, user: str, host: str) -> list[SeenUidl]:
    """The UIDLs an mpop UIDLs file holds for ``user`` at ``host``.

    ``user`` must be as mpop has it; ``host`` is compared ignoring case (mpop
    records the ``host`` of its account as written, no port). A file with no
    list at all is an empty list (mpop writes its header alone when it keeps
    nothing); lists for other accounts only, an error that lists them.
    """
    entries = list(_mpop_entries(path))
    wanted = [e for e in entries if e.user == user and _same(e.host, host)]
    if not wanted and entries:
        raise _no_entry(path, f"{user}@{host}", entries, "mpop")
    return _first_of_each(SeenUidl(_uidl(path, e.line, e.uidl), e.seen_at) for e in wanted)


def _mpop_entries(path: Path) -> Iterator[_Keyed]:
    current: _MpopList | None = None
    found = 0
    in_comments = True
    timed = False
    for line in _lines(path):
        # Comments only lead the file: further on, a "#" starts a UIDL (as
        # mpop's reader has it since 2009).
        if in_comments and line.text.startswith("#"):
            timed = timed or _mpop_timed(line)
            continue
        in_comments = False
        if current is None or found == current.count:
            current, found = _mpop_list(path, line), 0
        elif line.text.startswith(" "):
            raise _too_few(path, current, found)
        elif not line.text:
            raise _malformed(path, line.number, line.raw, "an empty line in a list of UIDLs")
        else:
            found += 1
            uidl, seen_at = _timed_uidl(path, line) if timed else (line.text, None)
            yield _Keyed(current.user, current.host, uidl, line, seen_at)
    if current is not None and found < current.count:
        raise _too_few(path, current, found)


def _mpop_list(path: Path, line: _Line) -> _MpopList:
    match = _MPOP_LIST.fullmatch(line.text)
    if match is None:
        raise _malformed(
            path, line.number, line.raw, "not ' count host user' (a UIDL outside a list?)"
        )
    return _MpopList(match[3], match[2], int(match[1]), line)


def _too_few(path: Path, header: _MpopList, found: int) -> ImportFileError:
    why = f"the list promises {header.count} UIDLs, {found} follow"
    return _malformed(path, header.line.number, header.line.raw, why)


def _mpop_timed(line: _Line) -> bool:
    """Whether this comment line says an mpop that may write per-UID times wrote the file."""
    match = _MPOP_VERSION.match(line.text)
    if match is None:
        return False
    return tuple(int(part) for part in match[1].split(".")) >= _MPOP_TIMED


def _timed_uidl(path: Path, line: _Line) -> tuple[str, datetime | None]:
    """A UIDL line of an mpop ≥ 1.4.23 file: the UIDL alone, or with its time (see _MPOP_TIMED)."""
    parts = line.text.split(" ")
    if len(parts) == 1:
        return line.text, None
    if len(parts) != 2:
        raise _malformed(path, line.number, line.raw, "not a UIDL and its time")
    times = [_plausible_seconds(part) for part in parts]
    if (times[0] is None) == (times[1] is None):
        raise _malformed(path, line.number, line.raw, "cannot tell the UIDL from its time")
    if times[1] is not None:
        return parts[0], times[1]
    return parts[1], times[0]


def _plausible_seconds(text: str) -> datetime | None:
    if not _DIGITS.fullmatch(text) or int(text) not in _PLAUSIBLE_SECONDS:
        return None
    return datetime.fromtimestamp(int(text), UTC)
