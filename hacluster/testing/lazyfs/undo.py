"""LazyFS's undo records: what each file looked like at its last sync, put back at a power loss.

Owns ``Key`` (a backing inode: device and inode number) and ``UndoRecord``: a file's size at its
last sync and the synced bytes overwritten since, each saved once, restored at a power loss and
dropped at fsync. It must never save a byte at or past the synced size (a power loss truncates
those away), never save a byte twice in one sync interval (the first save is the synced
content), and knows nothing of FUSE.
"""

from __future__ import annotations

import bisect
import os
import threading

Key = tuple[int, int]                          # backing (st_dev, st_ino)


class UndoRecord:
    """What one file looked like at its last sync: its size and the old bytes overwritten since.

    Only the first save of a byte matters (that is the synced content), so saved ranges are
    kept disjoint and each byte is read at most once per sync interval. Bytes at or past the
    synced size are never saved: power loss truncates them away.
    """

    def __init__(self, fd: int, synced_size: int) -> None:
        self.fd = fd                           # O_RDWR on the backing inode, owned here
        self.synced_size = synced_size
        self.starts: list[int] = []            # sorted, disjoint saved ranges
        self.chunks: list[bytes] = []
        self.unsynced_bytes = 0                # bytes written since the last sync
        self.closed = False
        self.lock = threading.Lock()

    def save(self, start: int, end: int) -> None:
        """Keep the synced bytes of [start, end) before they are overwritten or cut off."""
        end = min(end, self.synced_size)
        if start >= end:
            return
        gaps: list[tuple[int, int]] = []
        pos = start
        i = max(bisect.bisect_right(self.starts, pos) - 1, 0)
        while pos < end and i < len(self.starts):
            s = self.starts[i]
            e = s + len(self.chunks[i])
            if s >= end:
                break
            if e > pos:
                if s > pos:
                    gaps.append((pos, s))
                pos = e
            i += 1
        if pos < end:
            gaps.append((pos, end))
        for s, e in gaps:
            old = os.pread(self.fd, e - s, s)
            # Synced bytes past the current end were cut by a truncate, which saved them; a
            # short read here would mean that invariant broke, and zeros are the safe filler.
            old += b"\0" * (e - s - len(old))
            at = bisect.bisect_left(self.starts, s)
            self.starts.insert(at, s)
            self.chunks.insert(at, old)

    def restore(self) -> None:
        os.ftruncate(self.fd, self.synced_size)
        for s, chunk in zip(self.starts, self.chunks, strict=True):
            os.pwrite(self.fd, chunk, s)

    def close(self) -> None:
        self.closed = True
        os.close(self.fd)
