"""mount(2), umount2(2) and the other libc calls of LazyFS; whether a path is a mount point.

Owns the libc handle LazyFS calls (mount, umount2, fallocate, renameat2, with their argument
types) and the errno check of those calls, ``umount``, ``is_mounted`` (which sees dead FUSE
mounts too) and ``fuse_unavailable`` (whether this process may mount FUSE here). It must never
mount or unmount anything on its own account: it does what its callers ask, on their paths.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

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
