"""Power loss at every durable operation of a run: only what was fsynced survives.

A SIGKILL keeps the page cache, so the crash tests cannot see a missing or
misordered fsync: the file system still has every write when the next run
starts. Here the power goes instead. A `popvault run` child (see
``power_runner``) logs every operation of :mod:`popvault.store.durable` — the
one module that creates, writes, links, unlinks, makes folders and fsyncs —
and is cut at operation k, for every k of the run, and once more after the
run completed. ``power_cut`` replays the log and rebuilds the archive folder
as the power cut would leave it: a file's content as of its last fsync, a
folder's entries as of its last fsync (later names gone, later removals
back), a new folder only if its parent was fsynced after it was made.

The fake server lives in this process, so its state is the one at the cut:
a DELE takes effect only at a QUIT the server acknowledged (RFC 1939
section 6). The ledger is left as the kill left it, which is what a power
cut leaves too: :mod:`popvault.ledger.engine` sets ``PRAGMA synchronous =
FULL`` (with WAL) on every SQLite connection, so a commit is on stable
storage when it returns and a transaction not yet committed is rolled back
when the ledger is next opened — SQLite's side of durability is SQLite's,
this test covers the archive's.

After each cut: every message the server deleted has a byte-exact copy among
the surviving files, and every ledger row that says *archived* names a
surviving file of its size and digest (the facade's promise: a server copy
may go once ``mark_archived`` returned). Then a recovery run (a fresh
child, as after a reboot; recorded too) against the same server must leave
the archive invariant true — every message archived exactly once, byte-exact, none
deleted without a copy, every DELE witnessed — and it must still be true
after a second power cut right at the end of that run.

The check can fail, and the self-checks at the end show it: the same check
catches a run whose last folder fsync is pretended away, and a child whose
writer closes its files without the fsync.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from invariant_check import (
    ACCOUNT,
    Format,
    WitnessServer,
    account_entry,
    check_invariant,
    durable_copy_problem,
    expected_form,
    new_workspace,
    wait_until_idle,
)
from power_cut import PowerCut, read_log
from power_runner import Runner
from test_invariant_dovecot import PASSWORD_ENV, account, check_dovecot_invariant

from popvault.store import durable, open_store
from popvault.store.durable import Operation
from popvault.store.marker import MARKER_NAME
from popvault.testing import large_attachment_message, sample_messages
from workspace import Workspace

# Cut points checked at once: the work is in child processes, mostly waiting.
LANES = 2
# `popvault verify` runs in this process and redirects its output: one at a time.
CLI_LOCK = threading.Lock()
# Operations shown around the cut when a check fails.
CONTEXT = 12
# Cut points sampled for EML and for Dovecot (every point is covered with Maildir and
# the fake server): each costs about half a second.
EML_CUTS = 8
DOVECOT_CUTS = 8
# Pairs of cuts, the second in the recovery from the first.
TWICE_CUTS = 6
# Kills (no power cut) at other operations than links and mkdirs.
KILL_CUTS = 6

# A test's way to pretend some operations did not happen.
Lose = Callable[[list[Operation]], list[Operation]]


def mailbox() -> list[bytes]:
    """Five varied messages, the third 150 kB (several writes), so that batches differ."""
    messages = sample_messages(4, seed=23)
    messages.insert(2, large_attachment_message(150_000))
    return messages


@pytest.fixture(scope="module", params=["filesystem-sync", "fsync-each-file"])
def runners(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Runner]]:
    """One helper per lane (see :func:`in_lanes`), in each way of making a batch durable.

    ``filesystem-sync``: one syncfs per batch, as on ext4 or XFS; skipped where
    the test's own file system is not one of those (the run would fall back).
    """
    whole = request.param == "filesystem-sync"
    if whole and durable.FileSystemSync.open_for(tmp_path_factory.getbasetemp()) is None:
        pytest.skip("the tests' temp folder is on a file system without a trusted syncfs")
    helpers = [Runner(whole_file_system_sync=whole) for _ in range(LANES)]
    try:
        yield helpers
    finally:
        for helper in helpers:
            helper.close()


@pytest.fixture
def runner(runners: list[Runner]) -> Runner:
    return runners[0]


@dataclass(frozen=True)
class Cut:
    """One cut point's outcome: the operations that survived into the model, and the cut one."""

    replayed: list[Operation]
    cut: Operation | None


