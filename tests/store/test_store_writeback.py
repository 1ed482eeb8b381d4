"""Early writeback of large messages: a hint that changes no byte and no durability step.

The writer asks the kernel (durable.start_writeback, POSIX_FADV_DONTNEED) to
start writing back every WRITEBACK_STEP octets it has written, so the batch's
sync at the end of a large message waits for little. What must hold: the
stored bytes are the same, only octets already written are named, each once,
in order, and a refused hint changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popvault.store import open_store
from popvault.store.base import WRITEBACK_STEP

Format = Literal["maildir", "eml"]
Hint = tuple[int, int, int]  # (offset, length, file size when asked)


def record_hints(monkeypatch: pytest.MonkeyPatch) -> list[Hint]:
    """Wrap os.posix_fadvise: the real call still happens, the hints are noted."""
    hints: list[Hint] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        hints.append((offset, length, os.fstat(fd).st_size))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    return hints


def message(octets: int, seed: int) -> bytes:
    """CRLF lines of varied length, ``octets`` long (the last line may lack its CRLF)."""
    rng = random.Random(seed)
    pool = [
        bytes(rng.choice(b"abcxyz.=\r") for _ in range(rng.randrange(0, 200))) + b"\r\n"
        for _ in range(64)
    ]
    lines = []
    total = 0
    while total < octets:
        line = rng.choice(pool)
        lines.append(line)
        total += len(line)
    return b"".join(lines)[:octets]


def store_in_chunks(tmp: Path, fmt: Format, data: bytes, sizes: list[int]) -> tuple[bytes, str]:
    store = open_store(fmt, tmp, "box")
    writer = store.begin(received_at=datetime.now(UTC))
    pos, turn = 0, 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        writer.write(data[pos : pos + size])
        pos, turn = pos + size, turn + 1
    sealed = writer.seal()
    writer.commit()
    return (tmp / sealed.relpath).read_bytes(), sealed.sha256


@pytest.mark.parametrize("fmt", ["maildir", "eml"])
@settings(max_examples=8, deadline=None)
@given(
    extra=st.integers(min_value=0, max_value=WRITEBACK_STEP),
    sizes=st.lists(st.sampled_from([999, 65_535, 65_536, 262_144, 3 << 20]), min_size=1),
)
def test_hints_name_written_octets_once_in_order_and_change_no_byte(
    tmp_path_factory: pytest.TempPathFactory, fmt: Format, extra: int, sizes: list[int]
) -> None:
    data = message(2 * WRITEBACK_STEP + extra, seed=extra)
    with pytest.MonkeyPatch.context() as patch:
        hints = record_hints(patch)
        stored, sha256 = store_in_chunks(tmp_path_factory.mktemp(fmt), fmt, data, sizes)
    reference = data.replace(b"\r\n", b"\n") if fmt == "maildir" else data
    assert stored == reference
    assert sha256 == hashlib.sha256(reference).hexdigest()
    # Contiguous from 0, each at least a step long, never past what was written.
    assert [offset for offset, _, _ in hints] == [0, *ends_before_last(hints)]
    assert all(length >= WRITEBACK_STEP for _, length, _ in hints)
    assert all(offset + length <= size for offset, length, size in hints)
    # Less than one step is left unhinted at the end.
    assert len(stored) - sum(length for _, length, _ in hints) < WRITEBACK_STEP


def ends_before_last(hints: list[Hint]) -> list[int]:
    """Where each hint after the first must start: where the one before ended."""
    return [offset + length for offset, length, _ in hints[:-1]]


def test_a_message_under_one_step_asks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hints = record_hints(monkeypatch)
    data = message(WRITEBACK_STEP - 1, seed=1)
    stored, _ = store_in_chunks(tmp_path, "eml", data, [262_144])
    assert stored == data
    assert hints == []


def test_a_refused_hint_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append(offset)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    data = message(3 * WRITEBACK_STEP, seed=2)
    stored, sha256 = store_in_chunks(tmp_path, "eml", data, [262_144])
    assert asked  # it was asked, and refused
    assert stored == data
    assert sha256 == hashlib.sha256(data).hexdigest()
