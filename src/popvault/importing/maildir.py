"""Adopting a Maildir another tool wrote: which server message is which file, by headers.

getmail6, fetchmail (through its MDA) and mpop each leave a Maildir of what
they fetched. ``popvault import maildir`` matches the server's messages to
those files from ``TOP n 0`` (the header section), the ``LIST`` size and the
``UIDL`` alone, so that no body is downloaded again; what matches is recorded
and the next run fetches only the rest. This module is the matching, pure
where it can be: :func:`scan_maildir` reads each file's header section (never
a body into memory), :func:`adopt_plan` decides, and only for a file that is
the one candidate of a server message does it read the body, in blocks, to
count its line ends (:func:`measure_body`). The ledger and the server are the
caller's.

The rules, each chosen to refuse rather than guess:

* **The key is Message-ID + Date**, both present, one of each (RFC 5322
  section 3.6: at most one of each). Message-ID is compared without its
  whitespace (folding may split it) and inside its ``<>``; Date is compared as
  the instant it names, in UTC (``email.utils``), or, when it does not parse,
  as its text with whitespace collapsed. A message without the key is
  *unmatched*: it is downloaded by the next run.
* **One server message to one file.** Two server messages with the same key,
  two files with the same key, or a UIDL the server lists twice: *ambiguous*,
  with the candidate files, never matched.
* **Headers that tools do not rewrite must agree**: From, Sender, Reply-To,
  To, Cc, Message-ID, Date, In-Reply-To and References, compared without
  whitespace. Delivery tools add fields at the top (Return-Path, Delivered-To,
  Received, X-getmail-retrieved-from-mailbox, Status) and getmail6 rewrites
  Return-Path and refolds long fields (Python's email package), which only
  moves whitespace; Subject is left out because a spam filter in an MDA chain
  may tag it. A key match whose fields differ is *ambiguous*.
* **Sizes must fit.** A file's size is not the server's: tools add header
  fields and store LF line ends where the server counts CRLF (RFC 1939
  section 11). So the header sections are set aside and the bodies compared:
  ``LIST size - TOP header section`` (line ends counted as CRLF) must equal the
  file's body either as stored or with every bare LF counted as CRLF, or 2
  octets off (a server that ends an unended last line, or a header-only
  message whose empty line only one side has). ``check_sizes=False`` skips
  this, for servers whose LIST sizes are estimates (``trust_list_sizes``).

Which files: ``cur/`` and ``new/`` of the Maildir and, by default, of each of
its Maildir++ subfolders (``.Name/``, Courier and Dovecot layout), because a
filter (procmail, maildrop, Sieve) may have filed a fetched message there and
it is archived all the same. ``tmp/`` never: a file there is a delivery that
did not finish. Hidden files and anything but a regular file are skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO

from popvault.errors import ImportFileError

#: The largest header section read from a file. RFC 5322 section 2.1.1 keeps a
#: line under 998 octets and real header sections are a few KB (a long Received
#: chain with DKIM and ARC seals: 20 to 50 KB); 1 MiB is 20 times that. A file
#: with no empty line in its first MiB is no message a tool delivered, or one we
#: cannot key without holding it.
MAX_HEADER_SECTION = 1024 * 1024
# Header sections are read in blocks this size: most fit in the first one.
_HEADER_BLOCK = 64 * 1024
# Bodies are read in blocks this size to count line ends, never held whole.
_BODY_BLOCK = 1024 * 1024

#: Header fields that delivery tools leave alone (see the module docstring),
#: lower case; their values, without whitespace, make :attr:`HeaderFacts.digest`.
STABLE_FIELDS = frozenset(
    {"from", "sender", "reply-to", "to", "cc", "message-id", "date", "in-reply-to", "references"}
)
# A server that ends a last line the file left unended, or a header-only message
# whose empty line only one side has: the bodies may differ by one CRLF.
_BODY_SLACK = (-2, 0, 2)
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_MSG_ID = re.compile(rb"<[^<>]*>")

Key = tuple[str, str]


# -- header sections (pure) ----------------------------------------------------


def header_section_length(data: bytes | bytearray, *, searched: int = 0) -> int | None:
    """Octets of ``data`` up to and including its first empty line; None if it has none.

    RFC 5322 section 2.1: the header section ends at the first empty line.
    CRLF and bare LF line ends both count (Maildir files keep LF).
    ``searched``: the first octets are known to hold no empty line (read
    block by block, only the new block and the two octets before it are
    searched).
    """
    if searched < 2:  # the first two octets are still to be searched: a blank first line
        for blank in (b"\n", b"\r\n"):
            if data.startswith(blank):
                return len(blank)
    start = max(0, searched - 2)
    ends = [
        at + len(blank) for blank in (b"\n\n", b"\n\r\n") if (at := data.find(blank, start)) >= 0
    ]
    return min(ends) if ends else None


def crlf_octets(data: bytes) -> int:
    """The octets of ``data`` with every bare LF counted as CRLF, as POP3 sizes count."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    """What a header section says about a message, for matching.

    ``message_id`` is the one Message-ID's ``<...>`` without whitespace;
    ``date_raw`` the one Date field's text (whitespace collapsed) and ``date``
    the instant it names, in UTC (None when it does not parse); either is None
    when the field is missing, empty or repeated (``problem`` says which).
    ``digest`` is a SHA-256 over :data:`STABLE_FIELDS`. ``octets`` is the
    header section's length as given, empty line included; ``crlf_octets``
    the same with each line end counted as CRLF.
    """

    message_id: str | None
    date_raw: str | None
    date: datetime | None
    digest: str
    octets: int
    crlf_octets: int
    problem: str | None = None

    @property
    def key(self) -> Key | None:
        """Message-ID and Date (the instant in UTC, else the text), or None without both."""
        if self.message_id is None or self.date_raw is None:
            return None
        return self.message_id, self.date.isoformat() if self.date else self.date_raw


def header_fields(section: bytes) -> list[tuple[str, bytes]]:
    """``(lower-case name, unfolded value)`` of each field, in order.

    RFC 5322 section 2.2: a line that starts with a space or a tab continues
    the field before it (folding). A line without a colon (an mbox ``From``
    line, garbage) belongs to no field and is skipped.
    """
    fields: list[tuple[str, bytes]] = []
    for line in section.splitlines():
        if line[:1] in (b" ", b"\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + b" " + line.strip())
            continue
        raw_name, colon, raw_value = line.partition(b":")
        field = raw_name.rstrip(b" \t")  # RFC 5322 section 4.5.3: WSP may precede the colon
        # A field name holds no whitespace: "From a@b Mon Jan  1 10:00:00" is an mbox line.
        if colon and field and not _WHITESPACE.search(field):
            fields.append((field.lower().decode("latin-1"), raw_value.strip()))
    return fields


def header_facts(data: bytes) -> HeaderFacts:
    """The :class:`HeaderFacts` of the header section at the start of ``data``.

    ``data`` may be a whole message or a ``TOP n 0`` reply; anything after the
    first empty line is not looked at.
    """
    section = data[: header_section_length(data) or len(data)]
    fields = header_fields(section)
    message_id, id_problem = _one_value(fields, "message-id")
    date_raw, date_problem = _one_value(fields, "date")
    if message_id is not None:
        found = _MSG_ID.search(message_id)
        message_id = found.group() if found else message_id
    return HeaderFacts(
        message_id=_text(_WHITESPACE.sub(b"", message_id)) if message_id is not None else None,
        date_raw=_text(date_raw) if date_raw is not None else None,
        date=_parse_date(_text(date_raw)) if date_raw is not None else None,
        digest=_digest(fields),
        octets=len(section),
        crlf_octets=crlf_octets(section),
        problem=id_problem or date_problem,
    )


def _one_value(fields: list[tuple[str, bytes]], name: str) -> tuple[bytes | None, str | None]:
    """The value of the one field ``name`` (whitespace collapsed), or None and why not."""
    values = {_WHITESPACE.sub(b" ", v).strip() for n, v in fields if n == name} - {b""}
    if len(values) == 1:
        return values.pop(), None
    shown = name.title().replace("-Id", "-ID")
    return None, f"no {shown}" if not values else f"{len(values)} different {shown} fields"


def _text(value: bytes) -> str:
    # Header octets are ASCII by RFC 5322; 8-bit ones (RFC 6532) are decoded the
    # same way on both sides, so any decoding that never fails and loses nothing does.
    return value.decode("utf-8", "backslashreplace")


def _parse_date(text: str) -> datetime | None:
    """The instant a Date field names, in UTC; None when it does not parse."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    # RFC 5322 section 3.3: -0000 is UTC with the local offset unknown; the
    # email package returns it naive.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _digest(fields: list[tuple[str, bytes]]) -> str:
    """SHA-256 of the stable fields in order, each without whitespace (refolding moves it)."""
    digest = hashlib.sha256()
    for name, value in fields:
        if name in STABLE_FIELDS:
            digest.update(name.encode("ascii", "replace") + b":" + _WHITESPACE.sub(b"", value))
            digest.update(b"\n")
    return digest.hexdigest()