def cut_run(
    runner: Runner,
    ws: Workspace,
    log: Path,
    cut: int | None,
    *,
    lose: Lose | None = None,
    skip_file_fsync: bool = False,
    env: Mapping[str, str] | None = None,
    power: bool = True,
) -> tuple[PowerCut, Cut]:
    """Run popvault, cut at operation ``cut``, rebuild the archive as the power cut leaves it.

    ``power=False``: only the process dies (a SIGKILL, the page cache kept):
    the operation it died at did happen, nothing is rebuilt, and the model
    goes on with what is not durable yet.
    """
    model = PowerCut(ws.folder)  # seeded before the run: what exists now is durable
    outcome = runner.run(ws.config, log, cut=cut, skip_file_fsync=skip_file_fsync, env=env)
    operations, cut_op = read_log(log)
    if cut_op is None:  # the run had fewer operations than ``cut``: it ended first
        assert outcome.returncode == 0, outcome.output
        assert cut is None or len(operations) < cut
    else:
        assert outcome.returncode == -signal.SIGKILL, outcome.output
    replayed = operations if lose is None else lose(operations)
    if not power:
        model.apply_all([*replayed, *([cut_op] if cut_op else [])])
        return model, Cut(replayed, cut_op)
    model.apply_all(replayed)
    model.rebuild("archive")
    return model, Cut(replayed, cut_op)


@contextmanager
def explained(model: PowerCut, cut: Cut, label: str) -> Iterator[None]:
    """On a failed check, say where the power went and what came before."""
    try:
        yield
    except AssertionError as exc:
        before = "\n  ".join(model.describe(cut.replayed[-CONTEXT:]))
        at = (
            "at the end of the run" if cut.cut is None else f"before {model.describe([cut.cut])[0]}"
        )
        raise AssertionError(
            f"{exc}\n{label}: power cut {at}, after {len(cut.replayed)} operations;"
            f" the last ones:\n  {before}"
        ) from exc


def check_survivors(
    ws: Workspace,
    deleted: Iterable[bytes],
    fmt: Format,
    archived_as: Mapping[str, bytes] | None = None,
) -> None:
    """Right after the cut: no deletion without a surviving copy, no archived row without its file.

    ``deleted``: the messages (as the server stores them) the server no longer
    has. ``archived_as``: each UIDL's message, when the UIDLs are known.
    """
    stored = Counter(path.read_bytes() for path in ws.archived_files(ACCOUNT))
    lost = [raw[:60] for raw in deleted if not stored[expected_form(raw, fmt)]]
    assert not lost, f"deleted from the server without a surviving copy: {lost}"
    sql = "SELECT DISTINCT uidl FROM messages WHERE account = ? AND state = 'archived'"
    problems = {
        uidl: durable_copy_problem(ws, ACCOUNT, uidl, (archived_as or {}).get(uidl))
        for (uidl,) in ws.ledger_rows(sql, ACCOUNT)
    }
    bad = {uidl: problem for uidl, problem in problems.items() if problem}
    assert not bad, f"archived in the ledger, but the power cut took the file: {bad}"


def recover(
    runner: Runner,
    ws: Workspace,
    log: Path,
    env: Mapping[str, str] | None = None,
    model: PowerCut | None = None,
) -> tuple[PowerCut, Cut]:
    """The recovery run: a fresh child against the archive, recorded.

    Into ``model`` when the archive holds what is not durable yet (after a
    kill only); by default seeded from the (rebuilt) archive, all of it durable.
    """
    model = model or PowerCut(ws.folder)
    outcome = runner.run(ws.config, log, env=env)
    assert outcome.returncode == 0, outcome.output
    operations, _ = read_log(log)
    model.apply_all(operations)
    return model, Cut(list(model.operations), None)  # after a kill: the killed run's too


