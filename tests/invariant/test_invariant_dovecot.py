"""Random SIGKILLs of real `popvault run` processes against a real Dovecot.

Each round starts `popvault run` in a child, waits until its imports are done,
sleeps a random 0-300 ms and kills it with SIGKILL; rounds alternate retention
"keep" and "delete", and a new message arrives now and then. A clean run then
must leave the archive invariant true. Dovecot assigns its own UIDLs, so
messages are matched to ledger rows by content; "deleted from the server"
means no longer in the Dovecot Maildir. Set POPVAULT_INVARIANT_SEED to replay.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from crash_runner import spawn
from invariant_check import ACCOUNT, check_invariant, expected_form, new_workspace

from popvault.testing import large_attachment_message, sample_messages
from workspace import Workspace

pytestmark = pytest.mark.dovecot

ROUNDS = 25
# The first kills land 0-300 ms after the child is ready; after that, within
# the time the rounds that ran to the end took (a faster popvault finishes a
# round of a few messages well inside 300 ms), so kills keep landing in every
# phase (login, RETR, DELE, QUIT).
MAX_DELAY = 0.3
PASSWORD_ENV = "POPVAULT_INVARIANT_DOVECOT_PW"


def initial_mailbox() -> list[bytes]:
    raws = sample_messages(39, seed=41)
    raws.insert(7, large_attachment_message(2 * 1024 * 1024))
    return raws


def later_arrivals() -> list[bytes]:
    """Messages delivered between rounds, so that every round has work to be killed in."""
    raws = sample_messages(6 * ROUNDS, seed=42)
    for index in range(0, len(raws), 25):
        raws[index] = large_attachment_message(400_000 + index)
    return raws


def account(dovecot: Any, mailbox: Any, retention: str) -> dict[str, Any]:
    return {
        "name": ACCOUNT,
        "host": dovecot.host,
        "port": dovecot.port,
        "security": "starttls",
        "ca_file": str(dovecot.ca_file),
        "username": mailbox.username,
        "password_env": PASSWORD_ENV,
        "timeout": "20s",
        "retention": retention,
    }


@contextmanager
def reported(seed: int) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n(replay with POPVAULT_INVARIANT_SEED={seed})") from exc


def kill_after_random_delay(
    ws: Workspace, rng: random.Random, max_delay: float = MAX_DELAY
) -> tuple[int, str, float]:
    """Kill a run 0..``max_delay`` s after it is ready; its code, output and the delay."""
    child = spawn(ws.config, "run", ready=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    delay = rng.uniform(0, max_delay)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)  # a no-op if it has ended already
    out, err = child.communicate(timeout=60)
    return child.returncode, out + err, delay


def check_dovecot_invariant(ws: Workspace, mailbox: Any, originals: list[bytes]) -> None:
    """Match ledger rows to originals by content, then check the invariant."""
    rows = ws.ledger_rows("SELECT uidl, path FROM messages WHERE account = ?", ACCOUNT)
    by_content = {expected_form(raw, "maildir"): raw for raw in originals}
    by_uidl: dict[str, bytes] = {}
    for uidl, path in rows:
        stored = (ws.archive / path).read_bytes()
        assert stored in by_content, f"{path}: archived bytes match no original"
        by_uidl[uidl] = by_content[stored]
    assert Counter(by_uidl.values()) == Counter(originals), "not every message archived once"
    on_server = Counter(mailbox.messages())
    gone = Counter(originals) - on_server
    deleted = [uidl for uidl, raw in by_uidl.items() if raw in gone]
    assert len(deleted) == sum(gone.values()), "a message left the server unarchived"
    still = [uidl for uidl, raw in by_uidl.items() if raw in on_server]
    check_invariant(ws, by_uidl, deleted, still_on_server=still)


def test_random_kills_of_real_runs_lose_and_double_nothing(
    dovecot: Any, dovecot_mailbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get("POPVAULT_INVARIANT_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"POPVAULT_INVARIANT_SEED={seed}")
    originals = initial_mailbox()
    arrivals = later_arrivals()
    assert len(set(originals + arrivals)) == len(originals) + len(arrivals)
    for raw in originals:
        dovecot_mailbox.deliver(raw)
    monkeypatch.setenv(PASSWORD_ENV, dovecot_mailbox.password)
    ws = new_workspace(tmp_path)
    outcomes: Counter[int] = Counter()
    max_delay = MAX_DELAY
    trace: list[str] = []  # printed (seen with -s or on failure): what each round did
    with reported(seed):
        for round_number in range(ROUNDS):
            retention = ("keep", "delete")[round_number % 2]
            ws.write_config([account(dovecot, dovecot_mailbox, retention)])
            for _ in range(rng.randint(0, 6)):
                raw = arrivals.pop()
                dovecot_mailbox.deliver(raw)
                originals.append(raw)
            code, output, delay = kill_after_random_delay(ws, rng, max_delay)
            assert code in (0, -signal.SIGKILL), f"round {round_number}: {code}: {output}"
            if code == 0:  # it ended before the kill: a run takes less than `delay`
                max_delay = max(0.02, min(max_delay, delay * 1.2))
            else:  # killed: later phases may lie beyond the window, widen it again
                max_delay = min(MAX_DELAY, max_delay * 1.1)
            assert dovecot_mailbox.password not in output
            outcomes[code] += 1
            archived = ws.ledger_rows("SELECT count(*), count(deleted_at) FROM messages")[0]
            trace.append(f"{retention}:{'killed' if code else 'done'}:{archived}")
        print(" ".join(trace))
        assert outcomes[-signal.SIGKILL] >= ROUNDS // 3, f"too few kills landed: {outcomes}"
        ws.write_config([account(dovecot, dovecot_mailbox, "keep")])
        clean = ws.cli("run")
        assert clean.code == 0, clean.output
        check_dovecot_invariant(ws, dovecot_mailbox, originals)
        ws.write_config([account(dovecot, dovecot_mailbox, "delete")])
        clean = ws.cli("run")
        assert clean.code == 0, clean.output
        assert dovecot_mailbox.messages() == []
        check_dovecot_invariant(ws, dovecot_mailbox, originals)


def test_two_runs_at_once_against_dovecot(
    dovecot: Any, dovecot_mailbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = initial_mailbox()
    for raw in originals:
        dovecot_mailbox.deliver(raw)
    monkeypatch.setenv(PASSWORD_ENV, dovecot_mailbox.password)
    ws = new_workspace(tmp_path)
    ws.write_config([account(dovecot, dovecot_mailbox, "delete")])
    children = [spawn(ws.config, "run") for _ in range(2)]
    results = [(child.communicate(timeout=120), child.returncode) for child in children]
    codes = sorted(code for _, code in results)
    assert codes in ([0, 0], [0, 1]), results
    for (out, err), code in results:
        if code == 1:
            assert "being archived by another popvault process" in out + err, out + err
    clean = ws.cli("run")
    assert clean.code == 0, clean.output
    check_dovecot_invariant(ws, dovecot_mailbox, originals)
    assert dovecot_mailbox.messages() == []
