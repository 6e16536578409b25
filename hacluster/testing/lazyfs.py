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
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import ctypes
import errno
import itertools
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

# --- the kernel's FUSE protocol (include/uapi/linux/fuse.h), version 7.38 --------------------

KERNEL_MAJOR = 7
KERNEL_MINOR = 38
ROOT_ID = 1

LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, FLUSH, INIT, OPENDIR, READDIR = 17, 18, 20, 25, 26, 27, 28
RELEASEDIR, FSYNCDIR, CREATE, INTERRUPT, DESTROY = 29, 30, 35, 36, 38
BATCH_FORGET, FALLOCATE, RENAME2 = 42, 43, 45

# INIT flags we accept when the kernel offers them. Deliberately absent: WRITEBACK_CACHE (every
# write must reach us, or unsynced data would sit in the kernel where we cannot drop it),
# POSIX_LOCKS/FLOCK_LOCKS (the kernel then keeps locks locally, which is right for one host),
# DONT_MASK (the kernel applies the umask) and ATOMIC_O_TRUNC (O_TRUNC arrives as a SETATTR,
# so truncation is recorded on one path).
ASYNC_READ, BIG_WRITES, ASYNC_DIO = 1 << 0, 1 << 5, 1 << 15
PARALLEL_DIROPS, MAX_PAGES = 1 << 18, 1 << 22
WANTED_INIT_FLAGS = ASYNC_READ | BIG_WRITES | ASYNC_DIO | PARALLEL_DIROPS | MAX_PAGES

FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 1 << 4, 1 << 5, 1 << 7, 1 << 8
FOPEN_KEEP_CACHE = 1 << 1

IN_HEADER = struct.Struct("<IIQQIIIHH")       # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")            # len error unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")     # fuse_attr
ENTRY_OUT = struct.Struct("<QQQQII")          # followed by fuse_attr
ATTR_OUT = struct.Struct("<QII")              # followed by fuse_attr
OPEN_OUT = struct.Struct("<QII")
OPEN_IN = struct.Struct("<II")
CREATE_IN = struct.Struct("<IIII")
MKNOD_IN = struct.Struct("<IIII")
MKDIR_IN = struct.Struct("<II")
RENAME_IN = struct.Struct("<Q")
RENAME2_IN = struct.Struct("<QII")
LINK_IN = struct.Struct("<Q")
RW_IN = struct.Struct("<QQII")                # fh offset size flags: start of read_in/write_in
WRITE_IN_SIZE = 40
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
FALLOCATE_IN = struct.Struct("<QQQII")
DIRENT = struct.Struct("<QQII")

MAX_WRITE = 1 << 20                           # bytes per FUSE read or write request
MAX_PAGES_COUNT = MAX_WRITE // 4096
READ_BUFFER = MAX_WRITE + 64 * 1024           # the kernel wants room for header + max_write
TTL = 5                                       # seconds the kernel may cache names and attrs

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def umount(path: Path, *, lazy: bool = False) -> None:
    """umount2(2) on ``path``; ``lazy`` detaches it even while it is in use."""
    _check(_libc.umount2(os.fsencode(path), MNT_DETACH if lazy else 0), f"umount {path}")


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point, even a dead FUSE one (which os.path.ismount misses)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts", "rb") as f:
        for line in f:
            point = line.split(b" ")[1]
            # /proc/self/mounts escapes space, tab, newline and backslash in octal.
            for code in (b"\\134", b"\\040", b"\\011", b"\\012"):
                point = point.replace(code, bytes([int(code[1:], 8)]))
            if os.fsdecode(point) == target:
                return True
    return False


def fuse_unavailable() -> str | None:
    """None when LazyFS can mount here; otherwise the reason, for a clear skip."""
    if os.geteuid() != 0:
        return "LazyFS mounts a FUSE file system with mount(2), which needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE support in this kernel or container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"cannot open /dev/fuse: {e.strerror}"
    return None