def power_cut_then_recover(
    runner: Runner,
    folder: Path,
    cut: int | None,
    *,
    fmt: Format = "maildir",
    lose: Lose | None = None,
    skip_file_fsync: bool = False,
    then: int | None = None,
    kill_only: bool = False,
) -> int:
    """One cut point against a fake server, its checks and the recovery; the operation count.

    ``then``: the power goes a second time, at that operation of the first
    recovery run (a cut in the middle of recovering from one). ``kill_only``:
    at ``cut`` the process is killed but the power stays on until the end of
    the recovery run (which must make durable what the killed run left).
    """
    with WitnessServer(mailbox()) as srv:
        originals = dict(srv.mailbox)
        ws = new_workspace(folder)
        ws.write_config([account_entry(srv, fmt=fmt, retention="delete")])
        srv.watch(ws)
        model, cut_at = cut_run(
            runner,
            ws,
            folder / "cut.log",
            cut,
            lose=lose,
            skip_file_fsync=skip_file_fsync,
            power=not kill_only,
        )
        total = len(cut_at.replayed)
        wait_until_idle(srv)
        label = f"{'kill' if kill_only else 'cut'} {cut}" if cut is not None else "uncut"
        if not kill_only:
            with explained(model, cut_at, label):
                check_survivors(ws, [originals[u] for u in srv.deleted], fmt, originals)
        if then is not None:
            label += f", then cut {then} of the recovery"
            model, cut_at = cut_run(runner, ws, folder / "cut-again.log", then)
            wait_until_idle(srv)
            with explained(model, cut_at, label):
                check_survivors(ws, [originals[u] for u in srv.deleted], fmt, originals)
        again, recovery = recover(
            runner, ws, folder / "recovery.log", model=model if kill_only else None
        )
        for moment in ("after the recovery run", "after a power cut at its end"):
            with explained(again, recovery, f"{label}, {moment}"), CLI_LOCK:
                assert [uidl for uidl, _ in srv.mailbox] == [], "the server was not emptied"
                check_invariant(
                    ws, originals, srv.deleted, fmt=fmt, still_on_server=[], witnesses=srv.witnesses
                )
            again.rebuild("archive")
        return total


def in_lanes(
    runners: list[Runner], cuts: Iterable[int], one: Callable[[Runner, int], object]
) -> None:
    """``one(runner, cut)`` for every cut, as many at a time as there are runners.

    Each cut has its own server and workspace; the children do the work, so
    the lanes overlap their waits on the network and the disk.
    """
    idle: queue.SimpleQueue[Runner] = queue.SimpleQueue()
    for runner in runners:
        idle.put(runner)

    def lane(cut: int) -> None:
        runner = idle.get()
        try:
            one(runner, cut)
        finally:
            idle.put(runner)

    with ThreadPoolExecutor(len(runners)) as pool:
        futures = [pool.submit(lane, cut) for cut in cuts]
        try:
            for future in futures:
                future.result()
        finally:
            pool.shutdown(cancel_futures=True)


def power_seed() -> int:
    """The seed of the sampled cut points: POPVAULT_POWER_SEED to replay, random otherwise."""
    seed = int(os.environ.get("POPVAULT_POWER_SEED") or random.randrange(2**32))
    print(f"POPVAULT_POWER_SEED={seed}")
    return seed


def cut_points(total: int, sample: int | None, seed: int) -> list[int]:
    """Every cut point 1..total, or ``sample`` of them chosen with ``seed``."""
    every = range(1, total + 1)
    if sample is None or sample >= total:
        return list(every)
    return sorted(random.Random(seed).sample(every, sample))


@contextmanager
def replayable(seed: int) -> Iterator[None]:
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n(replay with POPVAULT_POWER_SEED={seed})") from exc


