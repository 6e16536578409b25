"""Making a managed service's WAL durable from outside the service.

Owns ``sync_live_wal``: fsync each live WAL file (``NNNNNN.log`` in the database directory)
and the directory itself, through read-only descriptors of hacluster's own. The service writes
its WAL with plain ``write()`` calls (``manual_wal_flush`` is refused at start), so what hacluster
has read is in the page cache, and an fsync of the file through any descriptor makes it durable:
a replica's acknowledgement and ``/v1/wait`` then mean "on disk here", as in the standalone
mode. It must never open anything for writing in the service's directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from hacluster.wal.reader import ARCHIVE_DIR


def sync_live_wal(db_dir: Path) -> None:
    """fsync every WAL file in ``db_dir`` and the directory (a log archived meanwhile was
    complete and synced when RocksDB moved it, or is synced here through its new name)."""
    try:
        names = [e.name for e in os.scandir(db_dir) if e.name.endswith(".log")]
    except FileNotFoundError:
        return                  # no database yet: nothing written, nothing to make durable
    for name in names:
        for path in (db_dir / name, db_dir / ARCHIVE_DIR / name):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue        # moved to archive/ (or deleted) since the listing
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            break
    fd = os.open(db_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