# -- the files -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaildirFile:
    """One message file: where it is, its size, and its header section's facts.

    ``relpath`` is relative to the Maildir (``cur/...``, ``.Sent/new/...``).
    ``delivered_at`` is when the tool delivered it, from its name (see
    :func:`delivery_time`), or None.
    """

    path: Path
    relpath: str
    size: int
    headers: HeaderFacts
    delivered_at: datetime | None = None


# The Maildir specification (cr.yp.to/proto/maildir.html) names a file
# "time.unique.host[:2,flags]", time in seconds since the epoch; Dovecot and
# mpop keep that, getmail6 too ("1700000000.M12P34.host"). Before 1996 or far
# ahead is no such time.
_NAME_TIME = re.compile(r"([0-9]{9,10})\.")
_EARLIEST_DELIVERY = 820_454_400  # 1996-01-01, before Maildir existed
_LATEST_DELIVERY = 4_102_444_800  # 2100-01-01


def delivery_time(name: str) -> datetime | None:
    """When a Maildir file was delivered, from the time its name starts with (UTC)."""
    found = _NAME_TIME.match(name)
    if found is None or not _EARLIEST_DELIVERY <= int(found[1]) < _LATEST_DELIVERY:
        return None
    return datetime.fromtimestamp(int(found[1]), UTC)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file that could not be read as a message, and why."""

    path: Path
    reason: str


@dataclass(frozen=True, slots=True)
class MaildirScan:
    """What :func:`scan_maildir` found: the message files, and the files it could not read."""

    files: tuple[MaildirFile, ...]
    unreadable: tuple[Unreadable, ...]


def scan_maildir(root: Path, *, subfolders: bool = True) -> MaildirScan:
    """Every message file of the Maildir ``root``, by its header section only.

    ``cur/`` and ``new/`` of ``root`` and, with ``subfolders``, of each
    Maildir++ subfolder ``.Name/`` (see the module docstring), in a stable
    order. A file whose header section cannot be read goes to
    :attr:`MaildirScan.unreadable`. Raises
    :class:`~popvault.errors.ImportFileError` when ``root`` is no Maildir.
    """
    root = Path(root)
    if not any((root / sub).is_dir() for sub in ("cur", "new")):
        raise ImportFileError(
            f"{root}: not a Maildir: it has no cur/ or new/ folder", path=str(root)
        )
    files: list[MaildirFile] = []
    unreadable: list[Unreadable] = []
    for path in _message_paths(root, subfolders=subfolders):
        try:
            files.append(read_maildir_file(path, root))
        except ImportFileError as exc:
            unreadable.append(Unreadable(path, str(exc)))
    return MaildirScan(tuple(files), tuple(unreadable))


def _message_paths(root: Path, *, subfolders: bool) -> Iterator[Path]:
    folders = [root, *(_subfolders(root) if subfolders else [])]
    for folder in folders:
        for sub in ("new", "cur"):
            yield from _regular_files(folder / sub)


def _subfolders(root: Path) -> list[Path]:
    """Maildir++ subfolders: ``.Name`` folders of ``root`` with a cur/ or new/ of their own."""
    found = [
        Path(entry.path)
        for entry in _entries(root)
        if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
    ]
    return [folder for folder in found if any((folder / s).is_dir() for s in ("cur", "new"))]


def _regular_files(folder: Path) -> list[Path]:
    return [
        Path(entry.path)
        for entry in _entries(folder)
        if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
    ]


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except FileNotFoundError:
        return []  # a Maildir may lack new/ (or cur/) until something is delivered
    except OSError as exc:
        raise ImportFileError(
            f"{folder}: cannot list the folder: {exc.strerror}", path=str(folder)
        ) from exc


def read_maildir_file(path: Path, root: Path) -> MaildirFile:
    """One file's size and header facts; only its header section is read."""
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            section = read_header_section(stream, path)
    except OSError as exc:
        raise ImportFileError(
            f"{path}: cannot read the file: {exc.strerror}", path=str(path)
        ) from exc
    relpath = path.relative_to(root).as_posix()
    return MaildirFile(path, relpath, size, header_facts(section), delivery_time(path.name))