def _proc(fd: int) -> bytes:
    # Reopening through the /proc magic link works on O_PATH descriptors and on unlinked files:
    # the server never needs a path name, so renames cannot confuse it.
    return b"/proc/self/fd/%d" % fd


def _cstring(data: memoryview | bytes, start: int = 0) -> tuple[bytes, int]:
    """The NUL-terminated name at ``start`` and the offset just past its NUL."""
    raw = bytes(data[start:])
    end = raw.index(b"\0")
    return raw[:end], start + end + 1


def _encode_dev(dev: int) -> int:
    # The kernel decodes fuse_attr.rdev with new_decode_dev (32-bit layout).
    major, minor = os.major(dev), os.minor(dev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def _attr(st: os.stat_result) -> bytes:
    giga = 1_000_000_000
    return ATTR.pack(
        st.st_ino, st.st_size, st.st_blocks,
        st.st_atime_ns // giga, st.st_mtime_ns // giga, st.st_ctime_ns // giga,
        st.st_atime_ns % giga, st.st_mtime_ns % giga, st.st_ctime_ns % giga,
        st.st_mode, st.st_nlink, st.st_uid, st.st_gid, _encode_dev(st.st_rdev),
        st.st_blksize, 0)


# --- undo records ------------------------------------------------------------------------------

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


# --- the FUSE server (runs in its own process) ---------------------------------------------------


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


class _Reply(Exception):
    """Raised by a handler that has nothing to send (FORGET, INTERRUPT)."""


Handler = Callable[[int, memoryview], bytes | Sequence[bytes | memoryview]]


class Server:
    """Serves one backing directory on one mount point; survives unmount/remount cycles."""

    def __init__(self, backing: Path, mount: Path, threads: int = 1) -> None:
        self.backing = backing.resolve()
        self.mount = mount.resolve()
        self.threads = threads
        root_fd = os.open(self.backing, os.O_PATH | os.O_DIRECTORY)
        st = os.fstat(root_fd)
        self._root = _Node(root_fd, (st.st_dev, st.st_ino), 1)
        self._nodes: dict[int, _Node] = {}
        self._by_key: dict[Key, int] = {}
        self._table_lock = threading.Lock()
        self._next_id = itertools.count(ROOT_ID + 1)
        self._files: dict[int, _File] = {}
        self._dirs: dict[int, _Dir] = {}
        self._next_fh = itertools.count(1)
        self._records: dict[Key, UndoRecord] = {}
        self._records_lock = threading.Lock()
        self._counts = {"writes": 0, "bytes_written": 0, "fsyncs": 0, "power_losses": 0}
        self._counts_lock = threading.Lock()
        self._fuse_fd = -1
        self._workers: list[threading.Thread] = []
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._initialized = threading.Event()
        self._handlers: dict[int, Handler] = {
            INIT: self._init, LOOKUP: self._lookup, FORGET: self._forget,
            BATCH_FORGET: self._batch_forget, GETATTR: self._getattr, SETATTR: self._setattr,
            READLINK: self._readlink, SYMLINK: self._symlink, MKNOD: self._mknod,
            MKDIR: self._mkdir, UNLINK: self._unlink, RMDIR: self._rmdir, RENAME: self._rename,
            RENAME2: self._rename2, LINK: self._link, OPEN: self._open, CREATE: self._create,
            READ: self._read, WRITE: self._write, STATFS: self._statfs, RELEASE: self._release,
            FLUSH: self._empty, FSYNC: self._fsync, OPENDIR: self._opendir,
            READDIR: self._readdir, RELEASEDIR: self._releasedir, FSYNCDIR: self._empty,
            FALLOCATE: self._fallocate, INTERRUPT: self._no_reply, DESTROY: self._empty,
        }

    # -- mounting ---------------------------------------------------------------------------

    def mount_fs(self, timeout: float = 10.0) -> None:
        """Mount and serve; returns once the kernel's INIT has been answered."""
        self._initialized.clear()
        self._stopping = False
        self._fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe()
        rootmode = format(stat.S_IFDIR | stat.S_IMODE(os.fstat(self._root.fd).st_mode), "o")
        opts = (f"fd={self._fuse_fd},rootmode={rootmode},user_id=0,group_id=0,"
                f"default_permissions,allow_other,max_read={MAX_WRITE},subtype=lazyfs")
        try:
            _check(_libc.mount(b"lazyfs", os.fsencode(self.mount), b"fuse",
                               MS_NOSUID | MS_NODEV, opts.encode()), f"mount {self.mount}")
        except OSError:
            self._close_connection()
            raise
        self._workers = [threading.Thread(target=self._serve, name=f"fuse-{i}", daemon=True)
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()
        if not self._initialized.wait(timeout):
            self.unmount_fs()
            raise TimeoutError(f"the kernel sent no FUSE INIT for {self.mount}")

    def unmount_fs(self) -> bool:
        """Unmount and stop serving; True when the mount was busy and had to be torn down."""
        forced = False
        try:
            umount(self.mount)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            # Something still uses the mount: detach it, stop serving and close the device,
            # which aborts the connection, so the survivors' calls fail (ENOTCONN) as on a
            # dead machine instead of reaching the restored files.
            log.warning("%s is busy at unmount: detaching it and aborting its connection",
                        self.mount)
            umount(self.mount, lazy=True)
            forced = True
        self._stopping = True
        os.write(self._wake_w, b"x")
        for t in self._workers:
            t.join()
        self._close_connection()
        self._forget_everything()
        return forced

    def _close_connection(self) -> None:
        for fd in (self._fuse_fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fuse_fd, self._wake_r, self._wake_w = -1, -1, -1

    def _forget_everything(self) -> None:
        # A new superblock starts with no nodeids and no open files.
        for node in self._nodes.values():
            os.close(node.fd)
        for f in self._files.values():
            os.close(f.fd)
        self._nodes.clear()
        self._by_key.clear()
        self._files.clear()
        self._dirs.clear()

    # -- power loss and stats -----------------------------------------------------------------

    def drop_unsynced(self) -> dict[str, int]:
        """Restore every file to its last synced state (the server must not be serving)."""
        with self._records_lock:
            records = list(self._records.values())
            self._records.clear()
        dropped = 0
        for rec in records:
            with rec.lock:
                dropped += rec.unsynced_bytes
                rec.restore()
                rec.close()
        with self._counts_lock:
            self._counts["power_losses"] += 1
        return {"bytes_dropped": dropped, "files_affected": len(records)}

    def power_loss(self) -> dict[str, Any]:
        forced = self.unmount_fs()
        result: dict[str, Any] = dict(self.drop_unsynced())
        result["forced"] = forced
        self.mount_fs()
        log.info("power loss: %s", result)
        return result

    def stats(self) -> dict[str, int]:
        with self._records_lock:
            records = list(self._records.values())
        with self._counts_lock:
            out = dict(self._counts)
        out["unsynced_files"] = len(records)
        out["unsynced_bytes"] = sum(r.unsynced_bytes for r in records)
        return out

    def close_records(self) -> None:
        """Forget undo state without applying it: a clean shutdown keeps every write."""
        with self._records_lock:
            for rec in self._records.values():
                with rec.lock:
                    rec.close()
            self._records.clear()

    # -- the request loop ---------------------------------------------------------------------

    def _serve(self) -> None:
        buf = bytearray(READ_BUFFER)
        view = memoryview(buf)
        fd = self._fuse_fd
        # Non-blocking reads and an epoll that also watches the wake pipe, so a forced unmount
        # can stop threads no request will ever reach. EPOLLEXCLUSIVE wakes one idle thread
        # per request instead of all of them.
        with select.epoll() as poller:
            poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(self._wake_r, select.EPOLLIN)
            while not self._stopping:
                try:
                    n = os.readv(fd, [buf])
                except BlockingIOError:
                    # Read first, wait only when idle: under load that saves a syscall a request.
                    poller.poll()
                    continue
                except OSError as e:
                    if e.errno == errno.ENODEV:      # unmounted: the connection is gone
                        break
                    if e.errno in (errno.EINTR, errno.ENOENT):
                        continue
                    raise
                try:
                    self._dispatch(fd, view[:n])
                except Exception:
                    # A serving thread must not die: the kernel would wait for it forever.
                    log.exception("cannot answer a FUSE request")

    def _dispatch(self, fd: int, req: memoryview) -> None:
        _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(req)
        body = req[IN_HEADER.size:]
        handler = self._handlers.get(opcode)
        error = 0
        payload: bytes | Sequence[bytes | memoryview] = b""
        if handler is None:
            error = errno.ENOSYS
        else:
            try:
                payload = handler(nodeid, body)
            except _Reply:
                return
            except OSError as e:
                error = e.errno or errno.EIO
            except Exception:
                log.exception("FUSE opcode %d failed", opcode)
                error = errno.EIO
        if error:
            parts: list[bytes | memoryview] = [OUT_HEADER.pack(OUT_HEADER.size, -error, unique)]
        else:
            pieces = [payload] if isinstance(payload, bytes) else list(payload)
            size = OUT_HEADER.size + sum(len(p) for p in pieces)
            parts = [OUT_HEADER.pack(size, 0, unique), *pieces]
        try:
            os.writev(fd, parts)
        except OSError as e:
            # ENOENT: the request was interrupted or aborted; nobody waits for the answer.
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise
        if opcode == INIT and not error:
            self._initialized.set()

    # -- helpers ------------------------------------------------------------------------------

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

    # -- handlers -----------------------------------------------------------------------------

    def _init(self, nodeid: int, body: memoryview) -> bytes:
        major, minor, max_readahead, flags = INIT_IN.unpack_from(body)
        if major != KERNEL_MAJOR:
            raise OSError(errno.EPROTO, f"FUSE major version {major}")
        reply = INIT_OUT.pack(KERNEL_MAJOR, min(minor, KERNEL_MINOR), max_readahead,
                              flags & WANTED_INIT_FLAGS, 64, 48, MAX_WRITE, 1,
                              MAX_PAGES_COUNT, 0, 0)
        return reply

    def _no_reply(self, nodeid: int, body: memoryview) -> bytes:
        raise _Reply

    def _empty(self, nodeid: int, body: memoryview) -> bytes:
        return b""

    def _lookup(self, nodeid: int, body: memoryview) -> bytes:
        name, _ = _cstring(body)
        return self._entry(self._node(nodeid), name)

    def _forget(self, nodeid: int, body: memoryview) -> bytes:
        (count,) = FORGET_IN.unpack_from(body)
        self._drop_nlookup(nodeid, count)
        raise _Reply

    def _batch_forget(self, nodeid: int, body: memoryview) -> bytes:
        (n, _) = BATCH_FORGET_IN.unpack_from(body)
        for i in range(n):
            target, count = FORGET_ONE.unpack_from(body, BATCH_FORGET_IN.size + i * 16)
            self._drop_nlookup(target, count)
        raise _Reply

    def _getattr(self, nodeid: int, body: memoryview) -> bytes:
        st = os.fstat(self._node(nodeid).fd)
        return ATTR_OUT.pack(TTL, 0, 0) + _attr(st)

    def _setattr(self, nodeid: int, body: memoryview) -> bytes:
        (valid, _, _, size, _, atime, mtime, _, atimens, mtimens, _, mode, _, uid, gid,
         _) = SETATTR_IN.unpack_from(body)
        node = self._node(nodeid)
        path = _proc(node.fd)
        if valid & FATTR_MODE:
            os.chmod(path, stat.S_IMODE(mode))
        if valid & (FATTR_UID | FATTR_GID):
            os.chown(path, uid if valid & FATTR_UID else -1, gid if valid & FATTR_GID else -1)
        if valid & FATTR_SIZE:
            self._truncate(node.key, path, size)
        if valid & (FATTR_ATIME | FATTR_MTIME):
            st = os.fstat(node.fd)
            now = time.time_ns()
            a = st.st_atime_ns
            m = st.st_mtime_ns
            if valid & FATTR_ATIME:
                a = now if valid & FATTR_ATIME_NOW else atime * 1_000_000_000 + atimens
            if valid & FATTR_MTIME:
                m = now if valid & FATTR_MTIME_NOW else mtime * 1_000_000_000 + mtimens
            os.utime(path, ns=(a, m))
        return ATTR_OUT.pack(TTL, 0, 0) + _attr(os.fstat(node.fd))

    def _truncate(self, key: Key, reopen: bytes, size: int) -> None:
        if os.stat(reopen).st_size == size:
            return                             # nothing to undo: spare the record
        while True:
            rec = self._record(key, reopen)
            with rec.lock:
                if rec.closed:
                    continue
                current = os.fstat(rec.fd).st_size
                rec.save(size, current)        # what a shrink cuts off (clipped to synced)
                os.ftruncate(rec.fd, size)
                return

    def _readlink(self, nodeid: int, body: memoryview) -> bytes:
        return os.fsencode(os.readlink("", dir_fd=self._node(nodeid).fd))

    def _symlink(self, nodeid: int, body: memoryview) -> bytes:
        name, at = _cstring(body)
        target, _ = _cstring(body, at)
        parent = self._node(nodeid)
        os.symlink(target, name, dir_fd=parent.fd)
        return self._entry(parent, name)

    def _mknod(self, nodeid: int, body: memoryview) -> bytes:
        mode, rdev, _, _ = MKNOD_IN.unpack_from(body)
        name, _ = _cstring(body, MKNOD_IN.size)
        parent = self._node(nodeid)
        os.mknod(name, mode, rdev, dir_fd=parent.fd)
        return self._entry(parent, name)

    def _mkdir(self, nodeid: int, body: memoryview) -> bytes:
        mode, _ = MKDIR_IN.unpack_from(body)
        name, _ = _cstring(body, MKDIR_IN.size)
        parent = self._node(nodeid)
        os.mkdir(name, stat.S_IMODE(mode), dir_fd=parent.fd)
        return self._entry(parent, name)

    def _unlink(self, nodeid: int, body: memoryview) -> bytes:
        name, _ = _cstring(body)
        parent = self._node(nodeid)
        key = self._key_of(parent, name)
        os.unlink(name, dir_fd=parent.fd)
        self._drop_if_gone(key)
        return b""

    def _rmdir(self, nodeid: int, body: memoryview) -> bytes:
        name, _ = _cstring(body)
        os.rmdir(name, dir_fd=self._node(nodeid).fd)
        return b""

    def _do_rename(self, nodeid: int, newdir: int, names: memoryview, flags: int) -> bytes:
        old, at = _cstring(names)
        new, _ = _cstring(names, at)
        src, dst = self._node(nodeid), self._node(newdir)
        replaced = self._key_of(dst, new)
        if flags:
            _check(_libc.renameat2(src.fd, old, dst.fd, new, flags), "renameat2")
        else:
            os.rename(old, new, src_dir_fd=src.fd, dst_dir_fd=dst.fd)
        self._drop_if_gone(replaced)
        return b""

    def _rename(self, nodeid: int, body: memoryview) -> bytes:
        (newdir,) = RENAME_IN.unpack_from(body)
        return self._do_rename(nodeid, newdir, body[RENAME_IN.size:], 0)

    def _rename2(self, nodeid: int, body: memoryview) -> bytes:
        newdir, flags, _ = RENAME2_IN.unpack_from(body)
        return self._do_rename(nodeid, newdir, body[RENAME2_IN.size:], flags)

    def _link(self, nodeid: int, body: memoryview) -> bytes:
        (old,) = LINK_IN.unpack_from(body)
        name, _ = _cstring(body, LINK_IN.size)
        parent = self._node(nodeid)
        os.link(_proc(self._node(old).fd), name, dst_dir_fd=parent.fd, follow_symlinks=True)
        return self._entry(parent, name)

    def _open_file(self, fd: int) -> bytes:
        st = os.fstat(fd)
        fh = next(self._next_fh)
        self._files[fh] = _File(fd, (st.st_dev, st.st_ino))
        # KEEP_CACHE: every change goes through this mount, so cached pages stay right until
        # the next power loss, which mounts a new superblock.
        return OPEN_OUT.pack(fh, FOPEN_KEEP_CACHE, 0)

    @staticmethod
    def _backing_flags(flags: int) -> int:
        # Read-write whatever was asked (the kernel enforced permissions; mmap write-back may
        # come through any handle); no O_APPEND (the kernel sends explicit offsets, which
        # pwrite would ignore), no O_TRUNC (it arrives as SETATTR), no O_DIRECT.
        return os.O_RDONLY if flags & os.O_ACCMODE == os.O_RDONLY else os.O_RDWR

    def _open(self, nodeid: int, body: memoryview) -> bytes:
        flags, _ = OPEN_IN.unpack_from(body)
        fd = os.open(_proc(self._node(nodeid).fd), self._backing_flags(flags))
        return self._open_file(fd)

    def _create(self, nodeid: int, body: memoryview) -> Sequence[bytes]:
        flags, mode, _, _ = CREATE_IN.unpack_from(body)
        name, _ = _cstring(body, CREATE_IN.size)
        parent = self._node(nodeid)
        fd = os.open(name, self._backing_flags(flags) | os.O_CREAT | (flags & os.O_EXCL),
                     stat.S_IMODE(mode), dir_fd=parent.fd)
        try:
            entry = self._entry(parent, name)
        except OSError:
            os.close(fd)
            raise
        st = os.fstat(fd)
        if flags & os.O_TRUNC and st.st_size:
            self._truncate((st.st_dev, st.st_ino), _proc(fd), 0)
        return [entry, self._open_file(fd)]

    def _read(self, nodeid: int, body: memoryview) -> bytes:
        fh, offset, size, _ = RW_IN.unpack_from(body)
        return os.pread(self._files[fh].fd, size, offset)

    def _write(self, nodeid: int, body: memoryview) -> bytes:
        fh, offset, size, _ = RW_IN.unpack_from(body)
        f = self._files[fh]
        data = body[WRITE_IN_SIZE:WRITE_IN_SIZE + size]

        def change(rec: UndoRecord) -> int:
            written = os.pwrite(f.fd, data, offset)
            rec.unsynced_bytes += written
            return written

        written = self._modify(f.key, _proc(f.fd), offset, offset + size, change)
        with self._counts_lock:
            self._counts["writes"] += 1
            self._counts["bytes_written"] += written
        return WRITE_OUT.pack(written, 0)

    def _fallocate(self, nodeid: int, body: memoryview) -> bytes:
        fh, offset, length, mode, _ = FALLOCATE_IN.unpack_from(body)
        f = self._files[fh]
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise OSError(errno.EOPNOTSUPP, "fallocate mode not modelled")
        # Punching or zeroing changes content; plain allocation may change the size; either
        # way the record must exist first. KEEP_SIZE alone changes nothing a reader sees.
        changes_content = bool(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
        if mode == FALLOC_FL_KEEP_SIZE:
            _check(_libc.fallocate(f.fd, mode, offset, length), "fallocate")
            return b""

        def change(rec: UndoRecord) -> int:
            _check(_libc.fallocate(f.fd, mode, offset, length), "fallocate")
            return 0

        end = offset + length if changes_content else offset
        self._modify(f.key, _proc(f.fd), offset, end, change)
        return b""

    def _statfs(self, nodeid: int, body: memoryview) -> bytes:
        s = os.statvfs(self.backing)
        return STATFS_OUT.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                               s.f_bsize, s.f_namemax, s.f_frsize, 0)

    def _release(self, nodeid: int, body: memoryview) -> bytes:
        fh, *_ = RELEASE_IN.unpack_from(body)
        f = self._files.pop(fh, None)
        if f is not None:
            os.close(f.fd)
            self._drop_if_gone(f.key)
        return b""

    def _fsync(self, nodeid: int, body: memoryview) -> bytes:
        fh, _, _ = FSYNC_IN.unpack_from(body)
        f = self._files.get(fh)
        key = f.key if f is not None else self._node(nodeid).key
        # Durability is the model: retiring the undo record is the whole of fsync. The backing
        # file is not fsynced, which keeps the tests fast.
        with self._records_lock:
            rec = self._records.pop(key, None)
        if rec is not None:
            with rec.lock:
                rec.close()
        self._count("fsyncs")
        return b""

    def _opendir(self, nodeid: int, body: memoryview) -> bytes:
        fh = next(self._next_fh)
        self._dirs[fh] = _Dir(self._node(nodeid))
        return OPEN_OUT.pack(fh, 0, 0)

    def _releasedir(self, nodeid: int, body: memoryview) -> bytes:
        fh, *_ = RELEASE_IN.unpack_from(body)
        self._dirs.pop(fh, None)
        return b""

    @staticmethod
    def _list(node: _Node) -> list[tuple[int, int, bytes]]:
        own = os.fstat(node.fd).st_ino
        entries = [(own, stat.S_IFDIR >> 12, b"."), (own, stat.S_IFDIR >> 12, b"..")]
        with os.scandir(_proc(node.fd)) as it:
            for e in it:
                if e.is_symlink():
                    kind = stat.S_IFLNK
                elif e.is_dir(follow_symlinks=False):
                    kind = stat.S_IFDIR
                elif e.is_file(follow_symlinks=False):
                    kind = stat.S_IFREG
                else:
                    kind = stat.S_IFMT(e.stat(follow_symlinks=False).st_mode)
                entries.append((e.inode(), kind >> 12, e.name))
        return entries

    def _readdir(self, nodeid: int, body: memoryview) -> bytes:
        fh, offset, size, _ = RW_IN.unpack_from(body)
        d = self._dirs[fh]
        if offset == 0 or d.entries is None:   # a fresh listing at each rewind
            d.entries = self._list(d.node)
        out = bytearray()
        for i in range(offset, len(d.entries)):
            ino, kind, name = d.entries[i]
            length = DIRENT.size + len(name)
            padded = (length + 7) & ~7
            if len(out) + padded > size:
                break
            out += DIRENT.pack(ino, i + 1, len(name), kind) + name + bytes(padded - length)
        return bytes(out)


def _control_loop(server: Server, sock: socket.socket) -> None:
    """Answer JSON-line commands: ping, stats, power_loss, stop."""
    while True:
        conn, _ = sock.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    op = json.loads(line)["op"]
                    if op == "ping":
                        reply: dict[str, Any] = {"ok": True}
                    elif op == "stats":
                        reply = {"ok": True, **server.stats()}
                    elif op == "power_loss":
                        reply = {"ok": True, **server.power_loss()}
                    elif op == "stop":
                        stream.write(b'{"ok": true}\n')
                        stream.flush()
                        return
                    else:
                        reply = {"ok": False, "error": f"unknown op {op!r}"}
                except Exception as e:
                    log.exception("control command failed")
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()


def _watch_stdin() -> None:
    # The client holds our stdin; EOF means it died without stopping us: shut down cleanly.
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hacluster.testing.lazyfs",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("backing", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--control", type=Path, required=True,
                        help="Unix socket taking JSON lines: ping, stats, power_loss, stop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="lazyfs %(levelname)s %(message)s")

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    os.umask(0)                                # the kernel already applied the caller's umask
    server = Server(args.backing, args.mountpoint, args.threads)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.mount_fs()
    try:
        # The socket appears only once the mount serves, so a successful ping means ready.
        sock.bind(os.fsencode(args.control))
        sock.listen(4)
        if args.exit_on_stdin_eof:
            threading.Thread(target=_watch_stdin, daemon=True).start()
        _control_loop(server, sock)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.control)
        server.unmount_fs()
        server.close_records()
    return 0


# --- the handle tests use ----------------------------------------------------------------------


class LazyFSError(RuntimeError):
    pass


@dataclass(frozen=True)
class PowerLoss:
    """What a power loss threw away.

    ``bytes_dropped`` counts bytes written (by write or mmap write-back) since each file's
    last sync; ``files_affected`` the files that went back to their synced state; ``forced``
    says something still used the mount, which was then detached and its connection aborted.
    """

    bytes_dropped: int
    files_affected: int
    forced: bool


@dataclass(frozen=True)
class Stats:
    writes: int
    bytes_written: int
    fsyncs: int
    power_losses: int
    unsynced_files: int
    unsynced_bytes: int


class LazyFS:
    """A LazyFS server process mounting ``backing`` on ``mount``; a context manager."""

    def __init__(self, backing: Path, mount: Path, *, threads: int = 1,
                 verbose: bool = False) -> None:
        self.backing = Path(backing)
        self.mount = Path(mount)
        self.threads = threads
        self.verbose = verbose
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def pid(self) -> int:
        """The server process's id (killing it leaves a dead mount that ``stop`` removes)."""
        if self._proc is None:
            raise LazyFSError("LazyFS is not started")
        return self._proc.pid

    @property
    def control(self) -> Path:
        if self._dir is None:
            raise LazyFSError("LazyFS is not started")
        return self._dir / "control"

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise LazyFSError("LazyFS is not started")
        return self._dir / "lazyfs.log"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and return once the mount answers."""
        reason = fuse_unavailable()
        if reason is not None:
            raise LazyFSError(reason)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        # A short private directory: Unix socket paths are limited to 107 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="lazyfs-"))
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "hacluster.testing.lazyfs", str(self.backing),
               str(self.mount), "--control", str(self.control), "--threads",
               str(self.threads), "--exit-on-stdin-eof"]
        if self.verbose:
            cmd.append("--verbose")
        with open(self.log_path, "wb") as log_file:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log_file,
                                          stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                self._cleanup()
                raise LazyFSError(f"lazyfs exited with {self._proc.returncode}: {output}")
            try:
                self._call("ping", timeout=2.0)
                return
            except (OSError, LazyFSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise LazyFSError(f"lazyfs did not come up within {timeout}s") from None
                time.sleep(0.02)

    def _call(self, op: str, timeout: float = 120.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fsencode(self.control))
            s.sendall(json.dumps({"op": op}).encode() + b"\n")
            with s.makefile("rb") as stream:
                line = stream.readline()
        if not line:
            raise LazyFSError(f"lazyfs closed the control socket during {op}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok", False):
            raise LazyFSError(f"lazyfs {op} failed: {reply.get('error')}")
        return reply

    def power_loss(self) -> PowerLoss:
        """Drop every write not yet made durable; the mount comes back with durable data only.

        Kill the processes using the mount first: anything still holding it gets a torn-down
        connection (``forced``), as if its machine had died.
        """
        r = self._call("power_loss")
        return PowerLoss(r["bytes_dropped"], r["files_affected"], r["forced"])

    def stats(self) -> Stats:
        r = self._call("stats")
        return Stats(r["writes"], r["bytes_written"], r["fsyncs"], r["power_losses"],
                     r["unsynced_files"], r["unsynced_bytes"])

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount cleanly (every write kept) and end the server."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._call("stop", timeout=timeout)
                proc.wait(timeout)
            except (OSError, LazyFSError, subprocess.TimeoutExpired):
                log.warning("lazyfs did not stop cleanly; killing it")
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
        if is_mounted(self.mount):
            # A server that died leaves a dead mount ("transport endpoint is not connected").
            try:
                umount(self.mount, lazy=True)
            except OSError as e:
                log.warning("cannot detach %s: %s", self.mount, e)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LazyFS:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
