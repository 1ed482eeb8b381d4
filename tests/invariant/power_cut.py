"""What a power cut leaves of a folder tree: a replay of the store's durable operations.

:mod:`popvault.store.durable` reports every change it makes (see
:func:`~popvault.store.durable.observe`). :class:`PowerCut` replays those
reports over a model of the tree and works out what would survive if the
power went right after the last one, in the worst case a journaling file
system allows (ext4 ``data=ordered``, XFS):

* a file keeps the content it had at its last fsync — the store writes each
  file once, front to back, so that is the bytes written before that fsync;
  a file never fsynced is empty; a ``filesystem_sync`` (one ``syncfs`` for a
  batch) counts as an fsync of every file, and of no folder (on ext4 without
  a journal syncfs may leave folder blocks for a later flush);
* a folder keeps the entries it had at its last fsync: names created or
  linked after it are gone, names removed after it come back (with the file
  they named);
* a folder created during the recording exists only if its parent was
  fsynced after the ``mkdir``; otherwise it is gone with all it held;
* whatever existed when the recording began counts as durable.

Hard links stay links: a file reachable under two surviving names is one
file. Operations on paths outside the model's root are ignored (the store
also syncs the archive root's parent, which lies outside).

The child side writes the reports to a log (:func:`encode`), one JSON line
each, so that the parent can replay what a killed process did
(:func:`read_log`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popvault.store.durable import Operation


@dataclass(eq=False)
class FileNode:
    """A file: every byte written to it, and how many of them were fsynced."""

    data: bytearray = field(default_factory=bytearray)
    synced: int = 0


@dataclass(eq=False)
class FolderNode:
    """A folder: its entries now, and its entries as of its last fsync."""

    entries: dict[str, Node] = field(default_factory=dict)
    durable: dict[str, Node] = field(default_factory=dict)


Node = FileNode | FolderNode


class PowerCut:
    """A model of the tree under ``root``, fed :class:`Operation` reports in order.

    Usable directly as a recorder for :func:`popvault.store.durable.observe`
    (calls are serialised: the store may fsync on a worker thread).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tree = _seed(root)
        self.operations: list[Operation] = []
        self._lock = threading.Lock()

    def __call__(self, operation: Operation) -> None:
        with self._lock:
            self.apply(operation)

    def apply_all(self, operations: Iterable[Operation]) -> None:
        for operation in operations:
            self.apply(operation)

    def apply(self, op: Operation) -> None:
        """Replay one operation on the live side of the model."""
        self.operations.append(op)
        if _relative(self.root, op.path) is None:
            return
        if op.kind == "mkdir":
            self._add(op.path, FolderNode())
        elif op.kind == "create":
            self._add(op.path, FileNode())
        elif op.kind == "write":
            self._file(op.path).data += op.data
        elif op.kind == "file_fsync":
            node = self._file(op.path)
            node.synced = len(node.data)
        elif op.kind == "filesystem_sync":
            for node in _files(self.tree):
                node.synced = len(node.data)
        elif op.kind == "folder_fsync":
            folder = self._folder(op.path)
            folder.durable = dict(folder.entries)
        elif op.kind == "link":
            assert op.target is not None
            self._add(op.target, self._node(op.path))
        elif op.kind == "rename":
            assert op.target is not None
            self._add(op.target, self._node(op.path), replace=True)
            del self._folder(op.path.parent).entries[op.path.name]
        elif op.kind == "unlink":
            self._folder(op.path.parent).entries.pop(op.path.name, None)
        else:
            raise AssertionError(f"unknown operation {op!r}")

    def rebuild(self, name: str) -> None:
        """Replace ``root/name`` on disk with what a power cut now would leave of it."""
        target = self.root / name
        if target.exists():
            shutil.rmtree(target)
        node = self.tree.durable.get(name)
        if node is not None:
            _materialise(node, target, {})

    def describe(self, operations: Iterable[Operation] | None = None) -> list[str]:
        """The operations (all by default) as short lines, paths relative to the root."""
        ops = self.operations if operations is None else operations
        return [describe(op, self.root) for op in ops]

    # The live side of the model, looked up by path.

    def _node(self, path: Path) -> Node:
        parts = _relative(self.root, path)
        assert parts is not None, f"{path} is outside {self.root}"
        node: Node = self.tree
        for part in parts:
            assert isinstance(node, FolderNode), f"{path}: a file on the way"
            assert part in node.entries, f"{path}: not made through the store (or model wrong)"
            node = node.entries[part]
        return node

    def _file(self, path: Path) -> FileNode:
        node = self._node(path)
        assert isinstance(node, FileNode), f"{path} is not a file"
        return node

    def _folder(self, path: Path) -> FolderNode:
        node = self._node(path)
        assert isinstance(node, FolderNode), f"{path} is not a folder"
        return node

    def _add(self, path: Path, node: Node, *, replace: bool = False) -> None:
        folder = self._folder(path.parent)
        assert replace or path.name not in folder.entries, f"{path} exists already"
        folder.entries[path.name] = node