def read_header_section(stream: BinaryIO, path: Path, *, block_size: int = _HEADER_BLOCK) -> bytes:
    """The header section from the start of ``stream``, read ``block_size`` octets at a time.

    Stops at the first empty line (included); what follows is never read
    past the block it is in. Raises :class:`~popvault.errors.ImportFileError`
    (naming ``path``) past :data:`MAX_HEADER_SECTION` octets without one.
    """
    data = bytearray()
    while (block := stream.read(block_size)) != b"":
        searched = len(data)
        data += block
        found = header_section_length(data, searched=searched)
        if found is not None and found <= MAX_HEADER_SECTION:
            return bytes(data[:found])
        if len(data) > MAX_HEADER_SECTION:
            raise ImportFileError(
                f"{path}: no end of the header section in its first {MAX_HEADER_SECTION} octets",
                path=str(path),
            )
    return bytes(data)  # a message that is all header


@dataclass(frozen=True, slots=True)
class BodyShape:
    """A file's body as stored: its octets, its bare LFs, whether it ends a line."""

    octets: int
    bare_lf: int
    ends_line: bool

    @property
    def crlf_octets(self) -> int:
        """The body's octets with every bare LF counted as CRLF."""
        return self.octets + self.bare_lf


def measure_body(file: MaildirFile, *, block_size: int = _BODY_BLOCK) -> BodyShape:
    """Count the body of ``file`` (after its header section), in blocks, holding none."""
    octets = bare_lf = 0
    last = b"\n"  # the header section ends with the empty line's LF
    try:
        with file.path.open("rb") as stream:
            stream.seek(file.headers.octets)
            while block := stream.read(block_size):
                octets += len(block)
                bare_lf += block.count(b"\n") - block.count(b"\r\n")
                bare_lf -= last == b"\r" and block[:1] == b"\n"  # a CRLF split by the blocks
                last = block[-1:]
    except OSError as exc:
        raise ImportFileError(
            f"{file.path}: cannot read the file: {exc.strerror}", path=str(file.path)
        ) from exc
    return BodyShape(octets, bare_lf, ends_line=octets == 0 or last == b"\n")


