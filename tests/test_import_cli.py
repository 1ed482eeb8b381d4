"""``popvault import TOOL FILE --account NAME`` (issue 12 part 1), against the fake server.

The state files here are written in each tool's format by the test; the files
the real tools write are tests/importing/'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from popvault.importing.maildir import header_facts
from popvault.testing import FakePop3Server, sample_messages
from workspace import Workspace, fake_account

PASSWORD = "import-cli-Secret-42"
SEEN = 1_767_225_600  # 2026-01-01 00:00 UTC, as getmail6 writes it: unix seconds


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path, password=PASSWORD)


@pytest.fixture
def server() -> Iterator[FakePop3Server]:
    with FakePop3Server(sample_messages(6), username="bob", password=PASSWORD) as srv:
        yield srv


def getmail6_file(folder: Path, uidls: list[str]) -> Path:
    path = folder / "oldmail-127.0.0.1-110-bob"
    path.write_bytes(b"".join(f"{uidl}\0{SEEN}\n".encode() for uidl in uidls))
    return path


def imported_rows(ws: Workspace) -> list[tuple[str, str]]:
    return sorted(ws.ledger_rows("SELECT uidl, source FROM imported"))


def test_the_next_run_downloads_only_what_the_other_tool_had_not(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([fake_account(server, "acct")])
    uidls = [uidl for uidl, _ in server.mailbox]
    state = getmail6_file(ws.folder, uidls[:4])

    result = ws.cli("import", "getmail6", str(state), "--account", "acct")

    assert result.code == 0, result.output
    assert "names 4 UIDL(s); imported 4 as archived elsewhere" in result.out
    assert "will not delete them" in result.out
    assert imported_rows(ws) == sorted((uidl, "getmail6") for uidl in uidls[:4])
    run = ws.cli("run")
    assert run.code == 0, run.output
    assert sorted(server.downloaded) == sorted(uidls[4:])
    assert len(ws.archived_files("acct")) == 2
    status = ws.cli("status")
    assert "2 (+4 imported)" in status.out
    (row,) = json.loads(ws.cli("status", "--json").out)
    assert (row["archived_messages"], row["imported_messages"]) == (2, 4)


def test_importing_twice_changes_nothing(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([fake_account(server, "acct")])
    state = getmail6_file(ws.folder, [uidl for uidl, _ in server.mailbox][:3])
    assert ws.cli("import", "getmail6", str(state), "--account", "acct").code == 0
    before = ws.ledger_dump()

    again = ws.cli("import", "getmail6", str(state), "--account", "acct")

    assert again.code == 0, again.output
    assert "imported 0 as archived elsewhere (3 imported before" in again.out
    assert ws.ledger_dump() == before


def test_a_dry_run_records_nothing_and_counts_what_the_server_lists(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([fake_account(server, "acct")])
    uidls = [uidl for uidl, _ in server.mailbox]
    # Two of the tool's UIDLs are no longer on the server (deleted since).
    state = getmail6_file(ws.folder, [*uidls[:3], "gone-1", "gone-2"])

    result = ws.cli("import", "getmail6", str(state), "--account", "acct", "--dry-run")

    assert result.code == 0, result.output
    assert "would import 5 as archived elsewhere" in result.out
    assert "the server lists 3 of them now" in result.out
    assert "dry run: nothing recorded" in result.out
    assert not ws.ledger_file.exists() or imported_rows(ws) == []
    # It read the listing only: nothing retrieved, nothing deleted.
    assert not [c for c in server.commands if c.split()[0] in {"RETR", "TOP", "DELE"}]


def test_a_malformed_line_is_named_and_nothing_is_imported(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([fake_account(server, "acct")])
    state = ws.folder / "oldmail-broken"
    state.write_bytes(b"good-1\x001767225600\ngood-2\x001767225600\nno time here\ngood-3\x001\n")
    ws.cli("status")  # the ledger exists: the import's refusal must leave it as it is

    result = ws.cli("import", "getmail6", str(state), "--account", "acct")

    assert result.code != 0
    assert "line 3" in result.err
    assert str(state) in result.err
    assert imported_rows(ws) == []


def test_getmail6_dashes_are_matched_to_the_servers_slashes(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    messages = sample_messages(3)
    with FakePop3Server(
        messages, uidls=["a/b/1", "plain-2", "new/3"], username="bob", password=PASSWORD
    ) as srv:
        ws.write_config([fake_account(srv, "acct")])
        # getmail6 wrote "a/b/1" as "a-b-1" (its oldmail file keeps "/" out).
        state = getmail6_file(ws.folder, ["a-b-1", "plain-2"])

        result = ws.cli("import", "getmail6", str(state), "--account", "acct")

        assert result.code == 0, result.output
        assert imported_rows(ws) == [("a/b/1", "getmail6"), ("plain-2", "getmail6")]
        assert ws.cli("run").code == 0
        assert srv.downloaded == ["new/3"]


def test_fetchmail_ids_of_the_accounts_entry_only(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([fake_account(server, "acct")])
    uidls = [uidl for uidl, _ in server.mailbox]
    ids = ws.folder / ".fetchids"
    lines = [f"bob@{server.host} {uidls[0]}", f"other@{server.host} {uidls[1]}"]
    lines += [f"bob@elsewhere.example {uidls[2]}", f"bob@{server.host} {uidls[3]}"]
    ids.write_text("\n".join(lines) + "\n")

    result = ws.cli("import", "fetchmail", str(ids), "--account", "acct")

    assert result.code == 0, result.output
    assert imported_rows(ws) == sorted((uidl, "fetchmail") for uidl in (uidls[0], uidls[3]))


def test_allow_delete_lets_retention_remove_the_imported_copies(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([fake_account(server, "acct", retention="delete")])
    uidls = [uidl for uidl, _ in server.mailbox]
    state = getmail6_file(ws.folder, uidls[:2])

    result = ws.cli("import", "getmail6", str(state), "--account", "acct", "--allow-delete")

    assert result.code == 0, result.output
    assert "retention will delete their server copies" in result.out
    assert ws.cli("run").code == 0
    assert set(server.deleted) == set(uidls)
    assert sorted(server.downloaded) == sorted(uidls[2:])


def test_an_unknown_account_is_a_configuration_error(ws: Workspace, server: FakePop3Server) -> None:
    ws.write_config([fake_account(server, "acct")])
    state = getmail6_file(ws.folder, ["x"])

    result = ws.cli("import", "getmail6", str(state), "--account", "nope")

    assert result.code == 2
    assert "nope" in result.err


def getmail_maildir(folder: Path, raws: list[bytes]) -> Path:
    """A Maildir as getmail6 leaves one: LF line ends, its own fields on top."""
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for number, raw in enumerate(raws):
        stored = b"Delivered-To: bob@example.org\nReturn-Path: <x@example.org>\n"
        stored += raw.replace(b"\r\n", b"\n")
        (folder / "new" / f"1767225600.M{number}P1.host").write_bytes(stored)
    return folder


def keyed_messages(count: int) -> list[bytes]:
    """Sample messages that each have a Message-ID and a Date (adoptable by headers)."""
    return [raw for raw in sample_messages(count * 2, seed=3) if header_facts(raw).key][:count]


def test_a_maildir_is_adopted_by_headers_without_a_body_download(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    raws = keyed_messages(6)
    maildir = getmail_maildir(tmp_path / "Mail", raws[:4])
    with FakePop3Server(raws, username="bob", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")])
        uidls = [uidl for uidl, _ in srv.mailbox]

        dry = ws.cli("import", "maildir", str(maildir), "--account", "acct", "--dry-run")
        assert dry.code == 0, dry.output
        assert "4 match a file, 0 are ambiguous, 2 match none" in dry.out
        assert "dry run: nothing recorded" in dry.out
        result = ws.cli("import", "maildir", str(maildir), "--account", "acct")

        assert result.code == 0, result.output
        assert "recorded 4 as archived elsewhere" in result.out
        assert not [c for c in srv.commands if c.startswith("RETR")]
        assert sum(1 for c in srv.commands if c.startswith("TOP")) == 2 * len(raws)
        files = dict(ws.ledger_rows("SELECT uidl, source_file FROM imported"))
        assert set(files) == set(uidls[:4])
        assert all(Path(path).parent == maildir.resolve() / "new" for path in files.values())
        assert ws.cli("run").code == 0
        assert sorted(srv.downloaded) == sorted(uidls[4:])
        # Adopting again asks TOP of nothing the ledger knows and records nothing.
        again = ws.cli("import", "maildir", str(maildir), "--account", "acct")
        assert "recorded 0 as archived elsewhere" in again.out
        assert "(6 listed messages already known)" in again.out


def test_a_message_stored_twice_is_reported_ambiguous_and_downloaded(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    raws = keyed_messages(3)
    # The tool stored the first message twice (a second delivery, a copy).
    maildir = getmail_maildir(tmp_path / "Mail", [raws[0], raws[0], raws[1]])
    with FakePop3Server(raws, username="bob", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")])
        uidls = [uidl for uidl, _ in srv.mailbox]

        result = ws.cli("import", "maildir", str(maildir), "--account", "acct")

        assert result.code == 0, result.output
        assert "1 match a file, 1 are ambiguous, 1 match none" in result.out
        assert f"ambiguous: message 1 (UIDL {uidls[0]!r})" in result.out
        assert str(maildir / "new") in result.out  # its candidate files are named
        assert dict(ws.ledger_rows("SELECT uidl, source FROM imported")) == {uidls[1]: "maildir"}
        assert ws.cli("run").code == 0
        assert sorted(srv.downloaded) == sorted([uidls[0], uidls[2]])


def test_a_path_that_is_no_maildir_is_refused_before_connecting(
    ws: Workspace, server: FakePop3Server
) -> None:
    ws.write_config([fake_account(server, "acct")])

    result = ws.cli("import", "maildir", str(ws.folder), "--account", "acct")

    assert result.code == 1
    assert str(ws.folder) in result.err
    assert server.commands == []


def test_a_lost_ledger_adopts_popvaults_own_folder_and_downloads_nothing_twice(
    tmp_path: Path,
) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    raws = keyed_messages(5)
    with FakePop3Server(raws[:4], username="bob", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")])
        assert ws.cli("run").code == 0
        stored = ws.stored()
        # The ledger is lost; its marker in the archive root goes with it (README).
        ws.ledger_file.unlink()
        (ws.archive / ".popvault-ledger").unlink()
        refused = ws.cli("run")
        assert refused.code == 1
        assert "popvault import maildir" in refused.output
        srv.add_message(raws[4])

        adopted = ws.cli("import", "maildir", str(ws.archive / "acct"), "--account", "acct")

        assert adopted.code == 0, adopted.output
        assert "recorded 4 as archived elsewhere" in adopted.out
        before = len(srv.downloaded)
        run = ws.cli("run")
        assert run.code == 0, run.output
        assert len(srv.downloaded) == before + 1  # only the new message
        assert len(ws.stored()) == len(stored) + 1
        verified = ws.cli("verify")
        assert verified.code == 0, verified.output


def test_hostile_file_names_print_as_text_not_terminal_control(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, password=PASSWORD)
    raws = keyed_messages(2)
    maildir = getmail_maildir(tmp_path / "Mail", [raws[0]])
    # A second copy under a name with an escape sequence: the message is ambiguous, its
    # candidate files are printed, and the name must not reach the terminal raw.
    hostile = maildir / "new" / "1767225601.M9P1.\x1b]0;owned\x07host"
    hostile.write_bytes(
        (maildir / "new").joinpath(next((maildir / "new").iterdir()).name).read_bytes()
    )
    with FakePop3Server(raws, username="bob", password=PASSWORD) as srv:
        ws.write_config([fake_account(srv, "acct")])

        result = ws.cli("import", "maildir", str(maildir), "--account", "acct")

    assert result.code == 0, result.output
    assert "ambiguous" in result.out
    assert "owned" in result.out  # the name is shown...
    assert "\x1b" not in result.out  # ...as text
    assert "\x07" not in result.out
