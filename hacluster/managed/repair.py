"""Giving the database back to hacluster after the service opened it with refused options.

Owns ``give_db_back`` and ``reopen_with_own_options``: once the service has stopped and
RocksDB's lock is free, the database is opened once through rocksdict with the WAL options
hacluster opens it with itself (obsolete logs archived, never recycled, not compressed, no
manual WAL flush, no 2PC) and closed again. RocksDB reads a recycled or compressed WAL
whatever the options say, and writes a new OPTIONS file at every open, so the newest one is
hacluster's again: the node can open the database as a replica (``store.Store`` refuses one
last opened with WAL recycling or compression) and save what the service wrote after its
stream stopped as a divergent tail, as for any demoted primary. A database RocksDB cannot
open so (another comparator: hacluster could never open it, nor apply to it) is set aside
instead, kept under its own name, and the node bootstraps a copy from the primary.

It must never delete anything, never run while another process has the database open (the
caller waits for the service's lock to be released first), and never change anything but
what an open and a close of RocksDB change (recovery, a new WAL file, a new OPTIONS file,
archived logs) or the set-aside's rename.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import rocksdict

from hacluster.lineage.tails import set_aside
from hacluster.store import has_database

if TYPE_CHECKING:
    from hacluster.lineage.labels import Lineage

__all__ = ["give_db_back", "reopen_with_own_options"]

log = logging.getLogger("hacluster.node")


def reopen_with_own_options(db_dir: Path, wal_ttl_seconds: int, wal_size_limit_mb: int) -> None:
    """Open ``db_dir`` with every column family and hacluster's WAL options, then close it.

    Raises what rocksdict raises when RocksDB cannot open it so (another comparator, 2PC
    records it cannot recover without ``allow_2pc``).
    """
    opts = rocksdict.Options(raw_mode=True)
    opts.set_wal_ttl_seconds(wal_ttl_seconds)
    opts.set_wal_size_limit_mb(wal_size_limit_mb)
    opts.set_recycle_log_file_num(0)
    names = rocksdict.Rdict.list_cf(str(db_dir), rocksdict.Options(raw_mode=True))
    db = rocksdict.Rdict(str(db_dir), opts,
                         column_families={n: rocksdict.Options(raw_mode=True)
                                          for n in names if n != "default"})
    db.close()


def give_db_back(node: str, db_dir: Path, lineage: Lineage | None, wal_ttl_seconds: int,
                 wal_size_limit_mb: int) -> None:
    """After an options refusal, the service stopped: ``reopen_with_own_options``, or when
    RocksDB cannot open it so, the database set aside (kept) and the lineage reset, so that
    the node bootstraps. Blocking: run it in a thread."""
    if not has_database(db_dir):
        return
    try:
        reopen_with_own_options(db_dir, wal_ttl_seconds, wal_size_limit_mb)
    except Exception as exc:
        aside = set_aside(db_dir)
        if lineage is not None:
            lineage.reset(0, 1)
        log.error("%s: cannot open %s with hacluster's options after its service's options "
                  "were refused (%s): set aside as %s (kept); bootstrapping from the primary "
                  "instead", node, db_dir, exc, aside)
        return
    log.info("%s: reopened %s with hacluster's options after its service's options were "
             "refused: its newest OPTIONS file is hacluster's again", node, db_dir)