# -- matching (pure, but for measure) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """One message as the server lists it: number, UIDL, LIST size, ``TOP n 0`` reply.

    ``headers`` is None when TOP was refused; ``refusal`` then says what the
    server said. ``facts`` may stand in for ``headers`` (``header_facts`` of
    them, computed as each reply arrives): a mailbox of 100k messages need
    not hold 100k header sections (a few KB each) until the plan.
    """

    number: int
    uidl: str
    size: int
    headers: bytes | None
    refusal: str | None = None
    facts: HeaderFacts | None = None

    @property
    def header_facts(self) -> HeaderFacts | None:
        """What the matcher reads of the header section (None: TOP was refused)."""
        if self.facts is not None:
            return self.facts
        return None if self.headers is None else header_facts(self.headers)


@dataclass(frozen=True, slots=True)
class Match:
    """A server message that is this file: record it as archived (elsewhere).

    ``delivered_at`` is the file's :attr:`MaildirFile.delivered_at`: when the
    other tool fetched it, as far as the file's name says.
    """

    number: int
    uidl: str
    path: Path
    relpath: str
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """A server message that may be one of ``candidates`` but is not matched, and why."""

    number: int
    uidl: str
    reason: str
    candidates: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A server message no file is a candidate for: the next run downloads it."""

    number: int
    uidl: str
    reason: str


@dataclass(frozen=True, slots=True)
class AdoptPlan:
    """What :func:`adopt_plan` decided, in server order.

    ``files_unmatched`` counts the files that are neither matched nor a
    candidate of an ambiguous message (mail the server no longer has, or that
    came from elsewhere); ``unreadable`` are the files the scan could not read.
    """

    matched: tuple[Match, ...]
    ambiguous: tuple[Ambiguous, ...]
    unmatched: tuple[Unmatched, ...]
    files_unmatched: int
    unreadable: tuple[Unreadable, ...] = ()


Outcome = Match | Ambiguous | Unmatched


