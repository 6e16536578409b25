"""The kernel's FUSE protocol as LazyFS speaks it: opcodes, flags, request and reply layouts.

Owns the numbers and struct layouts of include/uapi/linux/fuse.h (version 7.38) that the LazyFS
server uses, the request sizes it negotiates, the fallocate modes it models, and the packing of
names, device numbers and attributes into the kernel's formats. Pure data and pure functions:
it must never open, mount or serve anything, and never hold state.
"""

from __future__ import annotations

import os
import struct

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
