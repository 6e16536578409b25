"""The LazyFS server: mounting, the request loop and the power loss, for one backing directory.

Owns ``Server``: opening /dev/fuse and mounting it (mount(2), no libfuse), the threads that read
requests and write replies (each opcode to its handler in ``handlers``), unmounting (a busy
mount is detached and its connection aborted), and the power loss itself: unmount, restore
every undo record, mount a new superblock. It must never restore undo records while it serves,
never leave a serving thread blocked on a connection it closed, and never answer a request twice.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hacluster.testing.lazyfs.handlers import Handler, _Handlers, _Reply
from hacluster.testing.lazyfs.mounts import MS_NODEV, MS_NOSUID, _check, _libc, umount
from hacluster.testing.lazyfs.protocol import (
    BATCH_FORGET,
    CREATE,
    DESTROY,
    FALLOCATE,
    FLUSH,
    FORGET,
    FSYNC,
    FSYNCDIR,
    GETATTR,
    IN_HEADER,
    INIT,
    INTERRUPT,
    LINK,
    LOOKUP,
    MAX_WRITE,
    MKDIR,
    MKNOD,
    OPEN,
    OPENDIR,
    OUT_HEADER,
    READ,
    READ_BUFFER,
    READDIR,
    READLINK,
    RELEASE,
    RELEASEDIR,
    RENAME,
    RENAME2,
    RMDIR,
    ROOT_ID,
    SETATTR,
    STATFS,
    SYMLINK,
    UNLINK,
    WRITE,
)
from hacluster.testing.lazyfs.tables import _Dir, _File, _Node
from hacluster.testing.lazyfs.undo import Key, UndoRecord

log = logging.getLogger(__name__)


class Server(_Handlers):
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