def adopt_plan(
    server: Sequence[ServerMessage],
    files: Sequence[MaildirFile],
    *,
    check_sizes: bool = True,
    measure: Callable[[MaildirFile], BodyShape] = measure_body,
    unreadable: Sequence[Unreadable] = (),
) -> AdoptPlan:
    """Match each server message to at most one file, by the rules of the module docstring.

    ``measure`` is called only for a file that is the one candidate of a
    server message and only with ``check_sizes``; it reads the body in
    blocks. ``unreadable`` (from the scan) is passed through to the plan.
    """
    matcher = _Matcher(server, files, check_sizes=check_sizes, measure=measure)
    outcomes = [matcher.decide(message) for message in server]
    matched = tuple(o for o in outcomes if isinstance(o, Match))
    ambiguous = tuple(o for o in outcomes if isinstance(o, Ambiguous))
    involved = {m.path for m in matched} | {p for a in ambiguous for p in a.candidates}
    return AdoptPlan(
        matched=matched,
        ambiguous=ambiguous,
        unmatched=tuple(o for o in outcomes if isinstance(o, Unmatched)),
        files_unmatched=sum(f.path not in involved for f in files),
        unreadable=tuple(unreadable),
    )


def plan_maildir_adoption(
    root: Path,
    server: Sequence[ServerMessage],
    *,
    subfolders: bool = True,
    check_sizes: bool = True,
) -> AdoptPlan:
    """:func:`scan_maildir` then :func:`adopt_plan`: the whole decision for one Maildir."""
    scan = scan_maildir(root, subfolders=subfolders)
    return adopt_plan(server, scan.files, check_sizes=check_sizes, unreadable=scan.unreadable)


class _Matcher:
    """The indexes :func:`adopt_plan` decides with, built once."""

    def __init__(
        self,
        server: Sequence[ServerMessage],
        files: Sequence[MaildirFile],
        *,
        check_sizes: bool,
        measure: Callable[[MaildirFile], BodyShape],
    ) -> None:
        self._facts = {m.number: facts for m in server if (facts := m.header_facts) is not None}
        self._files: defaultdict[Key, list[MaildirFile]] = defaultdict(list)
        for file in files:
            if (key := file.headers.key) is not None:
                self._files[key].append(file)
        self._server_keys = Counter(facts.key for facts in self._facts.values())
        self._uidls = Counter(m.uidl for m in server)
        self._check_sizes = check_sizes
        self._measure = measure

    def decide(self, message: ServerMessage) -> Outcome:
        """The outcome for one server message."""
        facts = self._facts.get(message.number)
        if facts is None:
            return Unmatched(message.number, message.uidl, f"TOP refused: {message.refusal}")
        if facts.key is None:
            return Unmatched(message.number, message.uidl, f"its headers have {facts.problem}")
        candidates = self._files.get(facts.key, [])
        if not candidates:
            return Unmatched(message.number, message.uidl, "no file has its Message-ID and Date")
        reason = self._refusal(message, facts, candidates)
        if reason is not None:
            paths = tuple(file.path for file in candidates)
            return Ambiguous(message.number, message.uidl, reason, paths)
        file = candidates[0]
        return Match(message.number, message.uidl, file.path, file.relpath, file.delivered_at)

    def _refusal(
        self, message: ServerMessage, facts: HeaderFacts, candidates: list[MaildirFile]
    ) -> str | None:
        """Why the key match is not taken, or None when it is."""
        if self._uidls[message.uidl] > 1:
            return f"the server lists {self._uidls[message.uidl]} messages with this UIDL"
        if (twins := self._server_keys[facts.key]) > 1:
            return f"{twins} server messages have this Message-ID and Date"
        if len(candidates) > 1:
            return f"{len(candidates)} files have this Message-ID and Date"
        file = candidates[0]
        if file.headers.digest != facts.digest:
            fields = ", ".join(sorted(STABLE_FIELDS - {"message-id", "date"}))
            return f"the same Message-ID and Date, but other fields differ ({fields})"
        return self._size_refusal(message, facts, file) if self._check_sizes else None

    def _size_refusal(
        self, message: ServerMessage, facts: HeaderFacts, file: MaildirFile
    ) -> str | None:
        try:
            body = self._measure(file)
        except ImportFileError as exc:
            return str(exc)
        server_body = message.size - facts.crlf_octets
        if body_fits(server_body, body):
            return None
        return (
            f"sizes do not fit: the server's body is {server_body} octets, the file's "
            f"{body.octets} as stored and {body.crlf_octets} with CRLF line ends"
        )


def body_fits(server_body: int, body: BodyShape) -> bool:
    """Whether a server body of ``server_body`` octets can be the file's ``body``.

    Equal to the file's body as stored or with CRLF line ends, within one CRLF
    (see the module docstring).
    """
    return any(
        server_body - stored == slack
        for stored in {body.octets, body.crlf_octets}
        for slack in _BODY_SLACK
    )
