"""LazyFS: a FUSE file system that loses what was never made durable, to test power loss.

Owns a passthrough FUSE file system over a backing directory, served by a separate process
(``python -m hacluster.testing.lazyfs BACKING MOUNTPOINT --control SOCKET``), and the Python
handle tests use to drive it (``LazyFS``: ``start``, ``power_loss``, ``stats``, ``stop``). It
speaks the kernel's FUSE protocol on ``/dev/fuse`` itself (no libfuse, no pip or apt package),
and mounts with mount(2), so it needs root. It must never touch anything outside its backing
directory and its mount point, and never claims data is durable that a real disk could lose.

Semantics (the model of a power loss):

- File data written and not yet made durable is lost: each regular file goes back to its
  content and size as of its last fsync or fdatasync (a file created and never synced comes
  back empty; a file that existed in the backing directory before the mount counts as synced).
  A truncate or an extending fallocate since the last sync is undone the same way.
- fsync, fdatasync, O_SYNC/O_DSYNC writes and msync(MS_SYNC) of a shared mapping make a file's
  data durable: the kernel turns each into FUSE writes followed by FUSE_FSYNC on the file
  (msync flushes the dirty pages as writes, then sends FSYNC; tests check this). Dirty pages of
  a shared mapping reach the file system at munmap or process exit (FUSE writes them back when
  the mapping is closed) and stay undurable until a sync.
- Directory entries are durable at once: create, mkdir, unlink, rename, link and symlink
  survive a power loss without a directory fsync (a limit: a real file system may lose a rename
  or a new name whose directory was not fsynced). Undo state is kept per inode, not per name,
  so a file written, renamed and then fsynced under its new name is fully durable, and a file
  renamed before any fsync goes back to its synced content under the new name. Unlinking the
  last name of a file drops its undo state.
- Not modelled (limits): sync(2)/syncfs(2) (they never reach a FUSE server, so they make
  nothing durable here), metadata (mode, owner and times are durable at once), partial loss (a
  power loss drops every unsynced write of a file, never only some of them, a torn one or a
  reordered subset, as a real disk might), and the backing store's own durability (the server
  never fsyncs it: durability is a model here). Unsupported: xattrs, O_TMPFILE, and fallocate
  beyond allocate, keep-size, punch-hole and zero-range. Locks are kept by the kernel, per
  mount. Nothing may write to the backing directory while it is mounted: the mount caches.

Design: every write goes through to the backing file at once, so reads always see the latest
data. Per inode (backing device and inode number) an undo record holds the file's size at its
last sync and the old bytes of each range below that size overwritten since then, saved once;
fsync discards the record. ``power_loss`` unmounts (the kernel flushes dirty pages as writes,
which are recorded like any other; if something still holds the mount it is detached and the
FUSE connection aborted, so its users get errors, like processes on a dead machine), restores
every record (truncate to the synced size, write the saved bytes back), and mounts again: a
new superblock, so no stale page cache or attributes survive. Callers should kill the
processes using the mount first. The mount uses the page cache (shared mmap works) without
writeback caching (every write() reaches the server) and 1 MiB requests. It serves with one
thread by default: measured on two cores, more threads only add GIL hand-offs (a write round
trip is about 30 us with one thread, 60 us with four); ``threads`` raises it.

The package: ``protocol`` (the kernel's FUSE protocol), ``mounts`` (mount(2) and the other libc
calls), ``undo`` (undo records), ``tables``, ``handlers`` and ``server`` (the FUSE server),
``daemon`` (its process, ``python -m hacluster.testing.lazyfs``) and ``handle`` (``LazyFS``,
what tests use). This ``__init__`` only re-exports their public names; it must never hold
logic of its own.
"""

from __future__ import annotations

from hacluster.testing.lazyfs.daemon import main
from hacluster.testing.lazyfs.handle import LazyFS, LazyFSError, PowerLoss, Stats
from hacluster.testing.lazyfs.mounts import fuse_unavailable, is_mounted, umount
from hacluster.testing.lazyfs.server import Server
from hacluster.testing.lazyfs.undo import Key, UndoRecord

__all__ = [
    "Key",
    "LazyFS",
    "LazyFSError",
    "PowerLoss",
    "Server",
    "Stats",
    "UndoRecord",
    "fuse_unavailable",
    "is_mounted",
    "main",
    "umount",
]