def _relative(root: Path, path: Path) -> tuple[str, ...] | None:
    try:
        return path.relative_to(root).parts
    except ValueError:
        return None


def _files(folder: FolderNode) -> list[FileNode]:
    """Every file under ``folder``, by its names now and as of the last folder fsyncs."""
    found: dict[int, FileNode] = {}
    folders, seen = [folder], {id(folder)}
    while folders:
        current = folders.pop()
        for node in [*current.entries.values(), *current.durable.values()]:
            if isinstance(node, FileNode):
                found[id(node)] = node
            elif id(node) not in seen:
                seen.add(id(node))
                folders.append(node)
    return list(found.values())


def _seed(path: Path) -> FolderNode:
    """The tree under ``path`` as it is now, all of it durable."""
    folder = FolderNode()
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folder.entries[entry.name] = _seed(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                data = bytearray(Path(entry.path).read_bytes())
                folder.entries[entry.name] = FileNode(data, len(data))
    folder.durable = dict(folder.entries)
    return folder


def _materialise(node: Node, path: Path, made: dict[int, Path]) -> None:
    if isinstance(node, FolderNode):
        path.mkdir(mode=0o700)
        for name, child in node.durable.items():
            _materialise(child, path / name, made)
    elif id(node) in made:
        os.link(made[id(node)], path)
    else:
        path.write_bytes(bytes(node.data[: node.synced]))
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
        made[id(node)] = path


def describe(op: Operation, root: Path) -> str:
    """``op`` as one short line, e.g. ``link acct/tmp/x -> acct/new/x``."""

    def short(path: Path) -> str:
        parts = _relative(root, path)
        return str(path) if parts is None else "/".join(parts) or "."

    line = f"{op.kind} {short(op.path)}"
    if op.target is not None:
        line += f" -> {short(op.target)}"
    if op.kind == "write":
        line += f" ({len(op.data)} bytes)"
    return line


# The child's log: one JSON object per line, the written bytes in base64.


def encode(op: Operation, *, cut: bool = False) -> bytes:
    """One log line for ``op``; ``cut``: the operation the power cut came before."""
    record: dict[str, Any] = {"kind": op.kind, "path": str(op.path), "cut": cut}
    if op.target is not None:
        record["target"] = str(op.target)
    if op.data:
        record["data"] = base64.b64encode(op.data).decode("ascii")
    return json.dumps(record).encode() + b"\n"


def read_log(path: Path) -> tuple[list[Operation], Operation | None]:
    """The operations logged at ``path``, and the one the power cut came before (if any)."""
    operations: list[Operation] = []
    cut: Operation | None = None
    for line in path.read_bytes().splitlines():
        record = json.loads(line)
        target = record.get("target")
        op = Operation(
            record["kind"],
            Path(record["path"]),
            None if target is None else Path(target),
            base64.b64decode(record.get("data", "")),
        )
        if record["cut"]:
            cut = op
        else:
            operations.append(op)
    return operations, cut
