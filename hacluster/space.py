"""Free space in the data dir: when to refuse writes, and the emergency reserve file.

Owns the low-space state of one node. Writes are refused while the file system holding the data
dir has less than ``storage.min_free_mb`` free, or after RocksDB itself ran out of space. A
reserve file of ``storage.reserve_mb`` (real blocks, fallocated at start) is deleted the moment
space runs low, so that the Raft journal, RocksDB's reopen and recovery have room to work with
(pysyncobj writes its journal through mmap; a write fault on a full file system kills the
process outright). The reserve comes back, and writes resume, only once there is room for the
floor and the reserve again: no flapping between refusing and accepting at the edge.
``space_action`` is pure; ``SpaceGuard`` does the I/O. It must never delete anything but its own
reserve file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from hacluster.store import free_mb

log = logging.getLogger(__name__)

RESERVE = "reserve"


class SpaceAction(Enum):
    NONE = "none"
    RELEASE = "release"        # delete the reserve: space ran low
    RESTORE = "restore"        # recreate the reserve: there is room again


def space_action(free: float, reserve_present: bool, low: bool, hard_error: bool, floor_mb: int,
           reserve_mb: int) -> tuple[SpaceAction, bool]:
    """The action to take and whether the node is (still) low on space."""
    if not low:
        if hard_error or free < max(floor_mb, 1):
            return (SpaceAction.RELEASE if reserve_present else SpaceAction.NONE), True
        if not reserve_present and reserve_mb and free >= floor_mb + reserve_mb + 1:
            return SpaceAction.RESTORE, False     # e.g. at start, or after a restart
        return SpaceAction.NONE, False
    if hard_error or free < floor_mb + reserve_mb + 1:
        return (SpaceAction.RELEASE if reserve_present else SpaceAction.NONE), True
    return (SpaceAction.RESTORE if reserve_mb else SpaceAction.NONE), False


@dataclass
class SpaceGuard:
    data_dir: Path
    floor_mb: int
    reserve_mb: int
    name: str
    low: str | None = None          # why writes are refused, while low on space

    @property
    def reserve(self) -> Path:
        return self.data_dir / RESERVE

    def tend(self, hard_error: str | None = None) -> str | None:
        """Check the space now; act on the reserve; return why writes are refused, if they are."""
        free = free_mb(self.data_dir)
        was_low = self.low is not None
        action, low = space_action(free, self.reserve.exists(), was_low, hard_error is not None,
                             self.floor_mb, self.reserve_mb)
        released = ""
        if action is SpaceAction.RELEASE:
            size = self.reserve.stat().st_size >> 20
            self.reserve.unlink(missing_ok=True)
            released = f"; released the {size} MB reserve"
        elif action is SpaceAction.RESTORE and not self._restore():
            low = True
        if low:
            if hard_error:
                self.low = hard_error
            elif not was_low:
                self.low = (f"{free:.0f} MB free in {self.data_dir}, below "
                            f"storage.min_free_mb ({self.floor_mb} MB)")
            if not was_low or released:
                log.warning("%s: low on disk space (%.0f MB free)%s; writes refused until "
                            "%d MB are free", self.name, free, released,
                            self.floor_mb + self.reserve_mb + 1)
        else:
            if was_low:
                log.info("%s: disk space is back (%.0f MB free)%s; writes accepted", self.name,
                         free, "; reserve restored" if action is SpaceAction.RESTORE else "")
            self.low = None
        return self.low

    def _restore(self) -> bool:
        tmp = self.reserve.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_mb << 20)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("%s: could not create the %d MB disk reserve: %s", self.name,
                        self.reserve_mb, exc)
            return False
        return True