# Maildir is the default format: every cut point. EML publishes the same way
# into dated folders: a sample, to keep this file's run time well under a minute.
@pytest.mark.parametrize(("fmt", "sample"), [("maildir", None), ("eml", EML_CUTS)])
def test_a_power_cut_at_every_operation_loses_and_doubles_nothing(
    runners: list[Runner], tmp_path: Path, fmt: Format, sample: int | None
) -> None:
    started = time.monotonic()
    seed = power_seed()
    total = power_cut_then_recover(runners[0], tmp_path / "uncut", None, fmt=fmt)
    assert total > 20, "too few operations recorded: is the store reporting to observe()?"
    operations, _ = read_log(tmp_path / "uncut" / "cut.log")
    # The archive root's marker (popvault.store.marker), written once by the first run,
    # is fsynced as a file of its own: the messages' files are what is counted here.
    kinds = Counter(op.kind for op in operations if not op.path.name.startswith(MARKER_NAME))
    synced_by, not_by = ("filesystem_sync", "file_fsync")
    if not runners[0].whole_file_system_sync:
        synced_by, not_by = not_by, synced_by
    assert kinds[synced_by] >= 2, kinds
    assert not kinds[not_by], kinds
    cuts = cut_points(total, sample, seed)
    with replayable(seed):
        in_lanes(
            runners,
            cuts,
            lambda runner, cut: power_cut_then_recover(
                runner, tmp_path / f"cut{cut}", cut, fmt=fmt
            ),
        )
    print(f"{fmt}: {len(cuts) + 1} of {total + 1} cut points, {time.monotonic() - started:.1f} s")


def test_a_power_cut_while_recovering_from_one(runners: list[Runner], tmp_path: Path) -> None:
    """Two power cuts in a row, the second in the recovery run; a sample of the pairs."""
    seed = power_seed()
    total = power_cut_then_recover(runners[0], tmp_path / "uncut", None)
    rng = random.Random(seed)
    # A recovery after cut k makes about total - k operations or more (it redoes
    # what the cut took back): the second cut falls within it.
    firsts = cut_points(total, TWICE_CUTS, seed)
    pairs = {cut: rng.randint(1, max(1, total - cut)) for cut in firsts}
    with replayable(seed):
        in_lanes(
            runners,
            pairs,
            lambda runner, cut: power_cut_then_recover(
                runner, tmp_path / f"cut{cut}", cut, then=pairs[cut]
            ),
        )


def test_a_kill_then_a_power_cut_after_the_recovery(runners: list[Runner], tmp_path: Path) -> None:
    """SIGKILL at a name not yet durable (a link, a mkdir), power cut after the recovery run.

    The page cache keeps the killed run's names, so the recovery finds them in
    place and builds on them: it must fsync their folders itself before it
    vouches for them (settling a pending row, DELE).
    """
    seed = power_seed()
    folder = tmp_path / "uncut"
    power_cut_then_recover(runners[0], folder, None)
    operations, _ = read_log(folder / "cut.log")
    # The 1-based cut k is the kth operation; the child dies right after it.
    kills = [k for k, op in enumerate(operations, 1) if op.kind in ("link", "mkdir")]
    kills += cut_points(len(operations), KILL_CUTS, seed)
    with replayable(seed):
        in_lanes(
            runners,
            sorted(set(kills)),
            lambda runner, cut: power_cut_then_recover(
                runner, tmp_path / f"kill{cut}", cut, kill_only=True
            ),
        )


# -- the hook and the model, on their own ------------------------------------------


