"""Fixtures shared by the store tests: a private umask, an fsync spy, a sandbox runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest


@pytest.fixture
def received_at() -> datetime:
    """A fixed archive time (aware UTC) with microseconds, for predictable names."""
    return datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run the test with umask 0, the most permissive: modes must still be private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@dataclass
class FsyncSpy:
    """Records what each os.fsync call synced: (path, whether it was a folder, names in it)."""

    calls: list[tuple[str, bool, frozenset[str]]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]

    def dirs(self) -> list[str]:
        return [path for path, is_dir, _ in self.calls if is_dir]

    def files(self) -> list[str]:
        return [path for path, is_dir, _ in self.calls if not is_dir]

    def listing_when_synced(self, folder: Path) -> frozenset[str]:
        """Names in ``folder`` at its last fsync (proves the sync came after the link)."""
        found = [names for path, is_dir, names in self.calls if is_dir and path == str(folder)]
        assert found, f"{folder} was never fsynced; synced: {self.paths()}"
        return found[-1]


@pytest.fixture
def fsync_spy(monkeypatch: pytest.MonkeyPatch) -> FsyncSpy:
    """Wrap os.fsync: the real call still happens, and the spy notes what was synced."""
    spy = FsyncSpy()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        is_dir = os.path.isdir(path)
        names = frozenset(os.listdir(path)) if is_dir else frozenset()
        spy.calls.append((path, is_dir, names))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return spy


@pytest.fixture
def run_python() -> Callable[..., dict[str, object]]:
    """A runner for scripts in a fresh interpreter (see :func:`_run_python`)."""
    return _run_python


@pytest.fixture
def tiny_fs() -> Callable[[Path, str], list[str]]:
    """A factory of command prefixes that mount a tiny tmpfs (see :func:`_tiny_fs`)."""
    return _tiny_fs


def _run_python(
    script: str, *, prefix: list[str] | None = None, user: int | None = None
) -> dict[str, object]:
    """Run ``script`` in a fresh interpreter (optionally wrapped or as ``user``); return its JSON.

    The script prints one JSON object as its last line of output.
    """
    command = [*(prefix or []), sys.executable, "-c", textwrap.dedent(script)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, user=user, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"sandbox script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _tiny_fs(mount_point: Path, size: str) -> list[str]:
    """A command prefix that runs in a new mount namespace with a tiny tmpfs at ``mount_point``.

    ``unshare -rm`` needs no root (an unprivileged user namespace); the test
    is skipped where the kernel or the container forbids it.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(
        [unshare, "-rm", "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.decode().strip()}")
    return [
        unshare,
        "-rm",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size},mode=0755 tmpfs "{mount_point}" && exec "$@"',
        "sh",
    ]
