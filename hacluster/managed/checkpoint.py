"""A checkpoint of a RocksDB database another process owns, and the WAL range check after it.

Owns: making a checkpoint of the service's live database without opening it for writing
(``create_foreign_checkpoint``), and checking that the service's WAL still continues from the
checkpoint's sequence number (``verify_continuation``), so a replica bootstrapped from the
checkpoint can stream from the next one.

How a checkpoint is made: the live database is opened as a RocksDB *secondary instance* (its
own info-log directory under ``scratch``; the secondary only reads the service's files), caught
up with the primary, and checkpointed into a staging directory beside ``target``; the secondary
is closed. RocksDB's checkpoint of a secondary hard-links the SST files and copies the MANIFEST
(trimmed to what the secondary read) but copies *no* WAL file: on its own it holds only what the
service had flushed, column family by column family, which is not a consistent state across
column families (one CF flushed up to seq X, another only up to an older seq, its newer writes
in the WAL only). So the WAL files are copied too: every log numbered at or above the oldest log
that was live in the service's directory before the secondary opened (a log the checkpoint's
MANIFEST still needs was not obsolete then, so it was live or is newer), from the database
directory or from ``archive/`` if it moved meanwhile. The staged directory is then opened with
rocksdict: RocksDB's recovery replays those logs (each column family from its own log number,
point-in-time: a torn tail of the newest log, copied while being written, ends the replay) and
flushes them, which yields one consistent prefix of the service's writes. Its
``latest_sequence_number`` is read from that result, not trusted from the secondary; the
directory is closed and renamed to ``target`` atomically.

Why this is safe: SST files are immutable, so hard links to them cannot change under the
checkpoint; the WAL files are copied, never linked, so nothing the checkpoint's recovery does
touches the service's files; a compaction in the service that deletes an SST between catch-up
and linking makes the attempt fail, and it is retried from scratch; the sequence number comes
from the recovered checkpoint; and ``verify_continuation`` proves the service's WAL still holds
the next sequence number (or that the checkpoint is the live end), so nothing is skipped between
the checkpoint and the stream.

Must never: open the service's database for writing; write, rename or delete a RocksDB file in
the service's directory. One exception is forced by rocksdict, which writes its
``rocksdict-config.json`` into every directory it opens, the secondary's included: if the
service's directory has that file with other contents the checkpoint is refused (rewriting it
would break a rocksdict-based service); if it has none, the file rocksdict creates is removed
after the secondary is closed.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import rocksdict

from hacluster.fsutil import fsync_parent, fsync_path
from hacluster.managed.options import ManagedDbError, check_db_path
from hacluster.wal.errors import WalError, WalGone, WalNotAtBoundary
from hacluster.wal.reader import ARCHIVE_DIR, WalReader, list_logs, log_file_name

__all__ = ["create_foreign_checkpoint", "verify_continuation"]

log = logging.getLogger(__name__)

ROCKSDICT_SIDECAR = "rocksdict-config.json"
# What rocksdict writes there for Options(raw_mode=True) without prefix extractors.
_OUR_SIDECAR = b'{"raw_mode":true,"prefix_extractors":{}}'


def _raw() -> rocksdict.Options:
    return rocksdict.Options(raw_mode=True)


def _sidecar_existed(db_path: Path) -> bool:
    """Whether the service's directory already has rocksdict's sidecar file; refuse if opening
    it with rocksdict would change that file, or could not create it."""
    sidecar = db_path / ROCKSDICT_SIDECAR
    try:
        existing = sidecar.read_bytes()
    except FileNotFoundError:
        if not os.access(db_path, os.W_OK):
            raise ManagedDbError(
                f"{db_path}: not writable by this process, and rocksdict must create "
                f"{ROCKSDICT_SIDECAR} there to open a secondary instance (it is removed again)"
            ) from None
        return False
    except OSError as exc:
        raise ManagedDbError(f"{sidecar}: cannot read: {exc}") from exc
    if existing != _OUR_SIDECAR:
        raise ManagedDbError(
            f"{sidecar}: holds {existing[:200]!r}; opening the database with rocksdict would "
            f"overwrite it with {_OUR_SIDECAR.decode()}, breaking the service's own rocksdict "
            "settings: the service must use rocksdict in raw mode without prefix extractors")
    return True


def _remove_our_sidecar(db_path: Path) -> None:
    sidecar = db_path / ROCKSDICT_SIDECAR
    try:
        if sidecar.read_bytes() == _OUR_SIDECAR:
            sidecar.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("%s: could not remove the file rocksdict created: %s", sidecar, exc)


def _oldest_live_log(db_path: Path) -> int | None:
    numbers = [n for n, p in list_logs(db_path).items() if p.parent == db_path]
    return min(numbers) if numbers else None


def _copy_logs(db_path: Path, staging: Path, floor: int | None) -> list[int]:
    """Copy every WAL numbered >= floor (all of them if floor is None) into staging."""
    copied: list[int] = []
    for number in sorted(list_logs(db_path)):
        if floor is not None and number < floor:
            continue
        name = log_file_name(number)
        for source in (db_path / name, db_path / ARCHIVE_DIR / name):
            try:
                shutil.copyfile(source, staging / name)
            except FileNotFoundError:
                continue
            copied.append(number)
            break
        else:
            # Archived and purged within the attempt: only with a tiny WAL_size_limit_MB.
            raise ManagedDbError(f"{db_path}: WAL {name} vanished before it could be copied "
                                 "into the checkpoint")
    return copied


def _open_secondary(db_path: Path, secondary_dir: Path,
                    column_families: Sequence[str]) -> rocksdict.Rdict:
    return rocksdict.Rdict(
        str(db_path), _raw(),
        column_families={cf: _raw() for cf in column_families if cf != "default"},
        access_type=rocksdict.AccessType.secondary(str(secondary_dir)))


def _close(db: rocksdict.Rdict | None) -> None:
    if db is not None:
        db.close()


def _recovered_seq(staging: Path) -> int:
    """Open the staged checkpoint (RocksDB replays and flushes its WAL copies), read its seq."""
    opts = _raw()
    opts.create_if_missing(False)
    cfs = rocksdict.Rdict.list_cf(str(staging), _raw())
    db = rocksdict.Rdict(
        str(staging), opts, column_families={cf: _raw() for cf in cfs if cf != "default"})
    try:
        return int(db.latest_sequence_number())
    finally:
        db.close()
        del db
        gc.collect()    # rocksdict lets go of the files only with the last reference


def _attempt(db_path: Path, staging: Path, secondary_dir: Path,
             column_families: Sequence[str], sidecar_existed: bool) -> tuple[int, int, int]:
    """One try: (checkpoint seq, seq the secondary saw, number of WAL files copied)."""
    floor = _oldest_live_log(db_path)
    sec: rocksdict.Rdict | None = None
    try:
        sec = _open_secondary(db_path, secondary_dir, column_families)
        sec.try_catch_up_with_primary()
        seen = int(sec.latest_sequence_number())
        rocksdict.Checkpoint(sec).create_checkpoint(str(staging))
    finally:
        _close(sec)
        sec = None
        gc.collect()
        if not sidecar_existed:
            _remove_our_sidecar(db_path)
    copied = _copy_logs(db_path, staging, floor)
    seq = _recovered_seq(staging)
    return seq, seen, len(copied)


def create_foreign_checkpoint(db_path: Path, target: Path, *, scratch: Path,
                              column_families: Sequence[str] | None = None,
                              attempts: int = 5) -> int:
    """Make a checkpoint of the live database ``db_path`` (owned by another process) in
    ``target``; return its sequence number. Blocking: run it in a thread.

    ``target`` must not exist; it appears complete or not at all (a staging directory beside
    it is renamed). ``scratch`` holds the secondary instance's directory, removed afterwards.
    ``column_families``: all of the database's (default: ``Rdict.list_cf``, which takes no
    lock). A failed attempt (typically an SST compacted away between catch-up and linking) is
    retried with a fresh staging directory, up to ``attempts`` times; then ManagedDbError.
    Callers should then ``verify_continuation(db_path, seq)``.
    """
    check_db_path(db_path, must_exist=True)
    if target.exists():
        raise ManagedDbError(f"{target}: the checkpoint target already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    if column_families is None:
        try:
            column_families = list(rocksdict.Rdict.list_cf(str(db_path), _raw()))
        except Exception as exc:
            raise ManagedDbError(f"{db_path}: cannot list column families: {exc}") from exc
    sidecar_existed = _sidecar_existed(db_path)
    last: BaseException | None = None
    for attempt in range(1, max(1, attempts) + 1):
        token = secrets.token_hex(4)
        staging = target.parent / f".{target.name}.partial-{token}"
        secondary_dir = scratch / f"secondary-{token}"
        started = time.monotonic()
        try:
            seq, seen, wals = _attempt(db_path, staging, secondary_dir, column_families,
                                       sidecar_existed)
            fsync_path(staging)
            os.rename(staging, target)
            fsync_parent(target)
        except ManagedDbError as exc:
            last = exc
            log.warning("checkpoint of %s, attempt %d/%d: %s", db_path, attempt, attempts, exc)
        except Exception as exc:    # rocksdict raises plain Exception with RocksDB's text
            last = exc
            log.warning("checkpoint of %s, attempt %d/%d failed: %s", db_path, attempt,
                        attempts, exc)
        else:
            log.info("checkpoint of %s in %s: seq %d (secondary saw %d), %d WAL files "
                     "replayed, %.0f ms", db_path, target, seq, seen, wals,
                     (time.monotonic() - started) * 1000)
            return seq
        finally:
            shutil.rmtree(secondary_dir, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
    raise ManagedDbError(f"{db_path}: no checkpoint after {attempts} attempts; last error: "
                         f"{last}")


def verify_continuation(db_path: Path, seq: int) -> None:
    """Refuse unless the service's WAL (its directory and ``archive/``) still holds seq+1, or
    ``seq`` is the live end of it: a replica at ``seq`` can then stream from seq+1.

    With no WAL data at all (all logs empty or purged, e.g. an idle service past its
    WAL_ttl_seconds) nothing can be checked here; that is accepted, since the stream's own
    reader refuses (WalGone) if the next write does not start at seq+1.
    """
    if seq < 0:
        raise ManagedDbError(f"{db_path}: sequence number {seq} is negative")
    try:
        with WalReader(db_path, seq + 1, decode_ops=False) as reader:
            batches = reader.read(max_batches=1, max_bytes=1)
            positioned = reader.position != (0, 0)
    except WalNotAtBoundary as exc:
        raise ManagedDbError(f"{db_path}: sequence {seq + 1} is not at a batch boundary of "
                             f"the service's WAL: {exc}") from exc
    except WalGone as exc:
        raise ManagedDbError(f"{db_path}: the service's WAL no longer holds sequence "
                             f"{seq + 1}, the one after the checkpoint: {exc}; raise "
                             "WAL_ttl_seconds / WAL_size_limit_MB") from exc
    except WalError as exc:
        raise ManagedDbError(f"{db_path}: the service's WAL cannot be read from sequence "
                             f"{seq + 1}: {exc}") from exc
    except OSError as exc:
        raise ManagedDbError(f"{db_path}: cannot read the service's WAL: {exc}") from exc
    if batches:
        if batches[0].seq != seq + 1:   # the reader guarantees it; never trust it silently
            raise ManagedDbError(f"{db_path}: the WAL continues at sequence {batches[0].seq}, "
                                 f"not {seq + 1}")
        return
    if not positioned:
        if seq > 0:
            log.info("%s: no WAL data at all: cannot check that sequence %d continues; the "
                     "stream will", db_path, seq + 1)
        return
    # Nothing at seq+1 yet: seq must be the live end, i.e. a batch in the WAL ends at seq.
    if seq > 0 and not _batch_ends_at(db_path, seq):
        raise ManagedDbError(f"{db_path}: the service's WAL ends before sequence {seq}: "
                             "that sequence number is not from this database")


def _batch_ends_at(db_path: Path, seq: int) -> bool:
    """Whether the WAL holds a batch whose last sequence number is ``seq``."""
    try:
        with WalReader(db_path, seq, decode_ops=False) as reader:
            batches = reader.read(max_batches=1, max_bytes=1)
    except WalNotAtBoundary as exc:
        return exc.batch_last == seq
    except (WalGone, WalError, OSError):
        return False
    return bool(batches) and batches[0].last_seq == seq