def test_observe_reports_each_change_in_order_and_nests(tmp_path: Path) -> None:
    outer: list[Operation] = []
    inner: list[Operation] = []
    store = open_store("maildir", tmp_path / "archive", "acct")
    with durable.observe(outer.append):
        writer = store.begin(received_at=datetime(2026, 1, 2, tzinfo=UTC))
        with durable.observe(inner.append):
            writer.write(b"Subject: x\r\n\r\nbody\r\n")
            writer.seal()
        writer.commit()
    durable.sync_dir(tmp_path)  # after the block: reported to nobody
    tmp, new = (tmp_path / "archive" / "acct" / sub for sub in ("tmp", "new"))
    (published,) = new.iterdir()
    temp = tmp / published.name.split(",")[0]
    assert [(op.kind, op.path, op.data) for op in inner] == [
        ("write", temp, b"Subject: x\n\nbody\n"),
        ("file_fsync", temp, b""),
    ]
    kinds = [(op.kind, op.path, op.target) for op in outer]
    assert ("create", temp, None) in kinds
    assert kinds[kinds.index(("create", temp, None)) :] == [
        ("create", temp, None),
        ("link", temp, published),
        ("folder_fsync", new, None),
        ("unlink", temp, None),
        ("folder_fsync", tmp, None),
    ]
    assert ("mkdir", new, None) in kinds[: kinds.index(("create", temp, None))]


def test_the_model_keeps_only_what_was_fsynced(tmp_path: Path) -> None:
    """Each rule of the power-cut model, on operations made up for it."""
    (tmp_path / "old").write_bytes(b"there before")
    model = PowerCut(tmp_path)
    d = tmp_path / "d"
    steps = [
        ("mkdir", d),
        ("folder_fsync", tmp_path),  # d survives
        ("create", d / "f"),
        ("write", d / "f", b"abc"),
        ("file_fsync", d / "f"),
        ("write", d / "f", b"def"),  # after f's last fsync: lost
        ("create", d / "e"),
        ("write", d / "e", b"never synced"),
        ("link", d / "f", d / "h"),
        ("folder_fsync", d),  # f, e and h survive; h is f
        ("link", d / "f", d / "g"),  # d not synced after: g is gone
        ("unlink", tmp_path / "old"),  # the root not synced after: old comes back
        ("mkdir", d / "sub"),
        ("create", d / "sub" / "x"),
        ("write", d / "sub" / "x", b"x"),
        ("file_fsync", d / "sub" / "x"),
        ("folder_fsync", d / "sub"),  # but d is not synced after: sub is gone with x
        ("rename", d / "e", d / "e2"),  # not synced: still e
    ]
    for kind, path, *rest in steps:
        target = rest[0] if rest and isinstance(rest[0], Path) else None
        data = rest[0] if rest and isinstance(rest[0], bytes) else b""
        model.apply(Operation(kind, path, target, data))  # type: ignore[arg-type]
    (tmp_path / "old").unlink()
    model.rebuild("d")
    model.rebuild("old")
    assert sorted(p.name for p in d.iterdir()) == ["e", "f", "h"]
    assert (d / "f").read_bytes() == b"abc"
    assert (d / "e").read_bytes() == b""
    assert (d / "h").stat().st_ino == (d / "f").stat().st_ino
    assert (tmp_path / "old").read_bytes() == b"there before"


def test_the_model_counts_a_filesystem_sync_for_file_contents_only(tmp_path: Path) -> None:
    """One syncfs: every file's bytes so far survive, no folder entry made since its fsync."""
    model = PowerCut(tmp_path)
    d, tmp = tmp_path / "d", tmp_path / "d" / "tmp"
    steps = [
        ("mkdir", d),
        ("mkdir", tmp),
        ("folder_fsync", d),
        ("folder_fsync", tmp_path),  # d and d/tmp survive
        ("create", tmp / "a"),
        ("write", tmp / "a", b"first"),
        ("folder_fsync", tmp),  # a's name survives
        ("create", tmp / "b"),
        ("write", tmp / "b", b"second"),
        ("filesystem_sync", tmp),  # a's and b's contents; not b's name
        ("write", tmp / "a", b" and after"),  # after the sync: lost
        ("link", tmp / "b", d / "b"),
        ("folder_fsync", d),  # b survives under d, with its synced content
        ("create", tmp / "c"),
        ("write", tmp / "c", b"too late"),
        ("folder_fsync", tmp),  # c's name survives, its content does not
    ]
    for kind, path, *rest in steps:
        target = rest[0] if rest and isinstance(rest[0], Path) else None
        data = rest[0] if rest and isinstance(rest[0], bytes) else b""
        model.apply(Operation(kind, path, target, data))  # type: ignore[arg-type]
    model.rebuild("d")
    assert sorted(p.name for p in tmp.iterdir()) == ["a", "b", "c"]
    assert (tmp / "a").read_bytes() == b"first"
    assert (d / "b").read_bytes() == b"second"
    assert (tmp / "c").read_bytes() == b""


