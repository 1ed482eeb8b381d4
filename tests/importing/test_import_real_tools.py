"""Moving in from the real tools (issue 12 part 1, as it will be checked).

getmail6, fetchmail and mpop, from Debian, fetch part of a private Dovecot
mailbox and leave it on the server; more mail arrives; ``popvault import``
takes the tool's state file (or, for ``maildir``, the Maildir getmail6 or mpop
wrote) and the next ``popvault run`` downloads exactly the messages the tool
had not seen, byte for byte, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from real_tools import (
    FetchmailPoll,
    ToolRun,
    run_fetchmail,
    run_getmail6,
    run_mpop,
    work_folder,
)

from dovecot import HOST, DovecotMailbox, DovecotServer
from popvault.importing.maildir import header_facts
from popvault.testing import sample_messages
from workspace import Workspace, dovecot_account, maildir_form, wire_form

SEEN = sample_messages(8, seed=31)
LATER = sample_messages(3, seed=32)

Tool = Callable[[DovecotServer, DovecotMailbox, Path], ToolRun]

TOOLS: dict[str, Tool] = {
    "getmail6": run_getmail6,
    "fetchmail": lambda server, mailbox, work: run_fetchmail(
        server, [FetchmailPoll([mailbox])], work
    ),
    "mpop": lambda server, mailbox, work: run_mpop(server, [mailbox], work),
}
# Where each tool's run (tests/importing/real_tools.py) leaves its Maildir.
MAILDIRS = {"getmail6": "getmail-maildir", "mpop": "mpop-account0"}


@pytest.fixture
def work() -> Iterator[Path]:
    with work_folder() as folder:
        yield folder


@pytest.fixture
def ws(
    tmp_path: Path,
    dovecot: DovecotServer,
    dovecot_mailbox: DovecotMailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> Workspace:
    """A config whose one account, main, is the test's Dovecot mailbox."""
    ws = Workspace(tmp_path)
    mailbox = dovecot_mailbox
    monkeypatch.setenv("PW_MAIN", mailbox.password)
    # The host as the tools were told: their state files name the server so.
    ws.write_config([dovecot_account(dovecot, mailbox.username, "main", host=HOST)])
    return ws


def archived(ws: Workspace) -> list[bytes]:
    return sorted(path.read_bytes() for path in ws.archived_files("main"))


def expected(raws: list[bytes]) -> list[bytes]:
    return sorted(maildir_form(wire_form(raw)) for raw in raws)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_the_next_run_downloads_only_what_the_tool_had_not_seen(
    ws: Workspace, dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox, work: Path, tool: str
) -> None:
    for raw in SEEN:
        dovecot_mailbox.deliver(raw)
    state = TOOLS[tool](dovecot, dovecot_mailbox, work).state_file
    for raw in LATER:
        dovecot_mailbox.deliver(raw)

    dry = ws.cli("import", tool, str(state), "--account", "main", "--dry-run")
    assert dry.code == 0, dry.output
    assert f"would import {len(SEEN)} as archived elsewhere" in dry.out
    assert f"the server lists {len(SEEN)} of them now" in dry.out

    imported = ws.cli("import", tool, str(state), "--account", "main")
    assert imported.code == 0, imported.output
    assert f"imported {len(SEEN)} as archived elsewhere" in imported.out

    run = ws.cli("run")
    assert run.code == 0, run.output
    assert archived(ws) == expected(LATER)
    # Twice changes nothing: no second import, no second download.
    again = ws.cli("import", tool, str(state), "--account", "main")
    assert f"imported 0 as archived elsewhere ({len(SEEN)} imported before" in again.out
    assert ws.cli("run").code == 0
    assert archived(ws) == expected(LATER)
    # Every message is still on the server: imported ones are never deleted by "keep".
    assert len(dovecot_mailbox.messages()) == len(SEEN) + len(LATER)


@pytest.mark.parametrize("tool", sorted(MAILDIRS))
def test_a_maildir_the_tool_wrote_is_adopted_without_downloading_its_messages(
    ws: Workspace, dovecot: DovecotServer, dovecot_mailbox: DovecotMailbox, work: Path, tool: str
) -> None:
    for raw in SEEN:
        dovecot_mailbox.deliver(raw)
    TOOLS[tool](dovecot, dovecot_mailbox, work)
    maildir = work / MAILDIRS[tool]
    for raw in LATER:
        dovecot_mailbox.deliver(raw)
    # A message without Message-ID or Date cannot be matched by its headers: the run fetches it.
    keyless = [raw for raw in SEEN if header_facts(raw).key is None]

    adopted = ws.cli("import", "maildir", str(maildir), "--account", "main")

    assert adopted.code == 0, adopted.output
    matched = len(SEEN) - len(keyless)
    assert f"{matched} match a file" in adopted.out
    assert f"recorded {matched} as archived elsewhere" in adopted.out
    rows = ws.ledger_rows("SELECT source, source_file FROM imported")
    assert len(rows) == matched
    assert all(source == "maildir" and Path(file).is_file() for source, file in rows)
    assert all(Path(file).is_relative_to(maildir.resolve()) for _, file in rows)
    run = ws.cli("run")
    assert run.code == 0, run.output
    assert archived(ws) == expected(LATER + keyless)
