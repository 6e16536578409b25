"""The LazyFS server's FUSE request handlers: one method per opcode, each on the backing tree.

Owns the ``_Handlers`` mixin of ``Server``: what each FUSE request (lookup, getattr, setattr,
create, open, read, write, fallocate, fsync, rename, readdir, ...) does to the backing
directory, and which of them save synced bytes first (write, truncate, fallocate) or retire an
undo record (fsync: durability is the model, the backing file is never fsynced). It must never
let a change to a file's content or size skip its undo record, never touch anything outside the
backing directory, and never reply to the kernel itself (``Server._dispatch`` does).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Sequence

from hacluster.testing.lazyfs.mounts import _check, _libc
from hacluster.testing.lazyfs.protocol import (
    ATTR_OUT,
    BATCH_FORGET_IN,
    CREATE_IN,
    DIRENT,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FALLOCATE_IN,
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_KEEP_CACHE,
    FORGET_IN,
    FORGET_ONE,
    FSYNC_IN,
    INIT_IN,
    INIT_OUT,
    KERNEL_MAJOR,
    KERNEL_MINOR,
    LINK_IN,
    MAX_PAGES_COUNT,
    MAX_WRITE,
    MKDIR_IN,
    MKNOD_IN,
    OPEN_IN,
    OPEN_OUT,
    RELEASE_IN,
    RENAME2_IN,
    RENAME_IN,
    RW_IN,
    SETATTR_IN,
    STATFS_OUT,
    TTL,
    WANTED_INIT_FLAGS,
    WRITE_IN_SIZE,
    WRITE_OUT,
    _attr,
    _cstring,
)
from hacluster.testing.lazyfs.tables import _Dir, _File, _Node, _proc, _Tables
from hacluster.testing.lazyfs.undo import Key, UndoRecord


class _Reply(Exception):
    """Raised by a handler that has nothing to send (FORGET, INTERRUPT)."""


Handler = Callable[[int, memoryview], bytes | Sequence[bytes | memoryview]]


class _Handlers(_Tables):
    """The opcode handlers of ``Server``."""

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