# -- a real Dovecot ------------------------------------------------------------


def dovecot_cut(
    runner: Runner, dovecot: Any, folder: Path, cut: int | None, originals: list[bytes]
) -> int:
    """One cut point against a fresh Dovecot user holding ``originals``; the operation count."""
    mailbox = dovecot.add_user()
    for raw in originals:
        mailbox.deliver(raw)
    env = {PASSWORD_ENV: mailbox.password}
    ws = new_workspace(folder)
    ws.write_config([account(dovecot, mailbox, "delete")])
    model, cut_at = cut_run(runner, ws, folder / "cut.log", cut, env=env)
    label = f"Dovecot, cut {cut}" if cut is not None else "Dovecot, uncut"
    with explained(model, cut_at, label):
        gone = Counter(originals) - Counter(mailbox.messages())
        check_survivors(ws, gone.elements(), "maildir")
    again, recovery = recover(runner, ws, folder / "recovery.log", env)
    for moment in ("after the recovery run", "after a power cut at its end"):
        with explained(again, recovery, f"{label}, {moment}"), CLI_LOCK:
            assert mailbox.messages() == [], "Dovecot still holds messages"
            check_dovecot_invariant(ws, mailbox, originals)
        again.rebuild("archive")
    return len(cut_at.replayed)


def test_a_power_cut_against_dovecot_loses_and_doubles_nothing(
    runners: list[Runner], dovecot: Any, tmp_path: Path
) -> None:
    """A sample of the cut points (every one is covered with the fake server above)."""
    seed = power_seed()
    originals = mailbox()
    total = dovecot_cut(runners[0], dovecot, tmp_path / "uncut", None, originals)
    with replayable(seed):
        in_lanes(
            runners,
            cut_points(total, DOVECOT_CUTS, seed),
            lambda runner, cut: dovecot_cut(
                runner, dovecot, tmp_path / f"cut{cut}", cut, originals
            ),
        )


# -- the check can fail ----------------------------------------------------------


def without_last_publish_sync(operations: list[Operation]) -> list[Operation]:
    """``operations`` minus the last folder fsync that made a linked name durable."""
    linked: set[Path] = set()
    last = None
    for index, op in enumerate(operations):
        if op.kind == "link" and op.target is not None:
            linked.add(op.target.parent)
        elif op.kind == "folder_fsync" and op.path in linked:
            last = index
    assert last is not None, "no folder fsync after a link"
    return operations[:last] + operations[last + 1 :]


def test_self_check_a_lost_folder_fsync_is_caught(runner: Runner, tmp_path: Path) -> None:
    """Pretend the run's last folder fsync after a link did not happen: a message is lost.

    The power then takes the last batch's names; the server deleted those
    messages at QUIT, so the same check as above must say so.
    """
    with pytest.raises(AssertionError, match="deleted from the server without a surviving copy"):
        power_cut_then_recover(runner, tmp_path, None, lose=without_last_publish_sync)


def test_self_check_a_writer_without_its_file_fsync_is_caught(
    runner: Runner, tmp_path: Path
) -> None:
    """A child whose files are never synced (no fsync, no syncfs): the power takes them."""
    with pytest.raises(AssertionError, match="deleted from the server without a surviving copy"):
        power_cut_then_recover(runner, tmp_path, None, skip_file_fsync=True)
