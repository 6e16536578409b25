"""The LazyFS server's tables: nodeids, open files and directories, undo records, counters.

Owns the kernel's view of the backing tree as the server keeps it (``_Node`` per nodeid with
its lookup count, ``_File`` per file handle, ``_Dir`` per directory handle), reopening inodes
through /proc/self/fd, and the ``_Tables`` mixin of ``Server``: finding a nodeid, answering an
entry (and counting the lookup), forgetting, the undo record of an inode (saved before each
change, dropped when its last name goes) and the counters. It must never change a file itself
(handlers do, through ``_modify``), and never answer the kernel.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hacluster.testing.lazyfs.protocol import ENTRY_OUT, ROOT_ID, TTL, _attr
from hacluster.testing.lazyfs.undo import Key, UndoRecord


def _proc(fd: int) -> bytes:
    # Reopening through the /proc magic link works on O_PATH descriptors and on unlinked files:
    # the server never needs a path name, so renames cannot confuse it.
    return b"/proc/self/fd/%d" % fd


@dataclass
class _Node:
    fd: int                                    # O_PATH on the backing inode
    key: Key
    nlookup: int = 0


@dataclass
class _File:
    fd: int
    key: Key


@dataclass
class _Dir:
    node: _Node
    entries: list[tuple[int, int, bytes]] | None = None


class _Tables:
    """The table helpers of ``Server``, whose ``__init__`` creates every table declared here."""

    backing: Path
    _root: _Node
    _nodes: dict[int, _Node]
    _by_key: dict[Key, int]
    _table_lock: threading.Lock
    _next_id: itertools.count[int]
    _files: dict[int, _File]
    _dirs: dict[int, _Dir]
    _next_fh: itertools.count[int]
    _records: dict[Key, UndoRecord]
    _records_lock: threading.Lock
    _counts: dict[str, int]
    _counts_lock: threading.Lock

    def _node(self, nodeid: int) -> _Node:
        if nodeid == ROOT_ID:
            return self._root
        node = self._nodes.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown nodeid")
        return node

    def _entry(self, parent: _Node, name: bytes) -> bytes:
        """Look ``name`` up in ``parent`` and count the lookup, as each entry reply must."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent.fd)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._table_lock:
            if key == self._root.key:
                nodeid, node = ROOT_ID, self._root
            elif key in self._by_key:
                nodeid = self._by_key[key]
                node = self._nodes[nodeid]
            else:
                nodeid = next(self._next_id)
                node = _Node(fd, key)
                self._nodes[nodeid] = node
                self._by_key[key] = nodeid
            node.nlookup += 1
        if node.fd != fd:
            os.close(fd)
        return ENTRY_OUT.pack(nodeid, 0, TTL, TTL, 0, 0) + _attr(st)

    def _drop_nlookup(self, nodeid: int, count: int) -> None:
        if nodeid == ROOT_ID:
            return
        with self._table_lock:
            node = self._nodes.get(nodeid)
            if node is None:
                return
            node.nlookup -= count
            if node.nlookup > 0:
                return
            del self._nodes[nodeid]
            del self._by_key[node.key]
        os.close(node.fd)

    def _record(self, key: Key, reopen: bytes) -> UndoRecord:
        with self._records_lock:
            rec = self._records.get(key)
            if rec is None:
                fd = os.open(reopen, os.O_RDWR)
                rec = UndoRecord(fd, os.fstat(fd).st_size)
                self._records[key] = rec
            return rec

    def _modify(self, key: Key, reopen: bytes, start: int, end: int,
                change: Callable[[UndoRecord], int]) -> int:
        """Save the synced bytes of [start, end) in ``key``'s record, then apply ``change``."""
        while True:
            rec = self._record(key, reopen)
            with rec.lock:
                if rec.closed:                 # an fsync retired it meanwhile: take a new one
                    continue
                rec.save(start, end)
                return change(rec)

    def _drop_if_gone(self, key: Key | None) -> None:
        """Forget the undo state of an inode whose last name is gone."""
        if key is None:
            return
        with self._records_lock:
            rec = self._records.get(key)
            if rec is None or os.fstat(rec.fd).st_nlink > 0:
                return
            del self._records[key]
        with rec.lock:
            rec.close()

    def _key_of(self, parent: _Node, name: bytes) -> Key | None:
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += amount
