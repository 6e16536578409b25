"""The node's RocksDB database: opening it safely, writing op lists atomically, checkpoints.

Owns the rocksdict handle, the column-family handles and the options that make WAL shipping
possible (raw mode, WAL retention into ``archive/``, no WAL recycling or compression). Its
position — ``latest_sequence_number()`` — is the node's replication position: it is atomic with
the data, so there is nothing else to keep in step. It must never be opened on a directory that
is being replaced (bootstrap installs before open), never write with the WAL disabled, and never
drop a column family (column-family ids must stay equal to their index in ``list_cf``).

Every write through ``write`` also records, in the hidden column family ``SEQ_CF``, the seq at
which each key was last written (the last seq of its batch), in the same WriteBatch: replicas
apply it with the data, so compare-and-set and transactions see the same seqs after a failover.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c
import rocksdict

from hacluster.config import StorageConfig
from hacluster.groupsync import NATIVE, NativeWalSync
from hacluster.key_seqs import SEQ_CF, SEQ_VALUE, UNRECORDED_SEQ, seq_key
from hacluster.wal.batch import (
    DELETE,
    DELETE_RANGE,
    PUT,
    SINGLE_DELETE,
    replay_batch,
)

log = logging.getLogger(__name__)

# An op as the store takes it: (kind, column family name, key, value or range end or b"").
NamedOp = tuple[int, str, bytes, bytes]


class StoreError(Exception):
    """The database cannot be used as configured (bad options, unknown column family)."""


class DivergenceError(StoreError):
    """Applying a batch did not land on the sequence numbers the primary gave it."""


@dataclass(frozen=True, slots=True)
class AppliedRange:
    first_seq: int
    last_seq: int


_PAIR = struct.Struct(">II")
_OPTIONS_FILE = re.compile(r"^OPTIONS-(\d+)$")


def latest_options_file(db_dir: Path) -> Path | None:
    best: tuple[int, Path] | None = None
    if not db_dir.is_dir():
        return None
    for entry in db_dir.iterdir():
        m = _OPTIONS_FILE.match(entry.name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), entry)
    return best[1] if best else None


def check_wal_options(db_dir: Path) -> None:
    """Refuse a DB whose options recycle or compress WAL files: the WAL reader cannot read them."""
    path = latest_options_file(db_dir)
    if path is None:
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.strip().partition("=")
        if key == "recycle_log_file_num" and value.strip() not in ("", "0"):
            raise StoreError(
                f"{path}: recycle_log_file_num={value.strip()}: WAL recycling must be off "
                "(recycled logs cannot be shipped); open the DB with recycle_log_file_num=0"
            )
        if key == "wal_compression" and value.strip() not in ("", "kNoCompression"):
            raise StoreError(
                f"{path}: wal_compression={value.strip()}: WAL compression must be off "
                "(compressed WAL records cannot be decoded by hacluster)"
            )


def no_space(exc: BaseException) -> bool:
    """RocksDB (or the OS) ran out of space: rocksdict raises a bare Exception with its text."""
    text = str(exc)
    return "No space left" in text or "ENOSPC" in text


def free_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / (1 << 20)


def has_database(db_dir: Path) -> bool:
    return (db_dir / "CURRENT").is_file()


class Store:
    """An open RocksDB database in raw (bytes) mode with the configured column families."""

    def __init__(self, db_dir: Path, column_families: Sequence[str], storage: StorageConfig,
                 *, sync_writes: bool = False, managed: bool = False) -> None:
        self.db_dir = db_dir
        self._native_sync: NativeWalSync | None = None
        self._native_ok = True
        self._storage = storage
        # Managed mode: the database is a service's; its column families are the ones it
        # made (no ``SEQ_CF``, none from the config), adopted from the primary in its order.
        self.managed = managed
        db_dir.parent.mkdir(parents=True, exist_ok=True)
        check_wal_options(db_dir)
        existing = (
            rocksdict.Rdict.list_cf(str(db_dir), rocksdict.Options(raw_mode=True))
            if has_database(db_dir) else ["default"]
        )
        self._db = rocksdict.Rdict(
            str(db_dir), self._options(),
            column_families={n: self._cf_options() for n in existing if n != "default"},
        )
        for name in [] if managed else [*column_families, SEQ_CF]:
            if name not in existing:
                # Created one at a time, in config order, so ids follow list_cf order.
                self._db.create_column_family(name, self._cf_options())
                log.info("created column family %s in %s", name, db_dir)
        check_wal_options(db_dir)
        self._cf_ids: list[str] = list(
            rocksdict.Rdict.list_cf(str(db_dir), rocksdict.Options(raw_mode=True))
        )
        self._handles = {n: self._db.get_column_family_handle(n) for n in self._cf_ids}
        self._views: dict[str, rocksdict.Rdict] = {}
        self._write_opts = rocksdict.WriteOptions()
        self._write_opts.sync = sync_writes
        # Replicated batches are synced per replication.fsync_on_apply, not per fsync_writes.
        self._sync_opts = rocksdict.WriteOptions()
        self._sync_opts.sync = True
        self._nosync_opts = rocksdict.WriteOptions()
        log.info("opened %s: seq %d, column families %s", db_dir,
                 self._db.latest_sequence_number(), ", ".join(self._cf_ids))

    def _options(self) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        # Obsolete logs are archived, not deleted, so lagging replicas can still be served.
        opts.set_wal_ttl_seconds(self._storage.wal_ttl_seconds)
        opts.set_wal_size_limit_mb(self._storage.wal_size_limit_mb)
        opts.set_recycle_log_file_num(0)
        opts.set_write_buffer_size(self._storage.write_buffer_size_mb << 20)
        if self._storage.max_total_wal_size_mb:
            opts.set_max_total_wal_size(self._storage.max_total_wal_size_mb << 20)
        return opts

    def _cf_options(self) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.set_write_buffer_size(self._storage.write_buffer_size_mb << 20)
        return opts

    # -- reading ---------------------------------------------------------------------------

    @property
    def column_families(self) -> list[str]:
        """Names in column-family-id order: index i is the CF whose WAL id is i."""
        return list(self._cf_ids)

    @property
    def seq_cf_id(self) -> int:
        """The WAL id of the column family holding each key's last-written seq (``SEQ_CF``),
        or -1 where there is none (a managed service's database): what ``writes_in`` takes."""
        return self._cf_ids.index(SEQ_CF) if SEQ_CF in self._cf_ids else -1

    def latest_seq(self) -> int:
        return int(self._db.latest_sequence_number())

    def handle(self, cf: str) -> rocksdict.ColumnFamily:
        try:
            return self._handles[cf]
        except KeyError:
            raise StoreError(f"unknown column family {cf!r}") from None

    def view(self, cf: str) -> rocksdict.Rdict:
        if cf not in self._handles:
            raise StoreError(f"unknown column family {cf!r}")
        if cf not in self._views:
            self._views[cf] = self._db if cf == "default" else self._db.get_column_family(cf)
        return self._views[cf]

    def get(self, key: bytes, cf: str = "default") -> bytes | None:
        value = self.view(cf).get(key)
        return None if value is None else bytes(value)

    def key_seq(self, key: bytes, cf: str = "default") -> int:
        """The seq of the write that last wrote ``key`` (0: the key does not exist)."""
        return self.get_with_seq(key, cf)[1]

    def get_with_seq(self, key: bytes, cf: str = "default") -> tuple[bytes | None, int]:
        """The value (None when absent) and the seq of the write that last wrote it (0 when
        absent)."""
        value = self.view(cf).get(key)
        if value is None:
            return None, 0
        stamp = self.view(SEQ_CF).get(seq_key(cf, key))
        return bytes(value), (UNRECORDED_SEQ if stamp is None
                              else int(SEQ_VALUE.unpack(bytes(stamp))[0]))

    def items(self, cf: str = "default") -> Iterable[tuple[bytes, bytes]]:
        for key, value in self.view(cf).items():
            yield bytes(key), bytes(value)  # type: ignore[arg-type]

    def scan(self, cf: str, prefix: bytes, limit: int,
             start_after: bytes | None = None) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Up to ``limit`` items whose key starts with ``prefix``, in key order, after
        ``start_after`` if given; and whether more follow."""
        start = prefix if start_after is None or start_after < prefix else start_after
        out: list[tuple[bytes, bytes]] = []
        it = self.view(cf).iter()
        try:
            it.seek(start)
            while it.valid():
                key = bytes(it.key())
                if not key.startswith(prefix):
                    break
                if start_after is None or key > start_after:
                    if len(out) == limit:
                        return out, True
                    out.append((key, bytes(it.value())))
                it.next()
        finally:
            del it
        return out, False

    def background_work(self) -> dict[str, int]:
        """RocksDB's flush and compaction activity (running now, and pending across CFs)."""
        db = self._db
        pending = sum(
            int(self.view(cf).property_int_value("rocksdb.compaction-pending") or 0)
            + int(self.view(cf).property_int_value("rocksdb.mem-table-flush-pending") or 0)
            for cf in self._cf_ids)
        return {
            "running_flushes": int(db.property_int_value("rocksdb.num-running-flushes") or 0),
            "running_compactions": int(
                db.property_int_value("rocksdb.num-running-compactions") or 0),
            "pending": pending,
        }

    def content_hash(self) -> dict[str, Any]:
        """A digest of every column family's contents at the current seq (like etcd's HashKV)."""
        cfs: dict[str, dict[str, int]] = {}
        for cf in self._cf_ids:
            crc, keys = 0, 0
            for key, value in self.view(cf).items():
                k, v = bytes(key), bytes(value)  # type: ignore[arg-type]
                # Length-prefix both parts so (ab, c) and (a, bc) hash differently.
                crc = crc32c.crc32c(_PAIR.pack(len(k), len(v)) + k + v, crc)
                keys += 1
            cfs[cf] = {"keys": keys, "crc32c": int(crc)}
        return {"seq": self.latest_seq(), "column_families": cfs}

    # -- writing ---------------------------------------------------------------------------

    def write(self, ops: Sequence[NamedOp]) -> AppliedRange:
        """Apply ``ops`` atomically as one WriteBatch, with each key's last-written seq;
        return the sequence numbers they took (the last one is every key's new seq).

        The caller is the only writer (the primary's event loop), so the batch's seqs are
        known before it is written: each op and each seq record takes one.
        """
        before = self.latest_seq()
        last = before + 2 * len(ops)
        batch = self._build(ops)
        stamp = SEQ_VALUE.pack(last)
        seqs = self._handles[SEQ_CF]
        for kind, cf, key, value in ops:
            if kind == PUT:
                batch.put(seq_key(cf, key), stamp, seqs)
            elif kind == DELETE_RANGE:
                batch.delete_range(seq_key(cf, key), seq_key(cf, value), seqs)
            else:
                batch.delete(seq_key(cf, key), seqs)
        self._db.write(batch, self._write_opts)
        after = self.latest_seq()
        if after != last:
            # Only a second writer could cause this; the recorded seqs would then be wrong.
            log.critical("%s: a write of %d ops landed on seqs %d..%d, not ending at %d: "
                         "another writer is using this database", self.db_dir, len(ops),
                         before + 1, after, last)
        return AppliedRange(before + 1, after)

    def handles_for(self, names: Sequence[str]) -> dict[int, rocksdict.ColumnFamily]:
        """Map another node's column-family ids (index in ``names``) to this DB's handles."""
        if self.managed:
            self._adopt(names)
        missing = [n for n in names if n not in self._handles]
        if missing:
            raise StoreError(f"{self.db_dir}: column families {missing} exist on the primary "
                             "but not here; add them to column_families in the config")
        return {i: self._handles[n] for i, n in enumerate(names)}

    def _adopt(self, names: Sequence[str]) -> None:
        """Create the column families the service made on the primary since, in its order, so
        that ids agree; refuse when this DB's list is not a prefix of the primary's."""
        if list(names[:len(self._cf_ids)]) != self._cf_ids:
            raise StoreError(
                f"{self.db_dir}: column families {self._cf_ids} here are not those of the "
                f"primary ({list(names)}) in the same order: column-family ids would differ; "
                "re-initialise this replica (hacluster reinit)")
        for name in names[len(self._cf_ids):]:
            self._db.create_column_family(name, self._cf_options())
            self._cf_ids.append(name)
            self._handles[name] = self._db.get_column_family_handle(name)
            log.info("created column family %s in %s, as on the primary", name, self.db_dir)

    def prepare(self, wb: bytes, handles: Mapping[int, rocksdict.ColumnFamily],
                where: str = "?", into: rocksdict.WriteBatch | None = None
                ) -> rocksdict.WriteBatch:
        """Decode a replicated serialized WriteBatch into a rocksdict WriteBatch (not written):
        a new one, or appended to ``into`` (a replica writes a run of frames as one batch).

        Raises WalError if the bytes are malformed or hold an unsupported entry, KeyError for
        a column-family id missing from ``handles``; nothing is written either way (``into``
        may then hold part of ``wb``: do not commit it).
        """
        batch = rocksdict.WriteBatch(raw_mode=True) if into is None else into
        replay_batch(wb, batch.put, batch.delete, batch.delete_range, handles, where=where)
        return batch

    def commit(self, batch: rocksdict.WriteBatch, first_seq: int, count: int, *,
               sync: bool) -> None:
        """Write a prepared replicated batch; prove it landed on [first_seq, first_seq+count-1]."""
        before = self.latest_seq()
        if before != first_seq - 1:
            raise DivergenceError(
                f"{self.db_dir}: batch starts at seq {first_seq} but this DB is at seq {before}"
            )
        self._db.write(batch, self._sync_opts if sync else self._nosync_opts)
        after = self.latest_seq()
        if after != first_seq + count - 1:
            raise DivergenceError(
                f"{self.db_dir}: applied batch [{first_seq}, {first_seq + count - 1}] but "
                f"latest_sequence_number() is {after}: the replica has diverged from the primary"
            )

    def _build(self, ops: Sequence[NamedOp]) -> rocksdict.WriteBatch:
        batch = rocksdict.WriteBatch(raw_mode=True)
        handles = self._handles
        for kind, cf, key, value in ops:
            try:
                handle = handles[cf]
            except (KeyError, TypeError):
                raise StoreError(f"unknown column family {cf!r}") from None
            if kind == PUT:
                batch.put(key, value, handle)
            elif kind in (DELETE, SINGLE_DELETE):
                # rocksdict has no SingleDelete; a Delete leaves the same visible state and
                # consumes the same single sequence number.
                batch.delete(key, handle)
            elif kind == DELETE_RANGE:
                batch.delete_range(key, value, handle)
            else:
                raise StoreError(f"unknown op kind {kind}")
        return batch

    def native_wal_sync(self) -> NativeWalSync | None:
        """This handle's native WAL syncer (made on first use, closed with the handle), or
        None when the C module is not built or the database is closed."""
        if self._native_sync is None and NATIVE and self._db is not None and self._native_ok:
            try:
                self._native_sync = NativeWalSync(self.db_dir)
            except OSError as exc:      # e.g. out of inotify instances: RocksDB's FlushWAL
                self._native_ok = False
                log.warning("%s: WAL syncs go through RocksDB's FlushWAL in a Python thread: "
                            "no native syncer (%s)", self.db_dir, exc)
        return self._native_sync

    def sync_wal(self) -> None:
        """Make every write so far durable (FlushWAL with sync: live WAL files and their dir).

        Safe to call from a worker thread while the event loop writes.
        """
        self._db.flush_wal(True)

    # -- maintenance -----------------------------------------------------------------------

    def flush(self) -> None:
        """Flush every column family's memtable (this also rolls the WAL to a new file)."""
        for cf in self._cf_ids:
            self.view(cf).flush(True)

    def compact(self) -> None:
        for cf in self._cf_ids:
            self.view(cf).compact_range(None, None)

    def checkpoint(self, target: Path) -> int:
        """Create a RocksDB checkpoint (hard links) in ``target``; return its sequence number."""
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Callers run this on the event-loop thread, so no write lands between reading the
        # sequence number and linking the files.
        seq = self.latest_seq()
        rocksdict.Checkpoint(self._db).create_checkpoint(str(target))
        return seq

    def close(self) -> None:
        if self._db is None:
            return
        if self._native_sync is not None:
            self._native_sync.close()
            self._native_sync = None
        try:
            self._db.flush_wal(True)
        except Exception:  # a failing disk must not keep the handle open
            log.exception("flush_wal on close failed")
        self._views.clear()
        self._handles.clear()
        try:
            self._db.close()
        except Exception as exc:  # after an I/O error ("Writer has previous error")
            log.warning("closing %s after an I/O error: %s", self.db_dir, exc)
        self._db = None  # type: ignore[assignment]
        # rocksdict releases the LOCK file only when the last reference (CF handles included)
        # is gone; collect now so a reopen in the same process succeeds.
        gc.collect()


class StoreSlot:
    """The one reference to a node's open database, shared by the node and its follower.

    Whoever opens, closes or replaces the handle (the node at a role change or a disk-space
    recovery, the follower around a checkpoint install) does it here, so no part of the node
    ever holds a handle another part closed.
    """

    __slots__ = ("store",)

    def __init__(self) -> None:
        self.store: Store | None = None
